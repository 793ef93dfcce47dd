//! What the caller names as a sandbox's root filesystem: an OCI [`Image`] from a layout
//! directory, a `docker save` archive or a registry, and what pulling one reports.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An OCI image to use as the sandbox's root filesystem
/// ([`SandboxConfig::image`](crate::SandboxConfig::image)).
///
/// Each layer is unpacked once into a content-addressed store under the state dir and shared
/// by every image and sandbox that uses it; each container gets its own root over it (an
/// overlay), gone with the container. The image's `Env`, `WorkingDir`, `User`, `Entrypoint`
/// and `Cmd` apply (see [`SandboxConfig::image`](crate::SandboxConfig::image)).
///
/// ```
/// use oci_sandbox::{Image, RegistryAuth, RegistryImage};
///
/// let from_disk = Image::OciLayout {
///     path: "/srv/images/python".into(),
///     reference: "3.12".into(),
/// };
/// let pulled = Image::Registry(
///     RegistryImage::new("registry.example.com/team/tools:1.4")
///         .auth(RegistryAuth::Basic { username: "ci".into(), password: "secret".into() }),
/// );
/// # let _ = (from_disk, pulled);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Image {
    /// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/`), the image named
    /// by `reference`: a tag (the `org.opencontainers.image.ref.name` annotation) or a
    /// manifest digest (`sha256:…`).
    OciLayout {
        /// The layout directory.
        path: PathBuf,
        /// A tag or a manifest digest.
        reference: String,
    },
    /// A `docker save` archive (a tar with `manifest.json`); its first image.
    DockerArchive(PathBuf),
    /// An image in a registry, pulled over the OCI distribution API.
    Registry(RegistryImage),
}

impl std::fmt::Display for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Image::OciLayout { path, reference } => {
                write!(f, "oci:{}:{reference}", path.display())
            }
            Image::DockerArchive(path) => write!(f, "docker-archive:{}", path.display()),
            Image::Registry(r) => write!(f, "{}", r.reference),
        }
    }
}

/// An image in a registry: its reference, how to authenticate, and the pull's deadlines
/// ([`RegistryLimits`]: 15 s to connect, 30 s of silence, 30 min in all by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegistryImage {
    /// `registry/repository:tag` or `registry/repository@sha256:…`; without a registry,
    /// Docker Hub.
    pub reference: String,
    /// Credentials; the registry's bearer-token flow is followed with them when it asks.
    pub auth: RegistryAuth,
    /// Plain HTTP instead of HTTPS. Registries on a loopback address (`127.0.0.1`,
    /// `localhost`, `[::1]`) are always spoken to over plain HTTP.
    pub plain_http: bool,
    /// The pull's deadlines ([`RegistryLimits::default`] unless set).
    #[serde(default)]
    pub limits: RegistryLimits,
}

/// The deadlines of a registry pull ([`RegistryImage::limits`]). A registry is trusted with
/// nothing: besides these, a manifest, index or config may not exceed 4 MiB nor the size its
/// descriptor declares, and a layer not the size the manifest declares for it (an
/// [`ImageErrorKind::TooLarge`](crate::ImageErrorKind::TooLarge) error, cut at the first byte
/// past the limit). A deadline passed is an
/// [`ImageErrorKind::Timeout`](crate::ImageErrorKind::Timeout) error. Either way nothing of the
/// pull stays on disk.
///
/// ```
/// use std::time::Duration;
/// use oci_sandbox::{RegistryImage, RegistryLimits};
///
/// let mut limits = RegistryLimits::default();
/// limits.read_idle = Duration::from_secs(10);
/// let image = RegistryImage::new("127.0.0.1:5000/tools:1")
///     .limits(limits)
///     .total_timeout(Duration::from_secs(120));
/// # let _ = image;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RegistryLimits {
    /// To open a connection (TCP, and TLS over HTTPS): 15 s by default.
    pub connect: Duration,
    /// The longest silence while a reply is due: from a request to its reply's headers, and
    /// between two reads of a body. 30 s by default.
    pub read_idle: Duration,
    /// The whole pull, from its first request to the last byte of its last layer (the
    /// layers before it unpacked meanwhile): 30 min by default.
    pub total: Duration,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            connect: Duration::from_secs(15),
            read_idle: Duration::from_secs(30),
            total: Duration::from_secs(30 * 60),
        }
    }
}

impl RegistryImage {
    /// `reference`, anonymous, over HTTPS (plain HTTP on loopback).
    pub fn new(reference: impl Into<String>) -> Self {
        RegistryImage {
            reference: reference.into(),
            auth: RegistryAuth::Anonymous,
            plain_http: false,
            limits: RegistryLimits::default(),
        }
    }

    /// The same image with `limits` as its pull's deadlines.
    pub fn limits(mut self, limits: RegistryLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same image with `timeout` as its pull's total deadline
    /// ([`RegistryLimits::total`]).
    pub fn total_timeout(mut self, timeout: Duration) -> Self {
        self.limits.total = timeout;
        self
    }

    /// The same image with `auth`.
    pub fn auth(mut self, auth: RegistryAuth) -> Self {
        self.auth = auth;
        self
    }
}

/// How to authenticate to a registry.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum RegistryAuth {
    /// No credentials (anonymous tokens where the registry hands them out).
    #[default]
    Anonymous,
    /// HTTP basic credentials (also exchanged for a bearer token when the registry asks).
    Basic {
        /// The user name.
        username: String,
        /// The password or access token.
        password: String,
    },
}

impl std::fmt::Debug for RegistryAuth {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryAuth::Anonymous => f.write_str("Anonymous"),
            RegistryAuth::Basic { username, .. } => {
                write!(f, "Basic {{ username: {username:?}, password: \"…\" }}")
            }
        }
    }
}

/// What a pull or an unpack is doing, for long ones
/// ([`NamespaceContainer::pull_with_progress`](crate::NamespaceContainer::pull_with_progress)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProgressStage {
    /// Bytes of a layer fetched (from the registry, or read from the layout or archive).
    Fetching,
    /// A layer is being unpacked into the store.
    Unpacking,
    /// A layer is in the store (just unpacked, or found there).
    Ready,
}

/// One progress event of a pull: a layer's stage, with byte counts where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProgress {
    /// The layer's digest (`sha256:…`).
    pub layer: String,
    /// The layer's position in the image, lowest first.
    pub index: usize,
    /// How many layers the image has.
    pub layers: usize,
    /// What is happening to the layer.
    pub stage: ProgressStage,
    /// Bytes done, for [`ProgressStage::Fetching`].
    pub bytes: u64,
    /// The layer's size in bytes (compressed), when known.
    pub total: Option<u64>,
}

/// An image in the store, ready to be a root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The image manifest's digest (`sha256:…`).
    pub digest: String,
    /// The layers' digests, lowest first.
    pub layers: Vec<String>,
    /// The unpacked size of the layers, in bytes (what the store holds for them).
    pub unpacked_bytes: u64,
}
