//! The host's half of the launcher's network requests (`launcher/net.c` has the other half):
//! the egress forwarder and the connections to exposed ports.
//!
//! Request, on the control socket: `"N" op '\0' port '\0' uid '\0' gid '\0'`, with the
//! request's channel. The helper answers `S 0` (listening, or ready) or `E <errno>` on the
//! channel. A forwarder then takes [`CONNECTION`] records with one stream socket each (a few
//! sent ahead, as spares), and sends [`ACCEPTED`] per connection, which the host answers with
//! one more. An exposed port's helper takes one [`CONNECTION`] per host client and connects
//! it to the port.

use std::io;

/// What a network request asks of the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetOp {
    /// Listen on the sandbox's `127.0.0.1:<port>` and hand every connection to the host.
    Forward,
    /// Connect each socket the host sends ([`CONNECTION`]) to the sandbox's
    /// `127.0.0.1:<port>` and relay it.
    Expose,
}

/// A forwarder's record: it accepted a connection and waits for a socket to the proxy.
pub(crate) const ACCEPTED: &[u8] = b"A";
/// The host's answer to [`ACCEPTED`], or an exposed port's new client, with one stream
/// socket by `SCM_RIGHTS`.
pub(crate) const CONNECTION: &[u8] = b"C";

/// A network request, as the launcher reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NetRequest {
    pub op: NetOp,
    pub port: u16,
    pub uid: u32,
    pub gid: u32,
}

impl NetRequest {
    /// The request's bytes. Port 0 is [`io::ErrorKind::InvalidInput`].
    pub(crate) fn encode(&self) -> io::Result<Vec<u8>> {
        if self.port == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "port 0"));
        }
        let op = match self.op {
            NetOp::Forward => 'l',
            NetOp::Expose => 'x',
        };
        Ok(format!("N{op}\0{}\0{}\0{}\0", self.port, self.uid, self.gid).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_bytes_net_c_reads() {
        let r = NetRequest {
            op: NetOp::Expose,
            port: 8000,
            uid: 1000,
            gid: 100,
        };
        assert_eq!(r.encode().unwrap(), b"Nx\x008000\x001000\x00100\x00");
        let f = NetRequest {
            op: NetOp::Forward,
            port: 3128,
            uid: 0,
            gid: 0,
        };
        assert_eq!(f.encode().unwrap(), b"Nl\x003128\x000\x000\x00");
        let zero = NetRequest { port: 0, ..f };
        assert_eq!(
            zero.encode().unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
