//! Exit statuses of detached containers: the process becomes a child subreaper, so that a
//! container's init, orphaned when the runtime's `run --detach` exits, is re-parented to it;
//! then it waits on the init through a pidfd in `AsyncFd`.
//!
//! Being a subreaper is process-wide: other orphaned descendants of this process are
//! re-parented to it as well (and stay zombies until something reaps them). It is enabled on
//! the first detached spawn only.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::process::ExitStatus;

static SUBREAPER: OnceLock<Result<(), nix::Error>> = OnceLock::new();

/// Makes this process a child subreaper (once).
pub(crate) fn become_subreaper() -> io::Result<()> {
    (*SUBREAPER.get_or_init(|| nix::sys::prctl::set_child_subreaper(true))).map_err(io::Error::from)
}

/// Whether orphans come to this process (else they go to init, which reaps them).
fn is_subreaper() -> bool {
    matches!(SUBREAPER.get(), Some(Ok(())))
}

/// Reaps the container init named by `pid_file` if it is a zombie child of ours: a zombie,
/// parented to this process, living in a nested pid namespace (which no child tokio spawned
/// does, so no one else's status is taken). Blocking.
pub(crate) fn reap_container_init_blocking(pid_file: &std::path::Path) {
    if !is_subreaper() {
        return;
    }
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let Some(p) = ProcStatus::read(pid) else {
        return;
    };
    if p.our_child && p.zombie && p.nested {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
    }
}

struct PidFd(OwnedFd);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Pids that a `PidWaiter` waits on: the name-based sweep never takes them.
static CLAIMED: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Detached starts between their beginning and the claim of their init's pid, by when they
/// began (clock ticks since boot, as /proc/<pid>/stat counts a process's start): the sweep
/// leaves alone any runsc process ("exe") that started after the earliest of them (it may be
/// such an unclaimed init); older ones cannot be.
static STARTING: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// Marks a detached start in progress until dropped (see `STARTING`).
pub(crate) struct StartGuard(u64);

impl StartGuard {
    pub fn new() -> Self {
        let now = boot_ticks_now();
        STARTING.lock().unwrap_or_else(|e| e.into_inner()).push(now);
        StartGuard(now)
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        let mut starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = starting.iter().position(|t| *t == self.0) {
            starting.swap_remove(i);
        }
    }
}

/// Clock ticks since boot, the unit of a process's start time in /proc/<pid>/stat.
fn boot_ticks_now() -> u64 {
    let since_boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| std::time::Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default();
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // Rounded down: a process started in the same tick counts as no older (kept).
    since_boot.as_secs() * hz + u64::from(since_boot.subsec_nanos()) * hz / 1_000_000_000
}

/// When `pid` started, in clock ticks since boot.
fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the parenthesised name; starttime is field 22, the 20th of these.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// A child process to wait for without blocking, and without touching any other child.
pub(crate) struct PidWaiter {
    fd: AsyncFd<PidFd>,
    pid: i32,
}

impl PidWaiter {
    /// Sends `SIGKILL` through the pidfd (no pid-reuse race): for when the runtime's own
    /// `kill --all` cannot (rootless, it has no cgroup to find the processes in). The init's
    /// death ends its pid namespace; gVisor's sandbox process takes its container with it.
    pub fn kill(&self) {
        // SAFETY: a valid pidfd, a null siginfo and no flags, as pidfd_send_signal(2) allows.
        let _ = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

impl Drop for PidWaiter {
    fn drop(&mut self) {
        let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = claimed.iter().position(|p| *p == self.pid) {
            claimed.swap_remove(i);
        }
    }
}

impl PidWaiter {
    /// Opens a pidfd for `pid`, which must be a child of this process (by re-parenting).
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        // SAFETY: `PidFd` owns the fd and returns it unchanged until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register_with_interest(PidFd(owned), Interest::READABLE) }
            .map_err(io::Error::from)?;
        CLAIMED.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
        Ok(PidWaiter { fd, pid })
    }

    /// Waits for the process to exit and reaps it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the process is reaped only in the call that returns its status.
    pub async fn wait(&self) -> io::Result<ExitStatus> {
        let mut not_ours_yet = Duration::ZERO;
        loop {
            let mut guard = self.fd.readable().await?;
            let res = waitid(
                Id::PIDFd(self.fd.get_ref().0.as_fd()),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
            );
            match res {
                Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::exited(code)),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(ExitStatus::signaled(sig as i32)),
                Ok(_) => guard.clear_ready(),
                // The init has exited but is not our child yet: the runtime's intermediate
                // process that forked it (crun double-forks) is still exiting, and the init
                // comes to us, its subreaper, once that one is gone. A matter of milliseconds;
                // back off rather than spin.
                Err(nix::errno::Errno::ECHILD) if not_ours_yet < REPARENT_PATIENCE => {
                    drop(guard);
                    let pause = not_ours_yet
                        .max(Duration::from_millis(1))
                        .min(Duration::from_millis(64));
                    tokio::time::sleep(pause).await;
                    not_ours_yet += pause;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How long an exited init may take to be re-parented to this process.
const REPARENT_PATIENCE: Duration = Duration::from_secs(5);

/// Reaps zombie children that are a runtime's helper or init processes which died before the
/// command could exec (their runtime was killed or failed while starting them). They are
/// re-parented to this process and nothing else knows their pids. Recognised by still bearing
/// the runtime's name; a started container's init (which its supervisor waits on) bears the
/// command's name, so it is never taken from its waiter. Blocking.
pub(crate) fn reap_unstarted_inits() {
    // The orphans die when their runtime does, a moment before this runs.
    std::thread::sleep(std::time::Duration::from_millis(5));
    reap_pass();
}

/// After a runsc container ended (or failed to start): its sandbox, gofer and helpers (all
/// "exe") were re-parented to us and die over the next moments. Passes until a quiet ~200 ms
/// follows the last reap, at most 2 s (blocking).
pub(crate) fn reap_runsc_helpers_blocking() {
    let start = std::time::Instant::now();
    let mut last_change = start;
    let mut zombies_before = usize::MAX;
    while start.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(25));
        let zombies = reap_pass();
        if zombies != zombies_before {
            last_change = std::time::Instant::now();
            zombies_before = zombies;
        }
        if zombies == 0 && last_change.elapsed() > std::time::Duration::from_millis(200) {
            break;
        }
    }
}

/// One scan of /proc reaping unstarted inits and runtime helpers that are our zombies;
/// returns how many it reaped.
fn reap_pass() -> usize {
    let earliest_start = STARTING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .min()
        .copied();
    let mut reaped = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Some(ProcStatus {
            name,
            zombie,
            our_child: ours,
            nested,
        }) = ProcStatus::read(pid)
        else {
            continue;
        };
        let name = name.as_str();
        // runc's init stages rename themselves "runc:[0:PARENT]", "runc:[1:CHILD]",
        // "runc:[2:INIT]", and runsc's sandbox, gofer and helpers run as "exe" (it re-executes
        // /proc/self/exe): no process tokio spawned has such a name. crun's keep the binary's
        // name, so only those in a nested pid namespace are its.
        let runsc_helper = name == "exe"
            && (nested || earliest_start.is_none_or(|e| start_ticks(pid).is_some_and(|s| s < e)));
        let unstarted = name.starts_with("runc:[") || runsc_helper || (nested && name == "crun");
        let claimed = CLAIMED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&pid);
        if zombie && ours && unstarted && !claimed {
            // WNOHANG: never wait on anything that is not already dead.
            if let Ok(
                nix::sys::wait::WaitStatus::Exited(..) | nix::sys::wait::WaitStatus::Signaled(..),
            ) = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            ) {
                reaped += 1;
            }
        }
    }
    reaped
}

/// Reaps `pid`, which was just killed, waiting at most `deadline` (blocking; for the
/// synchronous cleanup when the Tokio runtime is shutting down).
pub(crate) fn reap_blocking(pid: i32, deadline: std::time::Duration) {
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        match nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(std::time::Duration::from_millis(2)),
            _ => return,
        }
    }
}

/// What the orphan reaping needs of `/proc/<pid>/status`.
struct ProcStatus {
    name: String,
    zombie: bool,
    /// Its parent is this process.
    our_child: bool,
    /// It lives in a pid namespace below ours (a container's process).
    nested: bool,
}

impl ProcStatus {
    fn read(pid: i32) -> Option<ProcStatus> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
        };
        Some(ProcStatus {
            name: field("Name:").to_owned(),
            zombie: field("State:").starts_with('Z'),
            our_child: field("PPid:") == std::process::id().to_string(),
            nested: field("NSpid:").split_whitespace().count() > 1,
        })
    }
}
