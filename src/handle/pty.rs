//! [`PtySession`]: a terminal's controller (from the launcher, or a socket its relay serves
//! on gVisor) driven through `AsyncFd`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::sync::watch;

use crate::error::SandboxError;
use crate::status::ExitStatus;
use crate::supervisor::Supervised;

/// The PTY controller fd, non-blocking, registered with the reactor.
#[derive(Debug)]
struct Controller(OwnedFd);

impl AsRawFd for Controller {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

type Pty = Arc<AsyncFd<Controller>>;

fn register_pty(fd: OwnedFd) -> io::Result<Pty> {
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    // SAFETY: `Controller` owns the fd and returns it unchanged until the AsyncFd drops it.
    let fd = unsafe {
        AsyncFd::register_with_interest(Controller(fd), Interest::READABLE | Interest::WRITABLE)
    }
    .map_err(io::Error::from)?;
    Ok(Arc::new(fd))
}

/// Sets the terminal's size: on the controller (`TIOCSWINSZ`), or, for a terminal a sandbox's
/// launcher relays over a socket (gVisor), through the launcher.
fn resize(pty: &Pty, inner: &Supervised, cols: u16, rows: u16) -> io::Result<()> {
    match set_size(pty.get_ref().as_raw_fd(), cols, rows) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => inner.resize_relayed(cols, rows),
        other => other,
    }
}

/// Sets the terminal's size (`TIOCSWINSZ`); the process in it gets `SIGWINCH`.
fn set_size(fd: RawFd, cols: u16, rows: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn poll_read_pty(pty: &Pty, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
    loop {
        let mut guard = ready!(pty.poll_read_ready(cx))?;
        let unfilled = buf.initialize_unfilled();
        match guard.try_io(|inner| {
            nix::unistd::read(&inner.get_ref().0, unfilled).map_err(io::Error::from)
        }) {
            Ok(Ok(n)) => {
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            // Once the last process holding the terminal has exited, the controller reads EIO:
            // that is the end of the stream.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
            Ok(Err(e)) => return Poll::Ready(Err(e)),
            Err(_would_block) => continue,
        }
    }
}

fn poll_write_pty(pty: &Pty, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
    loop {
        let mut guard = ready!(pty.poll_write_ready(cx))?;
        match guard
            .try_io(|inner| nix::unistd::write(&inner.get_ref().0, data).map_err(io::Error::from))
        {
            Ok(result) => return Poll::Ready(result),
            Err(_would_block) => continue,
        }
    }
}

/// The `AsyncRead` / `AsyncWrite` impls of the types that hold the controller in `pty`.
macro_rules! impl_pty_io {
    (AsyncRead for $t:ty) => {
        impl AsyncRead for $t {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let before = buf.filled().len();
                let read = poll_read_pty(&self.pty, cx, buf);
                if buf.filled().len() > before {
                    if let Some(activity) = &self.activity {
                        activity.send_replace(());
                    }
                }
                read
            }
        }
    };
    (AsyncWrite for $t:ty) => {
        impl AsyncWrite for $t {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                data: &[u8],
            ) -> Poll<io::Result<usize>> {
                poll_write_pty(&self.pty, cx, data)
            }

            // A terminal has nothing to flush, and cannot be half-closed (send 0x04, Ctrl-D,
            // for end of input).
            fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }

            fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
    };
}

/// An interactive process on a PTY, from [`NamespaceContainer::spawn_interactive`].
///
/// Reading gives what the process writes to its terminal (with the terminal's CRLF line ends);
/// writing types into it (`0x03` is Ctrl-C, `0x04` Ctrl-D). Reading ends (`Ok(0)`) once the
/// process has exited. Dropping the session (and every half made by [`split`](Self::split))
/// kills the process and removes its container.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use oci_sandbox::{NamespaceContainer, SandboxConfig};
///
/// let runtime = NamespaceContainer::new().await?;
/// let mut pty = runtime.spawn_interactive(&NamespaceContainer::build_config(&SandboxConfig::default(), "sh", vec![])).await?;
/// pty.resize(120, 40)?;
/// pty.write_all(b"echo $((6*7)); exit 3\n").await?;
/// let mut screen = Vec::new();
/// pty.read_to_end(&mut screen).await?;
/// assert_eq!(pty.wait().await?.code(), Some(3));
/// # Ok(()) }
/// ```
///
/// [`NamespaceContainer::spawn_interactive`]: crate::NamespaceContainer::spawn_interactive
#[derive(Debug)]
pub struct PtySession {
    pty: Pty,
    inner: Arc<Supervised>,
    /// Marked on every read of output (for an idle timeout).
    activity: Option<Arc<watch::Sender<()>>>,
}

impl PtySession {
    /// Wraps a controller fd received from the runtime and gives the terminal its size.
    pub(crate) fn from_controller(
        fd: OwnedFd,
        inner: Supervised,
        (cols, rows): (u16, u16),
        activity: Option<Arc<watch::Sender<()>>>,
    ) -> io::Result<Self> {
        let pty = register_pty(fd)?;
        let inner = Arc::new(inner);
        resize(&pty, &inner, cols, rows)?;
        Ok(PtySession {
            pty,
            inner,
            activity,
        })
    }

    /// This process's id, unique on this machine: a spawn's is its container's; a command
    /// exec'd in a [`Sandbox`](crate::Sandbox) has its own (`<sandbox id>-<n>`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The id of the container it runs in: a spawn's own, or the sandbox's.
    pub fn sandbox_id(&self) -> &str {
        &self.inner.sandbox_id
    }

    /// Sets the terminal's size in columns and rows; the process gets `SIGWINCH`.
    ///
    /// On runc and crun the size is set before this returns. On gVisor the terminal is
    /// relayed and the launcher sets it shortly after: not ordered with what is written
    /// next (as an SSH window change is not), so a command typed at once may still see the
    /// old size.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        resize(&self.pty, &self.inner, cols, rows)
    }

    /// A reader and a writer for use from two tasks. They keep the process alive like the
    /// session does: it ends when the session and both halves are dropped.
    pub fn split(&self) -> (PtyReader, PtyWriter) {
        (
            PtyReader {
                pty: self.pty.clone(),
                _inner: self.inner.clone(),
                activity: self.activity.clone(),
            },
            PtyWriter {
                pty: self.pty.clone(),
                inner: self.inner.clone(),
            },
        )
    }

    crate::handle::process::supervised_handle_methods!();
}

impl_pty_io!(AsyncRead for PtySession);

impl_pty_io!(AsyncWrite for PtySession);

/// The reading half of a [`PtySession`], from [`PtySession::split`].
#[derive(Debug)]
pub struct PtyReader {
    pty: Pty,
    _inner: Arc<Supervised>,
    activity: Option<Arc<watch::Sender<()>>>,
}

impl_pty_io!(AsyncRead for PtyReader);

/// The writing half of a [`PtySession`], from [`PtySession::split`].
#[derive(Debug)]
pub struct PtyWriter {
    pty: Pty,
    inner: Arc<Supervised>,
}

impl PtyWriter {
    /// Sets the terminal's size (see [`PtySession::resize`]).
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        resize(&self.pty, &self.inner, cols, rows)
    }
}

impl_pty_io!(AsyncWrite for PtyWriter);
