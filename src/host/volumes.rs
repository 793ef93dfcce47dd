//! Volumes: named, persistent directories the library owns under the data dir's `volumes/`,
//! mounted into any number of sandboxes (read-write or read-only), kept when the sandboxes go.
//!
//! ```text
//! <data>/volumes/<name>/volume.json   what it is (its size limit), written once
//!                       lock          flock(2)ed shared by every container that mounts it,
//!                                     exclusively by its removal
//!                       data/         its files, when it has no size limit
//!                       image.ext4    with a size limit: an ext4 file system of that size
//!                       mnt/          (sparse: its disk use is what was written) loop-mounted
//!                                     here, on first use, and kept mounted
//! ```
//!
//! A size limit is a file system of that size, which the kernel enforces (`ENOSPC`), as
//! root only: rootless, a loop mount is not the caller's to make, and a size limit is
//! [`SessionErrorKind::Unsupported`]. The mount is made in the host's mount namespace with
//! `nosuid,nodev` (unlike an image's root, which lives in the runtime's own namespace): it is
//! shared by every sandbox that mounts the volume, which one ext4 mount must be (two would
//! corrupt it), and it outlives the process that made it like the volume does. Files keep
//! the container's own ids, and each container gets the volume through an idmapped mount
//! into its user namespace (see `image::mount`), so two sandboxes of different id ranges share
//! it with the same owners.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{SandboxError, SessionErrorKind};
use crate::host::sessions::{now_ms, private_dir};

const FORMAT: u32 = 1;
const RECORD: &str = "volume.json";
const LOCK: &str = "lock";
const DATA: &str = "data";
const IMAGE: &str = "image.ext4";
const MNT: &str = "mnt";
/// The smallest size limit: ext4's own structures take a few MiB.
pub const MIN_VOLUME_SIZE: u64 = 16 << 20;
/// How long `mkfs.ext4` and a mount may take.
const TOOL_DEADLINE: Duration = Duration::from_secs(60);

/// How a volume is made: see [`NamespaceContainer::create_volume`].
///
/// [`NamespaceContainer::create_volume`]: crate::NamespaceContainer::create_volume
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeOptions {
    /// The most bytes it holds (at least [`MIN_VOLUME_SIZE`]); past it writes fail with
    /// `ENOSPC`. As root only. `None` (the default): bounded by the data dir's disk.
    pub size_limit: Option<u64>,
}

impl VolumeOptions {
    /// A volume of at most `bytes`.
    pub fn size_limit(bytes: u64) -> Self {
        VolumeOptions {
            size_limit: Some(bytes),
        }
    }
}

/// A volume, as [`NamespaceContainer::volumes`] lists it.
///
/// [`NamespaceContainer::volumes`]: crate::NamespaceContainer::volumes
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// Its size limit, if it has one.
    pub size_limit: Option<u64>,
    /// The disk space its files take, in bytes.
    pub used_bytes: u64,
    /// When it was created.
    pub created: SystemTime,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    format: u32,
    name: String,
    size_limit: Option<u64>,
    created_ms: u64,
}

/// The volumes of one data dir.
#[derive(Debug, Clone)]
pub(crate) struct VolumeStore {
    root: PathBuf,
}

/// A container's hold on a volume (a shared lock): its removal waits for none, it is refused.
#[derive(Debug)]
pub(crate) struct VolumeHold {
    _lock: nix::fcntl::Flock<File>,
}

impl VolumeStore {
    /// The store under data dir `data`.
    pub fn new(data: &Path) -> Self {
        VolumeStore {
            root: data.join("volumes"),
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates volume `name` (made whole under a temporary name, then renamed into place), in
    /// a task of its own: a dropped future still ends with the volume made or nothing left.
    pub async fn create(
        &self,
        name: &str,
        options: &VolumeOptions,
        rootless: bool,
    ) -> Result<VolumeInfo, SandboxError> {
        let (this, name, options) = (self.clone(), name.to_owned(), options.clone());
        tokio::spawn(async move { this.create_now(&name, &options, rootless).await })
            .await
            .unwrap_or_else(|e| {
                Err(SandboxError::Process {
                    context: "creating a volume",
                    source: std::io::Error::other(e.to_string()),
                })
            })
    }

    async fn create_now(
        &self,
        name: &str,
        options: &VolumeOptions,
        rootless: bool,
    ) -> Result<VolumeInfo, SandboxError> {
        crate::config::validate_name("name", name)?;
        if let Some(size) = options.size_limit {
            if rootless {
                return Err(SandboxError::volume(
                    name,
                    SessionErrorKind::Unsupported,
                    "a size limit needs root (a loop-mounted file system): rootless, a volume \
                     is bounded by its disk only",
                ));
            }
            if size < MIN_VOLUME_SIZE {
                return Err(SandboxError::invalid(
                    "size_limit",
                    format!("{size} bytes is below the least, {MIN_VOLUME_SIZE}"),
                ));
            }
        }
        let (root, name_owned) = (self.root.clone(), name.to_owned());
        let temp = crate::sys::blocking("creating a volume", move || {
            private_dir(&root)
                .map_err(|e| SandboxError::io("creating the volumes dir", &root, e))?;
            if root.join(&name_owned).exists() {
                return Err(exists(&name_owned));
            }
            let temp = root.join(format!(
                ".new-{name_owned}-{}",
                crate::host::state::random_token()
            ));
            private_dir(&temp).map_err(|e| SandboxError::io("creating a volume", &temp, e))?;
            Ok(temp)
        })
        .await?;
        let made = self.fill(&temp, name, options).await;
        let made = match made {
            Ok(()) => {
                let (temp, target) = (temp.clone(), self.dir(name));
                let name = name.to_owned();
                crate::sys::blocking("creating a volume", move || {
                    match std::fs::rename(&temp, &target) {
                        Ok(()) => Ok(()),
                        Err(e)
                            if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTEMPTY)) =>
                        {
                            Err(exists(&name))
                        }
                        Err(e) => Err(SandboxError::io("creating a volume", &target, e)),
                    }
                })
                .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = made {
            let temp = temp.clone();
            let _ = crate::sys::blocking("removing a failed volume", move || {
                discard_blocking(&temp);
                Ok(())
            })
            .await;
            return Err(e);
        }
        self.info(name).await
    }

    /// Writes volume `name`'s record, lock and data (a directory, or an ext4 image) in `dir`.
    async fn fill(
        &self,
        dir: &Path,
        name: &str,
        options: &VolumeOptions,
    ) -> Result<(), SandboxError> {
        let (d, record) = (
            dir.to_path_buf(),
            Record {
                format: FORMAT,
                name: name.to_owned(),
                size_limit: options.size_limit,
                created_ms: now_ms(),
            },
        );
        let size = options.size_limit;
        crate::sys::blocking("creating a volume", move || {
            let io = |e| SandboxError::io("creating a volume", &d, e);
            let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
            std::fs::write(d.join(RECORD), json).map_err(io)?;
            File::create(d.join(LOCK)).map_err(io)?;
            match size {
                None => {
                    std::fs::create_dir(d.join(DATA)).map_err(io)?;
                    std::fs::set_permissions(
                        d.join(DATA),
                        std::os::unix::fs::PermissionsExt::from_mode(0o755),
                    )
                    .map_err(io)?;
                }
                Some(size) => {
                    std::fs::create_dir(d.join(MNT)).map_err(io)?;
                    let image = File::create(d.join(IMAGE)).map_err(io)?;
                    image.set_len(size).map_err(io)?;
                }
            }
            Ok(())
        })
        .await?;
        if options.size_limit.is_some() {
            let image = dir.join(IMAGE);
            let mut mkfs = tokio::process::Command::new("mkfs.ext4");
            // No reserved blocks (the limit is the sandbox's), no lazy init left to the
            // kernel's thread (which would write the whole image later).
            mkfs.args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            ])
            .arg(&image);
            run_tool(mkfs, "mkfs.ext4").await?;
            self.mount_image(dir).await?;
            // An empty volume: ext4's lost+found is not the sandbox's.
            let lost = dir.join(MNT).join("lost+found");
            let _ = tokio::fs::remove_dir(&lost).await;
        }
        Ok(())
    }

    /// Loop-mounts the volume in `dir`'s image on its `mnt`, unless it is mounted already.
    async fn mount_image(&self, dir: &Path) -> Result<(), SandboxError> {
        let (d, mnt) = (dir.to_path_buf(), dir.join(MNT));
        // One mount at a time per volume, across processes: two would corrupt it.
        let guard = crate::sys::blocking("locking a volume's mount", move || {
            let path = d.join(".mount-lock");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|e| SandboxError::io("locking a volume's mount", &path, e))?;
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| SandboxError::io("locking a volume's mount", &path, e.into()))
        })
        .await?;
        let m = mnt.clone();
        let mounted =
            crate::sys::blocking("checking a volume's mount", move || Ok(is_mount_point(&m)))
                .await?;
        if !mounted {
            let mut mount = tokio::process::Command::new("mount");
            mount
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev"])
                .arg(dir.join(IMAGE))
                .arg(&mnt);
            run_tool(mount, "mount").await?;
        }
        drop(guard);
        Ok(())
    }

    /// Where volume `name`'s files are, mounted if it has a size limit, and a hold on it that
    /// keeps its removal away while a container mounts it.
    pub async fn prepare(&self, name: &str) -> Result<(PathBuf, VolumeHold), SandboxError> {
        let dir = self.dir(name);
        let (d, n) = (dir.clone(), name.to_owned());
        let (record, hold) = crate::sys::blocking("opening a volume", move || {
            let record = read_record_blocking(&d, &n)?;
            let hold = lock_blocking(&d, &n, nix::fcntl::FlockArg::LockSharedNonblock)?;
            Ok((record, VolumeHold { _lock: hold }))
        })
        .await?;
        match record.size_limit {
            None => Ok((dir.join(DATA), hold)),
            Some(_) => {
                self.mount_image(&dir).await?;
                Ok((dir.join(MNT), hold))
            }
        }
    }

    /// Volume `name`'s description.
    pub async fn info(&self, name: &str) -> Result<VolumeInfo, SandboxError> {
        let (dir, name) = (self.dir(name), name.to_owned());
        crate::sys::blocking("reading a volume", move || info_blocking(&dir, &name)).await
    }

    /// Every volume of the store.
    pub async fn list(&self) -> Result<Vec<VolumeInfo>, SandboxError> {
        let root = self.root.clone();
        crate::sys::blocking("listing volumes", move || {
            let Ok(entries) = std::fs::read_dir(&root) else {
                return Ok(Vec::new());
            };
            let mut infos: Vec<VolumeInfo> = entries
                .flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    crate::config::validate_name("name", &name).ok()?;
                    info_blocking(&e.path(), &name).ok()
                })
                .collect();
            infos.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(infos)
        })
        .await
    }

    /// Removes volume `name` and its files, unless a container mounts it.
    pub async fn remove(&self, name: &str) -> Result<(), SandboxError> {
        crate::config::validate_name("name", name)?;
        let (dir, n) = (self.dir(name), name.to_owned());
        let root = self.root.clone();
        crate::sys::blocking("removing a volume", move || {
            if !dir.is_dir() {
                return Err(not_found(&n));
            }
            let lock = lock_blocking(&dir, &n, nix::fcntl::FlockArg::LockExclusiveNonblock)?;
            let mnt = dir.join(MNT);
            if is_mount_point(&mnt) {
                // No container holds it (the lock): nothing should use the mount.
                nix::mount::umount(&mnt).map_err(|e| match e {
                    nix::errno::Errno::EBUSY => {
                        SandboxError::volume(&n, SessionErrorKind::InUse, "its file system is busy")
                    }
                    e => SandboxError::io("unmounting a volume", &mnt, e.into()),
                })?;
            }
            let doomed = root.join(format!(
                ".removing-{n}-{}",
                crate::host::state::random_token()
            ));
            std::fs::rename(&dir, &doomed)
                .map_err(|e| SandboxError::io("removing a volume", &dir, e))?;
            drop(lock);
            crate::sys::fs_tree::remove_tree_blocking(&doomed)
                .map_err(|e| SandboxError::io("removing a volume", &doomed, e))
        })
        .await
    }
}

impl VolumeStore {
    /// Removes what creations and removals cut short left (`.new-*`, `.removing-*`, older
    /// than a minute: no live process is at them), their mounts first. Blocking.
    pub fn sweep_blocking(&self) {
        crate::host::sessions::sweep_stale_blocking(&self.root, discard_blocking);
    }
}

/// Removes a volume's directory that is no volume (any more): its file system unmounted
/// first, if it has one mounted. Blocking.
fn discard_blocking(dir: &Path) {
    let mnt = dir.join(MNT);
    if is_mount_point(&mnt) {
        let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = crate::sys::fs_tree::remove_tree_blocking(dir);
}

fn info_blocking(dir: &Path, name: &str) -> Result<VolumeInfo, SandboxError> {
    let record = read_record_blocking(dir, name)?;
    let files = match record.size_limit {
        None => dir.join(DATA),
        Some(_) => dir.join(IMAGE),
    };
    let used_bytes = match record.size_limit {
        None => crate::sys::fs_tree::disk_usage_blocking(&files).unwrap_or(0),
        Some(_) => {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(&files).map_or(0, |m| m.blocks() * 512)
        }
    };
    Ok(VolumeInfo {
        name: name.to_owned(),
        size_limit: record.size_limit,
        used_bytes,
        created: SystemTime::UNIX_EPOCH + Duration::from_millis(record.created_ms),
    })
}

fn read_record_blocking(dir: &Path, name: &str) -> Result<Record, SandboxError> {
    use std::io::Read;
    let path = dir.join(RECORD);
    let mut bytes = Vec::new();
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut bytes));
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => {
            return Err(not_found(name));
        }
        Err(e) => {
            return Err(SandboxError::volume(
                name,
                SessionErrorKind::Corrupt,
                format!("its record: {e}"),
            ));
        }
    }
    let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
        SandboxError::volume(name, SessionErrorKind::Corrupt, format!("its record: {e}"))
    })?;
    if record.format != FORMAT || record.name != name {
        return Err(SandboxError::volume(
            name,
            SessionErrorKind::Corrupt,
            "its record is of another format or volume",
        ));
    }
    Ok(record)
}

fn lock_blocking(
    dir: &Path,
    name: &str,
    how: nix::fcntl::FlockArg,
) -> Result<nix::fcntl::Flock<File>, SandboxError> {
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| {
            SandboxError::volume(name, SessionErrorKind::Corrupt, format!("its lock: {e}"))
        })?;
    nix::fcntl::Flock::lock(file, how).map_err(|(_, errno)| match errno {
        nix::errno::Errno::EWOULDBLOCK => SandboxError::volume(
            name,
            SessionErrorKind::InUse,
            "a sandbox mounts it (or it is being removed)",
        ),
        errno => SandboxError::io("locking a volume", &path, errno.into()),
    })
}

/// Whether `path` is a mount point: its device differs from its parent's, or its mount id.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(here), Some(Ok(parent))) = (
        std::fs::symlink_metadata(path),
        path.parent().map(std::fs::symlink_metadata),
    ) else {
        return false;
    };
    here.dev() != parent.dev()
}

fn exists(name: &str) -> SandboxError {
    SandboxError::volume(
        name,
        SessionErrorKind::Exists,
        "a volume of that name exists",
    )
}

fn not_found(name: &str) -> SandboxError {
    SandboxError::volume(name, SessionErrorKind::NotFound, "no volume of that name")
}

/// Runs a host tool to its end within [`TOOL_DEADLINE`] (killed past it, or when dropped).
async fn run_tool(
    mut cmd: tokio::process::Command,
    what: &'static str,
) -> Result<(), SandboxError> {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| SandboxError::Process {
        context: what,
        source,
    })?;
    let out = tokio::time::timeout(TOOL_DEADLINE, child.wait_with_output())
        .await
        .map_err(|_| SandboxError::Timeout {
            what: what.to_owned(),
            after: TOOL_DEADLINE,
        })?
        .map_err(|source| SandboxError::Process {
            context: what,
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Process {
            context: what,
            source: std::io::Error::other(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        })
    }
}
