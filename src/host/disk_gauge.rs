//! A disk figure measured by walks in the background: a sandbox's writable directories
//! ([`SandboxMetrics::disk_bytes`](crate::SandboxMetrics)), a runtime's stores. A tree of a
//! million files makes its own walks long, never a reading (a scrape) wait for them.
//!
//! The walk opens each directory by [`crate::sys::host_tree::open_dir_blocking`], so no link a
//! container planted on the way to it is followed, and walks it by descriptors. A sandbox owns
//! what it writes, so the figure is a measurement, not a bound: a tree renamed while it is
//! walked is partly missed. A walk that does not finish keeps the larger of its partial
//! figure and the last one. Limits are what bound a sandbox's disk (a volume's size limit,
//! `tmp_size`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The least time between two walks' starts; a slow walk spaces them out further
/// ([`WALK_SPACING`] times its own length).
pub(crate) const DISK_REFRESH: Duration = Duration::from_secs(2);
/// A walk that took `t` starts the next one no sooner than `WALK_SPACING * t` after it ended:
/// walks of a huge tree take at most a tenth of a thread's time.
const WALK_SPACING: u32 = 10;
/// How long a first reading waits for the first walk before it says `None`.
const FIRST_WAIT: Duration = Duration::from_millis(500);

/// The last measurement, and whether a walk runs.
#[derive(Debug, Default)]
pub(crate) struct DiskGauge {
    state: Arc<Mutex<Measured>>,
}

#[derive(Debug, Default)]
struct Measured {
    bytes: Option<u64>,
    /// When the last walk ended, and how long it took.
    at: Option<(Instant, Duration)>,
    walking: bool,
}

/// Clears `walking` however the walk ends (a panic included).
struct Walking(Arc<Mutex<Measured>>);

impl Drop for Walking {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).walking = false;
    }
}

impl DiskGauge {
    /// The last measurement of `dirs`. Starts a walk when the last is due for renewal and
    /// none runs; the first reading waits for the first walk, up to half a second.
    pub(crate) async fn read(&self, dirs: Vec<PathBuf>) -> Option<u64> {
        let (first, start) = {
            let mut m = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let due = m.at.is_none_or(|(ended, took)| {
                ended.elapsed() >= DISK_REFRESH.max(took * WALK_SPACING)
            });
            let start = due && !m.walking;
            m.walking |= start;
            (m.at.is_none(), start)
        };
        if start {
            let state = Arc::clone(&self.state);
            let walk = tokio::task::spawn_blocking(move || {
                let walking = Walking(Arc::clone(&state));
                let began = Instant::now();
                let (bytes, finished) = measure_blocking(&dirs);
                let mut m = state.lock().unwrap_or_else(|e| e.into_inner());
                m.bytes = match (finished, m.bytes) {
                    (true, _) | (false, None) => Some(bytes),
                    (false, Some(last)) => Some(last.max(bytes)),
                };
                m.at = Some((Instant::now(), began.elapsed()));
                drop(m);
                drop(walking);
            });
            if first {
                let _ = tokio::time::timeout(FIRST_WAIT, walk).await;
            }
        }
        self.state.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

/// The disk `dirs` take, and whether every walk finished. A directory that is not there (no
/// image: no layer) takes nothing. Blocking.
fn measure_blocking(dirs: &[PathBuf]) -> (u64, bool) {
    let mut total = 0u64;
    let mut finished = true;
    for dir in dirs {
        let opened = crate::sys::host_tree::open_dir_blocking(
            dir,
            false,
            &crate::host::sandbox_dirs::writable_by_a_container,
        );
        let walked = opened.and_then(|fd| crate::sys::fs_tree::disk_usage_of_blocking(&fd));
        match walked {
            Ok((bytes, done)) => {
                total = total.saturating_add(bytes);
                finished &= done;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::debug!(%err, ?dir, "measuring a directory's disk");
                finished = false;
            }
        }
    }
    (total, finished)
}
