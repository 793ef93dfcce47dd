//! One connection through a sandbox's egress proxy: the HTTP request head the sandbox sends
//! (`CONNECT host:port` for a tunnel, or a plain-HTTP request in absolute form), the policy's
//! verdict *before* any name is resolved, the connection, the relay, and one event.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::Egress;
use crate::config::network::{
    EgressDecision, EgressEvent, EgressPolicy, Host, Verdict, canonical, is_public_enough,
};

/// The longest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// How long the sandbox has to send its request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(30);
/// How long a name lookup and a connect may take.
const CONNECT_DEADLINE: Duration = Duration::from_secs(15);

/// What the sandbox asked for.
struct Request {
    method: String,
    host: Host,
    port: u16,
    /// Plain HTTP: the head to send upstream (origin form, headers rewritten).
    forward: Option<ForwardHead>,
    /// Bytes read past the head (a body's start, or a TLS hello sent early).
    rest: Vec<u8>,
}

struct ForwardHead {
    /// The `Host` header's value: the target's authority.
    authority: String,
    path: String,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
}

/// Relay buffer per direction and connection (256 connections: 64 MiB per sandbox at most;
/// 64 KiB cost gVisor a fifth of its throughput).
const RELAY_BUFFER: usize = 128 << 10;

/// Serves one connection from the sandbox's forwarder to its end, or until `stop` (its
/// forwarder's end, or the sandbox's).
pub(crate) async fn serve(
    client: UnixStream,
    egress: Arc<Egress>,
    stop: tokio_util::sync::CancellationToken,
) {
    tokio::select! {
        () = serve_until_done(client, egress) => {}
        () = stop.cancelled() => {}
    }
}

async fn serve_until_done(mut client: UnixStream, egress: Arc<Egress>) {
    // A socket the forwarder holds as a spare sees nothing until a connection uses it: the
    // head's deadline starts with its first byte.
    if client.readable().await.is_err() {
        return;
    }
    let begun = Instant::now();
    let request = match tokio::time::timeout(HEAD_DEADLINE, read_request(&mut client)).await {
        Ok(Ok(r)) => r,
        Ok(Err(reason)) => {
            let _ = respond(&mut client, 400, &reason).await;
            return;
        }
        Err(_) => return,
    };
    let policy = egress.policy();
    let mut event = EgressEvent {
        sandbox: egress.sandbox.clone(),
        host: request.host.to_string(),
        port: request.port,
        method: request.method.clone(),
        decision: EgressDecision::Denied {
            reason: String::new(),
        },
        address: None,
        bytes_sent: 0,
        bytes_received: 0,
        connect_time: Duration::ZERO,
        duration: Duration::ZERO,
    };
    let rule = match policy.verdict(&request.host, request.port) {
        Verdict::Allowed(rule) => rule,
        Verdict::Denied(reason) => {
            let _ = respond(&mut client, 403, &reason).await;
            event.decision = EgressDecision::Denied { reason };
            event.connect_time = begun.elapsed();
            event.duration = event.connect_time;
            egress.report(event);
            return;
        }
    };
    let upstream = tokio::time::timeout(
        CONNECT_DEADLINE,
        connect(&policy, &request.host, request.port),
    )
    .await
    .unwrap_or_else(|_| Err("timed out connecting".into()));
    event.connect_time = begun.elapsed();
    let mut upstream = match upstream {
        Ok(s) => s,
        Err(error) => {
            let _ = respond(&mut client, 502, &error).await;
            event.decision = EgressDecision::Failed { rule, error };
            event.duration = event.connect_time;
            egress.report(event);
            return;
        }
    };
    event.address = upstream.peer_addr().ok();
    event.decision = EgressDecision::Allowed { rule };
    let _ = upstream.set_nodelay(true);
    let mut sent = 0;
    let head_written = match &request.forward {
        None => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
        }
        Some(head) => {
            let name = match &request.host {
                Host::Name(n) => n.as_str(),
                Host::Ip(_) => "",
            };
            let bytes = head.encode(&request, &policy, name);
            sent += bytes.len() as u64;
            upstream.write_all(&bytes).await
        }
    };
    let relayed = async {
        head_written?;
        if !request.rest.is_empty() {
            upstream.write_all(&request.rest).await?;
            sent += request.rest.len() as u64;
        }
        tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            RELAY_BUFFER,
            RELAY_BUFFER,
        )
        .await
    };
    match relayed.await {
        Ok((up, down)) => {
            event.bytes_sent = sent + up;
            event.bytes_received = down;
        }
        Err(e) => {
            event.bytes_sent = sent;
            tracing::debug!(error = %e, "egress relay ended with an error");
        }
    }
    event.duration = begun.elapsed();
    egress.report(event);
}

/// Connects to `host:port`: a literal as given (the verdict allowed it), a name through the
/// policy's resolver entries or the host's resolver, using only addresses that are public
/// enough or that a CIDR rule allows.
async fn connect(policy: &EgressPolicy, host: &Host, port: u16) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = match host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        Host::Name(name) => match policy.resolved(name) {
            Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect(),
            None => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                    .await
                    .map_err(|e| format!("resolving {name}: {e}"))?
                    .collect();
                let usable: Vec<SocketAddr> = found
                    .iter()
                    .copied()
                    .filter(|a| is_public_enough(a.ip()) || policy.cidr_allows(a.ip(), port))
                    .collect();
                if usable.is_empty() && !found.is_empty() {
                    let ips: Vec<IpAddr> = found.iter().map(SocketAddr::ip).collect();
                    return Err(format!(
                        "{name} resolves to {ips:?}, which only a CIDR rule may allow"
                    ));
                }
                usable
            }
        },
    };
    // A name's address (not the policy's own resolve entries) must not lead to this host:
    // its own addresses are not all loopback (its eth0's, say).
    let checked = matches!(host, Host::Name(n) if policy.resolved(n).is_none());
    let mut last = format!("{host} has no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                let home = s.local_addr().is_ok_and(|l| l.ip() == canonical(addr.ip()));
                if checked && home && !policy.cidr_allows(addr.ip(), port) {
                    return Err(format!(
                        "{host} resolves to {}, an address of this host, which only a CIDR rule may allow",
                        addr.ip()
                    ));
                }
                return Ok(s);
            }
            Err(e) => last = format!("connecting to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Reads and parses the request head.
async fn read_request(client: &mut UnixStream) -> Result<Request, String> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut chunk = [0u8; 8192];
        let n = client
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("the request ended early".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => return parse(&req, buf[len..].to_vec()),
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err("the request head is too long".into()),
            Err(e) => return Err(format!("a malformed request: {e}")),
        }
    }
}

fn parse(req: &httparse::Request<'_, '_>, rest: Vec<u8>) -> Result<Request, String> {
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    if method == "CONNECT" {
        let (host, port) = split_authority(target, None)?;
        return Ok(Request {
            method,
            host,
            port,
            forward: None,
            rest,
        });
    }
    let Some(after) = target.strip_prefix("http://") else {
        return Err(format!(
            "{target:?} is no absolute http:// URL (use CONNECT for anything else)"
        ));
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not forwarded".into());
    }
    let (host, port) = split_authority(authority, Some(80))?;
    let hosts = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
        .count();
    if hosts > 1 {
        return Err("more than one Host header".into());
    }
    // The target names the host: the sandbox's own Host header is replaced by it (RFC 9112
    // 3.2.2), so that a request cannot be steered to another site behind the same server.
    let hop_by_hop = [
        "host",
        "connection",
        "proxy-connection",
        "proxy-authorization",
        "keep-alive",
        "te",
        "upgrade",
    ];
    let headers = req
        .headers
        .iter()
        .filter(|h| !hop_by_hop.contains(&h.name.to_ascii_lowercase().as_str()))
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    Ok(Request {
        method,
        host,
        port,
        forward: Some(ForwardHead {
            authority: authority.to_ascii_lowercase(),
            path: path.to_owned(),
            version: req.version.unwrap_or(1),
            headers,
        }),
        rest,
    })
}

/// `host:port` (IPv6 in brackets), with `default` when the port is left out.
fn split_authority(authority: &str, default: Option<u16>) -> Result<(Host, u16), String> {
    let bad = || format!("{authority:?} is no host:port");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && (!h.contains(':') || h.ends_with(']')) => {
            (h, p.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (authority, default.ok_or_else(bad)?),
    };
    if port == 0 {
        return Err(bad());
    }
    Ok((Host::parse(host).ok_or_else(bad)?, port))
}

impl ForwardHead {
    /// The head sent upstream: origin form, one request per connection, the policy's headers
    /// for `name` in place of the sandbox's own of that name.
    fn encode(&self, request: &Request, policy: &EgressPolicy, name: &str) -> Vec<u8> {
        let injected: Vec<(&str, &str)> = policy.headers_for(name).collect();
        let mut out = format!(
            "{} {} HTTP/1.{}\r\n",
            request.method, self.path, self.version
        )
        .into_bytes();
        out.extend_from_slice(format!("Host: {}\r\n", self.authority).as_bytes());
        for (k, v) in &self.headers {
            if injected.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)) {
                continue;
            }
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        for (k, v) in injected {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out
    }
}

/// Answers the sandbox with a status and a one-line reason (also in `X-Egress-Reason`).
async fn respond(client: &mut UnixStream, status: u16, reason: &str) -> std::io::Result<()> {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body = format!("oci-sandbox egress: {reason}\n");
    let head = format!(
        "HTTP/1.1 {status} {text}\r\nX-Egress-Reason: {reason}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(head.as_bytes()).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_split_with_and_without_ports() {
        let (h, p) = split_authority("Example.org:8443", None).unwrap();
        assert_eq!((h, p), (Host::Name("example.org".into()), 8443));
        let (h, p) = split_authority("[::1]:443", None).unwrap();
        assert_eq!((h, p), (Host::Ip("::1".parse().unwrap()), 443));
        let (h, p) = split_authority("example.org", Some(80)).unwrap();
        assert_eq!((h, p), (Host::Name("example.org".into()), 80));
        for bad in ["example.org", "a:0", ":80", "a b:80", "::1:443"] {
            assert!(split_authority(bad, None).is_err(), "{bad}");
        }
    }
}
