//! The launcher's file requests (`launcher/files.c` is the other half): what the host asks,
//! and the records only file requests get back.
//!
//! | direction | where | record | Rust |
//! |---|---|---|---|
//! | host → launcher | control socket | `F<op>\0<path>\0<path2>\0<uid>\0<gid>\0<mode>\0` + channel (+ data socket) | [`FileRequest`] |
//! | launcher → host | channel | `S <n>`, `E <errno>`, `D`, `M <kind> <size> <mode> <s> <ns> <uid> <gid>` | [`FileReply`] |
//! | host → launcher | channel | `C`: commit a write | [`COMMIT`] |

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::protocol::MAX_REQUEST;

/// The order that commits a write: the new file replaces the path.
pub(crate) const COMMIT: &[u8] = b"C";

/// What a file request does; its letter follows the `F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileOp {
    /// `r`: the file's bytes on the data socket.
    Read,
    /// `w`: the data socket's bytes become the file, on commit.
    Write,
    /// `s`: `lstat`, in an `M` reply.
    Stat,
    /// `l`: a directory's entries on the data socket.
    List,
    /// `m`: `mkdir -p`.
    MakeDirs,
    /// `x`: a file, link or whole tree removed.
    Remove,
    /// `n`: renamed to the second path.
    Rename,
    /// `i`: inotify events on the data socket until the channel closes.
    Watch,
}

impl FileOp {
    const fn letter(self) -> u8 {
        match self {
            FileOp::Read => b'r',
            FileOp::Write => b'w',
            FileOp::Stat => b's',
            FileOp::List => b'l',
            FileOp::MakeDirs => b'm',
            FileOp::Remove => b'x',
            FileOp::Rename => b'n',
            FileOp::Watch => b'i',
        }
    }

    /// Whether a data socket travels with the request.
    pub(crate) const fn moves_data(self) -> bool {
        matches!(
            self,
            FileOp::Read | FileOp::Write | FileOp::List | FileOp::Watch
        )
    }
}

/// One file request, done in the container as `uid`/`gid`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileRequest<'a> {
    pub(crate) op: FileOp,
    pub(crate) path: &'a Path,
    /// The rename's target; unused otherwise.
    pub(crate) to: Option<&'a Path>,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// A new file's permission bits.
    pub(crate) mode: u32,
}

impl FileRequest<'_> {
    /// The request's record. Paths must be absolute and free of NUL
    /// ([`io::ErrorKind::InvalidInput`] otherwise).
    pub(crate) fn encode(&self) -> io::Result<Vec<u8>> {
        let check = |p: &Path| -> io::Result<()> {
            let bytes = p.as_os_str().as_bytes();
            if !p.is_absolute() || bytes.contains(&0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not an absolute path without NUL", p.display()),
                ));
            }
            Ok(())
        };
        check(self.path)?;
        if let Some(to) = self.to {
            check(to)?;
        }
        let mut msg = vec![b'F', self.op.letter(), 0];
        msg.extend_from_slice(self.path.as_os_str().as_bytes());
        msg.push(0);
        msg.extend_from_slice(self.to.map_or(&b""[..], |p| p.as_os_str().as_bytes()));
        msg.push(0);
        msg.extend_from_slice(format!("{}\0{}\0{:o}\0", self.uid, self.gid, self.mode).as_bytes());
        if msg.len() > MAX_REQUEST {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "path too long"));
        }
        Ok(msg)
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// A file's metadata as the sandbox sees it (`lstat`: a link is described, not followed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct FileMetadata {
    /// What it is.
    pub kind: FileKind,
    /// Its size in bytes.
    pub size: u64,
    /// Its permission bits (`0o644`...).
    pub mode: u32,
    /// When its content last changed.
    pub modified: SystemTime,
    /// Its owner, as a uid inside the sandbox.
    pub uid: u32,
    /// Its group, as a gid inside the sandbox.
    pub gid: u32,
}

/// A reply to a file request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileReply {
    /// `S <n>`: under way (a read's `n` is the file's size).
    Started(u64),
    /// `E <errno>`: failed; the helper has exited.
    Failed(i32),
    /// `D`: done.
    Done,
    /// `M ...`: a stat.
    Metadata(FileMetadata),
}

impl FileReply {
    pub(crate) fn decode(record: &[u8]) -> io::Result<FileReply> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed file reply \"{}\"", record.escape_ascii()),
            )
        };
        let text = std::str::from_utf8(record).map_err(|_| bad())?;
        let mut words = text.split(' ');
        let reply = match words.next() {
            Some("D") => FileReply::Done,
            Some("S") => {
                FileReply::Started(words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?)
            }
            Some("E") => {
                let errno: i32 = words.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
                if errno <= 0 {
                    return Err(bad());
                }
                FileReply::Failed(errno)
            }
            Some("M") => {
                let mut next = || words.next().ok_or_else(bad);
                let kind = match next()? {
                    "f" => FileKind::File,
                    "d" => FileKind::Dir,
                    "l" => FileKind::Symlink,
                    "o" => FileKind::Other,
                    _ => return Err(bad()),
                };
                let size: u64 = next()?.parse().map_err(|_| bad())?;
                let mode = u32::from_str_radix(next()?, 8).map_err(|_| bad())?;
                let modified = time(next()?, next()?).ok_or_else(bad)?;
                let uid: u32 = next()?.parse().map_err(|_| bad())?;
                let gid: u32 = next()?.parse().map_err(|_| bad())?;
                FileReply::Metadata(FileMetadata {
                    kind,
                    size,
                    mode,
                    modified,
                    uid,
                    gid,
                })
            }
            _ => return Err(bad()),
        };
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(reply)
    }
}

/// A time from seconds and nanoseconds since the epoch (a file older than 1970 reads as 1970).
fn time(seconds: &str, nanos: &str) -> Option<SystemTime> {
    let seconds: i64 = seconds.parse().ok()?;
    let nanos: u32 = nanos.parse().ok()?;
    let since = Duration::new(u64::try_from(seconds).unwrap_or(0), nanos.min(999_999_999));
    SystemTime::UNIX_EPOCH.checked_add(since)
}

/// One entry of a directory listing: `<kind> <size> <mode> <s> <ns> <name>` (the name may hold
/// anything but NUL, spaces included).
pub(crate) fn decode_entry(record: &[u8]) -> io::Result<(Vec<u8>, FileMetadata)> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed directory entry \"{}\"", record.escape_ascii()),
        )
    };
    let mut parts = record.splitn(6, |b| *b == b' ');
    let mut field = || -> io::Result<&str> {
        std::str::from_utf8(parts.next().ok_or_else(bad)?).map_err(|_| bad())
    };
    let (kind, size, mode, s, ns) = (field()?, field()?, field()?, field()?, field()?);
    let name = parts.next().ok_or_else(bad)?.to_vec();
    let stat = format!("M {kind} {size} {mode} {s} {ns} 0 0");
    match FileReply::decode(stat.as_bytes()).map_err(|_| bad())? {
        FileReply::Metadata(meta) if !name.is_empty() => Ok((name, meta)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_the_records_files_c_parses() {
        let req = FileRequest {
            op: FileOp::Rename,
            path: Path::new("/tmp/a b"),
            to: Some(Path::new("/tmp/c")),
            uid: 1000,
            gid: 100,
            mode: 0o644,
        };
        assert_eq!(
            req.encode().unwrap(),
            b"Fn\x00/tmp/a b\x00/tmp/c\x001000\x00100\x00644\x00"
        );
        for bad in ["relative", "/nul\0here"] {
            let req = FileRequest {
                path: Path::new(bad),
                ..req
            };
            assert_eq!(
                req.encode().unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }

    #[test]
    fn replies_and_entries_decode_strictly() {
        assert_eq!(FileReply::decode(b"D").unwrap(), FileReply::Done);
        assert_eq!(FileReply::decode(b"S 42").unwrap(), FileReply::Started(42));
        assert_eq!(FileReply::decode(b"E 28").unwrap(), FileReply::Failed(28));
        match FileReply::decode(b"M d 4096 755 1700000000 5 1000 1000").unwrap() {
            FileReply::Metadata(m) => {
                assert_eq!(
                    (m.kind, m.size, m.mode, m.uid),
                    (FileKind::Dir, 4096, 0o755, 1000)
                );
                assert_eq!(
                    m.modified,
                    SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)
                );
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            &b"E 0"[..],
            b"E -1",
            b"S",
            b"D x",
            b"M q 1 1 1 1 1 1",
            b"M f 1 9 1 1 1 1",
            b"X 1",
            b"\xff",
        ] {
            assert!(FileReply::decode(bad).is_err(), "{}", bad.escape_ascii());
        }
        let (name, meta) = decode_entry(b"f 3 644 1 0 a name with spaces").unwrap();
        assert_eq!(
            (name.as_slice(), meta.size),
            (&b"a name with spaces"[..], 3)
        );
        assert!(decode_entry(b"f 3 644 1 0 ").is_err());
        assert!(decode_entry(b"f 3 644").is_err());
    }
}
