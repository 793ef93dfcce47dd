//! [`spawn_captured`]: the container's stdout and stderr go straight to files in a temp dir;
//! [`CapturedOutput`] reads them whole or tails them as streams.
//!
//! [`spawn_captured`]: crate::NamespaceContainer::spawn_captured

use crate::config::OutputMode;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::error::SandboxError;

/// Size of the chunks a stream reads (not part of the semver contract).
const CHUNK: usize = 256 * 1024;

/// Shared by the watcher (in the supervisor), the [`CapturedOutput`] and every stream. The
/// watcher wakes the streams whenever the files may have grown by marking it changed
/// (`send_modify` notifies even when nothing in it changes).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CaptureState {
    /// The process is gone and the files are final.
    ended: bool,
}

#[derive(Debug)]
struct Shared {
    // Dropped last: the directory goes when the last `CapturedOutput` or stream does.
    dir: tempfile::TempDir,
    mode: OutputMode,
    stdout: PathBuf,
    stderr: Option<PathBuf>,
    limit: Option<u64>,
    state: watch::Receiver<CaptureState>,
    truncated: std::sync::atomic::AtomicBool,
}

/// The captured output of a process: files that the container writes directly, readable whole
/// or as any number of streams.
///
/// The temp dir holding the files is removed when the last `Arc<CapturedOutput>` and the last
/// stream made from it are gone.
#[derive(Debug)]
pub struct CapturedOutput {
    shared: Arc<Shared>,
}

/// The longest line [`CapturedOutput::stdout_lines`] hands over whole, in bytes.
pub const MAX_OUTPUT_LINE: usize = 1 << 20;

/// Lines of a byte stream, lossy, cut at [`MAX_OUTPUT_LINE`].
fn lines_of(
    bytes: impl Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
) -> impl Stream<Item = io::Result<String>> + Send + Unpin + 'static {
    let reader = tokio_util::io::StreamReader::new(bytes);
    let lines = tokio_util::codec::FramedRead::new(reader, LossyLines);
    Box::pin(lines)
}

/// A decoder of lines that takes any bytes (lossy) and cuts long lines into pieces.
struct LossyLines;

impl tokio_util::codec::Decoder for LossyLines {
    type Item = String;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> io::Result<Option<String>> {
        let end = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => i + 1,
            None if buf.len() >= MAX_OUTPUT_LINE => MAX_OUTPUT_LINE,
            None => return Ok(None),
        };
        let line = buf.split_to(end);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Ok(Some(String::from_utf8_lossy(line).into_owned()))
    }

    fn decode_eof(&mut self, buf: &mut bytes::BytesMut) -> io::Result<Option<String>> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None if buf.is_empty() => Ok(None),
            None => {
                let rest = buf.split();
                Ok(Some(String::from_utf8_lossy(&rest).into_owned()))
            }
        }
    }
}

impl CapturedOutput {
    /// Separate or combined.
    pub fn mode(&self) -> OutputMode {
        self.shared.mode
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.shared.dir.path()
    }

    /// The stdout file (in [`OutputMode::Combined`], the one file with both).
    pub fn stdout_path(&self) -> &Path {
        &self.shared.stdout
    }

    /// The stderr file; `None` in [`OutputMode::Combined`], where stderr is in stdout's file.
    pub fn stderr_path(&self) -> Option<&Path> {
        self.shared.stderr.as_deref()
    }

    /// Whether the output limit was reached: the process was killed and the files cut at the
    /// limit. Final once the process has ended.
    pub fn truncated(&self) -> bool {
        self.shared
            .truncated
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Everything written to stdout so far (in Combined mode, stdout and stderr).
    pub async fn read_stdout(&self) -> io::Result<Vec<u8>> {
        self.read(&self.shared.stdout).await
    }

    /// Everything written to stderr so far (empty in Combined mode).
    pub async fn read_stderr(&self) -> io::Result<Vec<u8>> {
        match &self.shared.stderr {
            Some(p) => self.read(p).await,
            None => Ok(Vec::new()),
        }
    }

    async fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut data = tokio::fs::read(path).await?;
        if let Some(limit) = self.shared.limit {
            data.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        Ok(data)
    }

    /// Stdout as a stream of chunks, from the first byte: follows the file as it grows and
    /// ends once the process has exited and the file is drained. Call it as often as you
    /// like, at any time: every stream gets everything.
    ///
    /// The stream keeps the files alive after the `CapturedOutput` is dropped.
    ///
    /// ```no_run
    /// # async fn demo(capture: oci_sandbox::ProcessCapture) -> std::io::Result<()> {
    /// use futures::StreamExt;
    /// let mut lines = capture.output.stdout_stream();
    /// while let Some(chunk) = lines.next().await {
    ///     print!("{}", String::from_utf8_lossy(&chunk?));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stdout_stream(&self) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + use<> {
        self.stdout_stream_from(0)
    }

    /// Stdout as a stream of lines (without their `\n` or `\r\n`; bytes that are not UTF-8
    /// replaced by `�`), from the first one, ending as [`stdout_stream`](Self::stdout_stream)
    /// does; a last line without its end comes too. A line longer than [`MAX_OUTPUT_LINE`] bytes
    /// comes in pieces of that size.
    ///
    /// ```no_run
    /// # async fn demo(c: oci_sandbox::ProcessCapture) {
    /// use futures::StreamExt;
    /// let mut lines = c.output.stdout_lines();
    /// while let Some(line) = lines.next().await {
    ///     println!("{}", line.unwrap());
    /// }
    /// # }
    /// ```
    pub fn stdout_lines(&self) -> impl Stream<Item = io::Result<String>> + Send + Unpin + use<> {
        lines_of(self.stdout_stream())
    }

    /// Stderr as a stream of lines (see [`stdout_lines`](Self::stdout_lines)); empty in
    /// Combined mode.
    pub fn stderr_lines(&self) -> impl Stream<Item = io::Result<String>> + Send + Unpin + use<> {
        lines_of(self.stderr_stream())
    }

    /// Stderr as a stream (see [`stdout_stream`](Self::stdout_stream)); empty in Combined mode.
    pub fn stderr_stream(&self) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + use<> {
        self.stderr_stream_from(0)
    }

    /// Stdout as a stream from byte `offset` on (a reconnecting reader passes how much it
    /// already has); past the end so far, it waits for more, as
    /// [`stdout_stream`](Self::stdout_stream) does.
    pub fn stdout_stream_from(
        &self,
        offset: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + use<> {
        tail(
            self.shared.clone(),
            Some(self.shared.stdout.clone()),
            offset,
        )
    }

    /// Stderr as a stream from byte `offset` on (see
    /// [`stdout_stream_from`](Self::stdout_stream_from)); empty in Combined mode.
    pub fn stderr_stream_from(
        &self,
        offset: u64,
    ) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + use<> {
        tail(self.shared.clone(), self.shared.stderr.clone(), offset)
    }
}

/// The stream behind `stdout_stream` and `stderr_stream`.
fn tail(
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    offset: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin + use<> {
    let state = shared.state.clone();
    let init = Tail {
        shared,
        path,
        file: None,
        offset,
        state,
    };
    let stream = futures::stream::unfold(init, |mut t| async move {
        t.path.as_ref()?;
        loop {
            let seen = *t.state.borrow_and_update();
            match t.read_chunk().await {
                Some(Ok(bytes)) => return Some((Ok(bytes), t)),
                Some(Err(e)) => {
                    t.path = None; // an error ends the stream
                    return Some((Err(e), t));
                }
                None => {}
            }
            // Drained. `seen` was read before the read: if the process had ended by then,
            // nothing more can come.
            if seen.ended {
                return None;
            }
            if t.state.changed().await.is_err() {
                // The supervisor is gone without saying "ended" (runtime shut down): drain
                // what is there and stop.
                if t.state.borrow().ended {
                    continue;
                }
                return None;
            }
        }
    });
    // Boxed so that the stream is `Unpin`: callers can use `.next()` on it directly.
    Box::pin(futures::StreamExt::fuse(stream))
}

/// One stream's position in one capture file.
struct Tail {
    shared: Arc<Shared>,
    path: Option<PathBuf>,
    file: Option<Arc<File>>,
    offset: u64,
    state: watch::Receiver<CaptureState>,
}

impl Tail {
    /// The next chunk past `offset` (within the output limit), `None` when there is none
    /// yet. The file is opened on the first call.
    async fn read_chunk(&mut self) -> Option<io::Result<Bytes>> {
        let file = match &self.file {
            Some(f) => f.clone(),
            None => {
                let path = self.path.as_ref()?;
                match tokio::fs::File::open(path).await {
                    Ok(f) => {
                        let f = Arc::new(f.into_std().await);
                        self.file = Some(f.clone());
                        f
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
        };
        let max = match self.shared.limit {
            Some(limit) if self.offset >= limit => return None,
            Some(limit) => usize::try_from(limit - self.offset)
                .unwrap_or(CHUNK)
                .min(CHUNK),
            None => CHUNK,
        };
        let offset = self.offset;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; max];
            let n = file.read_at(&mut buf, offset)?;
            buf.truncate(n);
            Ok::<_, io::Error>(buf)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        match read {
            Ok(buf) if buf.is_empty() => None,
            Ok(buf) => {
                self.offset += buf.len() as u64;
                Some(Ok(Bytes::from(buf)))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// The capture files, opened for the runtime, plus what the supervisor needs to watch them.
pub(crate) struct CaptureFiles {
    pub stdout: File,
    pub stderr: File,
    pub output: CapturedOutput,
    pub watch: CaptureWatch,
}

impl CaptureFiles {
    /// Creates the temp dir and files and starts watching them. Blocking.
    pub fn create_blocking(
        parent: &Path,
        id: &str,
        mode: OutputMode,
        limit: Option<u64>,
    ) -> Result<CaptureFiles, SandboxError> {
        let dir = tempfile::Builder::new()
            .prefix(&crate::host::state::capture_dir_prefix(id))
            .tempdir_in(parent)
            .map_err(|e| SandboxError::io("creating the capture directory", parent, e))?;
        let (stdout_path, stdout, stderr_path, stderr) = open_files(dir.path(), mode)?;
        // Without an inotify instance (the user's quota is spent), streams poll the sizes.
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .inspect_err(|e| {
                tracing::warn!(%e, "no inotify instance for a capture; its streams poll instead");
            })
            .ok();
        let watch_err =
            |p: &Path, e: nix::Error| SandboxError::io("watching the capture files", p, e.into());
        if let Some(inotify) = &inotify {
            for p in std::iter::once(&stdout_path).chain(stderr_path.as_ref()) {
                inotify
                    .add_watch(p, AddWatchFlags::IN_MODIFY)
                    .map_err(|e| watch_err(p, e))?;
            }
        }
        let sizes = vec![
            stdout
                .try_clone()
                .map_err(|e| SandboxError::io("capture file", &stdout_path, e))?,
        ]
        .into_iter()
        .chain(
            stderr_path
                .as_ref()
                .map(|p| {
                    stderr
                        .try_clone()
                        .map_err(|e| SandboxError::io("capture file", p, e))
                })
                .transpose()?,
        )
        .collect();
        let (tx, rx) = watch::channel(CaptureState::default());
        let shared = Arc::new(Shared {
            dir,
            mode,
            stdout: stdout_path,
            stderr: stderr_path,
            limit,
            state: rx,
            truncated: false.into(),
        });
        Ok(CaptureFiles {
            stdout,
            stderr,
            output: CapturedOutput {
                shared: shared.clone(),
            },
            watch: CaptureWatch {
                polling: inotify.is_none(),
                inotify,
                fd: None,
                polled_usage: 0,
                files: sizes,
                limit,
                state: tx,
                shared,
            },
        })
    }
}

/// Creates the capture files in `dir`: `stdout` and `stderr`, or one `output` file (with a
/// second fd for stderr) when combined. Returns their paths and write ends. Blocking.
fn open_files(
    dir: &Path,
    mode: OutputMode,
) -> Result<(PathBuf, File, Option<PathBuf>, File), SandboxError> {
    let open = |name: &str| {
        let path = dir.join(name);
        std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .read(true)
            .open(&path)
            .map(|f| (path.clone(), f))
            .map_err(|e| SandboxError::io("creating a capture file", path, e))
    };
    Ok(match mode {
        OutputMode::Separate => {
            let (op, of) = open("stdout")?;
            let (ep, ef) = open("stderr")?;
            (op, of, Some(ep), ef)
        }
        OutputMode::Combined => {
            let (p, f) = open("output")?;
            let dup = f
                .try_clone()
                .map_err(|e| SandboxError::io("duplicating the capture file", &p, e))?;
            (p, f, None, dup)
        }
    })
}

/// How often streams look at the files when there is no inotify instance.
const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// What a file holds against the output limit: its size, or its allocated blocks past a
/// margin for the file system's own rounding and preallocation (1 MiB).
fn disk_usage(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    const MARGIN: u64 = 1 << 20;
    m.len().max((m.blocks() * 512).saturating_sub(MARGIN))
}

struct InotifyFd(Inotify);

impl Drop for CaptureWatch {
    fn drop(&mut self) {
        self.close_inotify();
    }
}

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The supervisor's side of a capture: wakes streams when the files grow, enforces the output
/// limit and finalises the files.
pub(crate) struct CaptureWatch {
    inotify: Option<Inotify>,
    fd: Option<AsyncFd<InotifyFd>>,
    /// No inotify instance could be had: the sizes are polled.
    polling: bool,
    /// The files' usage at the last poll.
    polled_usage: u64,
    files: Vec<File>,
    limit: Option<u64>,
    state: watch::Sender<CaptureState>,
    shared: Arc<Shared>,
}

impl CaptureWatch {
    /// Waits for the next change; returns true when the output limit has been passed.
    pub async fn next(&mut self) -> bool {
        if self.polling {
            return self.poll().await;
        }
        if self.fd.is_none() {
            let Some(inotify) = self.inotify.take() else {
                return std::future::pending().await;
            };
            // SAFETY: `InotifyFd` owns the inotify fd and always returns that same fd; it is
            // closed only when the `AsyncFd` drops it.
            match unsafe { AsyncFd::register_with_interest(InotifyFd(inotify), Interest::READABLE) }
            {
                Ok(fd) => self.fd = Some(fd),
                Err(e) => {
                    tracing::warn!(%e, "cannot watch capture files; streams will wake only at exit");
                    return std::future::pending().await;
                }
            }
        }
        let fd = self.fd.as_ref().expect("set above");
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return std::future::pending().await;
            };
            match guard.try_io(|inner| inner.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(Ok(_events)) => {}
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(Err(_)) => return std::future::pending().await,
                Err(_would_block) => continue,
            }
            self.state.send_modify(|_| {});
            return self.over_limit();
        }
    }

    /// Closes the inotify instance off the async workers, without waiting: closing one waits
    /// for an SRCU grace period in the kernel (measured: 8-15 ms), which must not stall a
    /// worker nor delay the outcome.
    fn close_inotify(&mut self) {
        let inotify = match (self.fd.take(), self.inotify.take()) {
            (Some(fd), _) => Some(fd.into_inner().0),
            (None, inotify) => inotify,
        };
        if let Some(inotify) = inotify {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn_blocking(move || drop(inotify))),
                Err(_) => drop(inotify),
            }
        }
    }

    /// Without inotify: wakes when the files' usage has changed since the last poll.
    async fn poll(&mut self) -> bool {
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let usage = self
                .files
                .iter()
                .filter_map(|f| f.metadata().ok())
                .map(|m| disk_usage(&m))
                .sum();
            if usage != self.polled_usage {
                self.polled_usage = usage;
                self.state.send_modify(|_| {});
                return self.over_limit();
            }
        }
    }

    /// Whether a file holds more than the limit: in bytes, or in disk blocks (a file's
    /// blocks can outgrow its size, e.g. preallocated past its end).
    pub fn over_limit(&self) -> bool {
        let Some(limit) = self.limit else {
            return false;
        };
        self.files.iter().any(|f| {
            f.metadata()
                .map(|m| disk_usage(&m) > limit)
                .unwrap_or(false)
        })
    }

    /// Makes the files final (cut at the limit), then wakes every stream for the last time.
    pub async fn finish(mut self, limit_hit: bool) {
        self.close_inotify();
        let files = std::mem::take(&mut self.files);
        let limit = self.limit;
        let _ = tokio::task::spawn_blocking(move || {
            for f in &files {
                if let Some(limit) = limit
                    && let Ok(m) = f.metadata()
                    && disk_usage(&m) > limit
                {
                    // Cutting a file also frees the blocks past its new end.
                    let _ = f.set_len(m.len().min(limit));
                }
            }
        })
        .await;
        if limit_hit {
            self.shared
                .truncated
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.state.send_modify(|s| s.ended = true);
    }
}

#[cfg(test)]
#[path = "capture_tests.rs"]
mod tests;
