//! Collecting a piped stream under a cap: the head and the tail are kept, the middle is
//! counted, and the whole can be spilled to a file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How much of a piped stream [`ContainerProcess::wait_with_output_capped`] keeps in memory:
/// its first `head` bytes and its last `tail` bytes (a model wants the start of a log and the
/// end of a traceback); what lies between is dropped and counted in
/// [`Output::stdout_dropped`] / [`Output::stderr_dropped`]. With `spill`, every byte is also
/// written to a file in that directory (`stdout`, `stderr`; created, never overwritten).
///
/// ```
/// use oci_sandbox::OutputCap;
///
/// let cap = OutputCap::new(16 * 1024).spill_to("/tmp/job-42");
/// assert_eq!((cap.head, cap.tail), (8 * 1024, 8 * 1024));
/// ```
///
/// [`ContainerProcess::wait_with_output_capped`]: crate::ContainerProcess::wait_with_output_capped
/// [`Output::stdout_dropped`]: crate::Output::stdout_dropped
/// [`Output::stderr_dropped`]: crate::Output::stderr_dropped
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutputCap {
    /// Bytes kept from the start of each stream.
    pub head: u64,
    /// Bytes kept from the end of each stream.
    pub tail: u64,
    /// A directory to write each whole stream into, as the files `stdout` and `stderr`.
    pub spill: Option<PathBuf>,
}

impl OutputCap {
    /// At most `limit` bytes of each stream: its first and its last half.
    pub fn new(limit: u64) -> Self {
        OutputCap {
            head: limit - limit / 2,
            tail: limit / 2,
            spill: None,
        }
    }

    /// No cap: everything is kept.
    pub fn unlimited() -> Self {
        OutputCap {
            head: u64::MAX,
            tail: 0,
            spill: None,
        }
    }

    /// The same cap, with every byte also written to `dir/stdout` and `dir/stderr`.
    pub fn spill_to(self, dir: impl Into<PathBuf>) -> Self {
        OutputCap {
            spill: Some(dir.into()),
            ..self
        }
    }
}

/// What was kept of one stream, and how many bytes between head and tail were dropped.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub bytes: Vec<u8>,
    pub dropped: u64,
}

/// Reads `stream` to its end under `cap`; `name` is the spill file's (`stdout`, `stderr`).
pub(crate) async fn collect<R: AsyncRead + Unpin>(
    stream: Option<R>,
    cap: &OutputCap,
    name: &str,
) -> std::io::Result<Collected> {
    let Some(mut stream) = stream else {
        return Ok(Collected::default());
    };
    let mut spill = match &cap.spill {
        Some(dir) => Some(create_spill(&dir.join(name)).await?),
        None => None,
    };
    let head_max = usize::try_from(cap.head).unwrap_or(usize::MAX);
    let tail_max = usize::try_from(cap.tail).unwrap_or(usize::MAX);
    let mut head = Vec::new();
    let mut tail: VecDeque<u8> = VecDeque::new();
    let mut dropped = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        let mut data = &chunk[..n];
        if let Some(file) = spill.as_mut() {
            file.write_all(data).await?;
        }
        let to_head = data.len().min(head_max - head.len());
        head.extend_from_slice(&data[..to_head]);
        data = &data[to_head..];
        if data.is_empty() {
            continue;
        }
        if tail.is_empty() {
            // Past the head: room for the tail once, so that joining them does not copy.
            head.reserve_exact(tail_max.min(64 << 20));
        }
        // Only what the tail can hold is kept of this chunk; older tail bytes make room.
        let keep = data.len().min(tail_max);
        dropped += (data.len() - keep) as u64;
        data = &data[data.len() - keep..];
        let overflow = (tail.len() + data.len()).saturating_sub(tail_max);
        tail.drain(..overflow);
        dropped += overflow as u64;
        tail.extend(data);
    }
    if let Some(mut file) = spill {
        file.flush().await?;
    }
    head.extend(tail);
    Ok(Collected {
        bytes: head,
        dropped,
    })
}

/// A new spill file (never an existing one, nor through a link), readable by its owner only.
async fn create_spill(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(data: &[u8], cap: OutputCap) -> Collected {
        collect(Some(data), &cap, "stdout").await.unwrap()
    }

    #[tokio::test]
    async fn head_and_tail_are_kept_and_the_middle_counted() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let c = run(&data, OutputCap::new(1001)).await;
        assert_eq!(c.bytes.len(), 1001);
        assert_eq!(&c.bytes[..501], &data[..501]);
        assert_eq!(&c.bytes[501..], &data[data.len() - 500..]);
        assert_eq!(c.dropped, (data.len() - 1001) as u64);
    }

    #[tokio::test]
    async fn under_the_cap_nothing_is_dropped() {
        let c = run(b"hello", OutputCap::new(10)).await;
        assert_eq!((c.bytes.as_slice(), c.dropped), (&b"hello"[..], 0));
        let c = run(&[7u8; 100_000], OutputCap::unlimited()).await;
        assert_eq!((c.bytes.len(), c.dropped), (100_000, 0));
        let c = run(b"", OutputCap::new(0)).await;
        assert_eq!((c.bytes.len(), c.dropped), (0, 0));
        let c = run(b"abc", OutputCap::new(0)).await;
        assert_eq!((c.bytes.len(), c.dropped), (0, 3));
    }

    #[tokio::test]
    async fn the_spill_file_gets_everything_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![b'x'; 200_000];
        let cap = OutputCap::new(10).spill_to(dir.path());
        let c = run(&data, cap.clone()).await;
        assert_eq!(c.dropped, 200_000 - 10);
        assert_eq!(std::fs::read(dir.path().join("stdout")).unwrap(), data);
        let err = collect(Some(&b"again"[..]), &cap, "stdout")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    }
}
