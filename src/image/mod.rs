//! The image store: layers unpacked once, content-addressed, under `<state>/images`, shared
//! by every image and sandbox that uses them; images resolved once per process.
//!
//! ```text
//! <state>/images/            0700: setuid files of images are not reachable from the host
//!   layers/<sha256 hex>/        one unpacked layer (overlayfs whiteouts), never changed again
//!   layers/<sha256 hex>.users/  one empty file per process using the layer, named by owner
//!   tmp/<what>-<owner>-<random>/  downloads and unpacks in progress (renamed into layers/)
//! ```
//!
//! A layer is unpacked into `tmp/` and renamed into place, so a partial one is never used; in
//! one process, concurrent first uses of a layer unpack it once (a cell per digest); two
//! processes may both unpack it, and the second rename loses harmlessly. Each entry of `tmp/`
//! is named for its owner (`tmp.rs`): a dropped or failed pull removes its own, and building a
//! `NamespaceContainer` or a prune removes those of dead processes.
//!
//! [`ImageStore::prune`] removes a layer when no prepared image of this process holds it (a
//! count per layer) and no other live process has its owner file (`<pid>-<start time>`, as
//! bundles and id leases record owners). Not `flock`: a lock lives in the open file, which
//! every fork of the process shares until it executes, so a runtime's child mounting a root
//! made the layers of unrelated images look in use. A prune that races another process's
//! first use of the same layer can take the layer from under it (that process's spawn then
//! fails and its next one unpacks the layer again). In one process, a prune waits only for
//! the short steps of a pull that touch `layers/` (taking its holds, renaming a layer in),
//! never for a download or an unpack: a stalled registry cannot hold a prune.

pub(crate) mod apply;
pub(crate) mod mount;
mod registry;
mod source;
mod tmp;
mod unpack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use crate::config::image::{Image, ImageProgress, ProgressStage, PulledImage};
use crate::error::{ImageErrorKind, SandboxError};
use source::{BlobFrom, LayerBlob, Resolved};

/// An image failure before it is tied to the image's name.
#[derive(Debug)]
pub(crate) struct ImageFailure {
    kind: ImageErrorKind,
    reason: String,
}

impl ImageFailure {
    pub(crate) fn new(kind: ImageErrorKind, reason: impl Into<String>) -> Self {
        ImageFailure {
            kind,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ImageErrorKind::NotFound
        } else {
            ImageErrorKind::InvalidFormat
        };
        ImageFailure::new(kind, format!("{}: {e}", path.display()))
    }

    fn store(what: &str, path: &Path, e: std::io::Error) -> Self {
        ImageFailure::new(
            ImageErrorKind::Registry,
            format!("{what} {}: {e}", path.display()),
        )
    }

    fn named(self, image: &Image) -> SandboxError {
        SandboxError::Image {
            image: image.to_string(),
            kind: self.kind,
            reason: self.reason,
        }
    }
}

/// What an image's config says a process gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ImageDefaults {
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

impl ImageDefaults {
    fn from_config(config: &serde_json::Value) -> Self {
        let c = &config["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let nonempty =
            |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        ImageDefaults {
            env: strings(&c["Env"])
                .into_iter()
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                })
                .collect(),
            working_dir: nonempty(&c["WorkingDir"]),
            user: nonempty(&c["User"]),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
        }
    }
}

/// An image whose layers are in the store, held (counted in its store) while it is alive.
#[derive(Debug)]
pub(crate) struct PreparedImage {
    pub info: PulledImage,
    /// The unpacked layers, lowest first.
    pub layer_dirs: Vec<PathBuf>,
    pub defaults: ImageDefaults,
    /// The config's `User` as ids (resolved through the image's own files).
    pub user_ids: Option<(u32, u32)>,
    _holds: Vec<LayerHold>,
}

/// How many prepared images (and pulls under way) of this process hold each layer.
type Holds = Arc<Mutex<HashMap<String, usize>>>;

/// One hold on a layer, released when dropped.
#[derive(Debug)]
struct LayerHold {
    holds: Holds,
    hex: String,
}

impl LayerHold {
    fn new(holds: &Holds, hex: &str) -> Self {
        *holds
            .lock()
            .expect("layer holds")
            .entry(hex.to_owned())
            .or_default() += 1;
        LayerHold {
            holds: holds.clone(),
            hex: hex.to_owned(),
        }
    }
}

impl Drop for LayerHold {
    fn drop(&mut self) {
        let mut holds = self.holds.lock().expect("layer holds");
        if let Some(n) = holds.get_mut(&self.hex) {
            *n -= 1;
            if *n == 0 {
                holds.remove(&self.hex);
            }
        }
    }
}

/// Tells a blocking unpack to stop when the future waiting for it is dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The store of one state dir.
#[derive(Debug)]
pub(crate) struct ImageStore {
    dir: PathBuf,
    layers: Mutex<HashMap<String, Arc<OnceCell<u64>>>>,
    images: Mutex<HashMap<Image, Arc<OnceCell<Arc<PreparedImage>>>>>,
    holds: Holds,
    /// A pull holds it shared while it takes a layer's hold and while it renames a layer
    /// into `layers/` (never across a download or an unpack), a prune exclusively: a prune
    /// sees every hold taken before it, and no layer appears in `layers/` while it runs.
    prune_gate: Arc<tokio::sync::RwLock<()>>,
    /// Root keeps the layers' owners; an ordinary user owns all it unpacks.
    owners: unpack::Owners,
}

type Progress = Option<tokio::sync::mpsc::UnboundedSender<ImageProgress>>;

fn send(progress: &Progress, event: ImageProgress) {
    tracing::debug!(layer = %event.layer, index = event.index, stage = ?event.stage, bytes = event.bytes, "image layer");
    if let Some(tx) = progress {
        let _ = tx.send(event);
    }
}

/// Records that this process uses the layer `hex` (idempotent). Blocking.
fn mark_user_blocking(layers: &Path, hex: &str) -> std::io::Result<()> {
    let users = layers.join(format!("{hex}.users"));
    std::fs::create_dir_all(&users)?;
    std::fs::write(users.join(crate::host::owner::self_owner()), b"")
}

/// Whether a live process other than this one uses the layer `hex`; forgets this process's
/// use and dead processes' on the way. Blocking.
fn used_elsewhere_blocking(layers: &Path, hex: &str) -> bool {
    let users = layers.join(format!("{hex}.users"));
    let Ok(entries) = std::fs::read_dir(&users) else {
        return false;
    };
    let me = crate::host::owner::self_owner();
    let mut elsewhere = false;
    for entry in entries.flatten() {
        let owner = entry.file_name().to_string_lossy().into_owned();
        if owner != me && crate::host::owner::owner_alive(&owner) {
            elsewhere = true;
        } else {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    elsewhere
}

/// The bytes a directory tree holds in regular files (not following links).
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return if meta.is_file() { meta.len() } else { 0 };
    }
    std::fs::read_dir(path)
        .map(|d| d.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

impl ImageStore {
    /// The store under `state_base` (made on first use).
    pub(crate) fn new(state_base: &Path) -> Self {
        ImageStore {
            dir: state_base.join("images"),
            layers: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
            holds: Holds::default(),
            prune_gate: Arc::new(tokio::sync::RwLock::new(())),
            owners: if nix::unistd::geteuid().is_root() {
                unpack::Owners::Preserved
            } else {
                unpack::Owners::Caller
            },
        }
    }

    /// Where the unpacked layers are, one directory each (named by digest).
    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.dir.join("layers")
    }

    fn layer_dir(&self, hex: &str) -> PathBuf {
        self.dir.join("layers").join(hex)
    }

    fn ensure_dirs_blocking(dir: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(dir.join("layers"))?;
        b.create(dir.join("tmp"))?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
    }

    /// `image` resolved and its layers in the store; resolved once per store (a later call
    /// returns the same image, even if a registry tag has moved since). Concurrent first
    /// calls for one image share one pull (its progress goes to the caller whose pull it is);
    /// different images are pulled side by side.
    pub(crate) async fn prepare(
        &self,
        image: &Image,
        progress: Progress,
    ) -> Result<Arc<PreparedImage>, SandboxError> {
        let cell = self
            .images
            .lock()
            .expect("image cells")
            .entry(image.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            self.prepare_uncached(image, &progress)
                .await
                .map(Arc::new)
                .map_err(|f| f.named(image))
        })
        .await
        .cloned()
    }

    async fn prepare_uncached(
        &self,
        image: &Image,
        progress: &Progress,
    ) -> Result<PreparedImage, ImageFailure> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || Self::ensure_dirs_blocking(&dir))
            .await
            .expect("creating the store panicked")
            .map_err(|e| ImageFailure::store("creating the image store", &self.dir, e))?;
        // An archive's files live in a scratch dir until its layers are unpacked.
        let mut scratch = None;
        let (resolved, registry) = match image {
            Image::OciLayout { path, reference } => {
                let (path, reference) = (path.clone(), reference.clone());
                let r = tokio::task::spawn_blocking(move || {
                    source::resolve_layout_blocking(&path, &reference)
                })
                .await
                .expect("layout resolution panicked")?;
                (r, None)
            }
            Image::DockerArchive(path) => {
                let dir = tmp::TempTree::create(&self.dir.join("tmp"), "archive")
                    .await
                    .map_err(|e| ImageFailure::store("a scratch dir in", &self.dir, e))?;
                let (path, into) = (path.clone(), dir.path().to_owned());
                let r = tokio::task::spawn_blocking(move || {
                    source::resolve_archive_blocking(&path, &into)
                })
                .await
                .expect("archive resolution panicked");
                match r {
                    Ok(r) => {
                        scratch = Some(dir);
                        (r, None)
                    }
                    Err(e) => {
                        dir.remove().await;
                        return Err(e);
                    }
                }
            }
            Image::Registry(r) => {
                let mut pull = registry::RegistryPull::new(r)?;
                (pull.resolve().await?, Some(pull))
            }
        };
        let prepared = self
            .store_layers(resolved, registry.as_ref(), progress)
            .await;
        if let Some(scratch) = scratch {
            scratch.remove().await;
        }
        prepared
    }

    async fn store_layers(
        &self,
        resolved: Resolved,
        registry: Option<&registry::RegistryPull>,
        progress: &Progress,
    ) -> Result<PreparedImage, ImageFailure> {
        let count = resolved.layers.len();
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(count);
        let mut holds = Vec::with_capacity(count);
        let mut unpacked_bytes = 0;
        for (index, layer) in resolved.layers.iter().enumerate() {
            let hex = source::sha256_hex(&layer.digest)?.to_owned();
            let (layers, h) = (self.dir.join("layers"), hex.clone());
            tokio::task::spawn_blocking(move || mark_user_blocking(&layers, &h))
                .await
                .expect("marking a layer panicked")
                .map_err(|e| ImageFailure::store("marking layer", Path::new(&hex), e))?;
            // Under the gate, so that no prune runs between the hold and the cell: a prune
            // either saw the hold, or ran before and emptied the cells.
            let cell = {
                let _no_prune = self.prune_gate.read().await;
                holds.push(LayerHold::new(&self.holds, &hex));
                self.layers
                    .lock()
                    .expect("layer cells")
                    .entry(hex.clone())
                    .or_default()
                    .clone()
            };
            let bytes = *cell
                .get_or_try_init(|| {
                    self.ensure_layer(layer, index, count, &dirs, registry, progress)
                })
                .await?;
            send(
                progress,
                ImageProgress {
                    layer: layer.digest.clone(),
                    index,
                    layers: count,
                    stage: ProgressStage::Ready,
                    bytes,
                    total: layer.size,
                },
            );
            unpacked_bytes += bytes;
            dirs.push(self.layer_dir(&hex));
        }
        let defaults = ImageDefaults::from_config(&resolved.config);
        // `User` by name needs the image's /etc/passwd: read once here, not per spawn.
        let user_ids = match defaults.user.clone() {
            None => None,
            Some(user) => {
                let layers = dirs.clone();
                Some(
                    tokio::task::spawn_blocking(move || apply::resolve_user(&layers, &user))
                        .await
                        .expect("the user lookup panicked")?,
                )
            }
        };
        Ok(PreparedImage {
            info: PulledImage {
                digest: resolved.digest.clone(),
                layers: resolved.layers.iter().map(|l| l.digest.clone()).collect(),
                unpacked_bytes,
            },
            layer_dirs: dirs,
            defaults,
            user_ids,
            _holds: holds,
        })
    }

    /// The layer in the store: found there, or fetched, checked and unpacked. Returns the
    /// bytes it holds.
    async fn ensure_layer(
        &self,
        layer: &LayerBlob,
        index: usize,
        count: usize,
        lowers: &[PathBuf],
        registry: Option<&registry::RegistryPull>,
        progress: &Progress,
    ) -> Result<u64, ImageFailure> {
        let hex = source::sha256_hex(&layer.digest)?.to_owned();
        let final_dir = self.layer_dir(&hex);
        if tokio::fs::metadata(&final_dir).await.is_ok() {
            let dir = final_dir.clone();
            return Ok(tokio::task::spawn_blocking(move || tree_bytes(&dir))
                .await
                .unwrap_or(0));
        }
        let event = |stage, bytes| ImageProgress {
            layer: layer.digest.clone(),
            index,
            layers: count,
            stage,
            bytes,
            total: layer.size,
        };
        // Removed when dropped: a dropped pull future leaves no download behind.
        let work = tmp::TempTree::create(&self.dir.join("tmp"), "layer")
            .await
            .map_err(|e| ImageFailure::store("a temp dir in", &self.dir, e))?;
        send(progress, event(ProgressStage::Fetching, 0));
        let blob = match (&layer.from, registry) {
            (BlobFrom::Registry, Some(pull)) => {
                let path = work.path().join("blob");
                if let Err(e) = pull.fetch(layer, &path).await {
                    work.remove().await;
                    return Err(e);
                }
                (path, None)
            }
            (BlobFrom::Registry, None) => unreachable!("a registry layer without a registry"),
            (BlobFrom::File(p), _) => (p.clone(), Some(layer.digest.clone())),
            (BlobFrom::FileWithDiffId(p, _), _) => (p.clone(), None),
        };
        let size = tokio::fs::metadata(&blob.0)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        send(progress, event(ProgressStage::Fetching, size));
        send(progress, event(ProgressStage::Unpacking, size));
        let (from, lowers, final_dir2) = (layer.from.clone(), lowers.to_vec(), final_dir.clone());
        let owners = self.owners;
        let gate = self.prune_gate.clone();
        // The unpack's thread owns the temp dir from here and removes it before it returns,
        // whatever becomes of this future; a dropped future stops the unpack at its next entry.
        let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
        let stopped = stop.0.clone();
        let unpack = move || -> Result<u64, ImageFailure> {
            let work_path = work.path().to_owned();
            let (path, digest) = blob;
            if let Some(d) = digest {
                source::verify_file(&path, &d)?;
            }
            if let BlobFrom::FileWithDiffId(_, want) = &from {
                let got = source::diff_id_of(&path)?;
                if &got != want {
                    return Err(ImageFailure::new(
                        ImageErrorKind::DigestMismatch,
                        format!("layer {} has diff id {got}, not {want}", path.display()),
                    ));
                }
            }
            let root = work_path.join("root");
            std::fs::create_dir(&root).map_err(|e| ImageFailure::store("creating", &root, e))?;
            let done = unpack::unpack_layer_blocking(&path, &root, &lowers, owners, &stopped)
                .map_err(|e| match e {
                    unpack::UnpackError::Unsafe(r) => {
                        ImageFailure::new(ImageErrorKind::UnsafeLayer, r)
                    }
                    unpack::UnpackError::Invalid(r) => {
                        ImageFailure::new(ImageErrorKind::InvalidFormat, r)
                    }
                    unpack::UnpackError::Io(e) => ImageFailure::store("unpacking into", &root, e),
                })?;
            if stopped.load(Ordering::Relaxed) {
                return Err(ImageFailure::new(
                    ImageErrorKind::Registry,
                    "the pull was cancelled",
                ));
            }
            // Not while a prune runs: it would remove a layer it has not seen held.
            let _no_prune = gate.blocking_read();
            match std::fs::rename(&root, &final_dir2) {
                Ok(()) => {}
                // Another process put it there first: theirs is as good.
                Err(_) if final_dir2.is_dir() => {}
                Err(e) => return Err(ImageFailure::store("moving a layer to", &final_dir2, e)),
            }
            Ok(done.bytes)
        };
        let bytes = tokio::task::spawn_blocking(unpack)
            .await
            .expect("unpack panicked")?;
        drop(stop);
        Ok(bytes)
    }

    /// Removes what dead processes left in `tmp/` (downloads, unpacks, prunes they did not
    /// finish). Returns how many entries went.
    pub(crate) async fn sweep(&self) -> usize {
        let tmp = self.dir.join("tmp");
        tokio::task::spawn_blocking(move || tmp::sweep_blocking(&tmp))
            .await
            .unwrap_or(0)
    }

    /// Forgets the resolved images no sandbox holds, and removes every layer that neither a
    /// prepared image of this process nor another live process uses, and what dead processes
    /// left in `tmp/`. Returns the digests of the layers removed. Waits for no download or
    /// unpack under way.
    pub(crate) async fn prune(&self) -> Result<Vec<String>, SandboxError> {
        let _no_pulls = self.prune_gate.write().await;
        // Kept: images being resolved, and images a bundle holds (their holds stay).
        self.images
            .lock()
            .expect("image cells")
            .retain(|_, cell| cell.get().is_none_or(|p| Arc::strong_count(p) > 1));
        self.layers.lock().expect("layer cells").clear();
        let held: std::collections::HashSet<String> = self
            .holds
            .lock()
            .expect("layer holds")
            .keys()
            .cloned()
            .collect();
        let (layers, tmp) = (self.dir.join("layers"), self.dir.join("tmp"));
        crate::sys::blocking("pruning the image store", move || {
            let swept = tmp::sweep_blocking(&tmp);
            if swept > 0 {
                tracing::info!(
                    count = swept,
                    "swept image temp dirs left by dead processes"
                );
            }
            let mut removed = Vec::new();
            let Ok(entries) = std::fs::read_dir(&layers) else {
                return Ok(removed);
            };
            for entry in entries.flatten() {
                let hex = entry.file_name().to_string_lossy().into_owned();
                if hex.contains('.')
                    || held.contains(&hex)
                    || used_elsewhere_blocking(&layers, &hex)
                {
                    continue;
                }
                // Out of `layers/` at once, so no one starts using a half-removed layer.
                let doomed = tmp.join(tmp::entry_name("pruned"));
                std::fs::rename(entry.path(), &doomed)
                    .map_err(|e| SandboxError::io("removing a layer", entry.path(), e))?;
                crate::sys::fs_tree::remove_tree_blocking(&doomed)
                    .map_err(|e| SandboxError::io("removing a layer", &doomed, e))?;
                let _ = std::fs::remove_dir(layers.join(format!("{hex}.users")));
                removed.push(format!("sha256:{hex}"));
            }
            Ok(removed)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The owner string of `pid` (`<pid>-<start time>`), as its own process would write it.
    fn owner_of(pid: u32) -> String {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        format!("{pid}-{}", after.split_whitespace().nth(19).unwrap())
    }

    #[test]
    fn a_layer_is_used_elsewhere_only_by_another_live_process() {
        let layers = tempfile::tempdir().unwrap();
        let users = layers.path().join("ab.users");
        mark_user_blocking(layers.path(), "ab").unwrap();
        std::fs::write(users.join("999999999-1"), b"").unwrap(); // a dead process
        assert!(!used_elsewhere_blocking(layers.path(), "ab"));
        // This process's mark and the dead one's are forgotten on the way.
        assert_eq!(std::fs::read_dir(&users).unwrap().count(), 0);
        std::fs::write(users.join(owner_of(1)), b"").unwrap(); // a live one (init)
        assert!(used_elsewhere_blocking(layers.path(), "ab"));
    }
}
