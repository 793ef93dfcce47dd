//! Who the containers are on the host: with root, a user namespace maps the container's ids
//! to an unprivileged range; without root (rootless), the container's root is the caller.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

use crate::config::{ContainerConfig, MountKind};
use crate::error::SandboxError;
use crate::runtime::OciRuntime;

/// How many uids (and gids) a container's user namespace maps, from 0.
pub const USERNS_SIZE: u32 = 65536;

/// The first host uid and gid of the default range: far above the ranges `useradd` hands out
/// in `/etc/subuid` (from 100000, 65536 per user).
pub const DEFAULT_USERNS_BASE: u32 = 1_000_000_000;

/// A user namespace's uid and gid mappings.
pub(crate) type IdMappings = (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>);

/// The identity the library runs with, which decides how containers are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostIdentity {
    /// Root: a config's user namespace maps ids `0..USERNS_SIZE` to `base..base+USERNS_SIZE`.
    Root {
        /// The first host id of the range.
        userns_base: u32,
    },
    /// An ordinary user: the runtimes run rootless; the container's root is this user, and
    /// cgroup limits cannot be set (cgroup v1, or v2 without delegation).
    Rootless { uid: u32, gid: u32 },
}

impl HostIdentity {
    /// The identity of this process.
    pub fn current(userns_base: u32) -> Self {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            HostIdentity::Root { userns_base }
        } else {
            HostIdentity::Rootless {
                uid: uid.as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        }
    }

    pub fn is_rootless(self) -> bool {
        matches!(self, HostIdentity::Rootless { .. })
    }

    /// The host uid and gid that the container's root is, when `config` runs on `runtime`
    /// in a user namespace (None: no user namespace, the container's root is the host's).
    /// gVisor gets none: its Sentry already runs unprivileged in a namespace of its own, and
    /// rootless runsc refuses one.
    pub fn mapped_root(self, config: &ContainerConfig, runtime: OciRuntime) -> Option<(u32, u32)> {
        match (self, runtime) {
            (_, OciRuntime::Gvisor) => None,
            (HostIdentity::Rootless { uid, gid }, _) => Some((uid, gid)),
            (HostIdentity::Root { userns_base }, _) if config.security.user_namespace => {
                Some((userns_base, userns_base))
            }
            (HostIdentity::Root { .. }, _) => None,
        }
    }

    /// The uid and gid mappings of the container's user namespace, if it gets one.
    pub fn mappings(
        self,
        config: &ContainerConfig,
        runtime: OciRuntime,
    ) -> Result<Option<IdMappings>, SandboxError> {
        let Some((uid, gid)) = self.mapped_root(config, runtime) else {
            return Ok(None);
        };
        // Rootless, without newuidmap and /etc/subuid, one id is all a user may map.
        let size = if self.is_rootless() { 1 } else { USERNS_SIZE };
        for (field, id) in [("uid", config.uid), ("gid", config.gid)] {
            if id >= size {
                return Err(SandboxError::invalid(
                    field,
                    format!(
                        "{id} is outside the container's user namespace (ids 0..{size}{})",
                        if size == 1 { ", rootless" } else { "" }
                    ),
                ));
            }
        }
        let map = |host: u32| {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(size)
                .build()
        };
        Ok(Some((vec![map(uid)?], vec![map(gid)?])))
    }

    /// As root with a user namespace, hands the sources of `config`'s writable binds to the
    /// container's root (like podman's `:U`): `lchown` of everything under them not already
    /// theirs. Blocking.
    pub fn hand_over_writable_binds_blocking(
        self,
        config: &ContainerConfig,
        runtime: OciRuntime,
    ) -> Result<(), SandboxError> {
        let (HostIdentity::Root { .. }, Some((uid, gid))) =
            (self, self.mapped_root(config, runtime))
        else {
            return Ok(());
        };
        for m in &config.mounts {
            if let MountKind::Bind {
                source,
                writable: true,
            } = &m.kind
            {
                crate::fs_tree::chown_tree_blocking(source, uid, gid).map_err(|e| {
                    SandboxError::io(
                        "handing a writable bind to the container's user namespace",
                        source,
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Where leases of host id ranges live: one file per range in use, machine-wide (every state
/// root of every process draws from the same ranges), naming its owner for the crash sweep.
const LEASE_DIR: &str = "/run/oci-sandbox-id-ranges";

/// How many ranges are tried before giving up.
const MAX_RANGES: u32 = 40_000;

/// One container's own range of host ids (`base..base + USERNS_SIZE`), held until dropped.
///
/// Each container mapping to its own ids is what keeps per-user kernel limits per container:
/// the 200 kernel keys of a uid, pipe buffers, fds in flight over unix sockets.
#[derive(Debug)]
pub(crate) struct IdRangeLease {
    base: u32,
    file: std::path::PathBuf,
}

impl IdRangeLease {
    /// Leases the first free range at or above `first` (blocking: small files on a tmpfs).
    pub fn acquire_blocking(first: u32) -> Result<Self, SandboxError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        /// Where this process looks first: just past its last lease.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new(LEASE_DIR);
        let ranges = ((u32::MAX - first) / USERNS_SIZE).min(MAX_RANGES);
        let start = NEXT.load(Ordering::Relaxed);
        for k in (0..ranges).map(|i| (start + i) % ranges) {
            let file = dir.join(k.to_string());
            let create = || {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&file)
            };
            // The dir is made on the first lease only, not on every one.
            let created = match create() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| SandboxError::io("creating the id-range lease dir", dir, e))?;
                    create()
                }
                other => other,
            };
            match created {
                Ok(mut f) => {
                    use std::io::Write;
                    NEXT.store((k + 1) % ranges, Ordering::Relaxed);
                    let lease = IdRangeLease {
                        base: first + k * USERNS_SIZE,
                        file,
                    };
                    f.write_all(crate::state::self_owner().as_bytes())
                        .map_err(|e| SandboxError::io("writing an id-range lease", dir, e))?;
                    return Ok(lease);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SandboxError::io("leasing an id range", file, e)),
            }
        }
        Err(SandboxError::io(
            "leasing an id range",
            dir,
            std::io::Error::other(format!("all {ranges} ranges are in use")),
        ))
    }

    /// The first host id of the range: the container's root.
    pub fn base(&self) -> u32 {
        self.base
    }
}

impl Drop for IdRangeLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Removes the leases of owners that are no longer alive (blocking). Called by the sweep after
/// it has removed their containers.
pub(crate) fn sweep_leases_blocking() {
    let Ok(entries) = std::fs::read_dir(LEASE_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let owner = std::fs::read_to_string(entry.path()).unwrap_or_default();
        // An empty lease is one being written: only a named owner can be dead.
        if !owner.is_empty() && !crate::state::owner_alive(owner.trim()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A user namespace made for one container and owned by its range's root, not by host root:
/// the kernel charges per-user counts made inside (inotify instances, fanotify groups, POSIX
/// message queue bytes) to the namespace's owner too, so with host root as the owner one
/// container could exhaust host root's. runc and crun join it by path.
#[derive(Debug)]
pub(crate) struct UserNamespace {
    /// Held until the container has joined it (its processes keep it then).
    fd: Option<std::os::fd::OwnedFd>,
    lease: IdRangeLease,
}

impl UserNamespace {
    /// Makes the namespace, maps the range into it and keeps it by an fd (blocking: about
    /// 0.1 ms). The namespace's owner is the range's root: a helper cloned from this process
    /// (sharing its memory, as `posix_spawn` does: no page is copied, no exec) takes the range
    /// root's ids and unshares; this process writes the maps, opens the namespace and lets the
    /// helper exit.
    pub fn create_blocking(lease: IdRangeLease) -> Result<Self, SandboxError> {
        let err = |source| SandboxError::Process {
            context: "making the container's user namespace",
            source,
        };
        let io_err = |e: nix::Error| err(e.into());
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (ready_r, ready_w) = nix::unistd::pipe2(flags).map_err(io_err)?;
        let (release_r, release_w) = nix::unistd::pipe2(flags).map_err(io_err)?;
        let args = HolderArgs {
            id: lease.base,
            ready: ready_w.as_raw_fd(),
            release: release_r.as_raw_fd(),
        };
        let holder = Holder::clone(&args).map_err(err)?;
        let pid = holder.pid;
        drop(ready_w);
        // One byte once the helper is in its namespace; end of file if it failed (it has
        // exited then, and the write end it shared with us is closed).
        let mut byte = [0u8; 1];
        let ready = loop {
            match nix::unistd::read(&ready_r, &mut byte) {
                Err(nix::Error::EINTR) => continue,
                other => break other,
            }
        };
        if !matches!(ready, Ok(1)) {
            return Err(err(std::io::Error::other(
                "the namespace helper could not take the range's ids or unshare",
            )));
        }
        let map = format!("0 {} {USERNS_SIZE}\n", lease.base);
        let opened = std::fs::write(format!("/proc/{pid}/uid_map"), &map)
            .and_then(|()| std::fs::write(format!("/proc/{pid}/gid_map"), &map))
            .and_then(|()| std::fs::File::open(format!("/proc/{pid}/ns/user")))
            .map(std::os::fd::OwnedFd::from)
            .map_err(err);
        // Its job is done: the fd keeps the namespace. End of file releases it.
        drop(release_w);
        drop(holder);
        drop(release_r);
        Ok(UserNamespace {
            fd: Some(opened?),
            lease,
        })
    }

    /// A path to the namespace that the runtime (a child of this process, as root) can open.
    pub fn path(&self) -> std::path::PathBuf {
        use std::os::fd::AsRawFd;
        let fd = self.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
        format!("/proc/{}/fd/{fd}", std::process::id()).into()
    }

    /// The container runs in it: its processes keep it alive, and the fd goes (one fewer per
    /// live container). The lease stays until the container is removed.
    pub fn joined(&mut self) {
        self.fd = None;
    }

    /// The first host id of its range.
    pub fn base(&self) -> u32 {
        self.lease.base()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Helpers made at the same time each get a copy of the others' fds: they must not wait
    /// for each other (two helpers holding each other's release once hung a spawn forever).
    #[test]
    fn namespaces_made_concurrently_are_all_made_and_their_helpers_reaped() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run the unit tests as root (make test does)"
        );
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let done = done_tx.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let lease = IdRangeLease::acquire_blocking(DEFAULT_USERNS_BASE).unwrap();
                    let base = lease.base();
                    let ns = UserNamespace::create_blocking(lease).unwrap();
                    // The namespace maps the lease's range, and it is not ours.
                    let own = std::fs::metadata("/proc/self/ns/user").unwrap();
                    let made = std::fs::metadata(ns.path()).unwrap();
                    assert_ne!(own.ino(), made.ino());
                    assert_eq!(ns.base(), base);
                    done.send(()).unwrap();
                }
            });
        }
        for _ in 0..80 {
            done_rx
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("a namespace helper hung");
        }
        // No helper is left, not even as a zombie: no child of ours runs as a range's root.
        use std::os::unix::fs::MetadataExt;
        let helpers: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .map(|task| std::fs::read_to_string(task.path().join("children")).unwrap_or_default())
            .flat_map(|pids| {
                pids.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}"))
                    .is_ok_and(|m| m.uid() >= DEFAULT_USERNS_BASE)
            })
            .collect();
        assert!(helpers.is_empty(), "helpers left behind: {helpers:?}");
    }
}
