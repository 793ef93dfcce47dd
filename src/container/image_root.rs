//! Images on the public API (pull, progress, prune) and at launch: the image's config applied
//! to the container's, and the top layer of the library's that goes over the image (the
//! launcher and the config's mount points).

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::config::ContainerConfig;
use crate::config::image::{Image, ImageProgress, PulledImage};
use crate::container::NamespaceContainer;
use crate::error::SandboxError;
use crate::image::PreparedImage;

/// A pull under way: a [`Stream`](futures::Stream) of [`ImageProgress`] events, then
/// [`finish`](Self::finish) for the result. Dropping it cancels the pull: its task is
/// aborted, and its download is removed right after (milliseconds); a layer being unpacked
/// stops at its next entry and is discarded, never left half in the store.
#[derive(Debug)]
pub struct PullProgress {
    events: tokio::sync::mpsc::UnboundedReceiver<ImageProgress>,
    task: Option<tokio::task::JoinHandle<Result<PulledImage, SandboxError>>>,
}

impl futures::Stream for PullProgress {
    type Item = ImageProgress;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ImageProgress>> {
        self.events.poll_recv(cx)
    }
}

impl PullProgress {
    /// Waits for the pull's end (the events not read are dropped).
    pub async fn finish(mut self) -> Result<PulledImage, SandboxError> {
        let task = self.task.take().expect("finished once");
        task.await.unwrap_or_else(|e| {
            Err(SandboxError::Process {
                context: "pulling an image",
                source: std::io::Error::other(e.to_string()),
            })
        })
    }
}

impl Drop for PullProgress {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl NamespaceContainer {
    /// Fetches `image` (a registry pull, or reading a layout or archive), checks every
    /// digest and unpacks its layers into the store, unless they are there already. Sandboxes
    /// do this themselves on first use; call it ahead to take the time out of the first spawn.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Image`]: not found, unauthorized, a digest mismatch, a broken or unsafe
    /// layer, a registry that sent more than declared
    /// ([`TooLarge`](crate::ImageErrorKind::TooLarge)) or outlasted a deadline of
    /// [`RegistryImage::limits`](crate::RegistryImage::limits)
    /// ([`Timeout`](crate::ImageErrorKind::Timeout)). Nothing of a failed pull stays in the
    /// store, nor of a dropped one once the drop has returned.
    pub async fn pull(&self, image: &Image) -> Result<PulledImage, SandboxError> {
        let prepared = self.inner.images.prepare(image, None).await?;
        Ok(prepared.info.clone())
    }

    /// [`pull`](Self::pull), reporting each layer's progress (also as `tracing` events).
    /// When another call is already pulling the same image, this one waits for that pull and
    /// its stream only ends.
    ///
    /// ```no_run
    /// # async fn demo(runtime: oci_sandbox::NamespaceContainer) -> Result<(), oci_sandbox::SandboxError> {
    /// use futures::StreamExt;
    /// use oci_sandbox::{Image, RegistryImage};
    ///
    /// let image = Image::Registry(RegistryImage::new("127.0.0.1:5000/tools:1"));
    /// let mut pull = runtime.pull_with_progress(&image);
    /// while let Some(event) = pull.next().await {
    ///     println!("layer {}/{}: {:?} {} bytes", event.index + 1, event.layers, event.stage, event.bytes);
    /// }
    /// let pulled = pull.finish().await?;
    /// println!("{} ready, {} bytes unpacked", pulled.digest, pulled.unpacked_bytes);
    /// # Ok(()) }
    /// ```
    pub fn pull_with_progress(&self, image: &Image) -> PullProgress {
        let (tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (this, image) = (self.clone(), image.clone());
        let task = tokio::spawn(async move {
            let prepared = this.inner.images.prepare(&image, Some(tx)).await?;
            Ok(prepared.info.clone())
        });
        PullProgress {
            events,
            task: Some(task),
        }
    }

    /// Removes from the store every layer that no sandbox of any process uses, and what dead
    /// processes' pulls left in it, and forgets the images resolved so far that no sandbox
    /// uses. Returns the removed layers' digests. It waits for no download or unpack under
    /// way (only for the moments a pull takes a layer or renames one into the store).
    pub async fn prune_images(&self) -> Result<Vec<String>, SandboxError> {
        self.inner.images.prune().await
    }

    /// The image layers unpacked in the state dir's store (every runtime of the state dir
    /// shares it), with the disk each takes, by digest. Layers a sandbox uses are in it, as
    /// are those [`prune_images`](Self::prune_images) would remove.
    pub async fn image_layers(&self) -> Result<Vec<ImageLayer>, SandboxError> {
        let dir = self.inner.images.layers_dir();
        crate::sys::blocking("listing the image layers", move || {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                return Ok(Vec::new());
            };
            let mut layers: Vec<ImageLayer> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| {
                    let hex = e.file_name().to_str()?.to_owned();
                    if hex.contains('.') {
                        return None; // a layer's users, not a layer
                    }
                    let disk_bytes =
                        crate::sys::fs_tree::disk_usage_blocking(&e.path()).unwrap_or(0);
                    Some(ImageLayer {
                        digest: format!("sha256:{hex}"),
                        disk_bytes,
                    })
                })
                .collect();
            layers.sort_by(|a, b| a.digest.cmp(&b.digest));
            Ok(layers)
        })
        .await
    }

    /// `config` with its image's config applied, and the prepared image; `None` without an
    /// image.
    pub(crate) async fn with_image(
        &self,
        config: &ContainerConfig,
    ) -> Result<Option<(ContainerConfig, Arc<PreparedImage>)>, SandboxError> {
        let Some(image) = &config.image else {
            return Ok(None);
        };
        let prepared = self.inner.images.prepare(image, None).await?;
        let mut applied = config.clone();
        crate::image::apply::apply(&prepared, &mut applied)?;
        Ok(Some((applied, prepared)))
    }
}

/// The library's layer over an image, in the bundle: the launcher (a hard link to the shared
/// rootfs's copy) and the config's mount points, owned by root. Blocking.
pub(crate) fn top_layer_blocking(
    bundle: &Path,
    launcher: &Path,
    config: &ContainerConfig,
) -> Result<PathBuf, SandboxError> {
    let top = bundle.join("top");
    let io = |what, p: &Path, e| SandboxError::io(what, p, e);
    std::fs::create_dir(&top).map_err(|e| io("creating the image's top layer", &top, e))?;
    std::fs::set_permissions(&top, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .map_err(|e| io("creating the image's top layer", &top, e))?;
    let name = launcher.file_name().expect("the launcher has a name");
    let dest = top.join(name);
    if std::fs::hard_link(launcher, &dest).is_err() {
        std::fs::copy(launcher, &dest).map_err(|e| io("copying the launcher", &dest, e))?;
    }
    for dir in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(top.join(dir))
            .map_err(|e| io("creating a mount point", &top, e))?;
    }
    // Without a tmpfs over it (a sandbox that may be snapshotted), /tmp is this layer's.
    let sticky = std::os::unix::fs::PermissionsExt::from_mode(0o1777);
    std::fs::set_permissions(top.join("tmp"), sticky)
        .map_err(|e| io("creating a mount point", &top, e))?;
    crate::host::bundle::ensure_mount_points(&top, config)?;
    Ok(top)
}

/// One unpacked layer of the image store ([`NamespaceContainer::image_layers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageLayer {
    /// Its digest (`sha256:...`).
    pub digest: String,
    /// The disk its files take.
    pub disk_bytes: u64,
}
