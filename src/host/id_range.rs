//! As root, each container's own range of host ids (leased machine-wide) and the user
//! namespace that maps it, owned by the range's root.

use std::path::Path;

use crate::error::SandboxError;
use crate::spec::identity::USERNS_SIZE;

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
                    f.write_all(crate::host::owner::self_owner().as_bytes())
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
        if !owner.is_empty() && !crate::host::owner::owner_alive(owner.trim()) {
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
    /// Makes the namespace (see [`crate::sys::userns::make_blocking`]), owned by the range's
    /// root and mapping the range, and keeps it by an fd. Blocking: about 0.1 ms.
    pub fn create_blocking(lease: IdRangeLease) -> Result<Self, SandboxError> {
        let map = format!("0 {} {USERNS_SIZE}\n", lease.base);
        let fd = crate::sys::userns::make_blocking(lease.base, &map).map_err(|source| {
            SandboxError::Process {
                context: "making the container's user namespace",
                source,
            }
        })?;
        Ok(UserNamespace {
            fd: Some(fd),
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

    /// The namespace's fd while it is held (before the container joined it).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.fd.as_ref().map(|fd| fd.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::identity::DEFAULT_USERNS_BASE;

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
