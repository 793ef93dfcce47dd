//! The library's own state on disk: one directory per runtime holding the runtime's `--root`
//! and our bundles, random container ids, and the sweep that removes what crashed processes
//! left behind.
//!
//! A container can read its own id (cgroup paths, mountinfo) and the host paths of its
//! capture files (`readlink /proc/self/fd/1`), so neither names anything of the host: the
//! owner of a container is recorded in its bundle, which stays on the host, and capture dirs
//! carry a random per-process token whose liveness an abstract socket tells.

use crate::spec::identity::HostIdentity;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::SandboxError;
use crate::runtimes::OciRuntime;
use crate::sys::fs_tree::remove_tree_blocking;

/// Prefix of generated container ids: `osb-<16 random hex digits>`.
const ID_PREFIX: &str = "osb-";

/// Length of the random tokens in ids and capture dir names: 16 hex digits (64 bits).
const TOKEN_LEN: usize = 16;

/// The directories of one runtime under the library's base directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDirs {
    /// The runtime's `--root`.
    pub root: PathBuf,
    /// Parent of the bundle directories, one per container id.
    pub bundles: PathBuf,
    /// The snapshot store (see `snapshot::Store`), on the bundles' filesystem: a snapshot's
    /// layer is a bundle's upper layer renamed.
    pub snapshots: PathBuf,
    /// The shared, read-only root filesystem (links and a minimal /etc), owned by this
    /// process's user (no container's uid may own anything every container reads).
    pub rootfs: PathBuf,
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

    /// As root, one shared rootfs per id-range base (its name says which).
    pub fn new(base: &Path, runtime: OciRuntime, identity: HostIdentity) -> Self {
        let runtime_dir = base.join(runtime.binary_name());
        let rootfs = match identity {
            HostIdentity::Root { userns_base } => base.join(format!("rootfs-{userns_base}")),
            HostIdentity::Rootless { .. } => base.join("rootfs"),
        };
        StateDirs {
            root: runtime_dir.join("state"),
            bundles: runtime_dir.join("bundles"),
            snapshots: runtime_dir.join("snapshots"),
            rootfs,
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
        crate::host::rootfs::prepare_rootfs(&self.rootfs)?;
        // Earlier versions handed it to the first id range: take it back.
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        if std::fs::metadata(&self.rootfs).is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() != uid || m.gid() != gid
        }) {
            crate::sys::fs_tree::chown_tree_blocking(&self.rootfs, uid, gid)
                .map_err(|e| SandboxError::io("taking the rootfs back", &self.rootfs, e))?;
        }
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
        Ok(())
    }

    /// The bundle directory of container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }
}

/// A new container id, `osb-` and 16 random hex digits (64 bits: unique on this machine, and a
/// collision in one state dir would be refused as a duplicate bundle), telling nothing about
/// the host.
pub(crate) fn new_id() -> String {
    format!("{ID_PREFIX}{}", random_token())
}

/// 16 random lowercase hex digits, from the kernel's CSPRNG.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_LEN / 2];
    // Up to 256 bytes come whole; only a signal while the kernel's pool is not yet initialised
    // can interrupt the call.
    // SAFETY: the pointer and length describe `bytes`.
    while unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) }
        != bytes.len() as libc::ssize_t
    {
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::Interrupted,
            "getrandom: {err}"
        );
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Capture dirs are named `osb-capture-<token>-<id>-<random>`, with this process's
/// [`capture_token`], so that a sweep can tell whose they are without opening them.
const CAPTURE_PREFIX: &str = "osb-capture-";

/// The name prefix of a capture dir of container `id`.
pub(crate) fn capture_dir_prefix(id: &str) -> String {
    format!("{CAPTURE_PREFIX}{}-{id}-", capture_token())
}

/// This process's capture token: 16 random hex digits, and the abstract Unix socket named
/// after it that the process holds while it lives, by which [`capture_token_alive`] tells.
/// If no socket can be bound, a token that sweeps never take for a dead one.
fn capture_token() -> &'static str {
    static TOKEN: OnceLock<(String, Option<UnixDatagram>)> = OnceLock::new();
    let (token, _socket) = TOKEN.get_or_init(|| {
        let token = random_token();
        let bound = SocketAddr::from_abstract_name(capture_socket_name(&token))
            .and_then(|addr| UnixDatagram::bind_addr(&addr));
        match bound {
            Ok(socket) => (token, Some(socket)),
            Err(err) => {
                tracing::warn!(%err, "no capture owner socket: a crash would leave capture dirs");
                ("unswept".to_owned(), None)
            }
        }
    });
    token
}

/// The abstract socket name of capture token `token`.
fn capture_socket_name(token: &str) -> String {
    format!("oci-sandbox/capture-owner/{token}")
}

/// Whether the process of capture token `token` may be alive: false only when nothing holds
/// its socket. Abstract sockets belong to the network namespace: processes sharing a capture
/// dir must share one.
fn capture_token_alive(token: &str) -> bool {
    let connected = SocketAddr::from_abstract_name(capture_socket_name(token))
        .and_then(|addr| UnixDatagram::unbound()?.connect_addr(&addr));
    !matches!(connected, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Removes the capture dirs in `dir` whose owner process is dead. Blocking.
pub(crate) fn sweep_capture_dirs_blocking(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        // `osb-capture-<token>-...`
        let Some(token) = name
            .strip_prefix(CAPTURE_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .map(|(token, _)| token)
            .filter(|t| t.len() == TOKEN_LEN && t.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            continue;
        };
        if !capture_token_alive(token) && remove_tree_blocking(&e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Removes everything that containers of dead owners left in this runtime's state: the
/// containers themselves, their bundles and their cgroups. Containers of live processes
/// (this one included) are not touched. Returns the ids that were removed.
///
/// The owner of a container is the one its bundle names: containers, made after their
/// bundle and removed before it, are doomed with a dead owner's bundle or without one.
/// Everything of container `id` on the host, once the runtime is done with it: processes left in
/// its cgroups and the cgroups (a runtime's own `rmdir` fails while dying processes are still
/// in them), its state in the runtime's root, its bundle. Blocking.
pub(crate) fn remove_leftovers_blocking(root: &Path, id: &str, bundle: &Path) {
    crate::host::cgroup::reap_blocking(id);
    remove_runtime_state_blocking(root, id);
    let _ = remove_tree_blocking(bundle);
}

/// Removes what a runtime keeps of container `id` in its root, once the container is gone:
/// runc's and crun's `<id>/` directory, runsc's `<id>_sandbox:<id>.state` and `.lock` files
/// (which an interrupted runsc leaves behind; a root container's sandbox has its id). Blocking;
/// a few syscalls whatever the number of containers in the root.
pub(crate) fn remove_runtime_state_blocking(root: &Path, id: &str) {
    let _ = remove_tree_blocking(&root.join(id));
    for suffix in ["state", "lock"] {
        let _ = std::fs::remove_file(root.join(format!("{id}_sandbox:{id}.{suffix}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_random_and_name_nothing_of_the_host() {
        let id = new_id();
        let token = id.strip_prefix(ID_PREFIX).unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert!(crate::config::validate_id(&id).is_ok());
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn capture_dirs_of_live_tokens_stay_and_of_dead_ones_go() {
        // Named by a random token, not the pid (a pid's digits can occur in random hex: the
        // name is checked by its structure).
        let prefix = capture_dir_prefix("osb-0123456789abcdef");
        let token = capture_token();
        assert_eq!(
            prefix,
            format!("{CAPTURE_PREFIX}{token}-osb-0123456789abcdef-")
        );
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(capture_token_alive(capture_token()));
        let dead = random_token();
        assert!(!capture_token_alive(&dead));

        let tmp = tempfile::tempdir().unwrap();
        let mine = tmp.path().join(format!("{prefix}abc"));
        let theirs = tmp
            .path()
            .join(format!("{CAPTURE_PREFIX}{dead}-user-id-abc"));
        let other = tmp.path().join("osb-capture-garbage-id-abc");
        for d in [&mine, &theirs, &other] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("stdout"), b"x").unwrap();
        }
        assert_eq!(sweep_capture_dirs_blocking(tmp.path()), 1);
        assert!(mine.exists() && other.exists() && !theirs.exists());
    }
}
