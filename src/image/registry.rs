//! Pulling from a registry over the OCI distribution API, with the `oci-client` crate: the
//! manifest (this platform's, from an index), the config and the layer blobs, each checked
//! against its digest as it streams in. Anonymous, basic and bearer-token auth.

use std::path::Path;

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth as ClientAuth;
use oci_client::{Client, Reference};

use super::ImageFailure;
use super::source::{BlobFrom, LayerBlob, Resolved};
use crate::config::image::{RegistryAuth, RegistryImage};
use crate::error::ImageErrorKind;

/// A connection to one image's registry.
pub(crate) struct RegistryPull {
    client: Client,
    reference: Reference,
    auth: ClientAuth,
}

/// Whether `registry` (`host[:port]`) is on a loopback address.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    matches!(host, "localhost" | "[::1]" | "::1") || host.starts_with("127.")
}

fn failure(e: OciDistributionError) -> ImageFailure {
    use OciDistributionError as E;
    let kind = match &e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => ImageErrorKind::Unauthorized,
        E::ImageManifestNotFoundError(_) => ImageErrorKind::NotFound,
        E::ServerError {
            code: 401 | 403, ..
        } => ImageErrorKind::Unauthorized,
        E::ServerError { code: 404, .. } => ImageErrorKind::NotFound,
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                        | oci_client::errors::OciErrorCode::NotFound
                )
            }) =>
        {
            ImageErrorKind::NotFound
        }
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::Unauthorized
                        | oci_client::errors::OciErrorCode::Denied
                )
            }) =>
        {
            ImageErrorKind::Unauthorized
        }
        E::DigestError(_) => ImageErrorKind::DigestMismatch,
        E::ManifestParsingError(_)
        | E::VersionedParsingError(_)
        | E::UnsupportedSchemaVersionError(_)
        | E::JsonError(_) => ImageErrorKind::InvalidFormat,
        E::UnsupportedMediaTypeError(_) | E::IncompatibleLayerMediaTypeError(_) => {
            ImageErrorKind::Unsupported
        }
        _ => ImageErrorKind::Registry,
    };
    ImageFailure::new(kind, e.to_string())
}

impl RegistryPull {
    /// A client for `image`'s registry (plain HTTP on loopback or when asked).
    pub(crate) fn new(image: &RegistryImage) -> Result<Self, ImageFailure> {
        let reference: Reference = image.reference.parse().map_err(|e| {
            ImageFailure::new(
                ImageErrorKind::InvalidFormat,
                format!("{:?} is not an image reference: {e}", image.reference),
            )
        })?;
        let registry = reference.resolve_registry().to_owned();
        let protocol = if image.plain_http || is_loopback(&registry) {
            oci_client::client::ClientProtocol::HttpsExcept(vec![registry])
        } else {
            oci_client::client::ClientProtocol::Https
        };
        let client = Client::new(oci_client::client::ClientConfig {
            protocol,
            ..Default::default()
        });
        let auth = match &image.auth {
            RegistryAuth::Anonymous => ClientAuth::Anonymous,
            RegistryAuth::Basic { username, password } => {
                ClientAuth::Basic(username.clone(), password.clone())
            }
        };
        Ok(RegistryPull {
            client,
            reference,
            auth,
        })
    }

    /// The manifest (this platform's) and config; the layers to fetch with [`Self::fetch`].
    pub(crate) async fn resolve(&self) -> Result<Resolved, ImageFailure> {
        let (manifest, digest, config) = self
            .client
            .pull_manifest_and_config(&self.reference, &self.auth)
            .await
            .map_err(failure)?;
        if let Some(want) = self.reference.digest()
            && want != digest
        {
            return Err(ImageFailure::new(
                ImageErrorKind::DigestMismatch,
                format!("asked for {want}, the registry sent {digest}"),
            ));
        }
        let config = serde_json::from_str(&config).map_err(|e| {
            ImageFailure::new(ImageErrorKind::InvalidFormat, format!("image config: {e}"))
        })?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| LayerBlob {
                digest: l.digest.clone(),
                size: u64::try_from(l.size).ok(),
                from: BlobFrom::Registry,
            })
            .collect();
        Ok(Resolved {
            digest,
            config,
            layers,
        })
    }

    /// Streams `layer`'s blob into the file `into` (created), checking its digest.
    pub(crate) async fn fetch(&self, layer: &LayerBlob, into: &Path) -> Result<(), ImageFailure> {
        let file = tokio::fs::File::create(into)
            .await
            .map_err(|e| ImageFailure::io(into, e))?;
        let descriptor = oci_client::manifest::OciDescriptor {
            digest: layer.digest.clone(),
            size: layer.size.and_then(|s| i64::try_from(s).ok()).unwrap_or(-1),
            ..Default::default()
        };
        let mut out = tokio::io::BufWriter::new(file);
        self.client
            .pull_blob(&self.reference, &descriptor, &mut out)
            .await
            .map_err(failure)?;
        use tokio::io::AsyncWriteExt;
        out.flush().await.map_err(|e| ImageFailure::io(into, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("localhost"));
        assert!(!is_loopback("registry.example.com:5000"));
        assert!(!is_loopback("docker.io"));
    }
}
