//! [`Sandbox::metrics`]: a sandbox's figures over time, from its cgroups (v1 or v2) and the
//! library's own counters, read off the async workers.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures::Stream;

use super::{MAX_CONCURRENT_EXECS, Sandbox, session::Phase};
use crate::error::SandboxError;
use crate::host::sessions::SandboxState;

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
    /// Commands started in it so far (execs, jobs, kernels).
    pub execs_started: u64,
    /// Commands running now.
    pub execs_running: u64,
}

impl Sandbox {
    /// The sandbox's figures every `interval`, from now on, as a stream: CPU time and its share
    /// of the CPU limit, memory and its limit, peak memory, pids, OOM kills, commands started
    /// and running, and the state. Each reading is a few file reads off the async workers;
    /// ticks the reader falls behind on are skipped. The stream ends when the sandbox is
    /// closed or its last handle goes (it holds none).
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
    ) -> Result<impl Stream<Item = SandboxMetrics> + Send + 'static, SandboxError> {
        if interval.is_zero() {
            return Err(SandboxError::invalid("interval", "must not be zero"));
        }
        self.check_alive_or_hibernated()?;
        let weak = std::sync::Arc::downgrade(&self.inner);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let state = (ticks, weak, None::<(Duration, std::time::Instant)>);
        Ok(futures::stream::unfold(
            state,
            |(mut ticks, weak, last)| async move {
                ticks.tick().await;
                let sandbox = Sandbox {
                    inner: weak.upgrade()?,
                };
                if sandbox.is_closed() || sandbox.check_alive_or_hibernated().is_err() {
                    return None;
                }
                let (reading, cpu_at) = sandbox.read_metrics(last).await;
                drop(sandbox);
                Some((reading, (ticks, weak, cpu_at)))
            },
        ))
    }

    /// One reading; `last`: the previous reading's CPU time and when it was taken.
    async fn read_metrics(
        &self,
        last: Option<(Duration, std::time::Instant)>,
    ) -> (SandboxMetrics, Option<(Duration, std::time::Instant)>) {
        let state = match self.phase() {
            Phase::Running => SandboxState::Running,
            Phase::Paused => SandboxState::Paused,
            Phase::Hibernated => SandboxState::Hibernated,
        };
        let stats = if state == SandboxState::Hibernated {
            crate::host::cgroup_stats::CgroupStats::default()
        } else {
            let id = self.id().to_owned();
            crate::sys::blocking("reading the sandbox's cgroups", move || {
                Ok(crate::host::cgroup_stats::read_blocking(&id))
            })
            .await
            .unwrap_or_default()
        };
        let now = std::time::Instant::now();
        let cpu_share = match (stats.cpu, last) {
            (Some(cpu), Some((before, then))) => {
                stats.cpu_share(cpu.saturating_sub(before), now - then)
            }
            _ => None,
        };
        let running = MAX_CONCURRENT_EXECS - self.inner.slots.available_permits();
        let reading = SandboxMetrics {
            at: SystemTime::now(),
            state,
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
            execs_started: self.inner.commands_started.load(Ordering::Relaxed),
            execs_running: running as u64,
        };
        (reading, stats.cpu.map(|cpu| (cpu, now)))
    }
}
