//! The streaming ends of a sandbox's file API: [`FileReader`] ([`Sandbox::open`]),
//! [`FileWriter`] ([`Sandbox::create`]) and the events of [`Sandbox::watch`].
//!
//! [`Sandbox::open`]: crate::Sandbox::open
//! [`Sandbox::create`]: crate::Sandbox::create
//! [`Sandbox::watch`]: crate::Sandbox::watch

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::error::SandboxError;
use crate::launcher::{Connection, FileReply};

/// How long a sandbox may send nothing in a transfer before it fails: processes of the
/// sandbox's user can stop the helper that serves it.
pub(crate) const STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// The error of a failed file request on `path`: the helper's errno, or what broke.
pub(crate) fn file_error(context: &'static str, path: &Path, source: io::Error) -> SandboxError {
    SandboxError::Io {
        context,
        path: path.to_path_buf(),
        source,
    }
}

/// What the helper's final reply says: `Ok` for done, its errno otherwise.
pub(crate) fn verdict(reply: io::Result<Option<FileReply>>) -> io::Result<()> {
    match reply? {
        Some(FileReply::Done) => Ok(()),
        Some(FileReply::Failed(errno)) => Err(io::Error::from_raw_os_error(errno)),
        Some(other) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected file reply {other:?}"),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the sandbox's file helper ended without an answer (the sandbox ended?)",
        )),
    }
}

/// A file in a sandbox, read as a stream: from [`Sandbox::open`](crate::Sandbox::open).
///
/// End of file comes only once the sandbox has said the whole file was sent; a failure on
/// its side (the file vanished under a reader, an I/O error) is a read error, never a short
/// file passed off as whole.
pub struct FileReader {
    data: UnixStream,
    /// Fires when the sandbox has sent nothing for [`STALL`]: it can stop its helper.
    stall: Pin<Box<tokio::time::Sleep>>,
    /// One of the sandbox's file-helper slots, held while the helper works.
    _slot: OwnedSemaphorePermit,
    conn: Arc<Connection>,
    end: Option<BoxFuture<'static, io::Result<Option<FileReply>>>>,
    done: bool,
    size: u64,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("size", &self.size)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl FileReader {
    pub(crate) fn new(
        data: UnixStream,
        conn: Connection,
        size: u64,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        FileReader {
            data,
            stall: Box::pin(tokio::time::sleep(STALL)),
            _slot: slot,
            conn: Arc::new(conn),
            end: None,
            done: false,
            size,
        }
    }

    /// The file's size when it was opened.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl FileReader {
    /// Pending until the stall deadline passes, then a `TimedOut` error.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.stall.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the sandbox sent nothing for {STALL:?}"),
        )))
    }
}

impl AsyncRead for FileReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.data).poll_read(cx, buf) {
            Poll::Pending => return self.poll_stall(cx),
            Poll::Ready(r) => r?,
        }
        if buf.filled().len() > before || buf.remaining() == 0 {
            let next = tokio::time::Instant::now() + STALL;
            self.stall.as_mut().reset(next);
            return Poll::Ready(Ok(()));
        }
        // The data ended: the helper says whether that was the whole file.
        let conn = Arc::clone(&self.conn);
        let end = self
            .end
            .get_or_insert_with(|| Box::pin(async move { conn.receive_file().await }));
        let reply = match end.as_mut().poll(cx) {
            Poll::Pending => return self.poll_stall(cx),
            Poll::Ready(reply) => reply,
        };
        verdict(reply)?;
        self.done = true;
        Poll::Ready(Ok(()))
    }
}

/// A new file in a sandbox, written as a stream: from [`Sandbox::create`](crate::Sandbox::create).
///
/// The bytes go to a new file next to the path; [`finish`](Self::finish) puts it in place
/// (a rename: readers see the old file or the whole new one). Dropped without `finish`, or
/// failing (no space: the sandbox's `/tmp` is full), nothing changes at the path and the new
/// file is removed. Once the sandbox has failed a write, writes fail with a broken pipe and
/// `finish` returns the sandbox's reason.
pub struct FileWriter {
    data: UnixStream,
    conn: Connection,
    path: PathBuf,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileWriter {
    pub(crate) fn new(
        data: UnixStream,
        conn: Connection,
        path: PathBuf,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        FileWriter {
            data,
            conn,
            path,
            _slot: slot,
        }
    }

    /// Ends the file and puts it in place; returns once the sandbox has.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with the sandbox's reason (`StorageFull`, `PermissionDenied`,
    /// `NotFound` for a missing directory...) and the path.
    pub async fn finish(mut self) -> Result<(), SandboxError> {
        let err = |source| file_error("writing a file in the sandbox", &self.path, source);
        // Its end of the data first (the helper then closes the file), then the commit.
        let _ = self.data.shutdown().await;
        let _ = self.conn.commit().await;
        match tokio::time::timeout(STALL, self.conn.receive_file()).await {
            Ok(reply) => verdict(reply).map_err(err),
            Err(_) => Err(err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the sandbox did not confirm the write",
            ))),
        }
    }

    /// The sandbox's reason for a failed write, after a write error here.
    pub(crate) async fn failure(self) -> SandboxError {
        let reason = match verdict(self.conn.receive_file().await) {
            Err(e) => e,
            Ok(()) => io::Error::new(io::ErrorKind::BrokenPipe, "the write was cut short"),
        };
        file_error("writing a file in the sandbox", &self.path, reason)
    }
}

impl AsyncWrite for FileWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.data).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.data).poll_flush(cx)
    }

    /// Ends the data (as [`finish`](FileWriter::finish) does first), without the commit.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.data).poll_shutdown(cx)
    }
}

/// A writer into the sandbox that fails with `TimedOut` once a write has waited [`STALL`]
/// without the sandbox taking anything (its reader can be stopped by the sandbox's user).
pub(crate) struct StallingWriter<W> {
    inner: W,
    stall: Pin<Box<tokio::time::Sleep>>,
}

impl<W> StallingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        StallingWriter {
            inner,
            stall: Box::pin(tokio::time::sleep(STALL)),
        }
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        ready!(self.stall.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the sandbox took nothing for {STALL:?}"),
        ))
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + STALL;
        self.stall.as_mut().reset(next);
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for StallingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }
}
