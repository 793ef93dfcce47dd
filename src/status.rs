//! How a sandboxed process ended: [`ExitStatus`] and [`Output`].

use std::fmt;
use std::time::Duration;

/// How a sandboxed process ended.
///
/// Tells a normal exit, death by a signal, a timeout, the output limit and the OOM killer
/// apart. On gVisor the status passes through the sandbox process as a code, so a process
/// that called `exit(128 + n)` reads as killed by signal `n` there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExitStatus {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    idle_timed_out: bool,
    output_limit_exceeded: bool,
    oom_killed: bool,
    usage: Option<Usage>,
}

/// What a command used, measured by the sandbox's init when it collected the command
/// (`wait4`): CPU time and peak memory of the command and of the children it waited for, and
/// the wall time from its start to its end as the host saw it.
///
/// ```no_run
/// # async fn demo(sandbox: &oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
/// let status = sandbox.exec(&oci_sandbox::ExecConfig::shell("sort -R /etc/services")).await?
///     .wait().await?;
/// if let Some(usage) = status.usage() {
///     println!("{:?} CPU, {} KiB peak", usage.user_cpu + usage.system_cpu, usage.peak_rss_bytes / 1024);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Usage {
    /// CPU time spent in user mode.
    pub user_cpu: Duration,
    /// CPU time spent in the kernel on the command's behalf (under gVisor: in the Sentry's
    /// emulated kernel, as it accounts it).
    pub system_cpu: Duration,
    /// The largest resident set of the command or of one child it waited for, in bytes.
    pub peak_rss_bytes: u64,
    /// Wall-clock time from the command's start to its end.
    pub wall: Duration,
}

impl ExitStatus {
    pub(crate) fn exited(code: i32) -> Self {
        ExitStatus {
            code: Some(code),
            signal: None,
            timed_out: false,
            idle_timed_out: false,
            output_limit_exceeded: false,
            oom_killed: false,
            usage: None,
        }
    }

    pub(crate) fn signaled(signal: i32) -> Self {
        ExitStatus {
            code: None,
            signal: Some(signal),
            timed_out: false,
            idle_timed_out: false,
            output_limit_exceeded: false,
            oom_killed: false,
            usage: None,
        }
    }

    pub(crate) fn killed_by_timeout() -> Self {
        ExitStatus {
            timed_out: true,
            ..Self::signaled(libc::SIGKILL)
        }
    }

    pub(crate) fn killed_by_idle_timeout() -> Self {
        ExitStatus {
            idle_timed_out: true,
            ..Self::killed_by_timeout()
        }
    }

    pub(crate) fn killed_by_output_limit() -> Self {
        ExitStatus {
            output_limit_exceeded: true,
            ..Self::signaled(libc::SIGKILL)
        }
    }

    /// True when the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The exit code, when the process exited by itself.
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The signal that ended the process, when one did (a timeout kills with `SIGKILL`).
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// True when the library killed the process because its timeout passed.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// True when the library killed the process because it wrote no output for its idle
    /// timeout ([`ExecConfig::idle_timeout`](crate::ExecConfig::idle_timeout)); then
    /// [`timed_out`](Self::timed_out) is true as well.
    pub fn idle_timed_out(&self) -> bool {
        self.idle_timed_out
    }

    /// True when the library killed the process because its captured output passed the
    /// output limit ([`spawn_captured`](crate::NamespaceContainer::spawn_captured) only).
    pub fn output_limit_exceeded(&self) -> bool {
        self.output_limit_exceeded
    }

    /// True when the kernel's OOM killer killed a process of the container because it passed
    /// its memory limit: the process itself (then [`signal`](Self::signal) is `SIGKILL`, or on
    /// gVisor the whole sandbox was) or one of its children (then the code is whatever the
    /// process made of that). Read from the container's memory cgroup, so always false where
    /// the library cannot set limits (rootless on cgroup v1).
    pub fn oom_killed(&self) -> bool {
        self.oom_killed
    }

    pub(crate) fn with_oom_killed(self, oom_killed: bool) -> Self {
        ExitStatus { oom_killed, ..self }
    }

    /// What the command used, when its init reported it: every command of a sandbox or a
    /// spawn has one, on every runtime. `None` when the sandbox died before it could say
    /// (killed from outside, or by the OOM killer), and on a status made without a command
    /// (a container's end).
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    pub(crate) fn with_usage(self, usage: Option<Usage>) -> Self {
        ExitStatus { usage, ..self }
    }

    /// The same status with the wall time of its usage set.
    pub(crate) fn with_wall_time(self, wall: Duration) -> Self {
        ExitStatus {
            usage: self.usage.map(|u| Usage { wall, ..u }),
            ..self
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.output_limit_exceeded {
            return f.write_str("output limit exceeded (killed)");
        }
        if self.oom_killed && self.signal == Some(libc::SIGKILL) {
            return f.write_str("out of memory (killed)");
        }
        if self.idle_timed_out {
            return f.write_str("no output within its idle timeout (killed)");
        }
        match (self.timed_out, self.code, self.signal) {
            (true, _, _) => f.write_str("timed out (killed)"),
            (_, Some(c), _) => write!(f, "exit code {c}"),
            (_, _, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            _ => f.write_str("unknown"),
        }
    }
}

/// What a whole sandbox has used so far, from its cgroups
/// ([`Sandbox::usage`](crate::Sandbox::usage)): every process in it, the init included (on
/// gVisor: the sandbox's Sentry and gofer, which run the guest). A figure the host's cgroups
/// do not keep is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct SandboxUsage {
    /// CPU time used since the sandbox started.
    pub cpu: Option<Duration>,
    /// Memory in use now, in bytes (page cache included, as the memory limit counts it).
    pub memory_bytes: Option<u64>,
    /// The most memory it has used at once, in bytes.
    pub peak_memory_bytes: Option<u64>,
    /// Processes and threads now.
    pub pids: Option<u64>,
}

/// A histogram of durations (the library's teardown times in
/// [`RuntimeMetrics`](crate::RuntimeMetrics)), as Prometheus keeps one: how many, their sum,
/// and for each bucket's upper bound how many took at most that long (cumulative).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TimeHistogram {
    /// How many durations were recorded.
    pub count: u64,
    /// Their sum.
    pub sum: Duration,
    /// `(upper bound, durations at most that long)`, bounds ascending; those longer than the
    /// last bound are only in `count`.
    pub buckets: Vec<(Duration, u64)>,
}

/// Why a long-lived sandbox ended by itself: its lifetime options
/// ([`SandboxConfig::ttl`](crate::SandboxConfig::ttl),
/// [`SandboxConfig::idle_lifetime`](crate::SandboxConfig::idle_lifetime)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SandboxExpiry {
    /// It had run for its whole time to live.
    Ttl(Duration),
    /// No command had run in it for this long.
    Idle(Duration),
}

impl fmt::Display for SandboxExpiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SandboxExpiry::Ttl(d) => write!(f, "its time to live ({d:?}) ran out"),
            SandboxExpiry::Idle(d) => write!(f, "it was idle for {d:?}"),
        }
    }
}

/// The output of a finished process, from
/// [`ContainerProcess::wait_with_output`](crate::ContainerProcess::wait_with_output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// What it wrote to stdout (empty unless stdout was piped): all of it, or under an
    /// [`OutputCap`](crate::OutputCap) its head followed by its tail.
    pub stdout: Vec<u8>,
    /// What it wrote to stderr (empty unless stderr was piped), within the same cap.
    pub stderr: Vec<u8>,
    /// Bytes of stdout dropped between the kept head and tail (0 when all of it fit).
    pub stdout_dropped: u64,
    /// Bytes of stderr dropped between the kept head and tail.
    pub stderr_dropped: u64,
}

impl Output {
    /// Stdout as text, bytes that are not UTF-8 replaced by `�`.
    ///
    /// ```
    /// # fn demo(out: oci_sandbox::Output) {
    /// for line in out.stdout_str().lines() {
    ///     println!("{line}");
    /// }
    /// # }
    /// ```
    pub fn stdout_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// Stderr as text, bytes that are not UTF-8 replaced by `�`.
    pub fn stderr_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_say_how_the_process_ended() {
        assert_eq!(ExitStatus::exited(0).to_string(), "exit code 0");
        assert!(ExitStatus::exited(0).success());
        assert!(!ExitStatus::exited(137).success());
        assert_eq!(ExitStatus::exited(137).code(), Some(137));
        assert_eq!(ExitStatus::exited(137).signal(), None);
        assert_eq!(ExitStatus::signaled(9).to_string(), "killed by SIGKILL");
        assert_eq!(
            ExitStatus::signaled(200).to_string(),
            "killed by signal 200"
        );
        assert_eq!(
            ExitStatus::killed_by_timeout().to_string(),
            "timed out (killed)"
        );
        let idle = ExitStatus::killed_by_idle_timeout();
        assert!(idle.timed_out() && idle.idle_timed_out());
        assert!(!ExitStatus::killed_by_timeout().idle_timed_out());
        assert_eq!(
            idle.to_string(),
            "no output within its idle timeout (killed)"
        );
        assert_eq!(
            ExitStatus::killed_by_output_limit().to_string(),
            "output limit exceeded (killed)"
        );
        let oom = ExitStatus::signaled(9).with_oom_killed(true);
        assert!(oom.oom_killed());
        assert_eq!(oom.to_string(), "out of memory (killed)");
        // A code with an OOM kill of a child reads as the code.
        assert_eq!(
            ExitStatus::exited(1).with_oom_killed(true).to_string(),
            "exit code 1"
        );
    }
}
