//! A user namespace owned by an unprivileged id, made without a helper binary: a clone of
//! this process takes the id and unshares, this process writes the maps and keeps the
//! namespace by an fd.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// Makes a user namespace owned by `id` (uid and gid) with `map` as its uid and gid maps, and
/// returns an fd that keeps it (blocking: about 0.1 ms). A helper cloned from this process
/// (sharing its memory, as `posix_spawn` does: no page is copied, no exec) takes the ids and
/// unshares; this process writes the maps, opens the namespace and lets the helper exit.
pub(crate) fn make_blocking(id: u32, map: &str) -> io::Result<OwnedFd> {
    let flags = nix::fcntl::OFlag::O_CLOEXEC;
    let (ready_r, ready_w) = nix::unistd::pipe2(flags)?;
    let (release_r, release_w) = nix::unistd::pipe2(flags)?;
    let args = HolderArgs {
        id,
        ready: ready_w.as_raw_fd(),
        release: release_r.as_raw_fd(),
    };
    let holder = Holder::clone(&args)?;
    let pid = holder.pid;
    drop(ready_w);
    // One byte once the helper is in its namespace; end of file if it failed (it has exited
    // then, and its copy of the write end with it).
    let mut byte = [0u8; 1];
    let ready = loop {
        match nix::unistd::read(&ready_r, &mut byte) {
            Err(nix::Error::EINTR) => continue,
            other => break other,
        }
    };
    if !matches!(ready, Ok(1)) {
        return Err(io::Error::other(
            "the namespace helper could not take its ids or unshare",
        ));
    }
    let opened = std::fs::write(format!("/proc/{pid}/uid_map"), map)
        .and_then(|()| std::fs::write(format!("/proc/{pid}/gid_map"), map))
        .and_then(|()| std::fs::File::open(format!("/proc/{pid}/ns/user")))
        .map(OwnedFd::from);
    // Its job is done: the fd keeps the namespace. End of file releases it.
    drop(release_w);
    drop(holder);
    drop(release_r);
    opened
}

/// What the namespace helper needs: its ids and its two pipe ends.
#[repr(C)]
struct HolderArgs {
    id: u32,
    ready: RawFd,
    release: RawFd,
}

/// The namespace helper: a clone of this process sharing its memory (not its fd table: it
/// gets a copy, of which it keeps its two pipe ends only), on a stack of its own.
/// Dropping it waits for its exit (its stack must outlive it).
struct Holder {
    pid: i32,
    _stack: Vec<u8>,
}

impl Holder {
    const STACK: usize = 64 * 1024;

    fn clone(args: &HolderArgs) -> std::io::Result<Self> {
        let mut stack = vec![0u8; Self::STACK];
        // The stack grows down from its end, 16-byte aligned.
        let top = (stack.as_mut_ptr() as usize + Self::STACK) & !15;
        // SAFETY: the child runs `holder_main` on its own stack and makes raw system calls
        // only (no allocation, no lock, no libc wrapper that touches shared state); `args`
        // and the stack outlive it, since `Holder::drop` waits for its exit, and the caller
        // keeps `args` alive until then.
        let pid = unsafe {
            libc::clone(
                holder_main,
                top as *mut libc::c_void,
                libc::CLONE_VM | libc::SIGCHLD,
                args as *const HolderArgs as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Holder { pid, _stack: stack })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // It exits once `release` reads end of file (or at once, when it failed).
        while let Err(nix::Error::EINTR) =
            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(self.pid), None)
        {}
    }
}

/// The helper's body: take the range root's ids, unshare a user namespace (now owned by that
/// root), say so, and wait for the release. Raw system calls only: it shares this process's
/// memory, and so the parent thread's `errno`, which it writes only when it fails, and then
/// the parent reads end of file, not an error.
extern "C" fn holder_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the `HolderArgs` the parent keeps alive until this exits.
    let args = unsafe { &*(arg as *const HolderArgs) };
    let id = libc::c_long::from(args.id);
    // SAFETY: plain system calls on integers and on buffers of this stack frame.
    unsafe {
        // Its copies of every other fd of ours go: our ends of its pipes (the release must
        // reach end of file once we close ours) and those of other helpers made at the same
        // time (two helpers holding each other's release would wait for each other forever).
        let (low, high) = (args.ready.min(args.release), args.ready.max(args.release));
        for (first, last) in [
            (3, low - 1),
            (low + 1, high - 1),
            (high + 1, libc::c_int::MAX),
        ] {
            if first <= last {
                libc::syscall(libc::SYS_close_range, first, last, 0);
            }
        }
        if libc::syscall(libc::SYS_setgroups, 0, 0) != 0
            || libc::syscall(libc::SYS_setresgid, id, id, id) != 0
            || libc::syscall(libc::SYS_setresuid, id, id, id) != 0
            || libc::syscall(libc::SYS_unshare, libc::c_long::from(libc::CLONE_NEWUSER)) != 0
        {
            return 1;
        }
        let byte = 1u8;
        let ready = libc::c_long::from(args.ready);
        if libc::syscall(libc::SYS_write, ready, &byte as *const u8, 1) != 1 {
            return 1;
        }
        let mut buf = 0u8;
        let release = libc::c_long::from(args.release);
        while libc::syscall(libc::SYS_read, release, &mut buf as *mut u8, 1) == 1 {}
    }
    0
}
