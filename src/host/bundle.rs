//! The on-disk bundle of one container (`config.json` in a directory named after its id) and
//! the shared root filesystem every container of the library starts from.

use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::config::ROOTFS_LINKS;
use crate::error::SandboxError;
use crate::host::owner::{OWNER_ANNOTATION, self_owner};

/// The name of the runtime's pid file in a bundle.
pub(crate) const PID_FILE: &str = "pid";

/// A bundle directory. Dropping it removes the directory (blocking); the async paths call
/// [`Bundle::remove`] instead, which does the same off the worker threads.
#[derive(Debug)]
pub(crate) struct Bundle {
    dir: Option<PathBuf>,
    /// The container's own user namespace and id range, released with the bundle.
    pub userns: Option<crate::host::id_range::UserNamespace>,
}

impl Bundle {
    /// Creates `dir` (which must not exist: that is what makes ids unique) and writes the spec
    /// into it, annotated with this process as its owner. Blocking.
    pub fn create_blocking(dir: PathBuf, id: &str, mut spec: Spec) -> Result<Bundle, SandboxError> {
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::DuplicateId { id: id.to_owned() });
            }
            Err(e) => return Err(SandboxError::io("creating the bundle directory", dir, e)),
        }
        // From here on, dropping `bundle` removes the directory again.
        let bundle = Bundle {
            dir: Some(dir),
            userns: None,
        };
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.insert(OWNER_ANNOTATION.to_owned(), self_owner().to_owned());
        spec.set_annotations(Some(annotations));
        let json = serde_json::to_vec(&spec).map_err(|e| {
            SandboxError::Spec(oci_spec::OciSpecError::Other(format!("serialising: {e}")))
        })?;
        let path = bundle.path().join("config.json");
        std::fs::write(&path, json)
            .map_err(|e| SandboxError::io("writing config.json", path, e))?;
        Ok(bundle)
    }

    pub fn path(&self) -> &Path {
        self.dir.as_deref().expect("bundle used after removal")
    }

    /// Where the runtime writes the container's init pid.
    pub fn pid_path(&self) -> PathBuf {
        self.path().join(PID_FILE)
    }

    /// Where the runtime writes its own log for this container.
    pub fn log_path(&self) -> PathBuf {
        self.path().join("runtime.log")
    }

    /// The directory's path, which the caller now removes (dropping no longer does).
    pub fn into_path(mut self) -> PathBuf {
        self.dir.take().expect("bundle used after removal")
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            let _ = crate::sys::fs_tree::remove_tree_blocking(&dir);
        }
    }
}

/// Files of the shared root filesystem's `/etc`: users and name lookup without the host's.
const ETC_FILES: &[(&str, &str)] = &[
    (
        "passwd",
        "root:x:0:0:root:/tmp:/bin/sh\nsandbox:x:1000:1000:sandbox:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    (
        "group",
        "root:x:0:\ntty:x:5:\nsandbox:x:1000:\nnogroup:x:65534:\n",
    ),
    (
        "hosts",
        "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    (
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files dns\n",
    ),
    ("resolv.conf", ""),
];

/// Makes the mount points of `config` in the shared root filesystem beforehand (blocking,
/// idempotent, safe against concurrent callers). Runtimes create missing ones themselves, but
/// crun fails ("cannot mkdir: File exists") when two containers race to make the same one.
/// Destinations inside another mount are left to the runtime (they live in that mount).
pub(crate) fn ensure_mount_points(
    rootfs: &Path,
    config: &crate::ContainerConfig,
) -> Result<(), SandboxError> {
    use crate::config::MountKind;
    let fixed = ["/proc", "/dev", "/sys"].map(|d| (Path::new(d), true));
    let configured = config.mounts.iter().map(|m| {
        let dir = match &m.kind {
            MountKind::Bind { source, .. } => source.is_dir(),
            MountKind::Tmpfs { .. } => true,
        };
        (m.destination.as_path(), dir)
    });
    for (destination, dir) in fixed.into_iter().chain(configured) {
        let nested = config
            .mounts
            .iter()
            .any(|m| destination != m.destination && destination.starts_with(&m.destination))
            || destination.starts_with("/proc") && destination != Path::new("/proc")
            || destination.starts_with("/dev") && destination != Path::new("/dev")
            || destination.starts_with("/sys") && destination != Path::new("/sys");
        if nested {
            continue;
        }
        let at = rootfs.join(destination.strip_prefix("/").unwrap_or(destination));
        if at.symlink_metadata().is_ok() {
            continue;
        }
        let err = |e| SandboxError::io("making a mount point in the rootfs", &at, e);
        let parent = at.parent().unwrap_or(rootfs);
        match std::fs::create_dir_all(parent) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
        let made = if dir {
            std::fs::create_dir(&at)
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&at)
                .map(drop)
        };
        match made {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// Makes the shared root filesystem (idempotent, blocking): `/bin`, `/lib*`... as links into
/// `/usr` (which is bind-mounted from the host), and a minimal `/etc`.
pub(crate) fn prepare_rootfs(rootfs: &Path) -> Result<(), SandboxError> {
    let err = |what, p: &Path, e| SandboxError::io(what, p, e);
    for (link, target) in ROOTFS_LINKS {
        let host_link = Path::new(link);
        // Mirror the host: a link where it has one (merged /usr), nothing where it has none.
        if !host_link.is_symlink() {
            continue;
        }
        let at = rootfs.join(link.trim_start_matches('/'));
        if at.symlink_metadata().is_err() {
            let rel = target.trim_start_matches('/');
            match std::os::unix::fs::symlink(rel, &at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err("creating a rootfs link", &at, e)),
            }
        }
    }
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| err("creating the rootfs /etc", &etc, e))?;
    for (name, content) in ETC_FILES {
        let path = etc.join(name);
        if path.exists() {
            continue;
        }
        // Write then rename, so that a concurrent container never sees a half-written file.
        let mut tmp = tempfile::NamedTempFile::new_in(&etc)
            .map_err(|e| err("writing the rootfs /etc", &etc, e))?;
        tmp.write_all(content.as_bytes())
            .map_err(|e| err("writing the rootfs /etc", &path, e))?;
        let _ = tmp
            .as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
        tmp.persist(&path)
            .map_err(|e| err("writing the rootfs /etc", &path, e.error))?;
    }
    Ok(())
}
