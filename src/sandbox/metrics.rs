//! [`Sandbox::metrics`]: a sandbox's figures over time, from its cgroups (v1 or v2) and the
//! library's own counters, read off the async workers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use std::collections::BTreeMap;

use super::{Sandbox, session::Phase};
use crate::config::MountKind;
use crate::config::network::EgressCounts;
use crate::container::{NamespaceContainer, WarmPoolStats};
use crate::error::SandboxError;
use crate::host::sessions::SandboxState;
use crate::runtimes::OciRuntime;
use crate::status::TimeHistogram;

/// One reading of a sandbox's figures ([`Sandbox::metrics`]). A figure its cgroups do not
/// give (a controller not mounted, a kernel without `memory.peak`, no cgroup rootless, a
/// hibernated sandbox's) is `None`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SandboxMetrics {
    /// When it was read.
    pub at: SystemTime,
    /// Running, paused or hibernated.
    pub state: SandboxState,
    /// CPU time used since its container started.
    pub cpu: Option<Duration>,
    /// The CPU it used since the previous reading, as a share of its CPU limit (of one CPU
    /// without a limit): 1.0 is the whole quota. `None` in the first reading.
    pub cpu_share: Option<f64>,
    /// Its CPU limit in cores (`None`: none).
    pub cpu_limit_cores: Option<f64>,
    /// Memory in use, page cache included (as the limit counts it).
    pub memory_bytes: Option<u64>,
    /// Its memory limit.
    pub memory_limit_bytes: Option<u64>,
    /// The most memory it used at once.
    pub peak_memory_bytes: Option<u64>,
    /// Processes and threads now.
    pub pids: Option<u64>,
    /// Its pids limit.
    pub pids_limit: Option<u64>,
    /// Processes the kernel's OOM killer killed in its current container.
    pub oom_kills: Option<u64>,
    /// Disk its writable state takes on the host, as last measured (a walk in the background,
    /// at most every 2 s while read; the first reading waits for it; `None` if no walk
    /// could finish): a writable root's layer on disk (with
    /// [`snapshots`](crate::ContainerConfig::snapshots) on runc and crun), its writable binds
    /// (the workdir; a named sandbox's `/workspace` and `/tmp`), volumes excepted (shared:
    /// see [`NamespaceContainer::volumes`](crate::NamespaceContainer::volumes)). A writable
    /// root on a tmpfs is memory, in [`memory_bytes`](Self::memory_bytes).
    pub disk_bytes: Option<u64>,
    /// Its egress proxy's counts, with [`Network::Egress`](crate::Network::Egress).
    pub egress: Option<EgressCounts>,
    /// Commands started in it so far (execs, jobs, kernels).
    pub execs_started: u64,
    /// Commands running now.
    pub execs_running: u64,
}

/// One open sandbox's reading in [`RuntimeMetrics`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SandboxReading {
    /// Its container id.
    pub id: String,
    /// Its name, if named.
    pub name: Option<String>,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its figures (`cpu_share` is `None`: one reading has no interval).
    pub metrics: SandboxMetrics,
}

/// A runtime's figures ([`NamespaceContainer::metrics`]): every open sandbox's, and the
/// library's own counters since the runtime was built.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RuntimeMetrics {
    /// The runtime.
    pub runtime: OciRuntime,
    /// Every long-lived sandbox of the runtime still open (not spawns' containers).
    pub sandboxes: Vec<SandboxReading>,
    /// Spawns (`spawn`, `spawn_captured`, `spawn_interactive`) that started in a container
    /// started for them.
    pub spawns_cold: u64,
    /// Spawns that started in a warm container ([`NamespaceContainer::warm`]).
    pub spawns_warm: u64,
    /// Long-lived sandboxes started (`start`, `create`, `connect`).
    pub sandboxes_started: u64,
    /// Spawns and starts that failed, by [`SandboxError::kind`].
    pub failures: BTreeMap<String, u64>,
    /// Container teardowns: from the kill (or the init's own end) to the container's
    /// removal.
    pub teardowns: TimeHistogram,
    /// Image layers unpacked in the state dir's store, and the disk they take.
    pub image_layers: u64,
    /// See [`image_layers`](Self::image_layers).
    pub image_bytes: u64,
    /// Snapshots kept in the state dir (those of live [`Snapshot`](crate::Snapshot)s), and
    /// the disk they take.
    pub snapshots: u64,
    /// See [`snapshots`](Self::snapshots).
    pub snapshot_bytes: u64,
    /// Each warm pool's figures ([`NamespaceContainer::warm_pools`]).
    pub warm_pools: Vec<WarmPoolStats>,
}

impl NamespaceContainer {
    /// Every open sandbox's figures (as one [`Sandbox::metrics`] reading) and the library's
    /// own counters: spawns cold and warm, failures by kind, teardown times, the image layers
    /// and snapshots on disk. Read off the async workers; a scrape of a metrics endpoint
    /// calls it (see the `prometheus` feature's [`RuntimeMetrics::to_prometheus`]).
    ///
    /// ```no_run
    /// # async fn demo(runtime: &oci_sandbox::NamespaceContainer) {
    /// let m = runtime.metrics().await;
    /// for s in &m.sandboxes {
    ///     println!("{} {:?} bytes", s.id, s.metrics.memory_bytes);
    /// }
    /// println!("{} warm, {} cold spawns", m.spawns_warm, m.spawns_cold);
    /// # }
    /// ```
    pub async fn metrics(&self) -> RuntimeMetrics {
        // What each reading needs, taken while the handles are held; they go before any
        // await, so that a scrape never holds a sandbox its last owner dropped.
        type Named = (String, Option<String>, BTreeMap<String, String>);
        let probes: Vec<(Named, Probe)> = self
            .open_sandboxes()
            .into_iter()
            .filter_map(|any| any.downcast::<Sandbox>().ok())
            .map(|s| {
                let asked = &s.inner.asked;
                let named = (s.id().to_owned(), asked.name.clone(), asked.labels.clone());
                (named, s.probe())
            })
            .collect();
        let (named, probes): (Vec<_>, Vec<_>) = probes.into_iter().unzip();
        let measured = futures::future::join_all(probes.into_iter().map(|p| p.read(None)));
        let (measured, stores) = futures::join!(measured, self.stores_on_disk());
        let sandboxes = named
            .into_iter()
            .zip(measured)
            .map(|((id, name, labels), (metrics, _))| SandboxReading {
                id,
                name,
                labels,
                metrics,
            })
            .collect();
        let counters = self.counters();
        RuntimeMetrics {
            runtime: self.runtime(),
            sandboxes,
            spawns_cold: counters.spawns_cold,
            spawns_warm: counters.spawns_warm,
            sandboxes_started: counters.sandboxes_started,
            failures: counters.failures,
            teardowns: counters.teardowns,
            image_layers: stores.image_layers,
            image_bytes: stores.image_bytes,
            snapshots: stores.snapshots,
            snapshot_bytes: stores.snapshot_bytes,
            warm_pools: self.warm_pools(),
        }
    }
}

impl Sandbox {
    /// The sandbox's figures every `interval`, from now on, as a stream: CPU time and its share
    /// of the CPU limit, memory and its limit, peak memory, pids, OOM kills, commands started
    /// and running, and the state. Each reading is a few file reads off the async workers;
    /// ticks the reader falls behind on are skipped. The stream ends when the sandbox is
    /// closed or its last handle goes (it holds none). Boxed, so it is `Unpin`: `next()`
    /// needs no pinning.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: &oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
    /// use futures::StreamExt;
    /// let mut figures = sandbox.metrics(std::time::Duration::from_secs(5))?;
    /// while let Some(m) = figures.next().await {
    ///     println!("{:?} CPU, {:?} bytes", m.cpu, m.memory_bytes);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] for a zero `interval`; [`SandboxError::SandboxClosed`]
    /// (and the like) for a sandbox that is no more.
    pub fn metrics(
        &self,
        interval: Duration,
    ) -> Result<futures::stream::BoxStream<'static, SandboxMetrics>, SandboxError> {
        if interval.is_zero() || interval > MAX_INTERVAL {
            return Err(SandboxError::invalid(
                "interval",
                "must be more than zero and at most a day",
            ));
        }
        self.check_alive_or_hibernated()?;
        let weak = std::sync::Arc::downgrade(&self.inner);
        // The interval is made at the first poll: `metrics` needs no Tokio runtime to be called.
        let state = (None::<tokio::time::Interval>, weak, None::<CpuAt>);
        Ok(futures::StreamExt::boxed(futures::stream::unfold(
            state,
            move |(ticks, weak, last)| async move {
                let mut ticks = ticks.unwrap_or_else(|| {
                    let mut ticks = tokio::time::interval(interval);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    ticks
                });
                ticks.tick().await;
                let sandbox = Sandbox {
                    inner: weak.upgrade()?,
                };
                if sandbox.is_closed() || sandbox.check_alive_or_hibernated().is_err() {
                    return None;
                }
                let probe = sandbox.probe();
                drop(sandbox);
                let (reading, cpu_at) = probe.read(last).await;
                Some((reading, (Some(ticks), weak, cpu_at)))
            },
        )))
    }

    /// The host directories its writable state is in (see [`SandboxMetrics::disk_bytes`]).
    fn writable_dirs(&self) -> Vec<std::path::PathBuf> {
        let volumes = self.inner.owner.data_dir().join("volumes");
        let binds = self.config().mounts.iter().filter_map(|m| match &m.kind {
            MountKind::Bind {
                source,
                writable: true,
            } if !source.starts_with(&volumes) => Some(source.clone()),
            _ => None,
        });
        // Absent without an image; an empty mount point when the layer is a tmpfs.
        let layer = self.inner.owner.bundle_dir(self.id()).join("rw");
        std::iter::once(layer).chain(binds).collect()
    }

    /// What a reading needs, taken now (the counters among it), without the handle.
    fn probe(&self) -> Probe {
        Probe {
            state: match self.phase() {
                Phase::Running => SandboxState::Running,
                Phase::Paused => SandboxState::Paused,
                Phase::Hibernated => SandboxState::Hibernated,
            },
            id: self.id().to_owned(),
            writable: self.writable_dirs(),
            disk: Arc::clone(&self.inner.disk),
            egress: self.inner.egress.get().map(|e| e.counts()),
            execs_started: self.inner.commands_started.load(Ordering::Relaxed),
            execs_running: self.inner.commands_running.load(Ordering::Relaxed),
        }
    }
}

/// The previous reading's CPU time and when it was taken.
type CpuAt = (Duration, std::time::Instant);

/// The longest interval [`Sandbox::metrics`] takes.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// One sandbox's reading to make: what was taken from it, and what is read off the workers.
struct Probe {
    state: SandboxState,
    id: String,
    writable: Vec<std::path::PathBuf>,
    disk: Arc<crate::host::disk_gauge::DiskGauge>,
    egress: Option<EgressCounts>,
    execs_started: u64,
    execs_running: u64,
}

impl Probe {
    /// The reading; `last`: the previous one's CPU time and when it was taken.
    async fn read(self, last: Option<CpuAt>) -> (SandboxMetrics, Option<CpuAt>) {
        let hibernated = self.state == SandboxState::Hibernated;
        let id = self.id;
        let stats = async {
            if hibernated {
                return crate::host::cgroup_stats::CgroupStats::default();
            }
            crate::sys::blocking("reading the sandbox's cgroups", move || {
                Ok(crate::host::cgroup_stats::read_blocking(&id))
            })
            .await
            .unwrap_or_default()
        };
        let (stats, disk) = futures::join!(stats, self.disk.read(self.writable));
        let now = std::time::Instant::now();
        let cpu_share = match (stats.cpu, last) {
            (Some(cpu), Some((before, then))) => {
                stats.cpu_share(cpu.saturating_sub(before), now - then)
            }
            _ => None,
        };
        let reading = SandboxMetrics {
            at: SystemTime::now(),
            state: self.state,
            cpu: stats.cpu,
            cpu_share,
            cpu_limit_cores: stats
                .cpu_quota
                .filter(|(_, period)| !period.is_zero())
                .map(|(quota, period)| quota.as_secs_f64() / period.as_secs_f64()),
            memory_bytes: stats.memory_bytes,
            memory_limit_bytes: stats.memory_limit_bytes,
            peak_memory_bytes: stats.peak_memory_bytes,
            pids: stats.pids,
            pids_limit: stats.pids_limit,
            oom_kills: stats.oom_kills,
            disk_bytes: disk,
            egress: self.egress,
            execs_started: self.execs_started,
            execs_running: self.execs_running,
        };
        (reading, stats.cpu.map(|cpu| (cpu, now)))
    }
}

/// A command running (see [`SandboxMetrics::execs_running`]), counted until dropped.
#[derive(Debug)]
pub(super) struct Running(Arc<AtomicU64>);

impl Running {
    pub(super) fn new(count: &Arc<AtomicU64>) -> Running {
        count.fetch_add(1, Ordering::Relaxed);
        Running(Arc::clone(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
