//! The sandbox policy from flags and a TOML file (`--config`): runtime, image, limits, egress
//! allowlist, idle timeout. Flags win over the file.

use std::path::PathBuf;
use std::time::Duration;

use oci_sandbox::{EgressPolicy, Image, Network, OciRuntime, RegistryImage, SandboxConfig};

/// The policy flags `run` and `mcp` share.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PolicyArgs {
    /// runc, crun or runsc (default runc).
    #[arg(long)]
    pub runtime: Option<String>,
    /// The root image: `oci:DIR[:TAG]` (an OCI layout), `docker-archive:FILE`, or a registry
    /// reference (`host/repo:tag`). Default: the host's /usr, read-only.
    #[arg(long)]
    pub image: Option<String>,
    /// Memory limit: bytes, or with a K, M or G suffix (default 512M).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPUs, fractions allowed (default 1).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Processes and threads (default 256).
    #[arg(long)]
    pub pids: Option<u32>,
    /// A domain the sandbox may reach through the library's proxy (`*.example.com` too);
    /// repeatable. Without any: no network.
    #[arg(long = "allow-domain")]
    #[serde(default)]
    pub allow_domain: Vec<String>,
    /// Each command's (and each code cell's) wall-clock limit: `30s`, `5m`, `500ms`, or
    /// seconds (default 60s).
    #[arg(long)]
    pub timeout: Option<String>,
    /// A writable root over the image (pip install works; needs --image).
    #[arg(long)]
    #[serde(default)]
    pub writable_root: bool,
    /// mcp: a session's sandbox is closed after this long without a call (default 15m).
    #[arg(long)]
    pub idle_timeout: Option<String>,
    /// The library's state dir (default /run/oci-sandbox as root).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The library's data dir: named sandboxes and volumes (default /var/lib/oci-sandbox).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl PolicyArgs {
    /// These flags over `file`'s settings (flags win).
    pub fn over(self, file: PolicyArgs) -> PolicyArgs {
        let mut allow = file.allow_domain;
        allow.extend(self.allow_domain);
        PolicyArgs {
            runtime: self.runtime.or(file.runtime),
            image: self.image.or(file.image),
            memory: self.memory.or(file.memory),
            cpus: self.cpus.or(file.cpus),
            pids: self.pids.or(file.pids),
            allow_domain: allow,
            timeout: self.timeout.or(file.timeout),
            writable_root: self.writable_root || file.writable_root,
            idle_timeout: self.idle_timeout.or(file.idle_timeout),
            state_dir: self.state_dir.or(file.state_dir),
            data_dir: self.data_dir.or(file.data_dir),
        }
    }

    /// Reads a TOML file of the same settings (`runtime = "runsc"`, `allow-domain = [...]`).
    pub fn from_file(path: &std::path::Path) -> Result<PolicyArgs, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn runtime(&self) -> Result<OciRuntime, String> {
        match self.runtime.as_deref().unwrap_or("runc") {
            "runc" => Ok(OciRuntime::Runc),
            "crun" => Ok(OciRuntime::Crun),
            "runsc" | "gvisor" => Ok(OciRuntime::Gvisor),
            other => Err(format!("unknown runtime {other:?}: runc, crun or runsc")),
        }
    }

    /// A runtime handle for these settings.
    pub async fn container(&self) -> Result<oci_sandbox::NamespaceContainer, String> {
        let mut builder = oci_sandbox::NamespaceContainer::builder().runtime(self.runtime()?);
        if let Some(dir) = &self.state_dir {
            builder = builder.state_dir(dir);
        }
        if let Some(dir) = &self.data_dir {
            builder = builder.data_dir(dir);
        }
        builder.build().await.map_err(|e| e.to_string())
    }

    /// The sandbox policy.
    pub fn sandbox_config(&self) -> Result<SandboxConfig, String> {
        let mut config = SandboxConfig::default();
        if let Some(image) = &self.image {
            config.image = Some(parse_image(image));
        }
        config.writable_root = self.writable_root;
        if let Some(memory) = &self.memory {
            config.memory_limit = Some(parse_bytes(memory)?);
        }
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus <= 1024.0) {
                return Err(format!("--cpus {cpus}: between 0 and 1024"));
            }
            config.cpu_millicores = Some((cpus * 1000.0).round() as u32);
        }
        if let Some(pids) = self.pids {
            config.pids_limit = Some(pids);
        }
        if let Some(timeout) = &self.timeout {
            config.timeout = Some(parse_duration(timeout)?);
        }
        if !self.allow_domain.is_empty() {
            let policy = self
                .allow_domain
                .iter()
                .fold(EgressPolicy::new(), |p, d| p.allow_domain(d.clone()));
            config.network = Network::Egress(policy);
        }
        Ok(config)
    }

    /// The idle timeout of an MCP session's sandbox.
    pub fn idle(&self) -> Result<Duration, String> {
        match &self.idle_timeout {
            Some(t) => parse_duration(t),
            None => Ok(Duration::from_secs(15 * 60)),
        }
    }
}

/// `oci:DIR[:TAG]`, `docker-archive:FILE`, or a registry reference.
fn parse_image(image: &str) -> Image {
    if let Some(rest) = image.strip_prefix("oci:") {
        let (path, reference) = match rest.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, t.to_owned()),
            _ => (rest, "latest".to_owned()),
        };
        return Image::OciLayout {
            path: path.into(),
            reference,
        };
    }
    if let Some(file) = image.strip_prefix("docker-archive:") {
        return Image::DockerArchive(file.into());
    }
    Image::Registry(RegistryImage::new(image))
}

/// Bytes: `536870912`, `512M`, `1G`, `64K`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is no size"))?;
    let factor: u64 = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("{text:?}: the unit is K, M or G")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A duration: `30s`, `5m`, `500ms`, `1h`, or seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is no duration"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1e3,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{text:?}: the unit is ms, s, m or h")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{text:?} must be positive"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}
