//! A container's figures as its cgroups tell them, on cgroup v1 (a hierarchy per controller)
//! and v2 (one unified hierarchy): CPU time and quota, memory and its limit, peak memory,
//! pids and their limit, OOM kills. The parsers take a reader of the files, so that they are
//! tested on the files' own text (`tests` below) without a container.

use std::time::Duration;

/// What a container's cgroups say at one reading. `None`: the file is not there (a
/// controller not mounted, a kernel without `memory.peak`) or says nothing usable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CgroupStats {
    /// CPU time used since the container started.
    pub cpu: Option<Duration>,
    /// The CPU quota: this much CPU time per period (`None`: no quota).
    pub cpu_quota: Option<(Duration, Duration)>,
    /// Memory in use, page cache included (as the limit counts it).
    pub memory_bytes: Option<u64>,
    /// The memory limit (`None`: none).
    pub memory_limit_bytes: Option<u64>,
    /// The most memory used at once.
    pub peak_memory_bytes: Option<u64>,
    /// Processes and threads now.
    pub pids: Option<u64>,
    /// The pids limit (`None`: none).
    pub pids_limit: Option<u64>,
    /// Processes the kernel's OOM killer killed in it.
    pub oom_kills: Option<u64>,
}

impl CgroupStats {
    /// The share of its CPU quota that `cpu` (CPU time used over `elapsed`) is, or of one CPU
    /// without a quota.
    pub fn cpu_share(&self, used: Duration, elapsed: Duration) -> Option<f64> {
        if elapsed.is_zero() {
            return None;
        }
        let cores = match self.cpu_quota {
            Some((quota, period)) if !period.is_zero() => {
                quota.as_secs_f64() / period.as_secs_f64()
            }
            _ => 1.0,
        };
        Some(used.as_secs_f64() / elapsed.as_secs_f64() / cores)
    }
}

impl CgroupStats {
    /// Each figure of `self`, else of `other`.
    fn or(self, other: CgroupStats) -> CgroupStats {
        CgroupStats {
            cpu: self.cpu.or(other.cpu),
            cpu_quota: self.cpu_quota.or(other.cpu_quota),
            memory_bytes: self.memory_bytes.or(other.memory_bytes),
            memory_limit_bytes: self.memory_limit_bytes.or(other.memory_limit_bytes),
            peak_memory_bytes: self.peak_memory_bytes.or(other.peak_memory_bytes),
            pids: self.pids.or(other.pids),
            pids_limit: self.pids_limit.or(other.pids_limit),
            oom_kills: self.oom_kills.or(other.oom_kills),
        }
    }
}

/// Where the cgroup hierarchies are mounted.
pub(crate) const ROOT: &str = "/sys/fs/cgroup";

/// Container `id`'s figures: its v1 hierarchies' first, then the unified hierarchy's (hybrid:
/// `/sys/fs/cgroup/unified`; pure v2: `/sys/fs/cgroup`). Blocking (file reads).
pub(crate) fn read_blocking(id: &str) -> CgroupStats {
    use std::path::{Path, PathBuf};
    let root = Path::new(ROOT);
    let relative = Path::new(crate::spec::CGROUP_PARENT.trim_start_matches('/')).join(id);
    let v1 = parse_v1(|controller, file| {
        std::fs::read_to_string(root.join(controller).join(&relative).join(file)).ok()
    });
    let v2 = |base: PathBuf| {
        parse_v2(|file| std::fs::read_to_string(base.join(&relative).join(file)).ok())
    };
    v1.or(v2(root.join("unified"))).or(v2(root.to_path_buf()))
}

/// v1 reports an unlimited memory limit as the largest `i64` rounded down to a page:
/// `0x7FFF_FFFF_FFFF_F000` with 4 KiB pages, `..._0000` with 64 KiB ones. At or above the
/// latter is unlimited.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_0000;

/// Parses cgroup v1 files: `read(controller, file)` returns the text of
/// `<controller hierarchy>/<container's cgroup>/<file>`.
pub(crate) fn parse_v1(read: impl Fn(&str, &str) -> Option<String>) -> CgroupStats {
    let number = |controller: &str, file: &str| read(controller, file).and_then(|t| integer(&t));
    let quota = match (
        read("cpu", "cpu.cfs_quota_us").and_then(|t| t.trim().parse::<i64>().ok()),
        number("cpu", "cpu.cfs_period_us"),
    ) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => Some((
            Duration::from_micros(quota as u64),
            Duration::from_micros(period),
        )),
        _ => None,
    };
    CgroupStats {
        cpu: number("cpuacct", "cpuacct.usage").map(Duration::from_nanos),
        cpu_quota: quota,
        memory_bytes: number("memory", "memory.usage_in_bytes"),
        memory_limit_bytes: number("memory", "memory.limit_in_bytes")
            .filter(|&limit| limit < V1_UNLIMITED),
        peak_memory_bytes: number("memory", "memory.max_usage_in_bytes"),
        pids: number("pids", "pids.current"),
        pids_limit: read("pids", "pids.max").and_then(|t| limit(&t)),
        oom_kills: read("memory", "memory.oom_control").and_then(|t| keyed(&t, "oom_kill")),
    }
}

/// Parses cgroup v2 files: `read(file)` returns the text of `<container's cgroup>/<file>`.
pub(crate) fn parse_v2(read: impl Fn(&str) -> Option<String>) -> CgroupStats {
    let number = |file: &str| read(file).and_then(|t| integer(&t));
    let quota = read("cpu.max").and_then(|t| {
        let mut fields = t.split_whitespace();
        let quota = fields.next()?.parse::<u64>().ok()?;
        let period = fields.next()?.parse::<u64>().ok()?;
        (period > 0).then(|| (Duration::from_micros(quota), Duration::from_micros(period)))
    });
    CgroupStats {
        cpu: read("cpu.stat")
            .and_then(|t| keyed(&t, "usage_usec"))
            .map(Duration::from_micros),
        cpu_quota: quota,
        memory_bytes: number("memory.current"),
        memory_limit_bytes: read("memory.max").and_then(|t| limit(&t)),
        peak_memory_bytes: number("memory.peak"),
        pids: number("pids.current"),
        pids_limit: read("pids.max").and_then(|t| limit(&t)),
        oom_kills: read("memory.events").and_then(|t| keyed(&t, "oom_kill")),
    }
}

/// A file holding one unsigned number.
fn integer(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit file: a number, or `max` (none).
fn limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        n => n.parse().ok(),
    }
}

/// The value of the `key value` line of a counters file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn v1_files_as_the_kernel_writes_them() {
        let files: HashMap<(&str, &str), &str> = HashMap::from([
            (("cpuacct", "cpuacct.usage"), "1500000000\n"),
            (("cpu", "cpu.cfs_quota_us"), "50000\n"),
            (("cpu", "cpu.cfs_period_us"), "100000\n"),
            (("memory", "memory.usage_in_bytes"), "10485760\n"),
            (("memory", "memory.limit_in_bytes"), "268435456\n"),
            (("memory", "memory.max_usage_in_bytes"), "20971520\n"),
            (
                ("memory", "memory.oom_control"),
                "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
            ),
            (("pids", "pids.current"), "7\n"),
            (("pids", "pids.max"), "512\n"),
        ]);
        let stats = parse_v1(|c, f| files.get(&(c, f)).map(|t| t.to_string()));
        assert_eq!(
            stats,
            CgroupStats {
                cpu: Some(Duration::from_millis(1500)),
                cpu_quota: Some((Duration::from_millis(50), Duration::from_millis(100))),
                memory_bytes: Some(10 << 20),
                memory_limit_bytes: Some(256 << 20),
                peak_memory_bytes: Some(20 << 20),
                pids: Some(7),
                pids_limit: Some(512),
                oom_kills: Some(2),
            }
        );
        // Half a core's quota, used fully for a second.
        let share = stats.cpu_share(Duration::from_millis(500), Duration::from_secs(1));
        assert!((share.unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn v1_without_limits_or_controllers() {
        let files: HashMap<(&str, &str), &str> = HashMap::from([
            (("cpu", "cpu.cfs_quota_us"), "-1\n"),
            (("cpu", "cpu.cfs_period_us"), "100000\n"),
            (("memory", "memory.limit_in_bytes"), "9223372036854771712\n"),
            (("pids", "pids.max"), "max\n"),
        ]);
        let stats = parse_v1(|c, f| files.get(&(c, f)).map(|t| t.to_string()));
        assert_eq!(stats, CgroupStats::default());
        // Without a quota, the share is of one CPU.
        let share = stats.cpu_share(Duration::from_millis(250), Duration::from_secs(1));
        assert!((share.unwrap() - 0.25).abs() < 1e-9);
    }

    #[test]
    fn v2_files_as_the_kernel_writes_them() {
        let files: HashMap<&str, &str> = HashMap::from([
            (
                "cpu.stat",
                "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\n",
            ),
            ("cpu.max", "200000 100000\n"),
            ("memory.current", "4096\n"),
            ("memory.max", "max\n"),
            ("memory.peak", "8192\n"),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n",
            ),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
        ]);
        let stats = parse_v2(|f| files.get(f).map(|t| t.to_string()));
        assert_eq!(
            stats,
            CgroupStats {
                cpu: Some(Duration::from_millis(2500)),
                cpu_quota: Some((Duration::from_millis(200), Duration::from_millis(100))),
                memory_bytes: Some(4096),
                memory_limit_bytes: None,
                peak_memory_bytes: Some(8192),
                pids: Some(3),
                pids_limit: None,
                oom_kills: Some(1),
            }
        );
        // Two cores' quota, used for one core-second over a second: half of it.
        let share = stats.cpu_share(Duration::from_secs(1), Duration::from_secs(1));
        assert!((share.unwrap() - 0.5).abs() < 1e-9);
        // `oom_group_kill` is not `oom_kill`.
        assert_eq!(keyed("oom_group_kill 4\n", "oom_kill"), None);
    }

    #[test]
    fn v2_unlimited_cpu_and_garbage() {
        let files: HashMap<&str, &str> = HashMap::from([
            ("cpu.max", "max 100000\n"),
            ("memory.current", "not a number\n"),
            ("pids.max", "64\n"),
        ]);
        let stats = parse_v2(|f| files.get(f).map(|t| t.to_string()));
        assert_eq!(stats.cpu_quota, None);
        assert_eq!(stats.memory_bytes, None);
        assert_eq!(stats.pids_limit, Some(64));
        assert_eq!(stats.cpu_share(Duration::ZERO, Duration::ZERO), None);
    }
}
