//! The host side of a container's cgroups: what the library reads from them (OOM kills) and
//! how it removes what a runtime left.

use std::path::{Path, PathBuf};

use crate::spec::CGROUP_PARENT;

pub(crate) use super::cgroup_stats::ROOT;

/// The container's cgroup directories that may exist: one per v1 hierarchy, and the v2 one
/// (the unified hierarchy is either `/sys/fs/cgroup` itself or, hybrid, one of its entries).
fn dirs(id: &str) -> Vec<PathBuf> {
    let relative = Path::new(CGROUP_PARENT.trim_start_matches('/')).join(id);
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(ROOT)
        .map(|hierarchies| {
            hierarchies
                .filter_map(Result::ok)
                .map(|h| h.path().join(&relative))
                .collect()
        })
        .unwrap_or_default();
    dirs.push(Path::new(ROOT).join(&relative));
    dirs
}

/// [`oom_kills_blocking`] off the async workers; 0 when the read cannot be made.
pub(crate) async fn oom_kills(id: &str) -> u64 {
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || oom_kills_blocking(&id))
        .await
        .unwrap_or(0)
}

/// How many processes of container `id` the kernel's OOM killer has killed, from its memory
/// cgroup (`memory.oom_control` on v1, `memory.events` on v2); 0 when it has none. Read before
/// the cgroup is removed. Blocking (a file read).
pub(crate) fn oom_kills_blocking(id: &str) -> u64 {
    let relative = Path::new(CGROUP_PARENT.trim_start_matches('/')).join(id);
    let candidates = [
        Path::new(ROOT)
            .join("memory")
            .join(&relative)
            .join("memory.oom_control"),
        Path::new(ROOT)
            .join("unified")
            .join(&relative)
            .join("memory.events"),
        Path::new(ROOT).join(&relative).join("memory.events"),
    ];
    candidates
        .iter()
        .filter_map(|file| std::fs::read_to_string(file).ok())
        .map(|text| oom_kill_count(&text))
        .max()
        .unwrap_or(0)
}

/// What container `id` has used, from its cgroups (v1 hierarchies, else v2); `None` when it
/// has no cgroup the host can read. Blocking (file reads).
pub(crate) fn usage_blocking(id: &str) -> Option<crate::status::SandboxUsage> {
    let stats = crate::host::cgroup_stats::read_blocking(id);
    let usage = crate::status::SandboxUsage {
        cpu: stats.cpu,
        memory_bytes: stats.memory_bytes,
        peak_memory_bytes: stats.peak_memory_bytes,
        pids: stats.pids,
    };
    (usage != crate::status::SandboxUsage::default()).then_some(usage)
}

/// The `oom_kill N` line of a memory cgroup's counters file.
fn oom_kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Kills any process left in the container's cgroups and removes them (blocking).
pub(crate) fn reap_blocking(id: &str) {
    // Frozen tasks (a paused sandbox) take their SIGKILL only once thawed.
    thaw_now(id);
    for dir in dirs(id).iter().filter(|d| d.is_dir()) {
        // A killed process leaves its cgroup a moment later (longer on a loaded machine):
        // kill what is listed, retry the rmdir with a growing pause, up to about a second.
        let mut pause = std::time::Duration::from_millis(1);
        for _ in 0..12 {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            match std::fs::remove_dir(dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(200));
                }
                _ => break,
            }
        }
    }
}

/// Thaws the container's cgroup if it is frozen, without waiting (blocking: one small write).
pub(crate) fn thaw_now(id: &str) {
    let relative = Path::new(CGROUP_PARENT.trim_start_matches('/')).join(id);
    let v1 = Path::new(ROOT)
        .join("freezer")
        .join(&relative)
        .join("freezer.state");
    if v1.exists() {
        let _ = std::fs::write(v1, "THAWED");
    }
    for dir in dirs(id) {
        let file = dir.join("cgroup.freeze");
        if file.exists() {
            let _ = std::fs::write(file, "0");
        }
    }
}

/// How long a freeze or thaw may take to settle.
const FREEZE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Freezes (`true`) or thaws the container's cgroup, and returns once the kernel says it is
/// done: every task of it stopped (or running again). The v1 freezer where there is one
/// (this hybrid host), else the v2 `cgroup.freeze`. Blocking; `NotFound` when the container
/// has no freezer the host can write (rootless on cgroup v1).
pub(crate) fn freeze_blocking(id: &str, frozen: bool) -> std::io::Result<()> {
    let relative = Path::new(CGROUP_PARENT.trim_start_matches('/')).join(id);
    let v1 = Path::new(ROOT)
        .join("freezer")
        .join(&relative)
        .join("freezer.state");
    let (file, value, done_file, done): (PathBuf, &str, PathBuf, &str) = if v1.exists() {
        let state = if frozen { "FROZEN" } else { "THAWED" };
        (v1.clone(), state, v1, state)
    } else {
        let dir = dirs(id)
            .into_iter()
            .find(|d| d.join("cgroup.freeze").exists())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))?;
        (
            dir.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
            dir.join("cgroup.events"),
            if frozen { "frozen 1" } else { "frozen 0" },
        )
    };
    std::fs::write(&file, value)?;
    let give_up = std::time::Instant::now() + FREEZE_DEADLINE;
    let mut pause = std::time::Duration::from_micros(50);
    loop {
        let now = std::fs::read_to_string(&done_file)?;
        if now.lines().any(|l| l.trim() == done) {
            return Ok(());
        }
        if std::time::Instant::now() > give_up {
            if frozen {
                // Half frozen is no state to leave: back to running.
                thaw_now(id);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{} still reads {:?}", done_file.display(), now.trim()),
            ));
        }
        // v1 says FREEZING while tasks are on their way; retrying the write moves it on.
        if frozen && file == done_file {
            let _ = std::fs::write(&file, value);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(std::time::Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counts_are_read_from_v1_and_v2_files() {
        assert_eq!(
            oom_kill_count("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            3
        );
        assert_eq!(
            oom_kill_count("low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n"),
            1
        );
        assert_eq!(oom_kill_count("oom_kill_disable 0\n"), 0);
    }
}
