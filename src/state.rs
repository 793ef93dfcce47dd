//! The library's own state on disk: one directory per runtime holding the runtime's `--root`
//! and our bundles, container ids that name their owning process, and the sweep that removes
//! what crashed processes left behind.

use crate::userns::HostIdentity;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::SandboxError;
use crate::runtime::{ContainerFlags, OciRuntime, RuntimeCli};

/// The annotation in each bundle's `config.json` naming the process that owns the container.
pub(crate) const OWNER_ANNOTATION: &str = "dev.oci-sandbox.owner";

/// Prefix of generated container ids: `osb-<pid>-<start time>-<sequence>`.
const ID_PREFIX: &str = "osb-";

/// The directories of one runtime under the library's base directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDirs {
    /// The runtime's `--root`.
    pub root: PathBuf,
    /// Parent of the bundle directories, one per container id.
    pub bundles: PathBuf,
    /// The shared, read-only root filesystem (links and a minimal /etc).
    pub rootfs: PathBuf,
    /// Who owns the rootfs, when not this process's user.
    pub rootfs_owner: Option<(u32, u32)>,
}

impl StateDirs {
    /// The default base: `/run/oci-sandbox` for root, else `$XDG_RUNTIME_DIR/oci-sandbox`, else
    /// `/tmp/oci-sandbox-<uid>`.
    pub fn default_base() -> PathBuf {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            PathBuf::from("/run/oci-sandbox")
        } else if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            PathBuf::from(dir).join("oci-sandbox")
        } else {
            PathBuf::from(format!("/tmp/oci-sandbox-{uid}"))
        }
    }

    /// As root, the shared rootfs belongs to the containers' user namespace range (whose root
    /// makes the mount points in it), one per range.
    pub fn new(base: &Path, runtime: OciRuntime, identity: HostIdentity) -> Self {
        let runtime_dir = base.join(runtime.binary_name());
        let (rootfs, rootfs_owner) = match identity {
            HostIdentity::Root { userns_base } => (
                base.join(format!("rootfs-{userns_base}")),
                Some((userns_base, userns_base)),
            ),
            HostIdentity::Rootless { .. } => (base.join("rootfs"), None),
        };
        StateDirs {
            root: runtime_dir.join("state"),
            bundles: runtime_dir.join("bundles"),
            rootfs,
            rootfs_owner,
        }
    }

    /// Creates the directories and the shared root filesystem (idempotent, blocking).
    pub fn prepare_blocking(&self) -> Result<(), SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o711);
        for dir in [&self.root, &self.bundles, &self.rootfs] {
            b.create(dir)
                .map_err(|e| SandboxError::io("creating the state directory", dir, e))?;
        }
        crate::bundle::prepare_rootfs(&self.rootfs)?;
        // Every container's root opens it, whatever its id range: readable by all (it holds
        // links and a generated /etc, nothing secret), and the base dir traversable.
        if let Some(base) = self.rootfs.parent() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(base)
                .map_err(|e| SandboxError::io("reading the state directory", base, e))?
                .permissions()
                .mode();
            if mode & 0o011 != 0o011 {
                std::fs::set_permissions(base, std::fs::Permissions::from_mode(mode | 0o011))
                    .map_err(|e| SandboxError::io("opening the state directory", base, e))?;
            }
        }
        std::fs::set_permissions(
            &self.rootfs,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .map_err(|e| SandboxError::io("opening the rootfs to every id range", &self.rootfs, e))?;
        if let Some((uid, gid)) = self.rootfs_owner {
            crate::userns::chown_tree(&self.rootfs, uid, gid).map_err(|e| {
                SandboxError::io("handing the rootfs to the user namespace", &self.rootfs, e)
            })?;
        }
        Ok(())
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }
}

/// This process's identity as written into ids and bundles: `<pid>-<start time>`.
pub(crate) fn self_owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| {
        let pid = std::process::id();
        format!("{pid}-{}", start_time(pid).unwrap_or(0))
    })
}

/// A new container id, unique on this machine: the owner and a per-process sequence number.
pub(crate) fn new_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{ID_PREFIX}{}-{}",
        self_owner(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Capture dirs are named `osb-capture-<owner>-<id>-<random>`, so that a sweep can tell
/// whose they are without opening them.
const CAPTURE_PREFIX: &str = "osb-capture-";

pub(crate) fn capture_dir_prefix(id: &str) -> String {
    format!("{CAPTURE_PREFIX}{}-{id}-", self_owner())
}

/// Removes the capture dirs in `dir` whose owner process is dead. Blocking.
pub(crate) fn sweep_capture_dirs_blocking(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(CAPTURE_PREFIX) else {
            continue;
        };
        // `<pid>-<start time>-...`
        let mut parts = rest.splitn(3, '-');
        let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
            continue;
        };
        if !owner_alive(&format!("{pid}-{start}")) && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The owner encoded in a generated id, if it is one.
fn owner_of_generated_id(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(ID_PREFIX)?;
    let (owner, _seq) = rest.rsplit_once('-')?;
    Some(owner)
}

/// The start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot) of a process.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process named by an owner string (`<pid>-<start time>`) is still running.
pub(crate) fn owner_alive(owner: &str) -> bool {
    let Some((pid, start)) = owner.split_once('-') else {
        return false;
    };
    match (pid.parse::<u32>(), start.parse::<u64>()) {
        (Ok(pid), Ok(start)) => start_time(pid) == Some(start),
        _ => false,
    }
}

/// The owner recorded in a bundle's config.json, if readable.
fn bundle_owner(bundle: &Path) -> Option<String> {
    let raw = std::fs::read(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    v.get("annotations")?
        .get(OWNER_ANNOTATION)?
        .as_str()
        .map(str::to_owned)
}

/// Removes everything that containers of dead owners left in this runtime's state: the
/// containers themselves, their bundles and their cgroups. Containers of live processes
/// (this one included) are not touched. Returns the ids that were removed.
pub(crate) async fn sweep(cli: &RuntimeCli, dirs: &StateDirs) -> Result<Vec<String>, SandboxError> {
    let bundles = dirs.bundles.clone();
    let dead_bundles: Vec<String> = tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&bundles) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let id = e.file_name().into_string().ok()?;
                let owner = bundle_owner(&e.path())
                    .or_else(|| owner_of_generated_id(&id).map(str::to_owned));
                match owner {
                    Some(o) if owner_alive(&o) => None,
                    // A bundle without a readable owner may be one being written right now by
                    // a live process; leave it unless its id names a dead owner.
                    None => None,
                    Some(_) => Some(id),
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();

    let mut doomed = dead_bundles;
    for id in cli.list().await? {
        if doomed.contains(&id) {
            continue;
        }
        // Bundles are made before their container and removed after it: a container without
        // one was left by a crash mid-cleanup.
        let bundle_missing = !tokio::fs::try_exists(dirs.bundle(&id))
            .await
            .unwrap_or(true);
        let dead_generated = owner_of_generated_id(&id).is_some_and(|o| !owner_alive(o));
        if bundle_missing || dead_generated {
            doomed.push(id);
        }
    }
    for id in &doomed {
        tracing::info!(runtime = %cli.kind, id, "sweeping a container left by a dead process");
        remove_container(cli, dirs, id, ContainerFlags::default(), true).await;
    }
    // Their containers are gone: the dead owners' id ranges are free again.
    let _ = tokio::task::spawn_blocking(crate::userns::sweep_leases_blocking).await;
    Ok(doomed)
}

/// Ends container `id` and removes everything of it: the runtime's state, leftover processes
/// in its cgroups, the cgroups and the bundle. `running: false` skips the kill for a container
/// known to have stopped. Best effort, logged.
pub(crate) async fn remove_container(
    cli: &RuntimeCli,
    dirs: &StateDirs,
    id: &str,
    flags: ContainerFlags<'_>,
    running: bool,
) {
    remove_from_runtime(cli, id, flags, running).await;
    let (root, bundle, id) = (dirs.root.clone(), dirs.bundle(id), id.to_owned());
    let _ =
        tokio::task::spawn_blocking(move || remove_leftovers_blocking(&root, &id, &bundle)).await;
}

/// `destroy` (kill and delete) or, for a stopped container, `delete`. Logged, not returned:
/// what the runtime leaves, `remove_leftovers_blocking` removes.
pub(crate) async fn remove_from_runtime(
    cli: &RuntimeCli,
    id: &str,
    flags: ContainerFlags<'_>,
    running: bool,
) {
    let removed = if running {
        cli.destroy(flags, id).await
    } else {
        cli.delete(flags, id).await
    };
    if let Err(err) = removed {
        tracing::warn!(runtime = %cli.kind, id, %err, "destroying the container failed");
    }
}

/// Everything of container `id` on the host, once the runtime is done with it: its init if it
/// is our zombie (a runtime that exits without waiting for it, killed or failing, leaves it to
/// us, its subreaper; cgroup v2 keeps the cgroup busy until it is reaped), processes left in
/// its cgroups and the cgroups (a runtime's own `rmdir` fails while dying processes are still
/// in them), its state in the runtime's root, its bundle. Blocking.
pub(crate) fn remove_leftovers_blocking(root: &Path, id: &str, bundle: &Path) {
    crate::reaper::reap_container_init_blocking(&bundle.join(crate::bundle::PID_FILE));
    crate::cgroup::reap_blocking(id);
    remove_runtime_state_blocking(root, id);
    let _ = std::fs::remove_dir_all(bundle);
}

/// Removes what a runtime keeps of container `id` in its root, once the container is gone:
/// runc's and crun's `<id>/` directory, runsc's `<id>_sandbox:<id>.state` and `.lock` files
/// (which an interrupted runsc leaves behind; a root container's sandbox has its id). Blocking;
/// a few syscalls whatever the number of containers in the root.
pub(crate) fn remove_runtime_state_blocking(root: &Path, id: &str) {
    let _ = std::fs::remove_dir_all(root.join(id));
    for suffix in ["state", "lock"] {
        let _ = std::fs::remove_file(root.join(format!("{id}_sandbox:{id}.{suffix}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_name_a_live_owner() {
        let id = new_id();
        let owner = owner_of_generated_id(&id).unwrap();
        assert_eq!(owner, self_owner());
        assert!(owner_alive(owner));
        assert!(crate::config::validate_id(&id).is_ok());
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn dead_or_malformed_owners_are_not_alive() {
        assert!(!owner_alive("999999999-1"));
        assert!(!owner_alive("garbage"));
        let pid = std::process::id();
        assert!(!owner_alive(&format!("{pid}-1")));
        assert_eq!(owner_of_generated_id("user-given"), None);
    }
}
