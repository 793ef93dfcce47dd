//! A host-side relay of a piped output stream, for the idle timeout: the command writes into
//! one pipe, the caller reads another, and every chunk copied between them marks activity.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;

/// Copies `from` (the host's read end of a command's output pipe) into a new pipe and returns
/// that pipe's read end (non-blocking, close-on-exec), marking `activity` on every chunk. The
/// copy ends at the command's end of file, or when the returned end is closed.
pub(crate) fn relayed(from: OwnedFd, activity: Arc<watch::Sender<()>>) -> std::io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(
        &read,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )?;
    let mut source = pipe::Receiver::from_owned_fd(from)?;
    let mut sink = pipe::Sender::from_owned_fd(write)?;
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match source.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    activity.send_replace(());
                    if sink.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok(read)
}
