//! The on-disk bundle of one container (`config.json` in a directory named after its id),
//! and the mount points its config needs in the shared root filesystem.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

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
    /// The image the container's root is made of, held (its layers locked) with the bundle.
    pub image: Option<std::sync::Arc<crate::image::PreparedImage>>,
    /// The container's writable host directories, known as such while it lives (the host
    /// follows no link in them).
    pub writable_dirs: crate::host::sandbox_dirs::SandboxDirs,
    /// What the container holds while it lives (a volume's shared lock, a named sandbox's
    /// lock), released with the bundle, once every process of it is gone.
    pub holds: Vec<Box<dyn std::any::Any + Send + Sync>>,
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
            image: None,
            writable_dirs: Default::default(),
            holds: Vec::new(),
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
