//! Snapshots of long-lived sandboxes: what [`Sandbox::snapshot`](crate::Sandbox::snapshot)
//! returns, what [`NamespaceContainer::start_from`](crate::NamespaceContainer::start_from)
//! and [`Sandbox::restore`](crate::Sandbox::restore) start from, and their store.
//!
//! A snapshot is one of two things, by runtime:
//!
//! - **runc, crun: a layer.** The sandbox's writable layer (its root's overlay upper, `/tmp`
//!   included), moved by a rename into the store once the container is gone: no byte is
//!   copied. It goes on top of the image's layers and of the layers of the snapshot the
//!   sandbox itself started from. No process is carried: CRIU, which runc and crun would need,
//!   does not work on this kernel and is not built into Debian's crun.
//! - **gVisor: a checkpoint.** `runsc checkpoint` of the whole sandbox: its memory, its
//!   processes and its files (the root's writes live in the sandbox's memory). The library's
//!   launcher detaches first, so that no fd of the host's is open in the sandbox (gVisor
//!   cannot save one), and a restored sandbox's launcher is handed a new control socket.
//!
//! Snapshots in the store are the process's: the last clone's drop removes one (after every
//! sandbox started from it), and the crash sweep removes those of dead processes.
//! [`Snapshot::save`] writes one to a directory of the caller's, which
//! [`NamespaceContainer::load_snapshot`](crate::NamespaceContainer::load_snapshot) reads back
//! in another process.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::ContainerConfig;
use crate::error::{SandboxError, SnapshotErrorKind};
use crate::runtimes::OciRuntime;

/// The format of a saved snapshot's `manifest.json`.
const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const LAYER: &str = "layer";
/// A saved snapshot's layers, `layers/<index>`, lowest first.
const LAYERS: &str = "layers";
/// The most a manifest may weigh (it holds a config).
const MANIFEST_LIMIT: u64 = 16 << 20;
/// How the directories of a saved snapshot are opened: never through a symlink.
const DIR_FLAGS: nix::fcntl::OFlag = nix::fcntl::OFlag::O_RDONLY
    .union(nix::fcntl::OFlag::O_DIRECTORY)
    .union(nix::fcntl::OFlag::O_NOFOLLOW)
    .union(nix::fcntl::OFlag::O_CLOEXEC);
const CHECKPOINT: &str = "checkpoint";
const OWNER: &str = "owner";

/// The saved state of a long-lived sandbox, from
/// [`Sandbox::snapshot`](crate::Sandbox::snapshot), to start forks from
/// ([`NamespaceContainer::start_from`](crate::NamespaceContainer::start_from)) or roll back to
/// ([`Sandbox::restore`](crate::Sandbox::restore)).
///
/// On runc and crun it is the sandbox's writable layer (its files: moved, not copied; no
/// process); on gVisor a checkpoint (memory, processes and files). It lives in the state
/// dir's snapshot store until its last clone, and every sandbox started from it, is gone;
/// [`save`](Self::save) keeps a copy that outlives the process. Cheap to clone: clones
/// share it. docs/SNAPSHOTS.md has the details.
#[derive(Debug, Clone)]
pub struct Snapshot {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    runtime: OciRuntime,
    /// The sandbox's config as it was asked for (before its image's config was applied).
    config: ContainerConfig,
    state: State,
    /// Its directory: in the store, or a saved one.
    dir: PathBuf,
    /// In the store: removed when the last clone goes.
    owned: bool,
    /// The snapshot its sandbox had started from (whose layers are under this one's).
    _parent: Option<Snapshot>,
}

#[derive(Debug)]
enum State {
    /// runc, crun: the writable layers, lowest first (the parents' and this one's).
    Layers(Vec<PathBuf>),
    /// gVisor: the checkpoint's directory and the token its launcher waits for.
    Checkpoint { image: PathBuf, token: String },
}

/// What a saved snapshot's `manifest.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    id: String,
    runtime: OciRuntime,
    config: ContainerConfig,
    /// runc, crun: per layer (`layers/<index>`), its entries and bytes, checked at load.
    layers: Vec<TreeSize>,
    /// gVisor: the checkpoint's entries and bytes (`checkpoint/`), and the launcher's token.
    checkpoint: Option<(TreeSize, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct TreeSize {
    entries: u64,
    bytes: u64,
}

impl Snapshot {
    /// This snapshot's id (unique on this machine).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The runtime whose sandboxes it can start.
    pub fn runtime(&self) -> OciRuntime {
        self.inner.runtime
    }

    /// Whether it carries processes and memory (gVisor), not only files (runc, crun).
    pub fn has_processes(&self) -> bool {
        matches!(self.inner.state, State::Checkpoint { .. })
    }

    /// The config of the sandbox it was taken of, as that sandbox was asked for.
    pub fn config(&self) -> &ContainerConfig {
        &self.inner.config
    }

    pub(crate) fn layers(&self) -> &[PathBuf] {
        match &self.inner.state {
            State::Layers(layers) => layers,
            State::Checkpoint { .. } => &[],
        }
    }

    /// gVisor: the checkpoint's directory and its launcher's token.
    pub(crate) fn checkpoint(&self) -> Option<(&Path, &str)> {
        match &self.inner.state {
            State::Checkpoint { image, token } => Some((image, token)),
            State::Layers(_) => None,
        }
    }

    /// A snapshot in the store, in `dir` (made by [`Store::new_dir`]): runc and crun, its
    /// layer at `dir/layer` over `parent`'s.
    pub(crate) fn new_layer(
        dir: PathBuf,
        runtime: OciRuntime,
        config: ContainerConfig,
        parent: Option<Snapshot>,
    ) -> Self {
        let mut layers = parent
            .as_ref()
            .map(|p| p.layers().to_vec())
            .unwrap_or_default();
        layers.push(dir.join(LAYER));
        Self::owned(dir, runtime, config, State::Layers(layers), parent)
    }

    /// A snapshot in the store, in `dir`: gVisor, its checkpoint at `dir/checkpoint`.
    pub(crate) fn new_checkpoint(
        dir: PathBuf,
        runtime: OciRuntime,
        config: ContainerConfig,
        token: String,
    ) -> Self {
        let image = dir.join(CHECKPOINT);
        Self::owned(
            dir,
            runtime,
            config,
            State::Checkpoint { image, token },
            None,
        )
    }

    fn owned(
        dir: PathBuf,
        runtime: OciRuntime,
        config: ContainerConfig,
        state: State,
        parent: Option<Snapshot>,
    ) -> Self {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Snapshot {
            inner: Arc::new(Inner {
                id,
                runtime,
                config,
                state,
                dir,
                owned: true,
                _parent: parent,
            }),
        }
    }

    /// Where the layer of a new snapshot in `dir` goes (runc, crun).
    pub(crate) fn layer_in(dir: &Path) -> PathBuf {
        dir.join(LAYER)
    }

    /// Where the checkpoint of a new snapshot in `dir` goes (gVisor).
    pub(crate) fn checkpoint_in(dir: &Path) -> PathBuf {
        dir.join(CHECKPOINT)
    }

    /// Writes the snapshot to `dir` (which must not exist; its parent must), so that it
    /// outlives this process: [`NamespaceContainer::load_snapshot`](crate::NamespaceContainer::load_snapshot)
    /// reads it back. Files are hard-linked where `dir` is on the store's filesystem (no
    /// data copied; the store's files are never written again), else copied. The layers are
    /// walked by directory fds, no link of theirs followed, and the copy holds no set-id
    /// bit, file capability or `trusted.*` attribute (but overlayfs's own). A saved
    /// snapshot is the caller's: nothing removes it.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] when `dir` exists or cannot be written;
    /// [`SandboxError::Snapshot`] with [`Corrupt`](SnapshotErrorKind::Corrupt) when a loaded
    /// snapshot's directory now holds a device node. Nothing is left of a failed save.
    pub async fn save(&self, dir: impl AsRef<Path>) -> Result<(), SandboxError> {
        let (this, dir) = (self.clone(), dir.as_ref().to_path_buf());
        crate::sys::blocking("saving a snapshot", move || {
            use std::os::unix::fs::DirBuilderExt;
            // Private, as the store is: see `Store::new_dir_blocking`.
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| SandboxError::io("creating the snapshot's directory", &dir, e))?;
            let saved = this.save_into_blocking(&dir);
            if saved.is_err() {
                let _ = crate::sys::fs_tree::remove_tree_blocking(&dir);
            }
            saved
        })
        .await
    }

    /// Fills `dir`, just made, through its descriptor: the layers (or the checkpoint) by
    /// [`copy_layer_blocking`](crate::sys::layer_tree::copy_layer_blocking), which never
    /// follows a link of theirs nor changes a file it links, then the manifest.
    fn save_into_blocking(&self, dir: &Path) -> Result<(), SandboxError> {
        use crate::sys::layer_tree::{check_layer_dir, copy_layer_blocking};
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let io = |what, p: &Path, e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                // A loaded snapshot's directory changed since its load.
                SandboxError::snapshot(
                    SnapshotErrorKind::Corrupt,
                    format!("{what} {}: {e}", p.display()),
                )
            } else {
                SandboxError::io(what, p, e)
            }
        };
        let top = nix::dir::Dir::open(dir, DIR_FLAGS, Mode::empty())
            .map_err(|e| io("opening the snapshot's directory", dir, e.into()))?;
        // Copies `from` as `name` of `parent` and measures the copy.
        let copy = |from: &Path, parent: &nix::dir::Dir, name: &str| {
            let c_name = std::ffi::CString::new(name).expect("no NUL in a layer's name");
            copy_layer_blocking(from, parent, &c_name)?;
            let copied = nix::dir::Dir::openat(parent, name, DIR_FLAGS, Mode::empty())?;
            let dev = nix::sys::stat::fstat(&copied)?.st_dev;
            check_layer_dir(copied, dev).map(TreeSize::from)
        };
        let mut manifest = Manifest {
            format: FORMAT,
            id: self.inner.id.clone(),
            runtime: self.inner.runtime,
            config: self.inner.config.clone(),
            layers: Vec::new(),
            checkpoint: None,
        };
        match &self.inner.state {
            State::Layers(layers) => {
                let made = nix::sys::stat::mkdirat(&top, LAYERS, Mode::S_IRWXU)
                    .and_then(|()| nix::dir::Dir::openat(&top, LAYERS, DIR_FLAGS, Mode::empty()));
                let root = made.map_err(|e| io("saving a layer", dir, e.into()))?;
                for (i, layer) in layers.iter().enumerate() {
                    let size = copy(layer, &root, &i.to_string())
                        .map_err(|e| io("saving a layer", layer, e))?;
                    manifest.layers.push(size);
                }
            }
            State::Checkpoint { image, token } => {
                let size = copy(image, &top, CHECKPOINT)
                    .map_err(|e| io("saving the checkpoint", image, e))?;
                manifest.checkpoint = Some((size, token.clone()));
            }
        }
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let path = dir.join(MANIFEST);
        nix::fcntl::openat(&top, MANIFEST, flags, Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(std::io::Error::from)
            .and_then(|fd| std::io::Write::write_all(&mut std::fs::File::from(fd), &json))
            .map_err(|e| io("writing the manifest", &path, e))
    }

    /// Reads a snapshot saved with [`save`](Self::save), of whichever runtime it is (see
    /// [`runtime`](Self::runtime)); starting it on another is a typed error then.
    /// [`NamespaceContainer::load_snapshot`](crate::NamespaceContainer::load_snapshot)
    /// checks the runtime at once.
    ///
    /// # Errors
    ///
    /// Those of [`NamespaceContainer::load_snapshot`](crate::NamespaceContainer::load_snapshot)
    /// but the runtime's mismatch.
    pub async fn load(dir: impl AsRef<Path>) -> Result<Self, SandboxError> {
        let dir = dir.as_ref().to_path_buf();
        crate::sys::blocking("loading a snapshot", move || {
            Self::load_blocking(&dir, None)
        })
        .await
    }

    /// Reads a snapshot saved with [`save`](Self::save) (blocking). `runtime`: the one that
    /// is to start it, when known. The directory and its manifest must be the caller's
    /// alone; everything in it is opened beneath it by fds and only read.
    pub(crate) fn load_blocking(
        dir: &Path,
        runtime: Option<OciRuntime>,
    ) -> Result<Self, SandboxError> {
        let corrupt = |why: String| {
            SandboxError::snapshot(
                SnapshotErrorKind::Corrupt,
                format!("{}: {why}", dir.display()),
            )
        };
        // The manifest holds the config a fork starts with (binds of host paths included):
        // it must be the caller's own, as `save` left it, not one others could have written.
        // Everything in the directory is opened beneath it, no link followed.
        use nix::sys::stat::{FileStat, Mode};
        let me = nix::unistd::geteuid().as_raw();
        let private = |name: &str, st: &FileStat| {
            if st.st_uid != me || st.st_mode & 0o022 != 0 {
                return Err(corrupt(format!(
                    "{name} is not this user's alone (owner {}, mode {:o})",
                    st.st_uid,
                    st.st_mode & 0o7777
                )));
            }
            Ok(())
        };
        let top = nix::dir::Dir::open(dir, DIR_FLAGS, Mode::empty())
            .map_err(|e| corrupt(format!("not a directory of a snapshot: {e}")))?;
        let top_st = nix::sys::stat::fstat(&top).map_err(|e| corrupt(e.to_string()))?;
        private("the directory", &top_st)?;
        let beneath = |name: &str, flags: nix::fcntl::OFlag| {
            crate::sys::fs_tree::open_beneath(&top, name, flags)
                .map_err(|e| corrupt(format!("{name}: {e}")))
        };
        let raw = {
            use std::io::Read;
            let fd = beneath(MANIFEST, nix::fcntl::OFlag::O_RDONLY)?;
            let st = nix::sys::stat::fstat(&fd).map_err(|e| corrupt(e.to_string()))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                return Err(corrupt(format!("{MANIFEST} is not a file")));
            }
            private(MANIFEST, &st)?;
            let mut raw = Vec::new();
            std::fs::File::from(fd)
                .take(MANIFEST_LIMIT + 1)
                .read_to_end(&mut raw)
                .map_err(|e| corrupt(format!("reading {MANIFEST}: {e}")))?;
            if raw.len() as u64 > MANIFEST_LIMIT {
                return Err(corrupt(format!(
                    "{MANIFEST} is over {MANIFEST_LIMIT} bytes"
                )));
            }
            raw
        };
        let manifest: Manifest = serde_json::from_slice(&raw)
            .map_err(|e| corrupt(format!("{MANIFEST} is not a snapshot's manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(corrupt(format!("unknown format {}", manifest.format)));
        }
        let runtime = runtime.unwrap_or(manifest.runtime);
        if manifest.runtime != runtime {
            return Err(SandboxError::snapshot(
                SnapshotErrorKind::Mismatch,
                format!(
                    "{} holds a snapshot of a {} sandbox, not {runtime}",
                    dir.display(),
                    manifest.runtime
                ),
            ));
        }
        // Each layer (or the checkpoint): what a layer of the library's never holds (set-id
        // bits, devices but whiteouts, capabilities, mount points) is refused, then its size
        // must be the manifest's. Nothing is changed.
        let check = |name: &str, want: TreeSize| {
            let fd = beneath(name, DIR_FLAGS)?;
            let layer = nix::dir::Dir::from_fd(fd).map_err(|e| corrupt(e.to_string()))?;
            let checked = crate::sys::layer_tree::check_layer_dir(layer, top_st.st_dev);
            match checked.map(TreeSize::from) {
                Ok(got) if got == want => Ok(()),
                Ok(got) => Err(corrupt(format!(
                    "{name} has {} entries and {} bytes, saved with {} and {}",
                    got.entries, got.bytes, want.entries, want.bytes
                ))),
                Err(e) => Err(corrupt(format!("{name}: {e}"))),
            }
        };
        let state = match (&manifest.checkpoint, runtime) {
            (Some((size, token)), OciRuntime::Gvisor) => {
                let image = dir.join(CHECKPOINT);
                check(CHECKPOINT, *size)?;
                let valid = (16..=64).contains(&token.len())
                    && token
                        .bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if !valid {
                    return Err(corrupt("the launcher's token is malformed".into()));
                }
                State::Checkpoint {
                    image,
                    token: token.clone(),
                }
            }
            (None, OciRuntime::Runc | OciRuntime::Crun) if !manifest.layers.is_empty() => {
                let st = nix::sys::stat::fstat(&beneath(LAYERS, DIR_FLAGS)?)
                    .map_err(|e| corrupt(e.to_string()))?;
                private(LAYERS, &st)?;
                let mut layers = Vec::with_capacity(manifest.layers.len());
                for (i, size) in manifest.layers.iter().enumerate() {
                    check(&format!("{LAYERS}/{i}"), *size)?;
                    layers.push(dir.join(LAYERS).join(i.to_string()));
                }
                State::Layers(layers)
            }
            _ => return Err(corrupt("no state for its runtime".into())),
        };
        // A writable root must be where a snapshot takes it (on disk, or gVisor's memory); a
        // gVisor sandbox with a read-only root checkpoints without (a named sandbox's
        // hibernation).
        let read_only_checkpoint =
            matches!(state, State::Checkpoint { .. }) && manifest.config.security.readonly_rootfs;
        if !manifest.config.snapshots && !read_only_checkpoint {
            return Err(corrupt("its config does not enable snapshots".into()));
        }
        Ok(Snapshot {
            inner: Arc::new(Inner {
                id: manifest.id,
                runtime,
                config: manifest.config,
                state,
                dir: dir.to_path_buf(),
                owned: false,
                _parent: None,
            }),
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let dir = std::mem::take(&mut self.dir);
        let remove = move || {
            if let Err(err) = crate::sys::fs_tree::remove_tree_blocking(&dir) {
                tracing::warn!(%err, ?dir, "removing a snapshot");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// The store of a runtime's snapshots: `<state dir>/<runtime>/snapshots/<id>/`, each with an
/// `owner` file naming the process whose snapshot it is.
pub(crate) struct Store;

impl Store {
    /// A new, empty snapshot directory in `root` owned by this process. Blocking.
    pub(crate) fn new_dir_blocking(root: &Path) -> Result<PathBuf, SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |e| SandboxError::io("creating a snapshot's directory", root, e);
        // Private: a layer holds the sandbox's files with the container's ids, which may be
        // real users' on the host, and a checkpoint its memory.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io)?;
        let dir = root.join(format!("snap-{}", crate::host::state::new_id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        std::fs::write(dir.join(OWNER), crate::host::owner::self_owner()).map_err(io)?;
        Ok(dir)
    }

    /// Removes the snapshots of processes that are gone (the crash sweep). Blocking.
    pub(crate) fn sweep_blocking(root: &Path) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(root) else {
            return Vec::new();
        };
        let mut swept = Vec::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            // A directory without an owner yet is one being made by a live process.
            let Ok(owner) = std::fs::read_to_string(path.join(OWNER)) else {
                continue;
            };
            if !crate::host::owner::owner_alive(owner.trim()) {
                tracing::info!(?path, "sweeping a snapshot left by a dead process");
                if crate::sys::fs_tree::remove_tree_blocking(&path).is_ok() {
                    swept.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        swept
    }
}

impl From<crate::sys::layer_tree::TreeSize> for TreeSize {
    fn from(size: crate::sys::layer_tree::TreeSize) -> Self {
        TreeSize {
            entries: size.entries,
            bytes: size.bytes,
        }
    }
}
