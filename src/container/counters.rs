//! The library's own counters of one [`NamespaceContainer`]: spawns cold and warm, sandboxes
//! started, failures by kind, teardown times; and what its stores hold on disk. Read by
//! [`NamespaceContainer::metrics`](crate::NamespaceContainer::metrics).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::NamespaceContainer;
use crate::error::SandboxError;
use crate::sys::histogram::DurationHistogram;

/// Counted from the runtime's construction on.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    spawns_cold: AtomicU64,
    spawns_warm: AtomicU64,
    sandboxes_started: AtomicU64,
    failures: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    /// Every container's teardown (see `supervisor::container::Teardown::times`).
    pub teardowns: Arc<DurationHistogram>,
    /// The image store's and the snapshot store's disk, measured in the background.
    image_disk: crate::host::disk_gauge::DiskGauge,
    snapshot_disk: crate::host::disk_gauge::DiskGauge,
}

/// What the counters say now (see [`NamespaceContainer::counters`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct CountersRead {
    pub spawns_cold: u64,
    pub spawns_warm: u64,
    pub sandboxes_started: u64,
    pub failures: BTreeMap<String, u64>,
    pub teardowns: crate::status::TimeHistogram,
}

/// What the state dir's stores hold (see [`NamespaceContainer::stores_on_disk`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StoresOnDisk {
    pub image_layers: u64,
    pub image_bytes: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
}

impl NamespaceContainer {
    /// Counts a spawn that ran, `warm` or cold.
    pub(crate) fn count_spawn(&self, warm: bool) {
        let c = &self.inner.counters;
        let n = if warm { &c.spawns_warm } else { &c.spawns_cold };
        n.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a long-lived sandbox started (or woken from its hibernation).
    pub(crate) fn count_sandbox_started(&self) {
        self.inner
            .counters
            .sandboxes_started
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a spawn or a start that failed with `err`.
    pub(crate) fn count_failure(&self, err: &SandboxError) {
        let mut failures = self
            .inner
            .counters
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *failures.entry(err.kind()).or_default() += 1;
    }

    /// The histogram each container's teardown records into.
    pub(crate) fn teardown_times(&self) -> Arc<DurationHistogram> {
        Arc::clone(&self.inner.counters.teardowns)
    }

    /// The counters now.
    pub(crate) fn counters(&self) -> CountersRead {
        let c = &self.inner.counters;
        CountersRead {
            spawns_cold: c.spawns_cold.load(Ordering::Relaxed),
            spawns_warm: c.spawns_warm.load(Ordering::Relaxed),
            sandboxes_started: c.sandboxes_started.load(Ordering::Relaxed),
            failures: c
                .failures
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            teardowns: c.teardowns.read(),
        }
    }

    /// The image layers and the snapshots in the state dir (counted now), and the disk they
    /// take (as last measured in the background: a snapshot of a sandbox's million files
    /// makes its walks long, not the reading).
    pub(crate) async fn stores_on_disk(&self) -> StoresOnDisk {
        let layers = self.inner.images.layers_dir();
        let snapshots = self.inner.dirs.snapshots.clone();
        let c = &self.inner.counters;
        let (image_bytes, snapshot_bytes) = futures::join!(
            c.image_disk.read(vec![layers.clone()]),
            c.snapshot_disk.read(vec![snapshots.clone()])
        );
        let (image_layers, snapshots) =
            crate::sys::blocking("counting the stores' entries", move || {
                Ok((entries_blocking(&layers), entries_blocking(&snapshots)))
            })
            .await
            .unwrap_or_default();
        StoresOnDisk {
            image_layers,
            image_bytes: image_bytes.unwrap_or(0),
            snapshots,
            snapshot_bytes: snapshot_bytes.unwrap_or(0),
        }
    }
}

/// The directories in `dir` whose names have no `.` (the stores' bookkeeping entries have
/// one). Blocking.
fn entries_blocking(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().contains('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .count() as u64
}
