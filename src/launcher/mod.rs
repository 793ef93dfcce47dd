//! The host side of the in-container launcher (`launcher/launcher.c`), the init of a
//! long-lived [`Sandbox`](crate::Sandbox): installing it, and talking to it.
//!
//! # Channels
//!
//! The channel is never a path the sandbox could replace: the container's stdin is one end of
//! a `SOCK_SEQPACKET` socket pair, the *control* socket ([`ControlSocket`]); each command gets
//! a socket pair of its own, its *channel* ([`Connection`]), whose other end only the launcher
//! holds (close-on-exec, in a non-dumpable process). So a reply on a channel comes from the
//! launcher and is about that channel's command.
//!
//! # Protocol
//!
//! Every message is one `SOCK_SEQPACKET` record; numbers are decimal ASCII (C's `%d`). The
//! typed values and their encoders and decoders are in [`protocol`]; launcher.c's header
//! comment documents the same messages from the launcher's side.
//!
//! - launcher → host, control: `ready`, once, before any command runs ([`protocol::READY`]).
//!   The host takes the launcher's pid from the credentials the kernel attaches
//!   (`SO_PASSCRED`), so no command can forge it.
//! - host → launcher, control: a start request ([`protocol::StartRequest`]),
//!   `R<mode>\0<cwd>\0<argc>\0<argv[0]>\0…<envc>\0<KEY=VALUE>\0…`, with by `SCM_RIGHTS`
//!   the command's channel first, then the stdio its [`Mode`](protocol::Mode) calls for:
//!   `p` three fds (stdin, stdout, stderr), `t` one (a terminal end, relayed by the launcher
//!   when it is none in the container's kernel), `T` none (the launcher makes a PTY).
//! - launcher → host, channel ([`Reply`]): for `T` first `P` with exactly one fd, the PTY's
//!   controller; then `S <pid>` (started) or `E <errno>` (did not start: exec's errno, 22 for
//!   a request the launcher could not take apart, 24 when it has no room or fds for another
//!   command, `-errno` when `chdir` failed; the channel ends); once started, `X <wstatus>`
//!   when the command ended (its `waitpid` status; the channel ends).
//! - host → launcher, channel ([`Order`](protocol::Order)): `K <signal>` signals the
//!   command's process group, `W <cols> <rows>` resizes a relayed terminal.
//! - The host closes a channel: the launcher kills the command's process group. The host
//!   closes the control socket: the launcher kills every process and exits.
//!
//! # What the host accepts
//!
//! Everything read from the launcher is bounded: one record of at most
//! [`MAX_REPLY`](protocol::MAX_REPLY) bytes, a longer one (`MSG_TRUNC`) being an error, and
//! decoded strictly ([`Reply::decode`]). Records are read without a control buffer, so fds
//! sent along are never installed, except where something is expected: the credentials of
//! `ready` (any fd that comes along is closed) and the one PTY controller of a `P` record,
//! which must be the only fd and a terminal (anything else that arrives is closed and the
//! record refused). Every wait has a deadline or is the caller's own (the command's run
//! time).

mod channel;
mod file_protocol;
pub(crate) mod net_protocol;
mod protocol;

pub(crate) use channel::{Connection, ControlSocket, Started, Stdio};
pub use file_protocol::{FileKind, FileMetadata};
pub(crate) use file_protocol::{FileOp, FileReply, FileRequest, decode_entry};
pub(crate) use protocol::{ATTACH_ARG, NO_KEEPERS_ARG, Reply};

use std::io;
use std::path::Path;

/// The launcher binary, built from `launcher/launcher.c` by the build script.
pub(crate) const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/osb-launcher"));

/// Where the launcher sits in the shared root filesystem, and so in every container.
pub(crate) const PATH_IN_ROOTFS: &str = ".oci-sandbox-launcher";

/// Installs the launcher in the shared rootfs when it is missing or another build's
/// (blocking). Written aside then renamed: running containers keep the file they started.
pub(crate) fn install_blocking(rootfs: &Path) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = rootfs.join(PATH_IN_ROOTFS);
    if std::fs::read(&path).is_ok_and(|current| current == BINARY) {
        return Ok(());
    }
    // A name of this process's and call's own, so that concurrent installers do not meet.
    let tmp = rootfs.join(format!(
        ".launcher-{}-{}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(&tmp)
        .and_then(|mut f| f.write_all(BINARY))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launcher_is_embedded() {
        assert!(BINARY.starts_with(b"\x7fELF"));
    }
}
