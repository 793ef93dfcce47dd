//! [`NamespaceContainer`]: a configured runtime, and the spawn modes.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::bundle::Bundle;
use crate::capture::{OutputMode, ProcessCapture};
use crate::config::{ContainerConfig, SandboxConfig, Stdio};
use crate::error::SandboxError;
use crate::gvisor::{GvisorPlatform, PlatformChoice};
use crate::process::{ContainerProcess, StartMode, Supervised, Teardown};
use crate::pty::PtySession;
use crate::runtime::{ContainerFlags, OciRuntime, RuntimeCli, Sub, locate};
use crate::state::{StateDirs, new_id, sweep};
use crate::userns::{DEFAULT_USERNS_BASE, HostIdentity, USERNS_SIZE};

/// A configured OCI runtime that spawns sandboxed processes.
///
/// Cheap to clone (an `Arc` inside); clones share the runtime, its state root and the
/// background cleanup tasks.
///
/// ```no_run
/// # async fn demo() -> Result<(), oci_sandbox::SandboxError> {
/// use oci_sandbox::{NamespaceContainer, SandboxConfig};
///
/// let sandbox = NamespaceContainer::new().await?;
/// let config = NamespaceContainer::build_config(&SandboxConfig::default(), "echo", vec!["hi".into()]);
/// let output = sandbox.spawn(&config).await?.wait_with_output().await?;
/// assert_eq!(output.stdout, b"hi\n");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NamespaceContainer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
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
    /// concurrent first callers share it, later ones reuse its result.
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
    /// let c = NamespaceContainer::build_config(&SandboxConfig::default(), "sh", vec!["-c".into(), "id".into()]);
    /// assert_eq!(c.command, "sh");
    /// assert!(c.env.iter().any(|(k, _)| k == "PATH"));
    /// ```
    pub fn build_config(
        s: &SandboxConfig,
        command: impl Into<String>,
        args: Vec<String>,
    ) -> ContainerConfig {
        crate::config::from_policy(s, command.into(), args)
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

    /// The ids of the containers that currently exist in the library's state root.
    pub async fn list(&self) -> Result<Vec<String>, SandboxError> {
        self.inner.cli.list().await
    }

    /// Removes containers, bundles and cgroups left by processes that no longer exist (done
    /// once on construction). Returns the ids removed.
    pub async fn sweep(&self) -> Result<Vec<String>, SandboxError> {
        sweep(&self.inner.cli, &self.inner.dirs).await
    }

    /// Waits until the background cleanup of every handle dropped so far has finished.
    ///
    /// Handles clean up after themselves when dropped, in background tasks; call this before
    /// the program exits (or the Tokio runtime shuts down) to be sure they are done.
    pub async fn close(&self) {
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        self.inner.tracker.reopen();
    }

    /// Spawns `config`'s command with piped (or inherited, or null) stdio.
    ///
    /// Returns once the process runs. The container's init is the library's launcher
    /// (`launcher/launcher.c`), which runs the command with the caller's pipes as its stdio
    /// (passed as they are, no copying) and reports its exact status: `exit(137)` is a code,
    /// death by `SIGKILL` a signal, on every runtime. When the command ends, the container
    /// ends with it.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] for an invalid field and [`SandboxError::CommandNotFound`]
    /// for a command absent from the container's `PATH`, both before anything is created;
    /// [`SandboxError::CommandNotFound`] also when the launcher cannot execute it;
    /// [`SandboxError::Runtime`] when the runtime fails; [`SandboxError::DuplicateId`];
    /// [`SandboxError::RuntimeNotFound`] when the runtime binary has gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped `spawn` future leaves no container, bundle or process.
    pub async fn spawn(&self, config: &ContainerConfig) -> Result<ContainerProcess, SandboxError> {
        let sandbox = self.launch(config, true).await?;
        sandbox.exec(&command_of(config)).await
    }

    /// Spawns `config`'s command with stdout and stderr going straight to files in a temp dir
    /// (stdin is `/dev/null`), readable whole or tailed as streams through
    /// [`ProcessCapture::output`].
    ///
    /// The command writes the files itself: a slow or absent reader never stalls it, and the
    /// output outlives the process. The runtime's own messages never land in them. Past
    /// [`ContainerConfig::output_limit`] bytes in a file, the process is killed, the file is
    /// cut at the limit and the status says so. The files are final once every process of the
    /// container is gone: nothing it left in the background writes on.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), oci_sandbox::SandboxError> {
    /// use futures::StreamExt;
    /// use oci_sandbox::{NamespaceContainer, OutputMode, SandboxConfig};
    ///
    /// let sandbox = NamespaceContainer::new().await?;
    /// let config = NamespaceContainer::build_config(&SandboxConfig::default(), "sh", vec!["-c".into(), "echo out; echo err >&2".into()]);
    /// let capture = sandbox.spawn_captured(&config, OutputMode::Combined).await?;
    /// let mut stream = capture.output.stdout_stream();
    /// while let Some(chunk) = stream.next().await {
    ///     print!("{}", String::from_utf8_lossy(&chunk.expect("read")));
    /// }
    /// println!("{}", capture.wait().await?);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`spawn`](Self::spawn), and I/O errors creating the capture files.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future leaves no container, bundle, process or capture dir.
    pub async fn spawn_captured(
        &self,
        config: &ContainerConfig,
        mode: OutputMode,
    ) -> Result<ProcessCapture, SandboxError> {
        let sandbox = self.launch(config, true).await?;
        sandbox.exec_captured(&command_of(config), mode).await
    }

    /// Spawns `config`'s command on a new pseudo-terminal (80x24 until resized).
    ///
    /// The launcher makes the terminal in the container (so that `tty` names it) and hands
    /// its controller over (runc, crun), or relays a terminal of gVisor's kernel over a
    /// socket; the returned [`PtySession`] reads and writes it without blocking. `TERM` is
    /// `xterm` unless the config sets it.
    ///
    /// # Errors
    ///
    /// Those of [`spawn`](Self::spawn).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future leaves no container, bundle, socket or fd.
    pub async fn spawn_interactive(
        &self,
        config: &ContainerConfig,
    ) -> Result<PtySession, SandboxError> {
        let sandbox = self.launch(config, true).await?;
        sandbox.exec_interactive(&command_of(config)).await
    }

    /// Starts `<runtime> run` of `config` (its command is the launcher; `checked`, the config
    /// the caller asked for, is validated first) with
    /// `control` as the container's stdin (its control socket) and `/dev/null` as its stdout
    /// and stderr, under a container supervisor: `run --detach --pid-file`, or `attached`
    /// (crun only: runc in the foreground puts pipes of its own on the container's stdio) in
    /// the foreground, when the caller sends the init's pid (from the launcher's "ready") on
    /// the returned sender. The receiver says when the container has
    /// started. If the returned values are dropped, the supervisor removes the container.
    pub(crate) async fn run_launcher(
        &self,
        config: &ContainerConfig,
        checked: &ContainerConfig,
        control: std::os::fd::OwnedFd,
        start_deadline: std::time::Duration,
        attached: bool,
    ) -> Result<LauncherStart, SandboxError> {
        let (id, bundle) = self.prepare(config, checked).await?;
        let inner = &self.inner;
        let (log, pid_path) = (bundle.log_path(), bundle.pid_path());
        let flags = ContainerFlags {
            log: Some(&log),
            network: config.network,
        };
        let mut cmd = inner.cli.command(
            flags,
            Sub::Run {
                id: &id,
                bundle: bundle.path(),
                detach: !attached,
                pid_file: (!attached).then_some(pid_path.as_path()),
            },
        );
        let null = std::process::Stdio::null;
        cmd.stdin(control).stdout(null()).stderr(null());
        let child = cmd.spawn().map_err(|e| inner.cli.spawn_error(e))?;
        // The runtime's end of the control socket goes with `cmd`: only the container holds it.
        drop(cmd);
        let teardown = Teardown::new(&inner.cli, &inner.dirs, id, config, bundle);
        let (init_pid, mode) = if attached {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), StartMode::Attached { init_pid: rx })
        } else {
            (None, StartMode::Detached { pid_file: pid_path })
        };
        let (container, started) =
            Supervised::container(&inner.tracker, child, teardown, mode, start_deadline);
        Ok(LauncherStart {
            container,
            started,
            init_pid,
        })
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
                tokio::task::spawn_blocking(move || {
                    crate::launcher::install_blocking(&rootfs).map_err(|e| {
                        SandboxError::io("installing the sandbox launcher", &rootfs, e)
                    })
                })
                .await
                .map_err(|e| SandboxError::Process {
                    context: "installing the sandbox launcher",
                    source: std::io::Error::other(e),
                })?
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

    /// Validates `checked` (which looks up host paths: the command along `PATH`), picks
    /// `config`'s id and writes its bundle (with its own user namespace, as root), in one trip
    /// off the async workers.
    async fn prepare(
        &self,
        config: &ContainerConfig,
        checked: &ContainerConfig,
    ) -> Result<(String, Bundle), SandboxError> {
        let id = config.id.clone().unwrap_or_else(new_id);
        self.check_limits(config)?;
        let (config, checked) = (config.clone(), checked.clone());
        let dirs = self.inner.dirs.clone();
        let mut target = self.target();
        // If this future is dropped while the closure runs, the closure still finishes and its
        // result (the bundle) is dropped, which removes the directory again.
        tokio::task::spawn_blocking(move || {
            checked.validate()?;
            let userns = own_user_namespace_blocking(&target, &config)?;
            if let Some(ns) = &userns {
                target.identity = HostIdentity::Root {
                    userns_base: ns.base(),
                };
                target.userns_path = Some(ns.path());
            }
            let spec = crate::spec::build(&config, &dirs.rootfs, &id, None, &target)?;
            crate::bundle::ensure_mount_points(&dirs.rootfs, &config)?;
            target
                .identity
                .hand_over_writable_binds_blocking(&config, target.runtime)?;
            let mut bundle = Bundle::create_blocking(dirs.bundle(&id), &id, spec)?;
            bundle.userns = userns;
            Ok((id, bundle))
        })
        .await
        .map_err(|e| SandboxError::Process {
            context: "preparing the bundle",
            source: std::io::Error::other(e),
        })?
    }
}

/// As root, a user namespace of its own for a container that gets one (runc, crun): its own
/// id range, owned by the range's root. Blocking.
fn own_user_namespace_blocking(
    target: &crate::spec::Target,
    config: &ContainerConfig,
) -> Result<Option<crate::userns::UserNamespace>, SandboxError> {
    let HostIdentity::Root { userns_base } = target.identity else {
        return Ok(None);
    };
    if target
        .identity
        .mapped_root(config, target.runtime)
        .is_none()
    {
        return Ok(None);
    }
    let lease = crate::userns::IdRangeLease::acquire_blocking(userns_base)?;
    crate::userns::UserNamespace::create_blocking(lease).map(Some)
}

/// A launcher container the runtime is starting: see [`NamespaceContainer::run_launcher`].
pub(crate) struct LauncherStart {
    pub container: Supervised,
    pub started: tokio::sync::oneshot::Receiver<Result<(), SandboxError>>,
    pub init_pid: Option<tokio::sync::oneshot::Sender<i32>>,
}

/// `config`'s command as an exec: its stdio; environment, directory and timeout are the
/// container's own.
fn command_of(config: &ContainerConfig) -> crate::ExecConfig {
    let mut exec = crate::ExecConfig::new(config.command.clone(), config.args.clone());
    exec.stdin = config.stdin;
    exec.stdout = config.stdout;
    exec.stderr = config.stderr;
    exec
}

/// The platform for a gVisor runtime: the explicit one (checked unless told not to), or the
/// process-wide probe's choice.
async fn choose_gvisor_platform(
    binary: &std::path::Path,
    base: &std::path::Path,
    explicit: Option<GvisorPlatform>,
    check: bool,
) -> Result<PlatformChoice, SandboxError> {
    let started = std::time::Instant::now();
    let run = |platform| check_platform(binary.to_owned(), base.to_owned(), platform);
    match explicit {
        Some(platform) => {
            if check {
                run(platform)
                    .await
                    .map_err(|why| SandboxError::NoGvisorPlatform {
                        failures: vec![(platform, why)],
                    })?;
            }
            Ok(PlatformChoice {
                platform,
                rejected: Vec::new(),
                probed: false,
                took: started.elapsed(),
            })
        }
        None => crate::gvisor::probe_once(run).await.cloned(),
    }
}

/// Whether runsc runs `/bin/true` on `platform`, within a deadline, leaving nothing behind.
/// First the cheap question (`list` with the platform flag, which rejects an unknown platform
/// without starting anything), then a real container.
///
/// Boxed: `build` calls this, which calls `build` (without a check this time).
fn check_platform(
    binary: std::path::PathBuf,
    base: std::path::PathBuf,
    platform: GvisorPlatform,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
    Box::pin(check_platform_inner(binary, base, platform))
}

async fn check_platform_inner(
    binary: std::path::PathBuf,
    base: std::path::PathBuf,
    platform: GvisorPlatform,
) -> Result<(), String> {
    let probe_dir = base.join(format!("probe-{}-{platform}", std::process::id()));
    let cli = RuntimeCli {
        kind: OciRuntime::Gvisor,
        binary: binary.clone(),
        root: probe_dir.join("runsc/state"),
        gvisor_platform: Some(platform),
        mount_ns: None,
    };
    let _ = tokio::fs::create_dir_all(&cli.root).await;
    let result = async {
        cli.list().await.map_err(|e| e.to_string())?;
        let sandbox = NamespaceContainer::builder()
            .runtime(OciRuntime::Gvisor)
            .binary(&binary)
            .state_dir(&probe_dir)
            .gvisor_platform(platform)
            .skip_platform_check()
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let policy = SandboxConfig {
            timeout: Some(crate::gvisor::PLATFORM_DEADLINE),
            ..SandboxConfig::default()
        };
        let mut config = NamespaceContainer::build_config(&policy, "/bin/true", vec![]);
        // A name of its own (it runs no untrusted code), so that its leftovers can be found.
        config.id = Some(format!("osb-probe-{}-{platform}", std::process::id()));
        config.stdin = Stdio::Null;
        config.stdout = Stdio::Null;
        config.stderr = Stdio::Null;
        let status = async { sandbox.spawn(&config).await?.wait().await }.await;
        sandbox.close().await;
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) if s.timed_out() => Err(format!(
                "did not run /bin/true within {:?}",
                crate::gvisor::PLATFORM_DEADLINE
            )),
            Ok(s) => Err(format!("/bin/true ended with {s}")),
            Err(e) => Err(e.to_string()),
        }
    }
    .await;
    let _ =
        tokio::task::spawn_blocking(move || crate::fs_tree::remove_tree_blocking(&probe_dir)).await;
    result
}

/// Builds a [`NamespaceContainer`]: which runtime, where its binary is, where its state lives.
#[derive(Debug, Clone)]
#[must_use]
pub struct NamespaceContainerBuilder {
    runtime: OciRuntime,
    binary: Option<PathBuf>,
    state_base: Option<PathBuf>,
    capture_dir: Option<PathBuf>,
    gvisor_platform: Option<GvisorPlatform>,
    check_platform: bool,
    userns_base: u32,
    unenforced_limits: UnenforcedLimits,
}

impl Default for NamespaceContainerBuilder {
    fn default() -> Self {
        NamespaceContainerBuilder {
            runtime: OciRuntime::Runc,
            binary: None,
            state_base: None,
            capture_dir: None,
            gvisor_platform: None,
            check_platform: true,
            userns_base: DEFAULT_USERNS_BASE,
            unenforced_limits: UnenforcedLimits::default(),
        }
    }
}

impl NamespaceContainerBuilder {
    /// The runtime (runc by default).
    pub fn runtime(mut self, kind: OciRuntime) -> Self {
        self.runtime = kind;
        self
    }

    /// An explicit path to the runtime binary instead of a `$PATH` lookup.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// The directory the library owns for its state (default `/run/oci-sandbox` as root). The
    /// runtime's `--root` and the bundles live under `<dir>/<runtime>/`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_base = Some(dir.into());
        self
    }

    /// Where [`spawn_captured`](NamespaceContainer::spawn_captured) makes its temp dirs
    /// (default: [`std::env::temp_dir`]).
    pub fn capture_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.capture_dir = Some(dir.into());
        self
    }

    /// gVisor's platform, instead of the probe's choice. `build()` still checks, within a
    /// deadline, that it runs a container (so that a platform that hangs here, like KVM
    /// without working virtualisation, is an error at construction rather than at every
    /// spawn), unless [`skip_platform_check`](Self::skip_platform_check).
    pub fn gvisor_platform(mut self, platform: GvisorPlatform) -> Self {
        self.gvisor_platform = Some(platform);
        self
    }

    /// Trusts an explicit [`gvisor_platform`](Self::gvisor_platform) without running a
    /// container on it first.
    pub fn skip_platform_check(mut self) -> Self {
        self.check_platform = false;
        self
    }

    /// As root, the first host uid and gid that containers' user namespaces map to (ids
    /// `0..65536` inside become `base..base+65536` on the host); default 1 000 000 000. Give
    /// a range no host user owns (see `/etc/subuid`).
    pub fn user_namespace_base(mut self, base: u32) -> Self {
        self.userns_base = base;
        self
    }

    /// What to do, rootless, with cgroup limits the runtime cannot enforce
    /// ([`UnenforcedLimits::Warn`] by default).
    pub fn unenforced_limits(mut self, policy: UnenforcedLimits) -> Self {
        self.unenforced_limits = policy;
        self
    }

    /// Finds the binary, prepares the state root, and sweeps what dead processes left in it.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] for a relative state dir; [`SandboxError::RuntimeNotFound`];
    /// [`SandboxError::Io`] when the state root cannot be created.
    pub async fn build(self) -> Result<NamespaceContainer, SandboxError> {
        raise_fd_limit();
        let base = self.state_base.unwrap_or_else(StateDirs::default_base);
        if !base.is_absolute() {
            return Err(SandboxError::invalid(
                "state_dir",
                format!(
                    "{} is not absolute (runtimes store paths as given)",
                    base.display()
                ),
            ));
        }
        if self.userns_base == 0 || self.userns_base.checked_add(USERNS_SIZE).is_none() {
            return Err(SandboxError::invalid(
                "user_namespace_base",
                format!("{} leaves no room for 65536 ids above 0", self.userns_base),
            ));
        }
        let identity = HostIdentity::current(self.userns_base);
        if identity.is_rootless() && self.runtime == OciRuntime::Crun {
            return Err(SandboxError::invalid(
                "runtime",
                "crun needs root here: it refuses hybrid cgroups, and the mount namespace that \
                 hides them needs CAP_SYS_ADMIN; use runc or runsc rootless",
            ));
        }
        let binary = locate(self.runtime, self.binary).await?;
        let dirs = StateDirs::new(&base, self.runtime, identity);
        let prepared = dirs.clone();
        tokio::task::spawn_blocking(move || prepared.prepare_blocking())
            .await
            .map_err(|e| SandboxError::Process {
                context: "preparing the state root",
                source: std::io::Error::other(e),
            })??;
        let platform_choice = match self.runtime {
            OciRuntime::Gvisor => Some(
                choose_gvisor_platform(&binary, &base, self.gvisor_platform, self.check_platform)
                    .await?,
            ),
            _ => None,
        };
        let gvisor_platform = platform_choice.as_ref().map(|c| c.platform);
        let mount_ns = match self.runtime {
            OciRuntime::Crun if crate::crun_ns::needs_namespace() => {
                let dir = dirs
                    .root
                    .parent()
                    .expect("state root has a parent")
                    .join("ns");
                Some(
                    tokio::task::spawn_blocking(move || crate::crun_ns::prepare_blocking(&dir))
                        .await
                        .map_err(|e| SandboxError::Process {
                            context: "preparing crun's mount namespace",
                            source: std::io::Error::other(e),
                        })??,
                )
            }
            _ => None,
        };
        let cli = RuntimeCli {
            kind: self.runtime,
            binary,
            root: dirs.root.clone(),
            gvisor_platform,
            mount_ns,
        };
        let swept = sweep(&cli, &dirs).await?;
        if !swept.is_empty() {
            tracing::info!(runtime = %cli.kind, count = swept.len(), "swept leftover containers");
        }
        let capture_dir = self.capture_dir.unwrap_or_else(std::env::temp_dir);
        let captures = capture_dir.clone();
        let swept_captures = tokio::task::spawn_blocking(move || {
            crate::state::sweep_capture_dirs_blocking(&captures)
        })
        .await
        .unwrap_or(0);
        if swept_captures > 0 {
            tracing::info!(
                count = swept_captures,
                "swept capture dirs left by dead processes"
            );
        }
        Ok(NamespaceContainer {
            inner: Arc::new(Inner {
                cli,
                dirs,
                platform_choice,
                tracker: TaskTracker::new(),
                capture_dir,
                identity,
                unenforced_limits: self.unenforced_limits,
                warned_limits: Default::default(),
                launcher_installed: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, once: a live sandbox holds
/// two fds (its control socket and its init's pidfd), a running command up to four more, and
/// the common soft default of 1024 would cap a process at a few hundred sandboxes. The one
/// process-wide change the library makes; the crate docs say so.
fn raise_fd_limit() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
            && soft < hard
        {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    });
}
