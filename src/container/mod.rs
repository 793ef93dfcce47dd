//! [`NamespaceContainer`]: a configured runtime, and the spawn modes.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::config::{ContainerConfig, SandboxConfig};
use crate::error::SandboxError;
use crate::host::state::{StateDirs, new_id};
use crate::oci::cli::RuntimeCli;
use crate::oci::sweep::sweep;
use crate::runtimes::OciRuntime;
use crate::runtimes::PlatformChoice;
use crate::spec::identity::HostIdentity;

/// A configured OCI runtime that spawns sandboxed processes.
///
/// Cheap to clone (an `Arc` inside); clones share the runtime, its state root and the
/// background cleanup tasks.
///
/// ```no_run
/// # async fn demo() -> Result<(), oci_sandbox::SandboxError> {
/// use oci_sandbox::{NamespaceContainer, SandboxConfig};
///
/// let runtime = NamespaceContainer::new().await?;
/// let config = NamespaceContainer::build_config(&SandboxConfig::default(), "echo", vec!["hi".into()]);
/// let output = runtime.spawn(&config).await?.wait_with_output().await?;
/// assert_eq!(output.stdout, b"hi\n");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NamespaceContainer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Containers started ahead for spawns ([`NamespaceContainer::warm`]); first, so that
    /// they drop before the stores they may hold volumes of.
    warm: warm::WarmPools,
    cli: RuntimeCli,
    dirs: StateDirs,
    platform_choice: Option<PlatformChoice>,
    tracker: TaskTracker,
    /// Where `spawn_captured` makes its temp dirs.
    capture_dir: PathBuf,
    identity: HostIdentity,
    unenforced_limits: UnenforcedLimits,
    warned_limits: std::sync::atomic::AtomicBool,
    /// Set once the launcher is in the shared rootfs (long-lived sandboxes' init, and the
    /// maker of user namespaces).
    launcher_installed: tokio::sync::OnceCell<()>,
    /// The image store under the state dir.
    images: crate::image::ImageStore,
    /// Every container started here that may still run (sandboxes and spawns), for
    /// [`NamespaceContainer::close`].
    open: std::sync::Mutex<Vec<std::sync::Weak<dyn Closable>>>,
    /// The data dir: named sandboxes and volumes.
    data: PathBuf,
    sessions: crate::host::sessions::SessionStore,
    volumes: crate::host::volumes::VolumeStore,
    /// The data dir's sessions and volumes, known as containers' writable dirs.
    _data_dirs: crate::host::sandbox_dirs::SandboxDirs,
    /// See [`NamespaceContainerBuilder::max_running`].
    max_running: Option<usize>,
    /// Held while room is made for one more running named sandbox.
    making_room: tokio::sync::Mutex<()>,
    /// Spawns, starts, failures and teardowns counted (see `counters`).
    counters: counters::Counters,
    /// The named sandboxes this process holds, by name.
    held: std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<dyn HeldSession>>>,
}

/// A named sandbox this process holds, as its [`NamespaceContainer`] sees it (the sandbox
/// layer implements it: `container/` does not name it).
pub(crate) trait HeldSession: Send + Sync + std::fmt::Debug {
    /// Its state and when it was last used (milliseconds since the epoch).
    fn state(&self) -> (crate::host::sessions::SandboxState, u64);
    /// Whether a command runs in it.
    fn busy(&self) -> bool;
    /// A handle on it, as `Any` (a `Sandbox`).
    fn handle(self: std::sync::Arc<Self>) -> Box<dyn std::any::Any + Send>;
}

/// A container of the state root, as [`NamespaceContainer::list_all`] sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ContainerEntry {
    /// Its id.
    pub id: String,
    /// The pid of the process that started it, as its bundle records (`None`: no bundle, a
    /// leftover the next sweep removes).
    pub owner_pid: Option<u32>,
    /// Whether this process started it.
    pub owned_here: bool,
}

/// What [`NamespaceContainer::close`] ends: a sandbox (or a spawn's container) it started.
pub(crate) trait Closable: Send + Sync + std::fmt::Debug {
    /// Kills its commands and its container and waits until the container is gone.
    fn close_now(self: Arc<Self>) -> futures::future::BoxFuture<'static, ()>;
    /// A handle on it, as `Any` (a `Sandbox`), if it is a long-lived sandbox (not a spawn's
    /// container) still open: what [`NamespaceContainer::metrics`] reads.
    fn open_sandbox(self: Arc<Self>) -> Option<Box<dyn std::any::Any + Send>>;
}

/// What to do with cgroup limits (memory, pids, CPU) that cannot be enforced: rootless, the
/// runtimes cannot create cgroups on cgroup v1 (or v2 without delegation). The timeout and the
/// output limit are the library's own and always hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnenforcedLimits {
    /// Run without them and log a warning (`tracing`) naming them, once per
    /// [`NamespaceContainer`].
    #[default]
    Warn,
    /// Refuse the spawn with [`SandboxError::InvalidConfig`] on `limits` unless the config
    /// sets none.
    Refuse,
}

impl NamespaceContainer {
    /// gVisor's runsc from `$PATH`, with the default state root, on the platform chosen by the
    /// probe: systrap, else ptrace (KVM only when asked for with
    /// [`NamespaceContainerBuilder::gvisor_platform`]). The probe runs once per process:
    /// concurrent first callers share it, later ones reuse its result; later processes of the
    /// same boot take it from the state dir (see [`PlatformChoice::probed`]).
    ///
    /// # Errors
    ///
    /// [`SandboxError::NoGvisorPlatform`] listing each platform's failure when none works.
    pub async fn with_gvisor() -> Result<Self, SandboxError> {
        Self::builder().runtime(OciRuntime::Gvisor).build().await
    }

    /// The gVisor platform in use and why the others were rejected (`None` for other
    /// runtimes).
    pub fn gvisor_platform(&self) -> Option<&PlatformChoice> {
        self.inner.platform_choice.as_ref()
    }

    /// runc from `$PATH`, with the default state root.
    ///
    /// # Errors
    ///
    /// [`SandboxError::RuntimeNotFound`] when runc is not on `$PATH`; I/O errors when the state
    /// root cannot be created.
    pub async fn new() -> Result<Self, SandboxError> {
        Self::builder().build().await
    }

    /// `kind`'s binary from `$PATH`, with the default state root.
    pub async fn with_runtime(kind: OciRuntime) -> Result<Self, SandboxError> {
        Self::builder().runtime(kind).build().await
    }

    /// A builder for the runtime binary, the state root and runtime-specific options.
    pub fn builder() -> NamespaceContainerBuilder {
        NamespaceContainerBuilder::default()
    }

    /// Turns a policy into a concrete request to run `command` with `args`.
    ///
    /// ```
    /// use oci_sandbox::{NamespaceContainer, SandboxConfig};
    ///
    /// let c = NamespaceContainer::build_config(&SandboxConfig::default(), "sh", ["-c", "id"]);
    /// assert_eq!(c.command, "sh");
    /// assert!(c.env.iter().any(|(k, _)| k == "PATH"));
    /// ```
    pub fn build_config(
        s: &SandboxConfig,
        command: impl Into<String>,
        args: impl crate::config::IntoArgs,
    ) -> ContainerConfig {
        crate::config::from_policy(s, command.into(), args.into_args())
    }

    /// Which runtime this is.
    pub fn runtime(&self) -> OciRuntime {
        self.inner.cli.kind
    }

    /// The runtime's version line, e.g. `runc version 1.1.5+ds1`.
    pub async fn version(&self) -> Result<String, SandboxError> {
        self.inner.cli.version().await
    }

    /// The runtime's state root, owned by the library (`--root`).
    pub fn state_root(&self) -> &std::path::Path {
        &self.inner.dirs.root
    }

    /// The ids of this process's containers that currently exist in the state root (the
    /// runtime's list, filtered by the owner each bundle records). Other processes sharing
    /// the default state root have their own: see [`list_all`](Self::list_all).
    pub async fn list(&self) -> Result<Vec<String>, SandboxError> {
        let all = self.list_all().await?;
        Ok(all
            .into_iter()
            .filter(|c| c.owned_here)
            .map(|c| c.id)
            .collect())
    }

    /// Every container in the state root, with its owner: this process's and those of
    /// other processes sharing it (or left by dead ones, until a sweep removes them).
    pub async fn list_all(&self) -> Result<Vec<ContainerEntry>, SandboxError> {
        let ids = self.inner.cli.list().await?;
        let dirs = self.inner.dirs.clone();
        crate::sys::blocking("reading the bundles' owners", move || {
            Ok(ids
                .into_iter()
                .map(|id| {
                    let owner = crate::host::owner::bundle_owner(&dirs.bundle(&id));
                    let owned_here = owner.as_deref() == Some(crate::host::owner::self_owner());
                    let owner_pid = owner
                        .as_deref()
                        .and_then(|o| o.split('-').next())
                        .and_then(|p| p.parse().ok());
                    ContainerEntry {
                        id,
                        owner_pid,
                        owned_here,
                    }
                })
                .collect())
        })
        .await
    }

    /// Removes containers, bundles and cgroups left by processes that no longer exist (done
    /// once on construction). Returns the ids removed.
    pub async fn sweep(&self) -> Result<Vec<String>, SandboxError> {
        sweep(&self.inner.cli, &self.inner.dirs).await
    }

    /// Ends everything this runtime started that still runs, and waits until it is all gone:
    /// call it on shutdown (before the program exits or the Tokio runtime shuts down).
    ///
    /// - Every [`Sandbox`](crate::Sandbox) still open (held by a handle, a clone, a job, a spawned process) is
    ///   closed as by [`Sandbox::close`](crate::Sandbox::close): its commands and its container are killed. Their
    ///   handles then tell so: a [`ContainerProcess`](crate::ContainerProcess)'s `wait` reports the kill
    ///   (`SIGKILL`), a sandbox's next call [`SandboxError::SandboxClosed`].
    /// - The warm pools ([`warm`](Self::warm)) end: their containers are removed, and their
    ///   configs are spawned cold until `warm` is called again.
    /// - Then it waits for the background cleanup of every handle (dropped or killed): the
    ///   containers removed by the runtime, their bundles, cgroups and temp dirs.
    ///
    /// Every step has a deadline of its own (a runtime that hangs is killed), so `close`
    /// returns even with handles alive. Containers started while it runs are closed too, if
    /// they register before it looks, and the runtime stays usable afterwards.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), oci_sandbox::SandboxError> {
    /// let runtime = oci_sandbox::NamespaceContainer::new().await?;
    /// let sandbox = runtime.start(&oci_sandbox::NamespaceContainer::build_config(
    ///     &oci_sandbox::SandboxConfig::default(), "true", vec![])).await?;
    /// // ... a server keeps `sandbox` in a map; on shutdown:
    /// runtime.close().await;
    /// assert!(sandbox.ended().is_some() || sandbox.exec(&oci_sandbox::ExecConfig::shell("true")).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn close(&self) {
        self.close_warm_pools();
        let open: Vec<Arc<dyn Closable>> = {
            let mut open = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
            let live = open.iter().filter_map(std::sync::Weak::upgrade).collect();
            open.clear();
            live
        };
        futures::future::join_all(open.into_iter().map(Closable::close_now)).await;
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.inner.tracker.reopen();
    }

    /// The long-lived sandboxes of this runtime still open (as `Any`: `Sandbox`es), in the
    /// order they started.
    pub(crate) fn open_sandboxes(&self) -> Vec<Box<dyn std::any::Any + Send>> {
        let open: Vec<Arc<dyn Closable>> = {
            let all = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
            all.iter().filter_map(std::sync::Weak::upgrade).collect()
        };
        open.into_iter()
            .filter_map(Closable::open_sandbox)
            .collect()
    }

    /// Registers a container started here for [`close`](Self::close) (dropping the entries of
    /// those gone).
    pub(crate) fn register_open(&self, open: std::sync::Weak<dyn Closable>) {
        let mut all = self.inner.open.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|w| w.strong_count() > 0);
        all.push(open);
    }

    /// The OCI spec the library would write for `config` (for inspection, debugging, or
    /// running the same container with the runtime directly).
    ///
    /// # Errors
    ///
    /// Those of [`spawn`](Self::spawn) that concern the config. Looks up host paths: blocking.
    pub fn render_spec(&self, config: &ContainerConfig) -> Result<crate::Spec, SandboxError> {
        config.validate()?;
        let id = config.id.clone().unwrap_or_else(new_id);
        crate::spec::build(config, &self.inner.dirs.rootfs, &id, None, &self.target())
    }

    /// The shared root filesystem.
    pub(crate) fn rootfs(&self) -> &std::path::Path {
        &self.inner.dirs.rootfs
    }

    /// Where captures make their temp dirs.
    pub(crate) fn capture_parent(&self) -> &std::path::Path {
        &self.inner.capture_dir
    }

    /// The snapshot store's directory.
    pub(crate) fn sessions(&self) -> &crate::host::sessions::SessionStore {
        &self.inner.sessions
    }

    pub(crate) fn volume_store(&self) -> &crate::host::volumes::VolumeStore {
        &self.inner.volumes
    }

    /// The data dir (see [`NamespaceContainerBuilder::data_dir`]).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.data
    }

    /// See [`NamespaceContainerBuilder::max_running`], and the lock held while room is made.
    pub(crate) fn max_running(&self) -> (Option<usize>, &tokio::sync::Mutex<()>) {
        (self.inner.max_running, &self.inner.making_room)
    }

    /// The named sandboxes this process holds.
    pub(crate) fn held(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, std::sync::Weak<dyn HeldSession>>,
    > {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bundle directory of container `id`.
    pub(crate) fn bundle_dir(&self, id: &str) -> std::path::PathBuf {
        self.inner.dirs.bundle(id)
    }

    pub(crate) fn snapshot_store(&self) -> &std::path::Path {
        &self.inner.dirs.snapshots
    }

    /// The tracker of background work that [`close`](Self::close) waits for.
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    fn target(&self) -> crate::spec::Target {
        crate::spec::Target {
            runtime: self.inner.cli.kind,
            identity: self.inner.identity,
            userns_path: None,
        }
    }

    /// Installs the launcher in the shared rootfs, once, and returns its path on the host.
    pub(crate) async fn launcher(&self) -> Result<PathBuf, SandboxError> {
        let rootfs = self.rootfs().to_path_buf();
        let path = rootfs.join(crate::launcher::PATH_IN_ROOTFS);
        self.inner
            .launcher_installed
            .get_or_try_init(|| async move {
                crate::sys::blocking("installing the sandbox launcher", move || {
                    crate::launcher::install_blocking(&rootfs).map_err(|e| {
                        SandboxError::io("installing the sandbox launcher", &rootfs, e)
                    })
                })
                .await
            })
            .await?;
        Ok(path)
    }

    /// True when this process is not root: the runtimes run rootless, the container's root is
    /// the calling user, and cgroup limits (memory, pids, CPU) cannot be set (see
    /// [`UnenforcedLimits`]).
    pub fn is_rootless(&self) -> bool {
        self.inner.identity.is_rootless()
    }

    /// Rootless, applies the [`UnenforcedLimits`] policy to `config`'s cgroup limits.
    fn check_limits(&self, config: &ContainerConfig) -> Result<(), SandboxError> {
        if !self.is_rootless() {
            return Ok(());
        }
        let limits = &config.limits;
        let unenforced: Vec<&str> = [
            limits.memory.map(|_| "memory"),
            limits.pids.map(|_| "pids"),
            limits.cpu_millicores.map(|_| "cpu"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if unenforced.is_empty() {
            return Ok(());
        }
        match self.inner.unenforced_limits {
            UnenforcedLimits::Refuse => Err(SandboxError::invalid(
                "limits",
                format!(
                    "{} cannot be enforced rootless (the runtime cannot create cgroups); set \
                     them to None, or run as root",
                    unenforced.join(", ")
                ),
            )),
            UnenforcedLimits::Warn => {
                if !self
                    .inner
                    .warned_limits
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        limits = unenforced.join(", "),
                        "rootless: these limits are NOT enforced (the runtime cannot create \
                         cgroups); the timeout and the output limit are"
                    );
                }
                Ok(())
            }
        }
    }
}

mod builder;
mod counters;
pub(crate) mod image_root;
mod launch;
mod warm;
pub use image_root::ImageLayer;
pub(crate) use launch::{Hold, LaunchMode, hand_over_blocking};
pub use warm::WarmPoolStats;
pub(crate) use warm::{StartUnderWay, WarmContainer};

pub use builder::NamespaceContainerBuilder;
pub(crate) use launch::{Live, command_of};
