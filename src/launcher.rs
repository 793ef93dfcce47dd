//! The host side of the in-container launcher (`launcher/launcher.c`), the init of a
//! long-lived [`Sandbox`](crate::Sandbox): one `SOCK_SEQPACKET` connection per command.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
    connect, recvmsg, sendmsg, socket,
};
use tokio::io::unix::AsyncFd;

use crate::process::ExitStatus;

/// The launcher binary, built from `launcher/launcher.c` by the build script.
pub(crate) const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/osb-launcher"));

/// Where the launcher sits in the shared root filesystem, and so in every container.
pub(crate) const PATH_IN_ROOTFS: &str = ".oci-sandbox-launcher";

/// Where a sandbox's socket directory is mounted in its container.
pub(crate) const SOCKET_DIR: &str = "/.oci-sandbox";

/// The socket's name in that directory.
pub(crate) const SOCKET_NAME: &str = "launcher.sock";

/// The most a request may hold (the launcher's buffer; a SEQPACKET record is one message).
pub(crate) const MAX_REQUEST: usize = 192 * 1024;

/// Installs the launcher in the shared rootfs when it is missing or another build's
/// (blocking). Written aside then renamed: running containers keep the file they started.
pub(crate) fn install_blocking(rootfs: &Path) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let path = rootfs.join(PATH_IN_ROOTFS);
    if std::fs::read(&path).is_ok_and(|current| current == BINARY) {
        return Ok(());
    }
    let mut tmp = tempfile::NamedTempFile::new_in(rootfs)?;
    tmp.write_all(BINARY)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o755))?;
    tmp.persist(&path).map_err(|e| e.error)?;
    Ok(())
}

/// How the command's stdio is made.
pub(crate) enum Stdio {
    /// These three fds become its stdin, stdout and stderr.
    Fds([RawFd; 3]),
    /// A PTY's terminal end: the command's controlling terminal and stdio.
    Terminal(RawFd),
}

/// What the launcher answered to a request.
pub(crate) enum Started {
    /// Running.
    Running,
    /// Could not start: `chdir` or `exec` failed with this errno.
    Failed(i32),
}

/// One connection: one command.
#[derive(Debug)]
pub(crate) struct Connection {
    fd: AsyncFd<OwnedFd>,
}

impl Connection {
    /// Connects to the launcher's socket (non-blocking; the backlog is 128).
    pub async fn open(socket_path: &Path) -> io::Result<Self> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        let addr = UnixAddr::new(socket_path)?;
        let mut pause = std::time::Duration::from_micros(200);
        loop {
            match connect(fd.as_raw_fd(), &addr) {
                Ok(()) => break,
                // A full backlog: the launcher is accepting, come back shortly.
                Err(nix::errno::Errno::EAGAIN) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
        // SAFETY: an `OwnedFd` returns the same fd until the AsyncFd drops it.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                fd,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )
        }
        .map_err(io::Error::from)?;
        Ok(Connection { fd })
    }

    /// Sends the start request.
    pub async fn request(
        &self,
        cwd: &Path,
        argv: &[String],
        env: &[(String, String)],
        stdio: Stdio,
    ) -> io::Result<()> {
        let mut msg = Vec::new();
        msg.extend_from_slice(match stdio {
            Stdio::Fds(_) => b"Rp\0",
            Stdio::Terminal(_) => b"Rt\0",
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
        let fds = match stdio {
            Stdio::Fds(fds) => fds.to_vec(),
            Stdio::Terminal(fd) => vec![fd],
        };
        loop {
            let mut guard = self.fd.writable().await?;
            let iov = [io::IoSlice::new(&msg)];
            let rights = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = &rights;
            match guard.try_io(|fd| {
                sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            }) {
                Ok(r) => return r.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one record (with an fd, if one came); `None` when the launcher closed.
    pub async fn receive(&self) -> io::Result<Option<(String, Option<OwnedFd>)>> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| receive_now(fd.get_ref().as_fd().as_raw_fd())) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for the start reply.
    pub async fn started(&self) -> io::Result<Started> {
        match self.receive().await? {
            Some((text, _)) if text.starts_with("S ") => Ok(Started::Running),
            Some((text, _)) if text.starts_with("E ") => Ok(Started::Failed(
                text[2..].trim().parse().unwrap_or(libc::EINVAL),
            )),
            Some((text, _)) => Err(io::Error::other(format!(
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

fn receive_now(fd: RawFd) -> io::Result<Option<(String, Option<OwnedFd>)>> {
    let mut buf = [0u8; 256];
    let mut space = nix::cmsg_space!(RawFd);
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    let mut passed = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for (i, raw) in fds.into_iter().enumerate() {
                // SAFETY: the kernel just gave us this fd; we own it now.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if i == 0 {
                    passed = Some(owned);
                }
            }
        }
    }
    let len = msg.bytes;
    if len == 0 && passed.is_none() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    Ok(Some((text, passed)))
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
