//! Who the containers are on the host: with root, a user namespace maps the container's ids
//! to an unprivileged range; without root (rootless), the container's root is the caller.

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
    /// Makes the namespace with the launcher's `userns` mode (a process of the range's root
    /// that unshares and waits), maps the range into it and keeps it by an fd.
    pub async fn create(launcher: &Path, lease: IdRangeLease) -> Result<Self, SandboxError> {
        // In a task of its own: the helper is awaited to its end even if the caller goes away.
        let launcher = launcher.to_path_buf();
        tokio::spawn(async move { Self::create_now(&launcher, lease).await })
            .await
            .map_err(|e| SandboxError::Process {
                context: "making the container's user namespace",
                source: std::io::Error::other(e),
            })?
    }

    async fn create_now(launcher: &Path, lease: IdRangeLease) -> Result<Self, SandboxError> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
        let err = |source| SandboxError::Process {
            context: "making the container's user namespace",
            source,
        };
        let id = lease.base.to_string();
        let mut attempts = 0;
        let mut holder = loop {
            let spawned = tokio::process::Command::new(launcher)
                .args(["userns", &id, &id])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn();
            match spawned {
                // Just installed, the launcher may still be open for writing in a child that
                // another thread forked meanwhile and that has not exec'd yet (its copy of our
                // close-on-exec fd goes at its exec): a matter of milliseconds.
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                other => break other.map_err(err)?,
            }
        };
        let pid = holder
            .id()
            .ok_or_else(|| err(std::io::Error::other("no pid")))?;
        let mut stdout = BufReader::new(holder.stdout.take().expect("piped"));
        let mut line = String::new();
        let ready = tokio::time::timeout(DEADLINE, stdout.read_line(&mut line)).await;
        if !matches!(ready, Ok(Ok(_)) if line == "ready\n") {
            let _ = holder.kill().await;
            return Err(err(std::io::Error::other(
                "the namespace holder did not come up",
            )));
        }
        let base = lease.base;
        let opened = tokio::task::spawn_blocking(move || {
            let map = format!("0 {base} {USERNS_SIZE}\n");
            std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
            std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
            std::fs::File::open(format!("/proc/{pid}/ns/user")).map(std::os::fd::OwnedFd::from)
        })
        .await
        .map_err(|e| err(std::io::Error::other(e)))
        .and_then(|r| r.map_err(err));
        // Its job is done: the fd keeps the namespace.
        drop(holder.stdin.take());
        let _ = tokio::time::timeout(DEADLINE, holder.wait()).await;
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
