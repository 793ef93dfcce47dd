//! Pulling from a registry over the OCI distribution API: the manifest (this platform's, from
//! an index), the config and the layer blobs. Anonymous, basic and bearer-token auth.
//!
//! The registry is trusted with nothing. Every request has the pull's deadlines
//! ([`RegistryLimits`]: connect, idle read, total); every body has a size bound and is hashed
//! as it streams in: a manifest, index or config at most [`MAX_JSON`] bytes and the size its
//! descriptor declares, a layer at most the size its manifest declares (a blob cut at the
//! first byte past it), a token or an error reply a few KiB. References, manifest types and
//! the platform choice come from `oci-client`; the requests are made here with `reqwest`
//! because `oci-client` reads manifests, tokens and error replies whole, with no bound.

use std::path::Path;

use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use reqwest::header::{ACCEPT, WWW_AUTHENTICATE};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::ImageFailure;
use super::source::{BlobFrom, LayerBlob, Resolved};
use crate::config::image::{RegistryAuth, RegistryImage, RegistryLimits};
use crate::error::ImageErrorKind;

/// Most bytes of a manifest, an index or an image config.
pub(crate) const MAX_JSON: u64 = 4 * 1024 * 1024;
/// Most bytes of a token reply.
const MAX_TOKEN: u64 = 1024 * 1024;
/// Most bytes of an error reply read (for its message).
const MAX_ERROR: u64 = 64 * 1024;

/// The manifest media types asked for.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// How requests authenticate, once the registry has said how.
#[derive(Debug, Clone)]
enum Authorization {
    None,
    Basic(String, String),
    Bearer(String),
}

/// A connection to one image's registry, for one pull.
pub(crate) struct RegistryPull {
    http: reqwest::Client,
    reference: Reference,
    /// `<scheme>://<registry>/v2/`.
    root: String,
    auth: RegistryAuth,
    authorization: Authorization,
    limits: RegistryLimits,
    /// The pull's total deadline.
    deadline: Instant,
}

/// Whether `registry` (`host[:port]`) is on a loopback address.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => registry,
    };
    matches!(host, "localhost" | "[::1]" | "::1") || host.starts_with("127.")
}

fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// `e` with its sources (reqwest's own message names only the URL).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The parameters of a `Bearer` challenge (`realm`, `service`, ...), if it is one.
fn bearer_challenge(header: &str) -> Option<Vec<(String, String)>> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        params.push((key.trim().to_ascii_lowercase(), value.to_owned()));
        rest = tail.trim_start().trim_start_matches(',').trim_start();
    }
    Some(params)
}

impl RegistryPull {
    /// A client for `image`'s registry (plain HTTP on loopback or when asked); the pull's
    /// total deadline starts now.
    pub(crate) fn new(image: &RegistryImage) -> Result<Self, ImageFailure> {
        let reference: Reference = image.reference.parse().map_err(|e| {
            ImageFailure::new(
                ImageErrorKind::InvalidFormat,
                format!("{:?} is not an image reference: {e}", image.reference),
            )
        })?;
        let registry = reference.resolve_registry().to_owned();
        let scheme = if image.plain_http || is_loopback(&registry) {
            "http"
        } else {
            "https"
        };
        let limits = image.limits;
        let http = reqwest::Client::builder()
            .connect_timeout(limits.connect)
            .read_timeout(limits.read_idle)
            .user_agent(concat!("oci-sandbox/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ImageFailure::new(ImageErrorKind::Registry, chain(&e)))?;
        Ok(RegistryPull {
            http,
            root: format!("{scheme}://{registry}/v2/"),
            reference,
            auth: image.auth.clone(),
            authorization: Authorization::None,
            limits,
            deadline: Instant::now() + limits.total,
        })
    }

    /// `work`, failed with [`ImageErrorKind::Timeout`] if the pull's total deadline passes.
    async fn within<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, ImageFailure>>,
    ) -> Result<T, ImageFailure> {
        tokio::time::timeout_at(self.deadline, work)
            .await
            .unwrap_or_else(|_| {
                Err(ImageFailure::new(
                    ImageErrorKind::Timeout,
                    format!(
                        "{what}: the pull outlasted its total deadline ({:?})",
                        self.limits.total
                    ),
                ))
            })
    }

    /// A transport failure: a deadline (connect, idle read) or anything else.
    fn transport(&self, what: &str, e: &reqwest::Error) -> ImageFailure {
        if e.is_timeout() {
            let which = if e.is_connect() {
                format!("no connection within {:?}", self.limits.connect)
            } else {
                format!("the registry sent nothing for {:?}", self.limits.read_idle)
            };
            return ImageFailure::new(ImageErrorKind::Timeout, format!("{what}: {which}"));
        }
        ImageFailure::new(ImageErrorKind::Registry, format!("{what}: {}", chain(e)))
    }

    fn url(&self, path: &str) -> String {
        let ns = self
            .reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default();
        format!("{}{}/{path}{ns}", self.root, self.reference.repository())
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Authorization::None => request,
            Authorization::Basic(user, password) => request.basic_auth(user, Some(password)),
            Authorization::Bearer(token) => request.bearer_auth(token),
        }
    }

    /// A successful reply to a GET of `url`, or the registry's failure, typed.
    async fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, ImageFailure> {
        let mut request = self.authorized(self.http.get(url));
        if let Some(types) = accept {
            request = request.header(ACCEPT, types);
        }
        let reply = request.send().await.map_err(|e| self.transport(what, &e))?;
        if reply.status().is_success() {
            return Ok(reply);
        }
        Err(self.refused(what, reply).await)
    }

    /// The failure an unsuccessful reply means (its error codes read from a bounded body).
    async fn refused(&self, what: &str, mut reply: reqwest::Response) -> ImageFailure {
        let status = reply.status();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = reply.chunk().await {
            let room = (MAX_ERROR as usize).saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
        let errors: Vec<(String, String)> = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["errors"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (text("code"), text("message"))
            })
            .collect();
        let has = |codes: &[&str]| errors.iter().any(|(c, _)| codes.contains(&c.as_str()));
        let kind =
            if status.as_u16() == 401 || status.as_u16() == 403 || has(&["UNAUTHORIZED", "DENIED"])
            {
                ImageErrorKind::Unauthorized
            } else if status.as_u16() == 404
                || has(&[
                    "MANIFEST_UNKNOWN",
                    "NAME_UNKNOWN",
                    "BLOB_UNKNOWN",
                    "NOT_FOUND",
                ])
            {
                ImageErrorKind::NotFound
            } else {
                ImageErrorKind::Registry
            };
        let messages: Vec<String> = errors.iter().map(|(c, m)| format!("{c}: {m}")).collect();
        ImageFailure::new(
            kind,
            format!(
                "{what}: the registry answered {status} {}",
                messages.join("; ")
            ),
        )
    }

    /// The body of `reply`, at most `cap` bytes (past that: [`ImageErrorKind::TooLarge`],
    /// the rest never read).
    async fn body(
        &self,
        mut reply: reqwest::Response,
        cap: u64,
        what: &str,
    ) -> Result<Vec<u8>, ImageFailure> {
        let too_large = || {
            ImageFailure::new(
                ImageErrorKind::TooLarge,
                format!("{what}: the registry sent more than {cap} bytes"),
            )
        };
        if reply.content_length().is_some_and(|n| n > cap) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = reply.chunk().await.map_err(|e| self.transport(what, &e))? {
            if (body.len() + chunk.len()) as u64 > cap {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Asks the registry how to authenticate (`GET /v2/`) and gets a token if it wants one.
    async fn authorize(&mut self) -> Result<(), ImageFailure> {
        let what = "authenticating";
        let reply = self
            .http
            .get(&self.root)
            .send()
            .await
            .map_err(|e| self.transport(what, &e))?;
        let challenge = reply
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        drop(reply);
        let basic = match &self.auth {
            RegistryAuth::Basic { username, password } => Some((username, password)),
            RegistryAuth::Anonymous => None,
        };
        self.authorization = match (challenge.as_deref().and_then(bearer_challenge), basic) {
            (Some(params), basic) => {
                let param = |k: &str| params.iter().find(|(p, _)| p == k).map(|(_, v)| v);
                let realm = param("realm").ok_or_else(|| {
                    ImageFailure::new(
                        ImageErrorKind::Registry,
                        "the registry's bearer challenge names no realm",
                    )
                })?;
                let scope = format!("repository:{}:pull", self.reference.repository());
                let mut query = vec![("scope", scope.as_str())];
                if let Some(service) = param("service") {
                    query.push(("service", service));
                }
                let mut request = self.http.get(realm).query(&query);
                if let Some((user, password)) = basic {
                    request = request.basic_auth(user, Some(password));
                }
                let what = "getting a token";
                let reply = request.send().await.map_err(|e| self.transport(what, &e))?;
                if !reply.status().is_success() {
                    let mut failure = self.refused(what, reply).await;
                    failure.kind = ImageErrorKind::Unauthorized;
                    return Err(failure);
                }
                let body = self.body(reply, MAX_TOKEN, what).await?;
                let token: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    ImageFailure::new(ImageErrorKind::Unauthorized, format!("{what}: {e}"))
                })?;
                let token = token["token"]
                    .as_str()
                    .or(token["access_token"].as_str())
                    .ok_or_else(|| {
                        ImageFailure::new(
                            ImageErrorKind::Unauthorized,
                            format!("{what}: the reply has no token"),
                        )
                    })?;
                Authorization::Bearer(token.to_owned())
            }
            (None, Some((user, password))) if challenge.is_some() => {
                Authorization::Basic(user.clone(), password.clone())
            }
            _ => Authorization::None,
        };
        Ok(())
    }

    /// The manifest named by `reference` (a tag or a digest), at most `cap` bytes, and its
    /// digest, checked against `digest` when one is expected.
    async fn manifest(
        &self,
        reference: &str,
        cap: u64,
        digest: Option<&str>,
    ) -> Result<(String, OciManifest), ImageFailure> {
        let what = format!("manifest {reference}");
        let reply = self
            .get(
                &self.url(&format!("manifests/{reference}")),
                Some(MANIFEST_TYPES),
                &what,
            )
            .await?;
        let announced = reply
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = self.body(reply, cap, &what).await?;
        let got = sha256_of(&body);
        for want in [digest, announced.as_deref()].into_iter().flatten() {
            if want != got {
                return Err(ImageFailure::new(
                    ImageErrorKind::DigestMismatch,
                    format!("{what}: expected {want}, the registry sent {got}"),
                ));
            }
        }
        let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            ImageFailure::new(ImageErrorKind::InvalidFormat, format!("{what}: {e}"))
        })?;
        if doc["schemaVersion"] != 2 {
            return Err(ImageFailure::new(
                ImageErrorKind::Unsupported,
                format!("{what}: schema version {} (2 only)", doc["schemaVersion"]),
            ));
        }
        let manifest = serde_json::from_value(doc).map_err(|e| {
            ImageFailure::new(ImageErrorKind::InvalidFormat, format!("{what}: {e}"))
        })?;
        Ok((got, manifest))
    }

    /// A JSON blob (the image config): at most its declared size and [`MAX_JSON`], its
    /// digest checked.
    async fn json_blob(&self, descriptor: &OciDescriptor) -> Result<Vec<u8>, ImageFailure> {
        let what = format!("config {}", descriptor.digest);
        let cap = declared_size(descriptor.size, &what)?;
        if cap > MAX_JSON {
            return Err(ImageFailure::new(
                ImageErrorKind::TooLarge,
                format!("{what}: declares {cap} bytes, more than the {MAX_JSON} allowed"),
            ));
        }
        super::source::sha256_hex(&descriptor.digest)?;
        let reply = self
            .get(
                &self.url(&format!("blobs/{}", descriptor.digest)),
                None,
                &what,
            )
            .await?;
        let body = self.body(reply, cap, &what).await?;
        let got = sha256_of(&body);
        if got != descriptor.digest {
            return Err(ImageFailure::new(
                ImageErrorKind::DigestMismatch,
                format!("{what}: the registry sent {got}"),
            ));
        }
        Ok(body)
    }

    /// The manifest (this platform's) and config; the layers to fetch with [`Self::fetch`].
    pub(crate) async fn resolve(&mut self) -> Result<Resolved, ImageFailure> {
        let deadline = self.deadline;
        let total = self.limits.total;
        tokio::time::timeout_at(deadline, self.resolve_inner())
            .await
            .unwrap_or_else(|_| {
                Err(ImageFailure::new(
                    ImageErrorKind::Timeout,
                    format!("resolving: the pull outlasted its total deadline ({total:?})"),
                ))
            })
    }

    async fn resolve_inner(&mut self) -> Result<Resolved, ImageFailure> {
        self.authorize().await?;
        let wanted = self.reference.digest().map(str::to_owned);
        let by = wanted
            .clone()
            .or_else(|| self.reference.tag().map(str::to_owned))
            .unwrap_or_else(|| "latest".to_owned());
        let (digest, manifest) = match self.manifest(&by, MAX_JSON, wanted.as_deref()).await? {
            (digest, OciManifest::Image(m)) => (digest, m),
            (index_digest, OciManifest::ImageIndex(index)) => {
                let entry = index
                    .manifests
                    .iter()
                    .find(|e| {
                        oci_client::client::current_platform_resolver(std::slice::from_ref(e))
                            .is_some()
                    })
                    .ok_or_else(|| {
                        ImageFailure::new(
                            ImageErrorKind::Unsupported,
                            format!(
                                "no image for linux/{} in index {index_digest}",
                                std::env::consts::ARCH
                            ),
                        )
                    })?;
                let what = format!("manifest {}", entry.digest);
                let cap = declared_size(entry.size, &what)?.min(MAX_JSON);
                match self
                    .manifest(&entry.digest, cap, Some(&entry.digest))
                    .await?
                {
                    (digest, OciManifest::Image(m)) => (digest, m),
                    (_, OciManifest::ImageIndex(_)) => {
                        return Err(ImageFailure::new(
                            ImageErrorKind::InvalidFormat,
                            format!("{what}: an index where an image manifest belongs"),
                        ));
                    }
                }
            }
        };
        self.resolved(digest, manifest).await
    }

    async fn resolved(
        &self,
        digest: String,
        manifest: OciImageManifest,
    ) -> Result<Resolved, ImageFailure> {
        let config = self.json_blob(&manifest.config).await?;
        let config = serde_json::from_slice(&config).map_err(|e| {
            ImageFailure::new(ImageErrorKind::InvalidFormat, format!("image config: {e}"))
        })?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                let what = format!("layer {}", l.digest);
                if l.media_type.contains("nondistributable") || l.media_type.contains("foreign") {
                    return Err(ImageFailure::new(
                        ImageErrorKind::Unsupported,
                        format!("{what} is non-distributable ({})", l.media_type),
                    ));
                }
                Ok(LayerBlob {
                    digest: l.digest.clone(),
                    size: Some(declared_size(l.size, &what)?),
                    from: BlobFrom::Registry,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Resolved {
            digest,
            config,
            layers,
        })
    }

    /// Streams `layer`'s blob into the file `into` (created), hashing it as it comes and
    /// cutting it at the first byte past its declared size. Returns its size.
    pub(crate) async fn fetch(&self, layer: &LayerBlob, into: &Path) -> Result<u64, ImageFailure> {
        let what = format!("layer {}", layer.digest);
        self.within(&what, self.fetch_inner(layer, into, &what))
            .await
    }

    async fn fetch_inner(
        &self,
        layer: &LayerBlob,
        into: &Path,
        what: &str,
    ) -> Result<u64, ImageFailure> {
        let size = layer.size.ok_or_else(|| {
            ImageFailure::new(
                ImageErrorKind::InvalidFormat,
                format!("{what}: the manifest declares no size"),
            )
        })?;
        let too_large = || {
            ImageFailure::new(
                ImageErrorKind::TooLarge,
                format!("{what}: the registry sent more than the {size} bytes it declares"),
            )
        };
        let mut reply = self
            .get(&self.url(&format!("blobs/{}", layer.digest)), None, what)
            .await?;
        if reply.content_length().is_some_and(|n| n > size) {
            return Err(too_large());
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(into)
            .await
            .map_err(|e| ImageFailure::store("creating", into, e))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 18, file);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        while let Some(chunk) = reply.chunk().await.map_err(|e| self.transport(what, &e))? {
            got += chunk.len() as u64;
            if got > size {
                return Err(too_large());
            }
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| ImageFailure::store("writing", into, e))?;
        }
        out.flush()
            .await
            .map_err(|e| ImageFailure::store("writing", into, e))?;
        let digest = format!("sha256:{:x}", hasher.finalize());
        if got < size {
            return Err(ImageFailure::new(
                ImageErrorKind::DigestMismatch,
                format!("{what}: the registry sent {got} of the {size} bytes it declares"),
            ));
        }
        if digest != layer.digest {
            return Err(ImageFailure::new(
                ImageErrorKind::DigestMismatch,
                format!("{what}: the registry sent {digest}"),
            ));
        }
        Ok(got)
    }
}

/// A descriptor's size, which must be there (not negative).
fn declared_size(size: i64, what: &str) -> Result<u64, ImageFailure> {
    u64::try_from(size).map_err(|_| {
        ImageFailure::new(
            ImageErrorKind::InvalidFormat,
            format!("{what}: the descriptor declares a size of {size}"),
        )
    })
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

    #[test]
    fn bearer_challenges_are_parsed() {
        let p = bearer_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(
            p,
            [
                ("realm".into(), "https://auth.example.com/token".into()),
                ("service".into(), "registry.example.com".into()),
                ("scope".into(), "repository:a/b:pull".into()),
            ]
        );
        assert_eq!(
            bearer_challenge("bearer realm=http://x/t, service=s").unwrap(),
            [
                ("realm".into(), "http://x/t".into()),
                ("service".into(), "s".into())
            ]
        );
        assert!(bearer_challenge(r#"Basic realm="registry""#).is_none());
    }
}
