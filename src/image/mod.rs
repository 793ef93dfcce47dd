//! The image store: layers unpacked once, content-addressed, under `<state>/images`, shared
//! by every image and sandbox that uses them; images resolved once per process.
//!
//! ```text
//! <state>/images/            0700: setuid files of images are not reachable from the host
//!   layers/<sha256 hex>/     one unpacked layer (overlayfs whiteouts), never changed again
//!   layers/<sha256 hex>.lock shared flock while a prepared image uses the layer
//!   tmp/                     downloads and unpacks in progress (renamed into layers/)
//! ```
//!
//! A layer is unpacked into `tmp/` and renamed into place, so a partial one is never used; in
//! one process, concurrent first uses of a layer unpack it once (a cell per digest); two
//! processes may both unpack it, and the second rename loses harmlessly. [`ImageStore::prune`]
//! removes the layers no prepared image holds a lock on (in any process).

pub(crate) mod apply;
pub(crate) mod mount;
mod registry;
mod source;
mod unpack;

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
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

/// An image whose layers are in the store, held (shared locks) while it is alive.
#[derive(Debug)]
pub(crate) struct PreparedImage {
    pub info: PulledImage,
    /// The unpacked layers, lowest first.
    pub layer_dirs: Vec<PathBuf>,
    pub defaults: ImageDefaults,
    _locks: Vec<std::fs::File>,
}

/// The store of one state dir.
#[derive(Debug)]
pub(crate) struct ImageStore {
    dir: PathBuf,
    layers: Mutex<HashMap<String, Arc<OnceCell<u64>>>>,
    images: tokio::sync::Mutex<HashMap<Image, Arc<PreparedImage>>>,
}

type Progress = Option<tokio::sync::mpsc::UnboundedSender<ImageProgress>>;

fn send(progress: &Progress, event: ImageProgress) {
    tracing::debug!(layer = %event.layer, index = event.index, stage = ?event.stage, bytes = event.bytes, "image layer");
    if let Some(tx) = progress {
        let _ = tx.send(event);
    }
}

/// Takes a shared (or, `exclusive`, an exclusive non-blocking) flock on `path`.
fn lock(path: &Path, exclusive: bool) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let op = if exclusive {
        libc::LOCK_EX | libc::LOCK_NB
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
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
            images: tokio::sync::Mutex::new(HashMap::new()),
        }
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
    /// returns the same image, even if a registry tag has moved since).
    pub(crate) async fn prepare(
        &self,
        image: &Image,
        progress: Progress,
    ) -> Result<Arc<PreparedImage>, SandboxError> {
        let mut images = self.images.lock().await;
        if let Some(p) = images.get(image) {
            return Ok(p.clone());
        }
        let prepared = Arc::new(
            self.prepare_uncached(image, &progress)
                .await
                .map_err(|f| f.named(image))?,
        );
        images.insert(image.clone(), prepared.clone());
        Ok(prepared)
    }

    async fn prepare_uncached(
        &self,
        image: &Image,
        progress: &Progress,
    ) -> Result<PreparedImage, ImageFailure> {
        let dir = self.dir.clone();
        crate::sys::blocking("preparing the image store", move || {
            Self::ensure_dirs_blocking(&dir)
                .map_err(|e| SandboxError::io("creating the image store", &dir, e))
        })
        .await
        .map_err(|e| ImageFailure::new(ImageErrorKind::Registry, e.to_string()))?;
        // The archive's files live in a scratch dir until the layers are unpacked.
        let scratch = tempfile::Builder::new()
            .prefix("archive-")
            .tempdir_in(self.dir.join("tmp"))
            .map_err(|e| ImageFailure::store("a scratch dir in", &self.dir, e))?;
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
                let (path, into) = (path.clone(), scratch.path().to_owned());
                let r = tokio::task::spawn_blocking(move || {
                    source::resolve_archive_blocking(&path, &into)
                })
                .await
                .expect("archive resolution panicked")?;
                (r, None)
            }
            Image::Registry(r) => {
                let pull = registry::RegistryPull::new(r)?;
                (pull.resolve().await?, Some(pull))
            }
        };
        self.store_layers(resolved, registry.as_ref(), progress)
            .await
    }

    async fn store_layers(
        &self,
        resolved: Resolved,
        registry: Option<&registry::RegistryPull>,
        progress: &Progress,
    ) -> Result<PreparedImage, ImageFailure> {
        let count = resolved.layers.len();
        let mut dirs: Vec<PathBuf> = Vec::with_capacity(count);
        let mut locks = Vec::with_capacity(count);
        let mut unpacked_bytes = 0;
        for (index, layer) in resolved.layers.iter().enumerate() {
            let hex = source::sha256_hex(&layer.digest)?.to_owned();
            let lock_path = self.dir.join("layers").join(format!("{hex}.lock"));
            let held = tokio::task::spawn_blocking(move || lock(&lock_path, false))
                .await
                .expect("lock panicked")
                .map_err(|e| ImageFailure::store("locking layer", Path::new(&hex), e))?;
            locks.push(held);
            let cell = self
                .layers
                .lock()
                .expect("layer cells")
                .entry(hex.clone())
                .or_default()
                .clone();
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
        Ok(PreparedImage {
            info: PulledImage {
                digest: resolved.digest.clone(),
                layers: resolved.layers.iter().map(|l| l.digest.clone()).collect(),
                unpacked_bytes,
            },
            layer_dirs: dirs,
            defaults: ImageDefaults::from_config(&resolved.config),
            _locks: locks,
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
        let work = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.dir.join("tmp"))
            .map_err(|e| ImageFailure::store("a temp dir in", &self.dir, e))?;
        send(progress, event(ProgressStage::Fetching, 0));
        let blob = match (&layer.from, registry) {
            (BlobFrom::Registry, Some(pull)) => {
                let path = work.path().join("blob");
                pull.fetch(layer, &path).await?;
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
        let work_path = work.path().to_owned();
        let bytes = tokio::task::spawn_blocking(move || -> Result<u64, ImageFailure> {
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
            let done =
                unpack::unpack_layer_blocking(&path, &root, &lowers).map_err(|e| match e {
                    unpack::UnpackError::Unsafe(r) => {
                        ImageFailure::new(ImageErrorKind::UnsafeLayer, r)
                    }
                    unpack::UnpackError::Invalid(r) => {
                        ImageFailure::new(ImageErrorKind::InvalidFormat, r)
                    }
                    unpack::UnpackError::Io(e) => ImageFailure::store("unpacking into", &root, e),
                })?;
            match std::fs::rename(&root, &final_dir2) {
                Ok(()) => {}
                // Another process put it there first: theirs is as good.
                Err(_) if final_dir2.is_dir() => {}
                Err(e) => return Err(ImageFailure::store("moving a layer to", &final_dir2, e)),
            }
            Ok(done.bytes)
        })
        .await
        .expect("unpack panicked")?;
        drop(work);
        Ok(bytes)
    }

    /// Forgets the resolved images no sandbox holds, and removes every layer no prepared image
    /// (of any process) holds. Returns the digests of the layers removed.
    pub(crate) async fn prune(&self) -> Result<Vec<String>, SandboxError> {
        self.images
            .lock()
            .await
            .retain(|_, p| Arc::strong_count(p) > 1);
        self.layers.lock().expect("layer cells").clear();
        let layers = self.dir.join("layers");
        crate::sys::blocking("pruning the image store", move || {
            let mut removed = Vec::new();
            let Ok(entries) = std::fs::read_dir(&layers) else {
                return Ok(removed);
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".lock") || !entry.path().is_dir() {
                    continue;
                }
                let Ok(_held) = lock(&layers.join(format!("{name}.lock")), true) else {
                    continue; // In use.
                };
                crate::sys::fs_tree::remove_tree_blocking(&entry.path())
                    .map_err(|e| SandboxError::io("removing a layer", entry.path(), e))?;
                removed.push(format!("sha256:{name}"));
            }
            Ok(removed)
        })
        .await
    }
}
