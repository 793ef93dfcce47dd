//! A sandbox's disk figure ([`SandboxMetrics::disk_bytes`](crate::SandboxMetrics)), measured
//! by a walk in the background: a sandbox that fills its workdir with a million files makes
//! its own walks long, never a reading (a scrape) wait for them.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old a measurement may be before a reading starts the next walk.
pub(super) const DISK_REFRESH: Duration = Duration::from_secs(2);

/// The last measurement, and whether a walk runs.
#[derive(Debug, Default)]
pub(super) struct DiskGauge {
    state: Arc<Mutex<Measured>>,
}

#[derive(Debug, Default)]
struct Measured {
    bytes: Option<u64>,
    at: Option<Instant>,
    walking: bool,
}

impl DiskGauge {
    /// The last measurement of `dirs`. Starts a walk when it is older than [`DISK_REFRESH`]
    /// and none runs; the first reading waits for that first walk.
    pub(super) async fn read(&self, dirs: Vec<PathBuf>) -> Option<u64> {
        let (first, start) = {
            let mut m = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let stale = m.at.is_none_or(|at| at.elapsed() >= DISK_REFRESH);
            let start = stale && !m.walking;
            m.walking |= start;
            (m.at.is_none(), start)
        };
        if start {
            let state = Arc::clone(&self.state);
            let walk = tokio::task::spawn_blocking(move || {
                let measured = measure_blocking(&dirs);
                let mut m = state.lock().unwrap_or_else(|e| e.into_inner());
                // A walk that failed (a directory moved under it) keeps the last figure.
                if measured.is_some() || m.bytes.is_none() {
                    m.bytes = measured;
                }
                m.at = Some(Instant::now());
                m.walking = false;
            });
            if first {
                let _ = walk.await;
            }
        }
        self.state.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

/// The disk `dirs` take; a directory that is not there (no image: no layer) takes nothing.
/// `None` when a walk failed otherwise. Blocking.
fn measure_blocking(dirs: &[PathBuf]) -> Option<u64> {
    let mut total = 0u64;
    for dir in dirs {
        match crate::sys::fs_tree::disk_usage_blocking(dir) {
            Ok(bytes) => total = total.saturating_add(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::debug!(%err, ?dir, "measuring a sandbox's disk");
                return None;
            }
        }
    }
    Some(total)
}
