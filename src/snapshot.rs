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
    /// data copied; the store's files are never written again), else copied. A saved
    /// snapshot is the caller's: nothing removes it.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] when `dir` exists or cannot be written; nothing is left of a
    /// failed save.
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

    fn save_into_blocking(&self, dir: &Path) -> Result<(), SandboxError> {
        let io = |what, p: &Path, e| SandboxError::io(what, p, e);
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
                let root = dir.join("layers");
                std::fs::create_dir(&root).map_err(|e| io("saving a layer", &root, e))?;
                for (i, layer) in layers.iter().enumerate() {
                    let dest = root.join(i.to_string());
                    let size =
                        link_tree(layer, &dest).map_err(|e| io("saving a layer", layer, e))?;
                    manifest.layers.push(size);
                }
            }
            State::Checkpoint { image, token } => {
                let dest = dir.join(CHECKPOINT);
                let size =
                    link_tree(image, &dest).map_err(|e| io("saving the checkpoint", image, e))?;
                manifest.checkpoint = Some((size, token.clone()));
            }
        }
        let path = dir.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        std::fs::write(&path, json).map_err(|e| io("writing the manifest", &path, e))
    }

    /// Reads a snapshot saved with [`save`](Self::save) (blocking). `runtime`: the one that
    /// is to start it. The directory and its manifest must be the caller's alone.
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
        {
            use std::os::unix::fs::MetadataExt;
            let me = nix::unistd::geteuid().as_raw();
            for path in [dir.to_path_buf(), dir.join(MANIFEST)] {
                let meta = std::fs::symlink_metadata(&path)
                    .map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
                if meta.uid() != me || meta.mode() & 0o022 != 0 || meta.file_type().is_symlink() {
                    return Err(corrupt(format!(
                        "{} is not this user's alone (owner {}, mode {:o})",
                        path.display(),
                        meta.uid(),
                        meta.mode() & 0o7777
                    )));
                }
            }
        }
        let raw = std::fs::read(dir.join(MANIFEST))
            .map_err(|e| corrupt(format!("reading {MANIFEST}: {e}")))?;
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
        let check = |path: &Path, want: TreeSize| match tree_size(path) {
            Ok(got) if got == want => Ok(()),
            Ok(got) => Err(corrupt(format!(
                "{} has {} entries and {} bytes, saved with {} and {}",
                path.display(),
                got.entries,
                got.bytes,
                want.entries,
                want.bytes
            ))),
            Err(e) => Err(corrupt(format!("{}: {e}", path.display()))),
        };
        let state = match (&manifest.checkpoint, runtime) {
            (Some((size, token)), OciRuntime::Gvisor) => {
                let image = dir.join(CHECKPOINT);
                check(&image, *size)?;
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
                let mut layers = Vec::with_capacity(manifest.layers.len());
                for (i, size) in manifest.layers.iter().enumerate() {
                    let layer = dir.join("layers").join(i.to_string());
                    check(&layer, *size)?;
                    layers.push(layer);
                }
                State::Layers(layers)
            }
            _ => return Err(corrupt("no state for its runtime".into())),
        };
        if !manifest.config.snapshots {
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

/// Entries and bytes of the tree at `path`, links not followed.
fn tree_size(path: &Path) -> std::io::Result<TreeSize> {
    let mut size = TreeSize {
        entries: 0,
        bytes: 0,
    };
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory"));
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            size.entries += 1;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                size.bytes += meta.len();
            }
        }
    }
    Ok(size)
}

/// Recreates the tree `from` at `to` (which must not exist): directories made with the same
/// mode, owner and extended attributes, everything else hard-linked (links not followed)
/// or, across filesystems, copied (`cp -a`). Returns its size.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<TreeSize> {
    use std::os::unix::fs::MetadataExt;
    let parent = to.parent().unwrap_or(Path::new("/"));
    let same_fs = std::fs::metadata(from)?.dev() == std::fs::metadata(parent)?.dev();
    if !same_fs {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg("--")
            .arg(from)
            .arg(to)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("cp -a failed: {status}")));
        }
        return tree_size(to);
    }
    copy_dir_meta(from, to)?;
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = stack.pop() {
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let (s, d) = (entry.path(), dst.join(entry.file_name()));
            if entry.file_type()?.is_dir() {
                copy_dir_meta(&s, &d)?;
                stack.push((s, d));
            } else {
                std::fs::hard_link(&s, &d)?;
            }
        }
    }
    tree_size(to)
}

/// Makes directory `to` with `from`'s mode, owner and extended attributes (overlayfs keeps
/// opaque directories in one).
fn copy_dir_meta(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(from)?;
    std::fs::create_dir(to)?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    for name in xattr_names(from)? {
        if let Some(value) = xattr_get(from, &name)? {
            xattr_set(to, &name, &value)?;
        }
    }
    Ok(())
}

fn xattr_names(path: &Path) -> std::io::Result<Vec<std::ffi::CString>> {
    let c = cpath(path)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: a NUL-terminated path and a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| std::ffi::CString::new(n).ok())
        .collect())
}

fn xattr_get(path: &Path, name: &std::ffi::CStr) -> std::io::Result<Option<Vec<u8>>> {
    let c = cpath(path)?;
    let mut buf = vec![0u8; 65536];
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn xattr_set(path: &Path, name: &std::ffi::CStr, value: &[u8]) -> std::io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn cpath(path: &Path) -> std::io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}
