//! Named sandboxes on disk: one directory each under the data dir's `sessions/`, holding the
//! sandbox's record (its config, labels, state, times), the lock its owner holds, and the
//! directories the sandbox writes (`workspace/`, `tmp/`) and, on gVisor, its last
//! hibernation. Everything here outlives the process that made it.
//!
//! ```text
//! <data>/sessions/<name>/record.json   the record, replaced by a rename at each change
//!                        lock          flock(2)ed by the process that holds the sandbox
//!                        workspace/    /workspace in the container (its cwd)
//!                        tmp/          /tmp in the container
//!                        hibernated/   gVisor: the last hibernation (a saved snapshot)
//!                        store/        gVisor: where a hibernation is taken
//! ```
//!
//! **Who holds a sandbox** is an exclusive `flock` on its `lock` file: the kernel drops it
//! when the holder's file closes, a `SIGKILL` included, so a dead owner never keeps it and
//! no pid is trusted. Two processes (or two handles of one) connecting at once: one gets
//! the lock, the other [`SessionErrorKind::InUse`].
//!
//! **The sandbox's directories are the container's**: the host never follows a path in them.
//! It makes them, measures them and removes them with the fd walks of `sys::fs_tree`, and
//! mounts them by their fixed paths in the session's directory, which no container can
//! change (`0700`, the host's). Files there keep the container's own ids (0 is the
//! container's root): each container gets them through an idmapped mount of its own user
//! namespace, so a sandbox resumed under another id range sees its files as it left them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::ContainerConfig;
use crate::error::{SandboxError, SessionErrorKind};
use crate::runtimes::OciRuntime;

/// The record's format: a record of another one is [`SessionErrorKind::Corrupt`].
const FORMAT: u32 = 1;
/// The record's file.
const RECORD: &str = "record.json";
/// The lock's file.
const LOCK: &str = "lock";
/// `/workspace` in the container.
pub(crate) const WORKSPACE: &str = "workspace";
/// `/tmp` in the container.
pub(crate) const TMP: &str = "tmp";
/// gVisor: the last hibernation, a saved snapshot.
pub(crate) const HIBERNATED: &str = "hibernated";
/// gVisor: where a hibernation's checkpoint is taken before it is saved.
pub(crate) const STORE: &str = "store";
/// The most bytes of a record read back: a record is a config and some labels.
const RECORD_LIMIT: u64 = 4 << 20;

/// What a named sandbox is doing, as [`NamespaceContainer::sandboxes`] sees it.
///
/// [`NamespaceContainer::sandboxes`]: crate::NamespaceContainer::sandboxes
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SandboxState {
    /// A process holds it and its container runs.
    Running,
    /// A process holds it and its container is frozen ([`Sandbox::pause`]): no CPU, its
    /// memory kept.
    ///
    /// [`Sandbox::pause`]: crate::Sandbox::pause
    Paused,
    /// No container runs: its files are on disk (and on gVisor, after a
    /// [`Sandbox::hibernate`], its memory and processes). The next use resumes it.
    ///
    /// [`Sandbox::hibernate`]: crate::Sandbox::hibernate
    Hibernated,
    /// Its last holder died while it ran (killed, crashed): its files are on disk as the
    /// last completed call left them; [`connect`] resumes it.
    ///
    /// [`connect`]: crate::NamespaceContainer::connect
    Crashed,
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxState::Running => "running",
            SandboxState::Paused => "paused",
            SandboxState::Hibernated => "hibernated",
            SandboxState::Crashed => "crashed",
        })
    }
}

/// A named sandbox, as [`NamespaceContainer::sandboxes`] lists it.
///
/// [`NamespaceContainer::sandboxes`]: crate::NamespaceContainer::sandboxes
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxInfo {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The runtime it runs on.
    pub runtime: OciRuntime,
    /// What it is doing.
    pub state: SandboxState,
    /// When it was created.
    pub created: SystemTime,
    /// When it was last used: its last state change, or its last call while this process
    /// holds it.
    pub last_used: SystemTime,
    /// The disk space its state takes (what it wrote, and a hibernation's checkpoint), in
    /// bytes; volumes are counted on their own.
    pub disk_bytes: u64,
}

/// What `record.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    format: u32,
    pub name: String,
    pub runtime: OciRuntime,
    /// The config as the caller gave it (before the session's mounts and its image).
    pub config: ContainerConfig,
    /// Milliseconds since the epoch.
    pub created_ms: u64,
    pub last_used_ms: u64,
    /// The state its holder last recorded (`Running` or `Paused` with nobody holding it is a
    /// crash).
    pub state: SandboxState,
}

impl Record {
    /// A new record of `config`'s sandbox, running now.
    pub fn new(name: &str, runtime: OciRuntime, config: ContainerConfig) -> Self {
        let now = now_ms();
        Record {
            format: FORMAT,
            name: name.to_owned(),
            runtime,
            config,
            created_ms: now,
            last_used_ms: now,
            state: SandboxState::Running,
        }
    }
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time_of(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// The named sandboxes of one data dir.
#[derive(Debug, Clone)]
pub(crate) struct SessionStore {
    root: PathBuf,
}

/// A named sandbox held by this process: its directory and its lock, released when dropped.
/// The record set with [`release_with`](Self::release_with) is written first, while the
/// lock is still held: a sandbox let go cleanly says so, one whose holder died says what it
/// last recorded.
#[derive(Debug)]
pub(crate) struct SessionLock {
    dir: PathBuf,
    /// `None` only once dropped.
    _lock: Option<nix::fcntl::Flock<File>>,
    on_release: std::sync::Mutex<Option<Record>>,
    /// Told once the lock is let go.
    released: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl Drop for SessionLock {
    /// Writes the release's record, then lets the lock go: on the blocking pool when there
    /// is a runtime (never on a worker), else here.
    fn drop(&mut self) {
        let record = self
            .on_release
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (dir, lock) = (std::mem::take(&mut self.dir), self._lock.take());
        let released = self
            .released
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let release = move || {
            if let Some(record) = record
                && let Err(err) = write_record_blocking(&dir, &record)
            {
                tracing::warn!(%err, "recording a named sandbox's release");
            }
            drop(lock);
            if let Some(released) = released {
                let _ = released.send(());
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(release)),
            Err(_) => release(),
        }
    }
}

impl SessionLock {
    /// A receiver told once the lock is let go (after the release's record is written).
    pub fn released(&self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.released.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// The record to write when the lock goes (a small file replaced by a rename).
    pub fn release_with(&self, record: Record) {
        *self.on_release.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// Releases the session and removes it with everything it wrote (a failed creation, or
    /// a removal of a sandbox this process held). Blocking.
    pub fn discard_blocking(mut self) -> Result<(), SandboxError> {
        *self.on_release.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        let root = self.dir.parent().map(Path::to_path_buf).unwrap_or_default();
        let doomed = root.join(format!(".removing-{}", crate::host::state::random_token()));
        std::fs::rename(&self.dir, &doomed)
            .map_err(|e| SandboxError::io("removing a session", &self.dir, e))?;
        // Let go here, not on the pool: the removal below must not race a new holder.
        drop(self._lock.take());
        drop(self);
        crate::sys::fs_tree::remove_tree_blocking(&doomed)
            .map_err(|e| SandboxError::io("removing a session", &doomed, e))
    }

    /// The session's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces the record (a temp file renamed over it: a reader sees the old one or the
    /// new one, and a crash leaves one of them). Blocking.
    pub fn write_record_blocking(&self, record: &Record) -> Result<(), SandboxError> {
        write_record_blocking(&self.dir, record)
    }
}

impl SessionStore {
    /// The store under data dir `data`.
    pub fn new(data: &Path) -> Self {
        SessionStore {
            root: data.join("sessions"),
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Session `name`'s directory (whether or not it exists).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates session `record.name` and holds it: its directory (made whole under a
    /// temporary name, then renamed into place, so that nobody sees half of it), its
    /// record, its lock, and its container's directories owned by `owner` (the container's
    /// ids: `uid`, `gid`). Blocking.
    pub fn create_blocking(
        &self,
        record: &Record,
        owner: (u32, u32),
    ) -> Result<SessionLock, SandboxError> {
        let name = &record.name;
        let io = |what, p: &Path, e| SandboxError::io(what, p, e);
        private_dir(&self.root).map_err(|e| io("creating the sessions dir", &self.root, e))?;
        let target = self.dir(name);
        if target.exists() {
            return Err(exists(name));
        }
        let temp = self.root.join(format!(
            ".new-{name}-{}",
            crate::host::state::random_token()
        ));
        let made = (|| {
            std::fs::DirBuilder::new().mode(0o700).create(&temp)?;
            for (sub, mode) in [(WORKSPACE, 0o755), (TMP, 0o1777)] {
                let path = temp.join(sub);
                std::fs::DirBuilder::new().mode(0o700).create(&path)?;
                // Rootless, the caller is the container's root and owns what it makes.
                if nix::unistd::geteuid().is_root() {
                    std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1))?;
                }
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(mode),
                )?;
            }
            Ok::<_, std::io::Error>(())
        })();
        let cleanup = |e: SandboxError| {
            let _ = crate::sys::fs_tree::remove_tree_blocking(&temp);
            e
        };
        made.map_err(|e| cleanup(io("creating the session's dir", &temp, e)))?;
        let lock = lock_blocking(&temp, name).map_err(cleanup)?;
        write_record_blocking(&temp, record).map_err(cleanup)?;
        // A rename onto a directory that exists and holds anything fails: the loser of two
        // creations of one name gets `Exists`.
        match std::fs::rename(&temp, &target) {
            Ok(()) => Ok(SessionLock {
                dir: target,
                _lock: Some(lock),
                on_release: Default::default(),
                released: Default::default(),
            }),
            Err(e) => {
                drop(lock);
                let _ = crate::sys::fs_tree::remove_tree_blocking(&temp);
                match e.raw_os_error() {
                    Some(libc::EEXIST | libc::ENOTEMPTY) => Err(exists(name)),
                    _ => Err(io("creating the session's dir", &target, e)),
                }
            }
        }
    }

    /// Takes session `name` and reads its record. Blocking.
    ///
    /// # Errors
    ///
    /// [`SessionErrorKind::NotFound`], [`InUse`](SessionErrorKind::InUse) (another holder),
    /// [`Corrupt`](SessionErrorKind::Corrupt) (no record, or one that is not readable).
    pub fn open_blocking(&self, name: &str) -> Result<(SessionLock, Record), SandboxError> {
        let dir = self.dir(name);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(corrupt(name, "its directory is not a directory"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::session(
                    name,
                    SessionErrorKind::NotFound,
                    format!("no sandbox of that name in {}", self.root.display()),
                ));
            }
            Err(e) => return Err(SandboxError::io("opening a session", &dir, e)),
        }
        let lock = lock_blocking(&dir, name)?;
        let record = read_record_blocking(&dir, name)?;
        Ok((
            SessionLock {
                dir,
                _lock: Some(lock),
                on_release: Default::default(),
                released: Default::default(),
            },
            record,
        ))
    }

    /// Every named sandbox of the store, with its state and disk use. Entries that are not
    /// sessions (half made, being removed, unreadable) are left out. Blocking.
    pub fn list_blocking(
        &self,
        held_here: &dyn Fn(&str) -> Option<(SandboxState, u64)>,
    ) -> Vec<SandboxInfo> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut infos = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if crate::config::validate_name("name", &name).is_err() {
                continue;
            }
            let dir = entry.path();
            let Ok(record) = read_record_blocking(&dir, &name) else {
                continue;
            };
            let (state, last_used_ms) = match held_here(&name) {
                Some(here) => here,
                None => {
                    // Held by another process, or by nobody: a record of a running or paused
                    // sandbox that nobody holds is a crash.
                    let Some(held) = held_blocking(&dir) else {
                        continue;
                    };
                    let state = match (held, record.state) {
                        (false, SandboxState::Running | SandboxState::Paused) => {
                            SandboxState::Crashed
                        }
                        (_, state) => state,
                    };
                    (state, record.last_used_ms)
                }
            };
            let disk_bytes = crate::sys::fs_tree::disk_usage_blocking(&dir).unwrap_or(0);
            infos.push(SandboxInfo {
                name,
                labels: record.config.labels.clone(),
                runtime: record.runtime,
                state,
                created: time_of(record.created_ms),
                last_used: time_of(last_used_ms),
                disk_bytes,
            });
        }
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// Removes session `name` and everything it wrote, unless someone holds it. It is
    /// renamed out of the way first (atomically: nobody connects to half of it). Blocking.
    pub fn remove_blocking(&self, name: &str) -> Result<(), SandboxError> {
        let dir = self.dir(name);
        if !dir.is_dir() {
            return Err(SandboxError::session(
                name,
                SessionErrorKind::NotFound,
                format!("no sandbox of that name in {}", self.root.display()),
            ));
        }
        // An unreadable record is no reason to keep the rest: only the lock counts.
        SessionLock {
            _lock: Some(lock_blocking(&dir, name)?),
            dir,
            on_release: Default::default(),
            released: Default::default(),
        }
        .discard_blocking()
    }

    /// Removes what creations and removals cut short left behind (`.new-*`, `.removing-*`)
    /// when no live process can still be at it: older than a minute. Blocking.
    pub fn sweep_blocking(&self) {
        sweep_stale_blocking(&self.root, |dir| {
            let _ = crate::sys::fs_tree::remove_tree_blocking(dir);
        });
    }
}

/// Calls `discard` on each entry of store `root` that a creation or removal cut short left
/// (`.new-*`, `.removing-*`) and that is older than a minute (no live process is at it).
/// Blocking.
pub(crate) fn sweep_stale_blocking(root: &Path, discard: impl Fn(&Path)) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".new-") || name.starts_with(".removing-")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(60));
        if old {
            discard(&entry.path());
        }
    }
}

/// A directory only its owner reaches (made if missing, with its parents).
pub(crate) fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

fn exists(name: &str) -> SandboxError {
    SandboxError::session(
        name,
        SessionErrorKind::Exists,
        "a sandbox of that name exists: connect to it, or remove it first",
    )
}

fn corrupt(name: &str, why: impl std::fmt::Display) -> SandboxError {
    SandboxError::session(name, SessionErrorKind::Corrupt, why.to_string())
}

/// Whether someone holds the session in `dir`, seen in `/proc/locks` (a `FLOCK` entry on
/// its lock file's device and inode) without taking the lock, which would make a connect
/// elsewhere fail meanwhile. `None`: no lock file.
fn held_blocking(dir: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir.join(LOCK)).ok()?;
    let dev = meta.dev();
    let id = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    Some(locks.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&id.as_str())
    }))
}

/// Takes the lock of the session in `dir`, without waiting.
fn lock_blocking(dir: &Path, name: &str) -> Result<nix::fcntl::Flock<File>, SandboxError> {
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| SandboxError::io("opening a session's lock", &path, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => SandboxError::session(
                name,
                SessionErrorKind::InUse,
                "another handle holds it (in this process or another): close that one first",
            ),
            errno => SandboxError::io("locking a session", &path, errno.into()),
        },
    )
}

fn write_record_blocking(dir: &Path, record: &Record) -> Result<(), SandboxError> {
    let path = dir.join(RECORD);
    let temp = dir.join(format!(".{RECORD}.{}", crate::host::state::random_token()));
    let json = serde_json::to_vec_pretty(record).expect("a record serialises");
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&temp)?;
        f.write_all(&json)?;
        std::fs::rename(&temp, &path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        SandboxError::io("writing a session's record", &path, e)
    })
}

fn read_record_blocking(dir: &Path, name: &str) -> Result<Record, SandboxError> {
    use std::io::Read;
    let path = dir.join(RECORD);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path);
    let mut file = match file {
        Ok(f) => f,
        Err(e) => return Err(corrupt(name, format!("its record: {e}"))),
    };
    let meta = file
        .metadata()
        .map_err(|e| corrupt(name, format!("its record: {e}")))?;
    if !meta.is_file() {
        return Err(corrupt(name, "its record is not a file"));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(RECORD_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| corrupt(name, format!("its record: {e}")))?;
    if bytes.len() as u64 > RECORD_LIMIT {
        return Err(corrupt(name, "its record is too large"));
    }
    let record: Record = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(name, format!("its record is not one: {e}")))?;
    if record.format != FORMAT || record.name != name {
        return Err(corrupt(
            name,
            format!(
                "its record is of format {} and names {:?}",
                record.format, record.name
            ),
        ));
    }
    Ok(record)
}
