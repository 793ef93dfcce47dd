//! Where an image's manifest, config and layer blobs come from: an OCI layout directory or a
//! `docker save` archive (both read from disk, every digest checked), or a registry
//! (`registry.rs`). The result is the same [`Resolved`] image either way.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::ImageFailure;
use crate::error::ImageErrorKind;

/// Most bytes of a manifest, index or config read into memory.
const MAX_JSON: u64 = 16 * 1024 * 1024;

/// An image's parts, named and checked: the store fetches and unpacks its layers.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The manifest's digest (for a `docker save` archive: its config's, the image id).
    pub digest: String,
    /// The image config (JSON).
    pub config: Value,
    /// The layers, lowest first.
    pub layers: Vec<LayerBlob>,
}

/// One layer: its digest and where its blob is.
#[derive(Debug, Clone)]
pub(crate) struct LayerBlob {
    /// `sha256:<hex>` of the blob as stored (compressed or not).
    pub digest: String,
    /// Its size in bytes, when the manifest says.
    pub size: Option<u64>,
    /// Where to read it.
    pub from: BlobFrom,
}

/// Where a layer blob is.
#[derive(Debug, Clone)]
pub(crate) enum BlobFrom {
    /// A file on disk, not yet checked against the digest.
    File(PathBuf),
    /// A file on disk whose uncompressed content must hash to this (`docker save` layers
    /// are named by their config's `diff_ids`).
    FileWithDiffId(PathBuf, String),
    /// The registry (see `registry.rs`), with the media type the manifest gives.
    Registry,
}

/// `sha256:<hex>` split into its hex, checked to be one.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, ImageFailure> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(hex),
        _ => Err(ImageFailure::new(
            ImageErrorKind::Unsupported,
            format!("digest {digest:?} is not a sha256 digest"),
        )),
    }
}

/// The sha256 of everything `reader` yields, as `sha256:<hex>`.
pub(crate) fn digest_of(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

/// Checks that `path`'s content hashes to `digest`.
pub(crate) fn verify_file(path: &Path, digest: &str) -> Result<(), ImageFailure> {
    let file = std::fs::File::open(path).map_err(|e| ImageFailure::io(path, e))?;
    let got = digest_of(std::io::BufReader::new(file)).map_err(|e| ImageFailure::io(path, e))?;
    if got != digest {
        return Err(ImageFailure::new(
            ImageErrorKind::DigestMismatch,
            format!("{} hashes to {got}, not {digest}", path.display()),
        ));
    }
    Ok(())
}

/// Reads a JSON document of at most [`MAX_JSON`] bytes.
fn read_json(path: &Path) -> Result<(Vec<u8>, Value), ImageFailure> {
    let file = std::fs::File::open(path).map_err(|e| ImageFailure::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_JSON)
        .read_to_end(&mut bytes)
        .map_err(|e| ImageFailure::io(path, e))?;
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        ImageFailure::new(
            ImageErrorKind::InvalidFormat,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok((bytes, value))
}

fn invalid(reason: impl Into<String>) -> ImageFailure {
    ImageFailure::new(ImageErrorKind::InvalidFormat, reason)
}

/// A blob of an OCI layout, by digest, checked.
fn layout_blob(layout: &Path, digest: &str) -> Result<PathBuf, ImageFailure> {
    let path = layout.join("blobs/sha256").join(sha256_hex(digest)?);
    if !path.is_file() {
        return Err(ImageFailure::new(
            ImageErrorKind::NotFound,
            format!("blob {digest} is not in the layout"),
        ));
    }
    Ok(path)
}

/// A JSON blob of an OCI layout, its digest checked.
fn layout_json(layout: &Path, digest: &str) -> Result<Value, ImageFailure> {
    let path = layout_blob(layout, digest)?;
    let (bytes, value) = read_json(&path)?;
    let got = digest_of(&bytes[..]).map_err(|e| ImageFailure::io(&path, e))?;
    if got != digest {
        return Err(ImageFailure::new(
            ImageErrorKind::DigestMismatch,
            format!("blob {digest} hashes to {got}"),
        ));
    }
    Ok(value)
}

/// Whether an index entry is an image for this machine (or says no platform).
fn for_this_platform(entry: &Value) -> bool {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    match entry.get("platform") {
        None => true,
        Some(p) => p["os"] == "linux" && p["architecture"] == arch,
    }
}

/// The manifest an index entry names, following nested indexes to this platform's image.
fn layout_manifest(
    layout: &Path,
    entry: &Value,
    depth: u32,
) -> Result<(String, Value), ImageFailure> {
    let digest = entry["digest"]
        .as_str()
        .ok_or_else(|| invalid("an index entry has no digest"))?
        .to_owned();
    let doc = layout_json(layout, &digest)?;
    let is_index = doc.get("manifests").is_some();
    if !is_index {
        return Ok((digest, doc));
    }
    if depth > 4 {
        return Err(invalid("indexes nest too deep"));
    }
    let inner = doc["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|e| for_this_platform(e)))
        .ok_or_else(|| {
            ImageFailure::new(
                ImageErrorKind::Unsupported,
                format!(
                    "no image for linux/{} in index {digest}",
                    std::env::consts::ARCH
                ),
            )
        })?;
    layout_manifest(layout, inner, depth + 1)
}

/// A layer's digest and size, as a manifest names it.
type NamedLayer = (String, Option<u64>);

/// The config and layers a manifest names (OCI or Docker v2 schema 2 media types).
fn manifest_parts(manifest: &Value) -> Result<(String, Vec<NamedLayer>), ImageFailure> {
    let config = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| invalid("the manifest names no config"))?
        .to_owned();
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| invalid("the manifest lists no layers"))?
        .iter()
        .map(|l| {
            let digest = l["digest"]
                .as_str()
                .ok_or_else(|| invalid("a layer has no digest"))?;
            let media = l["mediaType"].as_str().unwrap_or_default();
            if media.contains("nondistributable") || media.contains("foreign") {
                return Err(ImageFailure::new(
                    ImageErrorKind::Unsupported,
                    format!("layer {digest} is non-distributable ({media})"),
                ));
            }
            Ok((digest.to_owned(), l["size"].as_u64()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((config, layers))
}

/// The image `reference` (a tag or a manifest digest) names in the OCI layout at `layout`.
/// Blocking.
pub(crate) fn resolve_layout_blocking(
    layout: &Path,
    reference: &str,
) -> Result<Resolved, ImageFailure> {
    if !layout.join("oci-layout").is_file() {
        return Err(ImageFailure::new(
            ImageErrorKind::NotFound,
            format!(
                "{} is not an OCI image layout (no oci-layout file)",
                layout.display()
            ),
        ));
    }
    let (_, index) = read_json(&layout.join("index.json"))?;
    let entries = index["manifests"]
        .as_array()
        .ok_or_else(|| invalid("index.json lists no manifests"))?;
    let by_digest = reference.starts_with("sha256:");
    let entry = entries
        .iter()
        .find(|e| {
            if by_digest {
                e["digest"] == reference
            } else {
                e["annotations"]["org.opencontainers.image.ref.name"] == reference
            }
        })
        .ok_or_else(|| {
            ImageFailure::new(
                ImageErrorKind::NotFound,
                format!("no image {reference:?} in the layout"),
            )
        })?;
    let (digest, manifest) = layout_manifest(layout, entry, 0)?;
    let (config_digest, layers) = manifest_parts(&manifest)?;
    let config = layout_json(layout, &config_digest)?;
    let layers = layers
        .into_iter()
        .map(|(digest, size)| {
            let path = layout_blob(layout, &digest)?;
            Ok(LayerBlob {
                digest,
                size,
                from: BlobFrom::File(path),
            })
        })
        .collect::<Result<Vec<_>, ImageFailure>>()?;
    Ok(Resolved {
        digest,
        config,
        layers,
    })
}

/// Extracts the regular files of a `docker save` archive into `into` (a fresh directory),
/// refusing paths that leave it.
fn extract_archive(archive: &Path, into: &Path) -> Result<(), ImageFailure> {
    let file = std::fs::File::open(archive).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ImageErrorKind::NotFound
        } else {
            ImageErrorKind::InvalidFormat
        };
        ImageFailure::new(kind, format!("{}: {e}", archive.display()))
    })?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    tar.set_preserve_permissions(false);
    tar.set_unpack_xattrs(false);
    let not_tar = |e: std::io::Error| {
        invalid(format!(
            "{} is not a docker save archive: {e}",
            archive.display()
        ))
    };
    for entry in tar.entries().map_err(not_tar)? {
        let mut entry = entry.map_err(not_tar)?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue; // Links and the rest: `docker save` layers are regular files.
        }
        if !entry.unpack_in(into).map_err(not_tar)? {
            return Err(ImageFailure::new(
                ImageErrorKind::UnsafeLayer,
                "an archive entry climbs out with ..",
            ));
        }
    }
    Ok(())
}

/// A path that `manifest.json` names inside the extracted archive, kept inside it.
fn archive_member(root: &Path, name: &str) -> Result<PathBuf, ImageFailure> {
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(ImageFailure::new(
            ImageErrorKind::UnsafeLayer,
            format!("manifest.json names {name:?}, outside the archive"),
        ));
    }
    let path = root.join(rel);
    if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
        return Err(invalid(format!(
            "manifest.json names {name:?}, which the archive lacks"
        )));
    }
    Ok(path)
}

/// The first image of the `docker save` archive at `archive`, extracted into `scratch` (a
/// fresh directory of the store's that the caller removes). Blocking.
pub(crate) fn resolve_archive_blocking(
    archive: &Path,
    scratch: &Path,
) -> Result<Resolved, ImageFailure> {
    extract_archive(archive, scratch)?;
    let manifest_path = scratch.join("manifest.json");
    if !manifest_path.is_file() {
        return Err(invalid(format!(
            "{} is not a docker save archive (no manifest.json)",
            archive.display()
        )));
    }
    let (_, manifest) = read_json(&manifest_path)?;
    let image = manifest
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| invalid("manifest.json lists no image"))?;
    let config_path = archive_member(
        scratch,
        image["Config"]
            .as_str()
            .ok_or_else(|| invalid("manifest.json names no Config"))?,
    )?;
    let (config_bytes, config) = read_json(&config_path)?;
    let digest = digest_of(&config_bytes[..]).map_err(|e| ImageFailure::io(&config_path, e))?;
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| invalid("the image config has no rootfs.diff_ids"))?
        .iter()
        .map(|d| d.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| invalid("a diff_id is not a string"))?;
    let names = image["Layers"]
        .as_array()
        .ok_or_else(|| invalid("manifest.json lists no Layers"))?;
    if names.len() != diff_ids.len() {
        return Err(invalid(format!(
            "{} layers for {} diff_ids",
            names.len(),
            diff_ids.len()
        )));
    }
    let layers = names
        .iter()
        .zip(diff_ids)
        .map(|(name, diff_id)| {
            let path = archive_member(
                scratch,
                name.as_str()
                    .ok_or_else(|| invalid("a layer name is not a string"))?,
            )?;
            sha256_hex(&diff_id)?;
            Ok(LayerBlob {
                digest: diff_id.clone(),
                size: std::fs::metadata(&path).ok().map(|m| m.len()),
                from: BlobFrom::FileWithDiffId(path, diff_id),
            })
        })
        .collect::<Result<Vec<_>, ImageFailure>>()?;
    Ok(Resolved {
        digest,
        config,
        layers,
    })
}

/// The digest of `blob`'s uncompressed content (a layer's diff id).
pub(crate) fn diff_id_of(blob: &Path) -> Result<String, ImageFailure> {
    super::unpack::decompressed(blob)
        .and_then(digest_of)
        .map_err(|e| {
            ImageFailure::new(
                ImageErrorKind::InvalidFormat,
                format!("{}: {e}", blob.display()),
            )
        })
}
