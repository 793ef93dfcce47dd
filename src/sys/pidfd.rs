//! Watching a process that is not this process's child: a container's init, which the
//! runtime's `run --detach` leaves to whoever adopts orphans. A pidfd becomes readable when the
//! process exits (a zombie counts as exited), and can signal the process without a pid-reuse
//! race. Nothing here reaps: the library never waits for a process it did not spawn, and the
//! exit statuses it reports come from its own init in the container (the launcher).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A process, watched for its exit.
#[derive(Debug)]
pub(crate) struct ProcessWatch {
    fd: AsyncFd<PidFd>,
    pid: i32,
}

#[derive(Debug)]
struct PidFd(OwnedFd);

impl AsRawFd for PidFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl ProcessWatch {
    /// Opens a pidfd for `pid`. Fails with `ESRCH` when no such process exists any more.
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
        Ok(ProcessWatch { fd, pid })
    }

    /// The pid it was opened for (in this process's pid namespace).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits until the process has exited.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn exited(&self) {
        // An error here (the reactor is gone) leaves nothing to wait with: treat as exited.
        let _ = self.fd.readable().await;
    }

    /// Sends `SIGKILL` through the pidfd. A container's init taking its pid namespace with
    /// it, or gVisor's sandbox process its whole sandbox, this ends a container without a
    /// runtime call.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_killed_process_is_seen_to_exit() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let watch = ProcessWatch::open(child.id().unwrap() as i32).unwrap();
        watch.kill();
        tokio::time::timeout(std::time::Duration::from_secs(5), watch.exited())
            .await
            .expect("seen to exit");
        // The child is ours (the test's): it reaps it, not the watch.
        assert!(child.wait().await.unwrap().code().is_none());
    }
}
