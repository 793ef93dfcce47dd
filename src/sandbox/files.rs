//! Files in and out of a [`Sandbox`]: every operation is done inside the container by a helper
//! the launcher forks (`launcher/files.c`), as the sandbox's user, so paths resolve in the
//! sandbox's own filesystem (a planted symlink or `..` cannot reach the host) and what is
//! written is the sandbox's, counted against its limits. Data moves over a socket.

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::OwnedSemaphorePermit;

use super::{START_DEADLINE, Sandbox};
use crate::error::SandboxError;
use crate::handle::file::{FileReader, FileWriter, file_error, verdict};
use crate::launcher::{Connection, FileMetadata, FileOp, FileReply, FileRequest, decode_entry};

/// One entry of [`Sandbox::list_dir`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DirEntry {
    /// Its name (bytes that are not UTF-8 are replaced).
    pub name: String,
    /// Its kind, size, mode and modification time (`uid` and `gid` are 0 here: ask
    /// [`Sandbox::metadata`] for the owner).
    pub metadata: FileMetadata,
}

/// A change under a path watched with [`Sandbox::watch`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileEvent {
    /// An entry was created or moved in (its name; empty when the watched path is a file).
    Created(String),
    /// An entry was written to.
    Modified(String),
    /// An entry was removed or moved out.
    Removed(String),
    /// The watched path itself was removed or moved: the stream ends after this.
    WatchedPathGone,
}

/// The events of [`Sandbox::watch`], as a `Stream`; dropping it ends the watch.
pub struct FileEvents {
    inner: std::pin::Pin<Box<dyn Stream<Item = io::Result<FileEvent>> + Send>>,
}

impl std::fmt::Debug for FileEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEvents").finish_non_exhaustive()
    }
}

impl Stream for FileEvents {
    type Item = io::Result<FileEvent>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// File requests of a sandbox in flight at once (watches apart); more wait for a slot. With
/// [`WATCHES`], the launcher's 64 helpers.
pub(super) const FILE_HELPERS: usize = 56;

/// Watches of a sandbox at once; one more is refused (`QuotaExceeded`).
pub(super) const WATCHES: usize = 8;

/// Contents up to this size are written in one go (they fit a socket's buffer).
const PIPELINED_WRITE: usize = 64 * 1024;

/// Permission bits of the files [`Sandbox::write_file`] and [`Sandbox::create`] make.
const NEW_FILE_MODE: u32 = 0o644;

impl Sandbox {
    /// Sends a file request and waits for its first reply, within [`START_DEADLINE`].
    /// `pipelined`: a write's whole (small) contents, sent and committed at once.
    async fn file_request(
        &self,
        context: &'static str,
        op: FileOp,
        path: &Path,
        to: Option<&Path>,
        mode: u32,
        pipelined: Option<&[u8]>,
    ) -> Result<
        (
            Connection,
            Option<UnixStream>,
            FileReply,
            OwnedSemaphorePermit,
        ),
        SandboxError,
    > {
        let _awake = self.enter().await?;
        self.check_alive()?;
        let slot = if op == FileOp::Watch {
            Arc::clone(&self.inner.watch_slots)
                .try_acquire_owned()
                .map_err(|_| {
                    file_error(
                        context,
                        path,
                        io::Error::new(
                            io::ErrorKind::QuotaExceeded,
                            format!("at most {WATCHES} watches per sandbox at once"),
                        ),
                    )
                })?
        } else {
            Arc::clone(&self.inner.file_slots)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed")
        };
        let request = FileRequest {
            op,
            path,
            to,
            uid: self.inner.config.uid,
            gid: self.inner.config.gid,
            mode,
        };
        let sent = async {
            let (conn, mut data) = self.live().control.file_request(request).await?;
            // Small contents go out with the request, without waiting for the helper's start:
            // they fit the socket's buffer, and a failed start says why in its reply.
            if let (Some(bytes), Some(stream)) = (pipelined, data.as_mut()) {
                let _ = stream.write_all(bytes).await;
                let _ = stream.shutdown().await;
                let _ = conn.commit().await;
            }
            let first = match conn.receive_file().await {
                // A helper that failed before reading what was pipelined to it closed its
                // end with that unread: the kernel reports the reset first (once), and the
                // reply it sent before is still queued behind it.
                Err(e) if pipelined.is_some() && e.kind() == io::ErrorKind::ConnectionReset => {
                    conn.receive_file().await?
                }
                other => other?,
            };
            Ok::<_, io::Error>((conn, data, first))
        };
        let (conn, data, first) = match tokio::time::timeout(START_DEADLINE, sent).await {
            Err(_) => {
                return Err(SandboxError::Timeout {
                    what: format!("{context}: {}", path.display()),
                    after: START_DEADLINE,
                });
            }
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidInput => {
                return Err(SandboxError::invalid("path", e.to_string()));
            }
            Ok(Err(e)) => return Err(self.ended_error().unwrap_or(file_error(context, path, e))),
            Ok(Ok(r)) => r,
        };
        match first {
            Some(FileReply::Failed(errno)) => Err(file_error(
                context,
                path,
                io::Error::from_raw_os_error(errno),
            )),
            Some(reply) => Ok((conn, data, reply, slot)),
            None => Err(self
                .ended_error()
                .unwrap_or_else(|| file_error(context, path, verdict(Ok(None)).unwrap_err()))),
        }
    }

    /// Writes `contents` to the file at `path` in the sandbox (absolute), replacing it whole
    /// or not at all; the file is the sandbox user's, mode `0o644`. The new content goes to a
    /// new file renamed over the path, so the sandbox's user needs write permission on the
    /// directory (as for any replace-by-rename), and links to the old file keep the old one.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: &oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
    /// sandbox.write_file("/tmp/input.csv", b"a,b\n1,2\n").await?;
    /// let back = sandbox.read_file("/tmp/input.csv").await?;
    /// assert_eq!(&back[..], b"a,b\n1,2\n");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with the path and the sandbox's reason: its directory is missing
    /// (`NotFound`), the user may not write there (`PermissionDenied`), the filesystem is full
    /// (`StorageFull`: nothing is left behind). [`SandboxError::InvalidConfig`] for a path
    /// that is not absolute.
    pub async fn write_file(
        &self,
        path: impl AsRef<Path>,
        contents: impl AsRef<[u8]>,
    ) -> Result<(), SandboxError> {
        let (path, contents) = (path.as_ref(), contents.as_ref());
        if contents.len() > PIPELINED_WRITE {
            let mut writer = self.create(path).await?;
            if writer.write_all(contents).await.is_err() {
                return Err(writer.failure().await);
            }
            return writer.finish().await;
        }
        let context = "writing a file in the sandbox";
        let (conn, _, first, _slot) = self
            .file_request(
                context,
                FileOp::Write,
                path,
                None,
                NEW_FILE_MODE,
                Some(contents),
            )
            .await?;
        match first {
            FileReply::Started(_) => {
                verdict(conn.receive_file().await).map_err(|e| file_error(context, path, e))
            }
            other => Err(unexpected(context, path, other)),
        }
    }

    /// The whole file at `path` in the sandbox, up to [`READ_FILE_LIMIT`] bytes (stream a
    /// larger one with [`open`](Self::open)).
    ///
    /// # Errors
    ///
    /// `FileTooLarge` past the limit (sparse files count at their full size).
    /// [`SandboxError::Io`] with the path: `NotFound`, `PermissionDenied`, `IsADirectory`,
    /// `InvalidInput` for what is not a regular file (a FIFO, a device).
    pub async fn read_file(&self, path: impl AsRef<Path>) -> Result<Bytes, SandboxError> {
        let path = path.as_ref();
        let context = "reading a file in the sandbox";
        let reader = self.open(path).await?;
        let too_large = || {
            file_error(
                context,
                path,
                io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("larger than {READ_FILE_LIMIT} bytes: stream it with open()"),
                ),
            )
        };
        if reader.size() > READ_FILE_LIMIT {
            return Err(too_large());
        }
        let mut all = Vec::with_capacity(usize::try_from(reader.size()).unwrap_or(0));
        // The file may grow while it is read.
        reader
            .take(READ_FILE_LIMIT + 1)
            .read_to_end(&mut all)
            .await
            .map_err(|e| file_error(context, path, e))?;
        if all.len() as u64 > READ_FILE_LIMIT {
            return Err(too_large());
        }
        Ok(Bytes::from(all))
    }

    /// Opens the file at `path` in the sandbox for a streaming read ([`FileReader`] is an
    /// `AsyncRead`), for files too large to hold at once.
    ///
    /// # Errors
    ///
    /// As [`read_file`](Self::read_file).
    pub async fn open(&self, path: impl AsRef<Path>) -> Result<FileReader, SandboxError> {
        let path = path.as_ref();
        let context = "reading a file in the sandbox";
        let (conn, data, first, slot) = self
            .file_request(context, FileOp::Read, path, None, 0, None)
            .await?;
        match (first, data) {
            (FileReply::Started(size), Some(data)) => Ok(FileReader::new(data, conn, size, slot)),
            (other, _) => Err(unexpected(context, path, other)),
        }
    }

    /// Creates (or replaces) the file at `path` in the sandbox for a streaming write
    /// ([`FileWriter`] is an `AsyncWrite`); [`FileWriter::finish`] puts it in place.
    ///
    /// # Errors
    ///
    /// As [`write_file`](Self::write_file).
    pub async fn create(&self, path: impl AsRef<Path>) -> Result<FileWriter, SandboxError> {
        let path = path.as_ref();
        let context = "writing a file in the sandbox";
        let (conn, data, first, slot) = self
            .file_request(context, FileOp::Write, path, None, NEW_FILE_MODE, None)
            .await?;
        match (first, data) {
            (FileReply::Started(_), Some(data)) => {
                Ok(FileWriter::new(data, conn, path.to_path_buf(), slot))
            }
            (other, _) => Err(unexpected(context, path, other)),
        }
    }

    /// What is at `path` in the sandbox (a link is described, not followed).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with the path: `NotFound`, `PermissionDenied`, `NotADirectory`.
    pub async fn metadata(&self, path: impl AsRef<Path>) -> Result<FileMetadata, SandboxError> {
        let path = path.as_ref();
        let context = "reading a file's metadata in the sandbox";
        match self
            .file_request(context, FileOp::Stat, path, None, 0, None)
            .await?
        {
            (_, _, FileReply::Metadata(meta), _) => Ok(meta),
            (_, _, other, _) => Err(unexpected(context, path, other)),
        }
    }

    /// The entries of the directory at `path` in the sandbox (without `.` and `..`), in the
    /// order the filesystem gives them.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with the path: `NotFound`, `NotADirectory`, `PermissionDenied`.
    pub async fn list_dir(&self, path: impl AsRef<Path>) -> Result<Vec<DirEntry>, SandboxError> {
        let path = path.as_ref();
        let context = "listing a directory in the sandbox";
        let (conn, data, _, _slot) = self
            .file_request(context, FileOp::List, path, None, 0, None)
            .await?;
        let mut records = Vec::new();
        if let Some(data) = data {
            let mut limited = data.take(LIST_LIMIT + 1);
            let read = limited.read_to_end(&mut records);
            match tokio::time::timeout(crate::handle::file::STALL, read).await {
                Ok(r) => {
                    r.map_err(|e| file_error(context, path, e))?;
                }
                Err(_) => {
                    return Err(file_error(
                        context,
                        path,
                        io::Error::new(io::ErrorKind::TimedOut, "the listing did not end"),
                    ));
                }
            }
            if records.len() as u64 > LIST_LIMIT {
                return Err(file_error(
                    context,
                    path,
                    io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        format!("the listing passed {LIST_LIMIT} bytes"),
                    ),
                ));
            }
        }
        verdict(conn.receive_file().await).map_err(|e| file_error(context, path, e))?;
        records
            .split(|b| *b == 0)
            .filter(|r| !r.is_empty())
            .map(|r| {
                let (name, metadata) = decode_entry(r).map_err(|e| file_error(context, path, e))?;
                Ok(DirEntry {
                    name: String::from_utf8_lossy(&name).into_owned(),
                    metadata,
                })
            })
            .collect()
    }

    /// Makes the directory at `path` in the sandbox and its missing parents (mode `0o755`);
    /// one that exists is fine.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with the path: `NotADirectory` (a file is in the way),
    /// `PermissionDenied`, `StorageFull`.
    pub async fn create_dir_all(&self, path: impl AsRef<Path>) -> Result<(), SandboxError> {
        self.simple_op(
            "making a directory in the sandbox",
            FileOp::MakeDirs,
            path.as_ref(),
            None,
        )
        .await
    }

    /// Removes the file, link or whole directory tree at `path` in the sandbox (links are
    /// removed, never followed).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with the path: `NotFound`, `PermissionDenied`.
    pub async fn remove(&self, path: impl AsRef<Path>) -> Result<(), SandboxError> {
        self.simple_op(
            "removing a file in the sandbox",
            FileOp::Remove,
            path.as_ref(),
            None,
        )
        .await
    }

    /// Renames `from` to `to` in the sandbox (`rename(2)`: within one filesystem; a file at
    /// `to` is replaced).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with `from`: `NotFound`, `PermissionDenied`, `CrossesDevices`.
    pub async fn rename(
        &self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
    ) -> Result<(), SandboxError> {
        self.simple_op(
            "renaming a file in the sandbox",
            FileOp::Rename,
            from.as_ref(),
            Some(to.as_ref()),
        )
        .await
    }

    async fn simple_op(
        &self,
        context: &'static str,
        op: FileOp,
        path: &Path,
        to: Option<&Path>,
    ) -> Result<(), SandboxError> {
        match self.file_request(context, op, path, to, 0, None).await? {
            (_, _, FileReply::Done, _) => Ok(()),
            (_, _, other, _) => Err(unexpected(context, path, other)),
        }
    }

    /// Changes at `path` in the sandbox (a directory's entries, not recursively; or a file),
    /// as a stream that ends when the path goes or the stream is dropped.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with the path: `NotFound`, `PermissionDenied`; `QuotaExceeded`
    /// past 8 watches of one sandbox at once (each holds one of its launcher's helpers).
    pub async fn watch(&self, path: impl AsRef<Path>) -> Result<FileEvents, SandboxError> {
        self.watch_with(path.as_ref(), false).await
    }

    /// Changes anywhere under the directory `path` in the sandbox, as [`watch`](Self::watch)
    /// gives them, each named by its path relative to `path` (`src/main.rs`). Every directory
    /// below is watched (links not followed; at most 8192 of them), new ones as they appear:
    /// what a new directory holds before its watch is added is not seen (inotify's race), but
    /// the directory's own `Created` is.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: &oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
    /// use futures::StreamExt;
    /// let mut events = sandbox.watch_recursive("/workspace").await?;
    /// while let Some(Ok(event)) = events.next().await {
    ///     println!("{event:?}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`watch`](Self::watch).
    pub async fn watch_recursive(
        &self,
        path: impl AsRef<Path>,
    ) -> Result<FileEvents, SandboxError> {
        self.watch_with(path.as_ref(), true).await
    }

    async fn watch_with(&self, path: &Path, recursive: bool) -> Result<FileEvents, SandboxError> {
        let context = "watching a path in the sandbox";
        let (conn, data, _, slot) = self
            .file_request(
                context,
                FileOp::Watch,
                path,
                None,
                u32::from(recursive),
                None,
            )
            .await?;
        let Some(data) = data else {
            return Err(unexpected(context, path, FileReply::Done));
        };
        let state = ((conn, slot), tokio::io::BufReader::new(data), Vec::new());
        let stream = futures::stream::unfold(state, |(conn, mut data, mut record)| async move {
            use tokio::io::AsyncBufReadExt;
            record.clear();
            match data.read_until(0, &mut record).await {
                Ok(0) => None,
                Err(e) => Some((Err(e), (conn, data, record))),
                Ok(_) => {
                    let event = decode_event(&record);
                    Some((event, (conn, data, record)))
                }
            }
        });
        Ok(FileEvents {
            inner: Box::pin(stream),
        })
    }
}

/// The largest file [`Sandbox::read_file`] reads into memory.
pub const READ_FILE_LIMIT: u64 = 256 << 20;

/// The most bytes of entries [`Sandbox::list_dir`] takes (a sandbox can make a listing
/// endless by renaming entries while it is read).
const LIST_LIMIT: u64 = 64 << 20;

fn decode_event(record: &[u8]) -> io::Result<FileEvent> {
    let record = record.strip_suffix(&[0]).unwrap_or(record);
    let name = String::from_utf8_lossy(record.get(2..).unwrap_or_default()).into_owned();
    match record.first() {
        Some(b'c') => Ok(FileEvent::Created(name)),
        Some(b'm') => Ok(FileEvent::Modified(name)),
        Some(b'd') => Ok(FileEvent::Removed(name)),
        Some(b's') => Ok(FileEvent::WatchedPathGone),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed file event \"{}\"", record.escape_ascii()),
        )),
    }
}

fn unexpected(context: &'static str, path: &Path, reply: FileReply) -> SandboxError {
    file_error(
        context,
        path,
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected file reply {reply:?}"),
        ),
    )
}
