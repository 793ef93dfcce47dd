//! The host side of the in-container launcher (`launcher/launcher.c`), the init of a
//! long-lived [`Sandbox`](crate::Sandbox).
//!
//! The channel is never a path the sandbox could replace: the container's stdin is one end of
//! a `SOCK_SEQPACKET` socket pair ([`ControlSocket`]); each command gets a socket pair of its
//! own ([`Connection`]) whose other end only the launcher holds. Everything read from the
//! launcher is bounded (one short record, no fds accepted) and every wait has a deadline or
//! is the caller's own (the command's run time).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use tokio::io::unix::AsyncFd;

use crate::status::ExitStatus;

/// The launcher binary, built from `launcher/launcher.c` by the build script.
pub(crate) const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/osb-launcher"));

/// Where the launcher sits in the shared root filesystem, and so in every container.
pub(crate) const PATH_IN_ROOTFS: &str = ".oci-sandbox-launcher";

/// The most a request may hold (the launcher's buffer; a SEQPACKET record is one message).
pub(crate) const MAX_REQUEST: usize = 192 * 1024;

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

/// How the command's stdio is made.
pub(crate) enum Stdio {
    /// These three fds become its stdin, stdout and stderr.
    Fds([RawFd; 3]),
    /// A PTY's terminal end: the command's controlling terminal and stdio.
    Terminal(RawFd),
    /// A PTY the launcher makes in the container's own devpts (so that `tty` names it); its
    /// controller comes back with [`Connection::terminal`].
    OwnTerminal,
}

/// What the launcher answered to a request.
pub(crate) enum Started {
    /// Running.
    Running,
    /// Could not start: `chdir` or `exec` failed with this errno.
    Failed(i32),
}

/// The most a reply may hold ("X <wstatus>" and the like); a longer one is a protocol error.
const MAX_REPLY: usize = 64;

fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    nix::fcntl::fcntl(
        &ours,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    Ok((ours, theirs))
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` returns the same fd until the AsyncFd drops it.
    unsafe {
        AsyncFd::register_with_interest(
            fd,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
    }
    .map_err(io::Error::from)
}

/// The host's end of a sandbox's control socket: requests go out on it, one per command.
#[derive(Debug)]
pub(crate) struct ControlSocket {
    fd: AsyncFd<OwnedFd>,
}

impl ControlSocket {
    /// A new control socket and the end that becomes the container's stdin.
    pub fn pair() -> io::Result<(Self, OwnedFd)> {
        let (ours, theirs) = seqpacket_pair()?;
        // The kernel attaches the sender's credentials to what we receive, its pid translated
        // into our pid namespace: the "ready" names the launcher's host pid.
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::PassCred, &true)?;
        Ok((
            ControlSocket {
                fd: register(ours)?,
            },
            theirs,
        ))
    }

    /// Waits for the launcher's "ready" (the caller puts a deadline on it) and returns the
    /// pid of its sender as the kernel gives it in this process's pid namespace: the
    /// container's init on runc and crun, the sandbox process on gVisor (whose kernel sends
    /// for its guests). The launcher sends it before any command runs, so no command can
    /// forge it.
    pub async fn ready(&self) -> io::Result<i32> {
        let (text, pid) = loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| receive_with_sender_now(fd.get_ref().as_raw_fd())) {
                Ok(r) => break r?,
                Err(_would_block) => continue,
            }
        };
        match (text, pid) {
            (Some(text), Some(pid)) if text == "ready" => Ok(pid),
            (Some(text), _) => Err(io::Error::other(format!(
                "unexpected first message from the launcher: {text:?}"
            ))),
            (None, _) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the sandbox's launcher ended before it was ready",
            )),
        }
    }

    /// Closes our sending side: the launcher reads its end, kills every process of the
    /// container, reaps them all and exits (see [`closed`](Self::closed)).
    pub fn shutdown(&self) {
        let _ = nix::sys::socket::shutdown(
            self.fd.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Write,
        );
    }

    /// Waits until the launcher's end is closed: it has exited (or the socket failed).
    /// Whatever it still sends is read and dropped.
    pub async fn closed(&self) {
        while let Ok(Some(_)) = receive(&self.fd).await {}
    }

    /// Sends a start request with the command's own channel and stdio, and returns the
    /// channel (the caller puts a deadline on the wait for the reply).
    pub async fn request(
        &self,
        cwd: &Path,
        argv: &[String],
        env: &[(String, String)],
        stdio: Stdio,
    ) -> io::Result<Connection> {
        let msg = encode_request(cwd, argv, env, &stdio)?;
        let (ours, theirs) = seqpacket_pair()?;
        let mut fds = vec![theirs.as_raw_fd()];
        match stdio {
            Stdio::Fds(stdio) => fds.extend_from_slice(&stdio),
            Stdio::Terminal(fd) => fds.push(fd),
            Stdio::OwnTerminal => {}
        }
        loop {
            let mut guard = self.fd.writable().await?;
            let iov = [io::IoSlice::new(&msg)];
            let rights = [ControlMessage::ScmRights(&fds)];
            match guard.try_io(|fd| {
                sendmsg::<()>(fd.as_raw_fd(), &iov, &rights, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            }) {
                Ok(r) => {
                    r?;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
        // The launcher's end is in flight now: ours must not keep it open.
        drop(theirs);
        Ok(Connection {
            fd: register(ours)?,
        })
    }
}

fn encode_request(
    cwd: &Path,
    argv: &[String],
    env: &[(String, String)],
    stdio: &Stdio,
) -> io::Result<Vec<u8>> {
    let mut msg = Vec::new();
    msg.extend_from_slice(match stdio {
        Stdio::Fds(_) => b"Rp\0",
        Stdio::Terminal(_) => b"Rt\0",
        Stdio::OwnTerminal => b"RT\0",
    });
    msg.extend_from_slice(cwd.as_os_str().as_encoded_bytes());
    msg.push(0);
    msg.extend_from_slice(format!("{}\0", argv.len()).as_bytes());
    for a in argv {
        msg.extend_from_slice(a.as_bytes());
        msg.push(0);
    }
    msg.extend_from_slice(format!("{}\0", env.len()).as_bytes());
    for (k, v) in env {
        msg.extend_from_slice(format!("{k}={v}\0").as_bytes());
    }
    if msg.len() > MAX_REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "arguments and environment take {} bytes; at most {MAX_REQUEST}",
                msg.len()
            ),
        ));
    }
    Ok(msg)
}

/// One command's own channel to the launcher.
#[derive(Debug)]
pub(crate) struct Connection {
    fd: AsyncFd<OwnedFd>,
}

impl Connection {
    /// Receives one reply; `None` when the launcher closed the channel.
    pub async fn receive(&self) -> io::Result<Option<String>> {
        receive(&self.fd).await
    }

    /// Receives the controller of the PTY the launcher made (after an [`Stdio::OwnTerminal`]
    /// request): a "P" record with exactly one fd, which must be a terminal. An "E" record
    /// instead is the start failure, for [`started`](Self::started) to report.
    pub async fn terminal(&self) -> io::Result<Result<OwnedFd, Started>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| receive_terminal_now(fd.get_ref().as_raw_fd())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for the start reply.
    pub async fn started(&self) -> io::Result<Started> {
        match self.receive().await? {
            Some(text) if text.starts_with("S ") => Ok(Started::Running),
            Some(text) if text.starts_with("E ") => Ok(Started::Failed(
                text[2..].trim().parse().unwrap_or(libc::EINVAL),
            )),
            Some(text) => Err(io::Error::other(format!(
                "unexpected reply from the launcher: {text:?}"
            ))),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the sandbox's launcher closed the connection",
            )),
        }
    }

    /// Asks the launcher to signal the command's process group (fire and forget).
    pub fn signal(&self, signal: i32) {
        self.send_text(&format!("K {signal}"));
    }

    /// Asks the launcher to resize the terminal it relays.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.send_text(&format!("W {cols} {rows}"));
    }

    fn send_text(&self, text: &str) {
        let _ = nix::sys::socket::send(
            self.fd.get_ref().as_raw_fd(),
            text.as_bytes(),
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        );
    }
}

/// Receives one record of at most [`MAX_REPLY`] bytes; `None` at the end of the channel.
async fn receive(fd: &AsyncFd<OwnedFd>) -> io::Result<Option<String>> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|fd| receive_now(fd.get_ref().as_raw_fd())) {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// One record, without a control buffer: fds sent along are never installed in this process
/// (the kernel drops them and flags `MSG_CTRUNC`), so a hostile sender cannot fill our fd table.
fn receive_now(fd: RawFd) -> io::Result<Option<String>> {
    let mut buf = [0u8; MAX_REPLY];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, None, MsgFlags::MSG_CMSG_CLOEXEC)?;
    let (len, flags) = (msg.bytes, msg.flags);
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a reply from the launcher longer than {MAX_REPLY} bytes"),
        ));
    }
    if len == 0 {
        return Ok(None);
    }
    std::str::from_utf8(&buf[..len])
        .map(|text| Some(text.to_owned()))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a reply that is not text"))
}

/// One record and its sender's pid (from the credentials the kernel attaches). The control
/// buffer has room for the credentials only: fds sent along are dropped (`MSG_CTRUNC`).
fn receive_with_sender_now(fd: RawFd) -> io::Result<(Option<String>, Option<i32>)> {
    let mut buf = [0u8; MAX_REPLY];
    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let (len, flags) = (msg.bytes, msg.flags);
    let mut pid = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmCredentials(creds) => pid = Some(creds.pid()),
                ControlMessageOwned::ScmRights(fds) => {
                    for raw in fds {
                        // SAFETY: the kernel just installed this fd in this process; we own it.
                        drop(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
                _ => {}
            }
        }
    }
    if flags.contains(MsgFlags::MSG_TRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a message from the launcher longer than {MAX_REPLY} bytes"),
        ));
    }
    if len == 0 {
        return Ok((None, pid));
    }
    let text = std::str::from_utf8(&buf[..len])
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a message that is not text"))?;
    Ok((Some(text.to_owned()), pid))
}

/// One "P" record carrying one terminal fd. Whatever else arrives is closed (a control buffer
/// for one fd: more are dropped by the kernel and flagged `MSG_CTRUNC`).
fn receive_terminal_now(fd: RawFd) -> io::Result<Result<OwnedFd, Started>> {
    let mut buf = [0u8; MAX_REPLY];
    let mut space = nix::cmsg_space!(RawFd);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let (len, flags) = (msg.bytes, msg.flags);
    let mut passed = Vec::new();
    // Collected before anything can return early, so that every fd that arrived is closed.
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed these fds in this process; we own them.
                passed.extend(
                    fds.into_iter()
                        .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }),
                );
            }
        }
    }
    let text = std::str::from_utf8(&buf[..len]).unwrap_or("");
    if let Some(errno) = text.strip_prefix("E ") {
        return Ok(Err(Started::Failed(
            errno.trim().parse().unwrap_or(libc::EINVAL),
        )));
    }
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_owned());
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || text != "P" {
        return Err(bad("the launcher's terminal reply is malformed"));
    }
    match passed.pop() {
        Some(controller)
            if passed.is_empty() && nix::unistd::isatty(&controller).unwrap_or(false) =>
        {
            Ok(Ok(controller))
        }
        _ => Err(bad("the launcher's terminal reply carries no terminal")),
    }
}

/// A `waitpid` status as the launcher reports it (`X <wstatus>`).
pub(crate) fn exit_status(text: &str) -> Option<ExitStatus> {
    let raw: i32 = text.strip_prefix("X ")?.trim().parse().ok()?;
    if libc::WIFEXITED(raw) {
        Some(ExitStatus::exited(libc::WEXITSTATUS(raw)))
    } else if libc::WIFSIGNALED(raw) {
        Some(ExitStatus::signaled(libc::WTERMSIG(raw)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_are_decoded() {
        assert_eq!(exit_status("X 768"), Some(ExitStatus::exited(3)));
        assert_eq!(exit_status("X 9"), Some(ExitStatus::signaled(9)));
        assert_eq!(exit_status("S 5"), None);
    }

    #[test]
    fn the_launcher_is_embedded() {
        assert!(BINARY.starts_with(b"\x7fELF"));
    }
}
