//! [`SandboxConfig`] (the policy a caller states) and [`ContainerConfig`] (the concrete request
//! that becomes an OCI spec).

mod args;
mod exec;
pub(crate) mod image;
pub(crate) mod limits;
pub(crate) mod network;
mod policy;

pub use args::IntoArgs;
pub use exec::ExecConfig;
pub(crate) use limits::check_timeout;
pub use limits::{Limits, MIN_MEMORY_LIMIT, MIN_PIDS_LIMIT, Security};
pub(crate) use policy::{DEFAULT_PATH, ROOTFS_LINKS, from_policy, merge_env};

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::error::SandboxError;

/// How stdout and stderr are captured.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[non_exhaustive]
pub enum OutputMode {
    /// Two files: stdout and stderr apart.
    #[default]
    Separate,
    /// One file with both, in the order they were written (like `2>&1`). It is opened with
    /// `O_APPEND`, so that no write overwrites another (gVisor loses output otherwise).
    Combined,
}

/// Where the container's network comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Network {
    /// A network namespace of its own with only a loopback device: nothing is reachable.
    #[default]
    None,
    /// The host's network namespace: the container sees and reaches what the host does,
    /// the host's own loopback services included.
    Host,
    /// A network namespace of its own (loopback only), and the library's egress proxy for
    /// what the policy allows: see [`EgressPolicy`](network::EgressPolicy).
    Egress(network::EgressPolicy),
}

impl Network {
    /// Whether the container has a network namespace of its own (every mode but `Host`).
    pub(crate) fn is_isolated(&self) -> bool {
        !matches!(self, Network::Host)
    }

    /// The egress policy, if the container has one.
    pub(crate) fn egress(&self) -> Option<&network::EgressPolicy> {
        match self {
            Network::Egress(p) => Some(p),
            _ => None,
        }
    }
}

/// Where one of the container's standard streams goes (used by [`spawn`]).
///
/// [`spawn`]: crate::NamespaceContainer::spawn
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Stdio {
    /// A pipe to the caller, exposed on the [`ContainerProcess`](crate::ContainerProcess).
    #[default]
    Piped,
    /// The caller's own stream.
    Inherit,
    /// `/dev/null`.
    Null,
}

/// A host directory or file bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bind {
    /// Absolute path on the host.
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: PathBuf,
}

impl Bind {
    /// A bind of `source` on the host at `destination` in the container.
    pub fn new(source: impl Into<PathBuf>, destination: impl Into<PathBuf>) -> Self {
        Bind {
            source: source.into(),
            destination: destination.into(),
        }
    }
}

/// The policy for a sandbox: what the command may see, reach and use.
///
/// `SandboxConfig::default()` is the safe default, and it runs: host tools (`/usr` and the
/// `/bin`, `/lib*` links, a minimal `/etc`) read-only, a private writable `/tmp`, no `/home`,
/// `/root` or host secrets, the host environment not inherited, no network (a network namespace
/// of its own), all capabilities dropped, `no_new_privileges`, the seccomp profile, masked
/// `/proc` paths, a read-only root filesystem, as root a user namespace, limits of 512 MiB of
/// memory, 256 pids and one CPU, a 64 MiB output limit and a 60 s wall-clock timeout.
///
/// ```
/// use std::time::Duration;
/// use oci_sandbox::{Network, SandboxConfig};
///
/// let policy = SandboxConfig {
///     network: Network::Host,
///     timeout: Some(Duration::from_secs(5)),
///     ..SandboxConfig::default()
/// };
/// assert_eq!(policy.memory_limit, Some(512 * 1024 * 1024));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// Network access; [`Network::None`] by default.
    pub network: Network,
    /// Host paths mounted read-only.
    pub readonly_binds: Vec<Bind>,
    /// Host paths mounted read-write.
    pub writable_binds: Vec<Bind>,
    /// A host directory mounted read-write at [`SandboxConfig::WORKDIR`], and the command's
    /// working directory. Without one, the command runs in `/tmp`.
    pub workdir: Option<PathBuf>,
    /// Environment variables added to the default `PATH`, `HOME` and `LANG` (later wins).
    pub env: Vec<(String, String)>,
    /// The user id the command runs as inside the container.
    pub uid: u32,
    /// The group id the command runs as inside the container.
    pub gid: u32,
    /// The container's hostname.
    pub hostname: String,
    /// Wall-clock limit; past it the container is killed and the status says timed out.
    pub timeout: Option<Duration>,
    /// Memory limit in bytes (swap included).
    pub memory_limit: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids_limit: Option<u32>,
    /// CPU time, in thousandths of a CPU per wall-clock second (1000 = one full core, 500 =
    /// half of one); past it the container's threads are throttled until the next 100 ms
    /// period.
    pub cpu_millicores: Option<u32>,
    /// Size of the private writable `/tmp`, in bytes.
    pub tmp_size: u64,
    /// Most bytes kept of each captured output file
    /// ([`spawn_captured`](crate::NamespaceContainer::spawn_captured)); past it the process is
    /// killed and the output cut.
    pub output_limit: Option<u64>,
    /// Mount the container's own cgroups read-only at `/sys/fs/cgroup`, so that programs
    /// that size themselves from their limits (JVMs, Node.js, Go's `automaxprocs`) can read
    /// them. Off by default: on hosts with v1 or hybrid cgroups the runtime mounts every
    /// hierarchy, about a tenth of a cold spawn (BENCHMARKS.md, spec cost), and without it
    /// the limits hold all the same. Not on gVisor nor rootless: there it is
    /// [`SandboxError::InvalidConfig`].
    pub cgroup_view: bool,
    /// A long-lived [`Sandbox`](crate::Sandbox) is closed this long after its start, with
    /// whatever runs in it; later calls fail with [`SandboxError::SandboxExpired`]. `None`
    /// (the default): no limit. Spawns have [`timeout`](Self::timeout) instead.
    pub ttl: Option<Duration>,
    /// A long-lived [`Sandbox`](crate::Sandbox) is closed once no command (exec or job) has
    /// run in it for this long; later calls fail with [`SandboxError::SandboxExpired`].
    /// `None` (the default): never for idleness.
    pub idle_lifetime: Option<Duration>,
    /// The root filesystem: an OCI image (pulled or read once, unpacked once into the state
    /// dir's store, each container's root an overlay of its own over it). `None` (the
    /// default): the host's `/usr` read-only, with the library's own small root.
    ///
    /// The image's config applies: its `Env` under [`env`](Self::env) (which wins), its
    /// `WorkingDir` unless [`workdir`](Self::workdir) is set, its `User` unless
    /// [`uid`](Self::uid) or [`gid`](Self::gid) is not 0, and its `Entrypoint` + `Cmd` when
    /// the command is empty (`build_config(&policy, "", vec![])`).
    pub image: Option<crate::config::image::Image>,
    /// With an [`image`](Self::image), a writable root: the container's writes go to a
    /// layer of its own over the image (a tmpfs of [`tmp_size`](Self::tmp_size) bytes),
    /// discarded with the container. Off by default (the root is read-only); without an
    /// image it is [`SandboxError::InvalidConfig`].
    pub writable_root: bool,
    /// Let a long-lived [`Sandbox`](crate::Sandbox) be snapshotted
    /// ([`Sandbox::snapshot`](crate::Sandbox::snapshot)) and forked. Needs an
    /// [`image`](Self::image) and a [`writable_root`](Self::writable_root) (else
    /// [`SandboxError::InvalidConfig`]). Off by default, because it moves the writable state:
    ///
    /// - on runc and crun the root's writable layer, `/tmp` included (no tmpfs of its own),
    ///   is a directory on the state dir's disk, not a tmpfs: a snapshot takes it as a layer
    ///   without copying a byte. Its size is then bounded by that disk, not by
    ///   [`tmp_size`](Self::tmp_size);
    /// - on gVisor the root's writes are kept in the sandbox's memory (runsc's
    ///   `--overlay2=root:memory`), which a checkpoint saves with the processes.
    pub snapshots: bool,
    /// A name makes the sandbox durable (see [`NamespaceContainer::create`]): its state (the
    /// config, `/workspace`, `/tmp`, on gVisor its last hibernation) lives in the library's
    /// data dir, survives its owner (a clean exit, a crash, a `SIGKILL`), and any later
    /// process gets it back with [`NamespaceContainer::connect`]. 1-63 characters of
    /// `[a-z0-9_.-]`, starting with a letter or digit. `None` (the default): the sandbox lives
    /// and dies with its handle.
    ///
    /// [`NamespaceContainer::create`]: crate::NamespaceContainer::create
    /// [`NamespaceContainer::connect`]: crate::NamespaceContainer::connect
    pub name: Option<String>,
    /// Labels of a named sandbox, listed by
    /// [`NamespaceContainer::sandboxes`](crate::NamespaceContainer::sandboxes).
    pub labels: BTreeMap<String, String>,
    /// Volumes (see [`NamespaceContainer::create_volume`](crate::NamespaceContainer::create_volume))
    /// mounted into the sandbox.
    pub volumes: Vec<VolumeMount>,
    /// A long-lived sandbox is paused ([`Sandbox::pause`](crate::Sandbox::pause)) once no
    /// command, file call or connection has run in it for this long; the next call resumes
    /// it. `None` (the default): never.
    pub idle_pause: Option<Duration>,
    /// A named sandbox is hibernated ([`Sandbox::hibernate`](crate::Sandbox::hibernate))
    /// once nothing has run in it for this long; the next call resumes it. `None` (the
    /// default): never.
    pub idle_hibernate: Option<Duration>,
}

/// A [volume](crate::NamespaceContainer::create_volume) mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's name.
    pub name: String,
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// Mounted read-only.
    pub read_only: bool,
}

impl VolumeMount {
    /// Volume `name`, read-write at `destination`.
    pub fn new(name: impl Into<String>, destination: impl Into<PathBuf>) -> Self {
        VolumeMount {
            name: name.into(),
            destination: destination.into(),
            read_only: false,
        }
    }

    /// Volume `name`, read-only at `destination`.
    pub fn read_only(name: impl Into<String>, destination: impl Into<PathBuf>) -> Self {
        VolumeMount {
            read_only: true,
            ..VolumeMount::new(name, destination)
        }
    }
}

impl SandboxConfig {
    /// Where [`SandboxConfig::workdir`] is mounted inside the container.
    pub const WORKDIR: &'static str = "/workspace";
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            network: Network::None,
            readonly_binds: Vec::new(),
            writable_binds: Vec::new(),
            workdir: None,
            env: Vec::new(),
            uid: 0,
            gid: 0,
            hostname: "sandbox".to_owned(),
            timeout: Some(Duration::from_secs(60)),
            memory_limit: Some(512 * 1024 * 1024),
            pids_limit: Some(256),
            cpu_millicores: Some(1000),
            tmp_size: 256 * 1024 * 1024,
            output_limit: Some(64 * 1024 * 1024),
            cgroup_view: false,
            ttl: None,
            idle_lifetime: None,
            image: None,
            writable_root: false,
            snapshots: false,
            name: None,
            labels: BTreeMap::new(),
            volumes: Vec::new(),
            idle_pause: None,
            idle_hibernate: None,
        }
    }
}

/// What a mount inside the container is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MountKind {
    /// A bind mount of a host path.
    Bind {
        /// Absolute host path.
        source: PathBuf,
        /// Whether the container may write through it.
        writable: bool,
    },
    /// A private tmpfs of the given size.
    Tmpfs {
        /// Size limit in bytes.
        size: u64,
    },
}

/// One mount of a [`ContainerConfig`], on top of the fixed `/proc`, `/dev` and `/sys`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: PathBuf,
    /// What is mounted there.
    pub kind: MountKind,
}

/// A function that edits the generated OCI [`Spec`] before it is written: the escape hatch
/// for anything [`ContainerConfig`] does not model.
#[derive(Clone)]
pub struct SpecHook(Arc<dyn Fn(&mut Spec) + Send + Sync>);

impl SpecHook {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&mut Spec) + Send + Sync + 'static) -> Self {
        SpecHook(Arc::new(f))
    }

    pub(crate) fn apply(&self, spec: &mut Spec) {
        (self.0)(spec)
    }
}

impl fmt::Debug for SpecHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpecHook(..)")
    }
}

/// The concrete request for one container: what runs, with what it sees.
///
/// Made from a [`SandboxConfig`] by [`NamespaceContainer::build_config`], then adjusted
/// field by field if needed. It is checked when spawned: an invalid field gives
/// [`SandboxError::InvalidConfig`] before anything is created.
///
/// [`NamespaceContainer::build_config`]: crate::NamespaceContainer::build_config
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The container id; a unique one is generated when `None`.
    pub id: Option<String>,
    /// The program, resolved against `PATH` inside the container when it has no `/`.
    pub command: String,
    /// Its arguments (without the program itself).
    pub args: Vec<String>,
    /// The whole environment of the process (nothing is inherited from the host).
    pub env: Vec<(String, String)>,
    /// Working directory inside the container; must be absolute and exist.
    pub cwd: PathBuf,
    /// Mounts besides `/proc`, `/dev` and `/sys`, in order.
    pub mounts: Vec<Mount>,
    /// Mount the container's own cgroups read-only at `/sys/fs/cgroup` (see
    /// [`SandboxConfig::cgroup_view`]).
    #[serde(default)]
    pub cgroup_view: bool,
    /// Network access.
    pub network: Network,
    /// The container's hostname.
    pub hostname: Option<String>,
    /// User id inside the container.
    pub uid: u32,
    /// Group id inside the container.
    pub gid: u32,
    /// Resource limits.
    pub limits: Limits,
    /// Capabilities, `no_new_privileges`, read-only root.
    pub security: Security,
    /// Wall-clock limit from spawn; past it the container is killed.
    pub timeout: Option<Duration>,
    /// Most bytes kept of each captured output file; past it the process is killed.
    pub output_limit: Option<u64>,
    /// Killed after this long without output (see [`ExecConfig::idle_timeout`]).
    #[serde(default)]
    pub idle_timeout: Option<Duration>,
    /// A long-lived sandbox's time to live (see [`SandboxConfig::ttl`]).
    #[serde(default)]
    pub ttl: Option<Duration>,
    /// A long-lived sandbox's idle lifetime (see [`SandboxConfig::idle_lifetime`]).
    #[serde(default)]
    pub idle_lifetime: Option<Duration>,
    /// The root filesystem's image (see [`SandboxConfig::image`]); `None`: the host's
    /// `/usr` read-only.
    pub image: Option<crate::config::image::Image>,
    /// Whether a long-lived sandbox of it can be snapshotted (see
    /// [`SandboxConfig::snapshots`]).
    #[serde(default)]
    pub snapshots: bool,
    /// A named sandbox's name (see [`SandboxConfig::name`]).
    #[serde(default)]
    pub name: Option<String>,
    /// A named sandbox's labels (see [`SandboxConfig::labels`]).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Volumes mounted into the container (see [`SandboxConfig::volumes`]).
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// A long-lived sandbox's idle pause (see [`SandboxConfig::idle_pause`]).
    #[serde(default)]
    pub idle_pause: Option<Duration>,
    /// A named sandbox's idle hibernation (see [`SandboxConfig::idle_hibernate`]).
    #[serde(default)]
    pub idle_hibernate: Option<Duration>,
    /// The process's standard input.
    pub stdin: Stdio,
    /// The process's standard output.
    pub stdout: Stdio,
    /// The process's standard error.
    pub stderr: Stdio,
    /// Edits the generated spec before it is written (not serialised).
    #[serde(skip)]
    pub spec_hook: Option<SpecHook>,
}

/// The fields of a spawn's [`ContainerConfig`] that travel in its request to the launcher,
/// not in its container's spec: the command line and environment, and what the host itself
/// enforces (timeouts, the output limit, a sandbox's lifetimes, which a spawn has not) and
/// wires (stdio). A warm container whose spec side matches serves any of them. (The working
/// directory is the spec's: runc and crun create a missing one when the container starts.)
#[derive(Debug)]
pub(crate) struct ExecSide {
    command: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
    output_limit: Option<u64>,
    idle_timeout: Option<Duration>,
    ttl: Option<Duration>,
    idle_lifetime: Option<Duration>,
    stdio: [Stdio; 3],
}

impl ContainerConfig {
    /// A config that runs `command` with `args` under [`SandboxConfig::default()`].
    pub fn new(command: impl Into<String>, args: impl IntoArgs) -> Self {
        from_policy(&SandboxConfig::default(), command.into(), args.into_args())
    }

    /// Moves out the fields that a spawn's request to the launcher carries (see
    /// [`ExecSide`]), leaving their defaults: what is left is the container's spec side.
    pub(crate) fn take_exec_side(&mut self) -> ExecSide {
        ExecSide {
            command: std::mem::take(&mut self.command),
            args: std::mem::take(&mut self.args),
            env: std::mem::take(&mut self.env),
            timeout: self.timeout.take(),
            output_limit: self.output_limit.take(),
            idle_timeout: self.idle_timeout.take(),
            ttl: self.ttl.take(),
            idle_lifetime: self.idle_lifetime.take(),
            stdio: [
                std::mem::take(&mut self.stdin),
                std::mem::take(&mut self.stdout),
                std::mem::take(&mut self.stderr),
            ],
        }
    }

    /// Puts back the fields [`take_exec_side`](Self::take_exec_side) moved out (another
    /// config's, for a warm container's spawn).
    pub(crate) fn set_exec_side(&mut self, side: ExecSide) {
        let ExecSide {
            command,
            args,
            env,
            timeout,
            output_limit,
            idle_timeout,
            ttl,
            idle_lifetime,
            stdio: [stdin, stdout, stderr],
        } = side;
        (self.command, self.args, self.env) = (command, args, env);
        (self.timeout, self.output_limit, self.idle_timeout) =
            (timeout, output_limit, idle_timeout);
        (self.ttl, self.idle_lifetime) = (ttl, idle_lifetime);
        (self.stdin, self.stdout, self.stderr) = (stdin, stdout, stderr);
    }

    /// The `PATH` value of the config's environment, or the default one.
    pub(crate) fn path_var(&self) -> &str {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH)
    }

    /// Checks every field that can be checked without touching the runtime.
    ///
    /// Host paths (bind sources, the working directory and the command as seen through the
    /// binds) are looked up on the host, so call this off the async workers.
    pub(crate) fn validate(&self) -> Result<(), SandboxError> {
        if let Some(id) = &self.id {
            validate_id(id)?;
        }
        if let Network::Egress(policy) = &self.network {
            policy.validate()?;
        }
        self.validate_durable()?;
        self.validate_command_line()?;
        if let Some(h) = &self.hostname
            && (h.is_empty() || h.len() > 64 || h.contains(['\0', '/']))
        {
            return Err(SandboxError::invalid(
                "hostname",
                format!("{h:?} is not a hostname"),
            ));
        }
        let mut seen = HashSet::new();
        for (i, m) in self.mounts.iter().enumerate() {
            let field = format!("mounts[{i}]");
            absolute_clean(&format!("{field}.destination"), &m.destination)?;
            if !seen.insert(&m.destination) {
                return Err(SandboxError::invalid(
                    format!("{field}.destination"),
                    format!("{} is mounted twice", m.destination.display()),
                ));
            }
            if let MountKind::Bind { source, .. } = &m.kind {
                // The field the caller set: a policy's workdir is the bind at /workspace.
                let source_field = if m.destination == Path::new(SandboxConfig::WORKDIR) {
                    "workdir".to_owned()
                } else {
                    format!("{field}.source")
                };
                absolute_clean(&source_field, source)?;
                if let Err(e) = std::fs::metadata(source) {
                    return Err(SandboxError::invalid(
                        source_field,
                        format!(
                            "{} (to be mounted at {}): {e}",
                            source.display(),
                            m.destination.display()
                        ),
                    ));
                }
            }
        }
        self.security.capability_set()?;
        if !self.security.readonly_rootfs && self.image.is_none() {
            // Every container of a state root starts from the same root filesystem: a
            // writable one would let one container change what the others run. (An image's
            // root is a layer of the container's own over the shared one.)
            return Err(SandboxError::invalid(
                "security.readonly_rootfs",
                "the root filesystem is shared by every container and stays read-only; \
                 write to /tmp, a tmpfs mount or a writable bind, or use an image",
            ));
        }
        if self.snapshots && (self.image.is_none() || self.security.readonly_rootfs) {
            return Err(SandboxError::invalid(
                "snapshots",
                "a snapshot takes the writable layer over an image: set an image and a \
                 writable root",
            ));
        }
        self.limits.validate()?;
        check_timeout(self.timeout)?;
        absolute_clean("cwd", &self.cwd)?;
        if let HostPath::Host(p) = self.host_path(&self.cwd)
            && !p.is_dir()
        {
            return Err(SandboxError::invalid(
                "cwd",
                format!(
                    "{} is not a directory in the container (it would be {} on the host)",
                    self.cwd.display(),
                    p.display()
                ),
            ));
        }
        self.check_command()
    }

    /// The checks of the name, labels, volumes and idle options (no host lookup).
    pub(crate) fn validate_durable(&self) -> Result<(), SandboxError> {
        if let Some(name) = &self.name {
            validate_name("name", name)?;
        }
        for (k, v) in &self.labels {
            if k.is_empty() || k.len() > 63 || v.len() > 255 || k.contains('\0') || v.contains('\0')
            {
                return Err(SandboxError::invalid(
                    "labels",
                    format!("{k:?}: a key is 1-63 bytes and a value at most 255, without NUL"),
                ));
            }
        }
        if self.labels.len() > 64 {
            return Err(SandboxError::invalid("labels", "at most 64 labels"));
        }
        for (i, v) in self.volumes.iter().enumerate() {
            validate_name(&format!("volumes[{i}].name"), &v.name)?;
            absolute_clean(&format!("volumes[{i}].destination"), &v.destination)?;
            if v.destination == Path::new("/")
                || self.mounts.iter().any(|m| m.destination == v.destination)
                || self.volumes[..i]
                    .iter()
                    .any(|w| w.destination == v.destination)
            {
                return Err(SandboxError::invalid(
                    format!("volumes[{i}].destination"),
                    format!("{} is mounted twice", v.destination.display()),
                ));
            }
        }
        for (field, d) in [
            ("idle_pause", self.idle_pause),
            ("idle_hibernate", self.idle_hibernate),
        ] {
            if d == Some(Duration::ZERO) {
                return Err(SandboxError::invalid(field, "must not be zero"));
            }
        }
        if self.idle_hibernate.is_some() && self.name.is_none() {
            return Err(SandboxError::invalid(
                "idle_hibernate",
                "only a named sandbox hibernates (its state is kept under its name)",
            ));
        }
        Ok(())
    }

    /// The checks of the command, its arguments, environment and working directory that need
    /// no host lookup (also those of an exec in a sandbox).
    pub(crate) fn validate_command_line(&self) -> Result<(), SandboxError> {
        if self.command.is_empty() {
            return Err(SandboxError::invalid("command", "is empty"));
        }
        no_nul("command", &self.command)?;
        for (i, a) in self.args.iter().enumerate() {
            no_nul(&format!("args[{i}]"), a)?;
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(SandboxError::invalid(
                    "env",
                    format!("key {key:?} is empty or contains '=' or NUL"),
                ));
            }
            if value.contains('\0') {
                return Err(SandboxError::invalid(
                    "env",
                    format!("value of {key} contains NUL"),
                ));
            }
        }
        absolute_clean("cwd", &self.cwd)
    }

    /// Resolves the command the way `execvp` inside the container would, through the binds,
    /// so that a missing program is reported before a container is made for it. Paths the
    /// library cannot see from the host (tmpfs, the rootfs) are given the benefit of the doubt.
    fn check_command(&self) -> Result<(), SandboxError> {
        let candidates: Vec<PathBuf> = if self.command.contains('/') {
            vec![self.cwd.join(&self.command)]
        } else {
            self.path_var()
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(|d| Path::new(d).join(&self.command))
                .collect()
        };
        let mut unknown = false;
        for candidate in &candidates {
            match self.host_path(candidate) {
                HostPath::Host(p) if crate::sys::is_executable(&p) => return Ok(()),
                HostPath::Host(_) => {}
                HostPath::Unknown => unknown = true,
            }
        }
        if unknown {
            return Ok(());
        }
        Err(SandboxError::CommandNotFound {
            command: self.command.clone(),
            message: None,
        })
    }

    /// Maps a path inside the container to the host path a bind mount exposes there.
    fn host_path(&self, path: &Path) -> HostPath {
        let mount = self
            .mounts
            .iter()
            .filter(|m| path.starts_with(&m.destination))
            .max_by_key(|m| m.destination.components().count());
        match mount {
            Some(Mount {
                destination,
                kind: MountKind::Bind { source, .. },
            }) => match path.strip_prefix(destination) {
                Ok(rest) if rest.as_os_str().is_empty() => HostPath::Host(source.clone()),
                Ok(rest) => HostPath::Host(source.join(rest)),
                Err(_) => HostPath::Unknown,
            },
            Some(_) => HostPath::Unknown,
            None => {
                // Not under a mount: the shared root filesystem, whose /bin, /lib... are
                // links into /usr.
                let Some((link, target)) = ROOTFS_LINKS.iter().find(|(l, _)| path.starts_with(l))
                else {
                    return HostPath::Unknown;
                };
                match path.strip_prefix(link) {
                    Ok(rest) => self.host_path(&Path::new(target).join(rest)),
                    Err(_) => HostPath::Unknown,
                }
            }
        }
    }
}

enum HostPath {
    Host(PathBuf),
    Unknown,
}

/// Container ids: what runc accepts (`[A-Za-z0-9_+.-]`), at most 64 bytes, not `.`/`..`.
/// Checks a sandbox's or volume's name: 1-63 characters of `[a-z0-9_.-]`, the first a
/// letter or digit (so that it is a file name of its own, never `.`, `..` or hidden).
pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::invalid(
            field,
            format!(
                "{name:?} must be 1-63 characters of [a-z0-9_.-], starting with a letter or digit"
            ),
        ))
    }
}

pub(crate) fn validate_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(SandboxError::invalid(
            "id",
            format!("{id:?} must be 1-64 characters of [A-Za-z0-9_+.-]"),
        ))
    }
}

fn no_nul(field: &str, s: &str) -> Result<(), SandboxError> {
    if s.contains('\0') {
        Err(SandboxError::invalid(field, "contains NUL"))
    } else {
        Ok(())
    }
}

fn absolute_clean(field: &str, p: &Path) -> Result<(), SandboxError> {
    use std::path::Component;
    if !p.is_absolute() {
        return Err(SandboxError::invalid(
            field,
            format!("{} is not an absolute path", p.display()),
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(SandboxError::invalid(
            field,
            format!("{} contains '..'", p.display()),
        ));
    }
    if p.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(SandboxError::invalid(field, "contains NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
