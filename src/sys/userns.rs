//! A user namespace owned by an unprivileged id, made without a helper binary: a clone of
//! this process takes the id and unshares, this process writes the maps and keeps the
//! namespace by an fd.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// How long the helper may take to say it is in its namespace.
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// Makes a user namespace owned by `id` (uid and gid) with `map` as its uid and gid maps, and
/// returns an fd that keeps it (blocking: about 0.1 ms).
///
/// The helper is cloned from this process sharing its memory and its fd table
/// (`CLONE_VM | CLONE_FILES`): no page is copied, no exec, and no process ever holds a copy
/// of this process's fds. A copy would keep a file the application deletes (or a socket it
/// closes) alive until the helper ran: on a loaded machine that was long enough for a
/// just-freed tmpfs to still be full. The helper takes the ids, unshares, says so with one
/// byte ('1', or '0' when it failed), and waits for the release; this process writes the
/// maps, opens the namespace and releases it.
pub(crate) fn make_blocking(id: u32, map: &str) -> io::Result<OwnedFd> {
    let flags = nix::fcntl::OFlag::O_CLOEXEC;
    let (ready_r, ready_w) = nix::unistd::pipe2(flags)?;
    let (release_r, release_w) = nix::unistd::pipe2(flags)?;
    let args = HolderArgs {
        id,
        ready: ready_w.as_raw_fd(),
        release: release_r.as_raw_fd(),
    };
    // Every fd the helper uses stays open in the shared table until it has exited: `holder`
    // is dropped (and waited for) before them.
    let holder = Holder::clone(&args, release_w)?;
    let ready = read_ready(&ready_r);
    if !matches!(ready, Ok(b'1')) {
        holder.kill();
        return Err(match ready {
            Err(e) => e,
            Ok(_) => io::Error::other("the namespace helper could not take its ids or unshare"),
        });
    }
    let pid = holder.pid;
    let opened = std::fs::write(format!("/proc/{pid}/uid_map"), map)
        .and_then(|()| std::fs::write(format!("/proc/{pid}/gid_map"), map))
        .and_then(|()| std::fs::File::open(format!("/proc/{pid}/ns/user")))
        .map(OwnedFd::from);
    // Its job is done: the fd keeps the namespace. Dropping the holder releases it and waits.
    drop(holder);
    drop((ready_r, ready_w, release_r));
    opened
}

/// The helper's one byte, within [`READY_DEADLINE`].
fn read_ready(ready: &OwnedFd) -> io::Result<u8> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = std::time::Instant::now() + READY_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the namespace helper did not come up",
                ));
            }
            Ok(_) => {}
        }
        let mut byte = [0u8; 1];
        match nix::unistd::read(ready, &mut byte) {
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => continue,
            Err(e) => return Err(e.into()),
            Ok(0) => return Err(io::Error::other("the namespace helper exited")),
            Ok(_) => return Ok(byte[0]),
        }
    }
}

/// What the namespace helper needs: its ids and its two pipe ends.
#[repr(C)]
struct HolderArgs {
    id: u32,
    ready: RawFd,
    release: RawFd,
}

/// The namespace helper: a clone of this process sharing its memory and fd table, on a stack
/// of its own. Dropping it closes the release pipe's write end (the helper reads end of file
/// and exits) and waits for its exit (its stack must outlive it).
struct Holder {
    pid: i32,
    release: Option<OwnedFd>,
    _stack: Vec<u8>,
}

impl Holder {
    const STACK: usize = 64 * 1024;

    fn clone(args: &HolderArgs, release: OwnedFd) -> io::Result<Self> {
        let mut stack = vec![0u8; Self::STACK];
        // The stack grows down from its end, 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + Self::STACK) & !15;
        // SAFETY: the child runs `holder_main` on its own stack and makes raw system calls
        // only (no allocation, no lock, no libc wrapper that touches shared state); `args`,
        // the stack and the fds it uses outlive it, since `Holder::drop` waits for its exit
        // and the caller keeps `args` and the pipes alive until then.
        let pid = unsafe {
            libc::clone(
                holder_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD,
                args as *const HolderArgs as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Holder {
            pid,
            release: Some(release),
            _stack: stack,
        })
    }

    /// Ends a helper that did not come up (it may be stuck, or gone already).
    fn kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // End of file on the release (this is its only write end: the table is shared, and
        // the close-on-exec copies of a concurrent posix_spawn go at its exec).
        drop(self.release.take());
        while let Err(nix::Error::EINTR) =
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None)
        {}
    }
}

/// The helper's body: take the ids, unshare a user namespace (now owned by them), say so, and
/// wait for the release. Raw system calls only: it shares this process's memory, and so the
/// parent thread's `errno`, which it writes only when a call fails (the parent, waiting in
/// `poll`, reads it only when its own call fails).
extern "C" fn holder_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the `HolderArgs` the parent keeps alive until this exits.
    let args = unsafe { &*(arg as *const HolderArgs) };
    let id = libc::c_long::from(args.id);
    let ready = libc::c_long::from(args.ready);
    // SAFETY: plain system calls on integers and on buffers of this stack frame.
    unsafe {
        // No signal handler of the parent's may run on this stack, and no read may end in
        // EINTR (whose errno would be the parent thread's).
        let all: u64 = !0;
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            std::ptr::null::<u64>(),
            8,
        );
        let became = libc::syscall(libc::SYS_setgroups, 0, 0) == 0
            && libc::syscall(libc::SYS_setresgid, id, id, id) == 0
            && libc::syscall(libc::SYS_setresuid, id, id, id) == 0
            && libc::syscall(libc::SYS_unshare, libc::c_long::from(libc::CLONE_NEWUSER)) == 0;
        let byte = if became { b'1' } else { b'0' };
        libc::syscall(libc::SYS_write, ready, &byte as *const u8, 1);
        if !became {
            return 1;
        }
        let mut buf = 0u8;
        let release = libc::c_long::from(args.release);
        while libc::syscall(libc::SYS_read, release, &mut buf as *mut u8, 1) == 1 {}
    }
    0
}
