//! How sandboxes and spawns start: [`NamespaceContainer::start`] and the spawn modes, a
//! container launched (`container/launch.rs`) and wrapped in a [`Sandbox`], used once by a
//! spawn. Here rather than in `container/`, so that `container/` never names the sandbox
//! built on it (the modules import one way only).

use crate::config::{ContainerConfig, OutputMode};
use crate::container::{LaunchMode, NamespaceContainer, command_of};
use crate::error::SandboxError;
use crate::handle::capture::ProcessCapture;
use crate::handle::process::ContainerProcess;
use crate::handle::pty::PtySession;

use super::Sandbox;

impl NamespaceContainer {
    /// Starts a long-lived sandbox with `config`'s filesystem, network, limits and security;
    /// commands then run in it with [`Sandbox::exec`], [`Sandbox::exec_captured`] and
    /// [`Sandbox::exec_interactive`].
    ///
    /// `config`'s command is not run (the sandbox's init is the library's launcher); its
    /// environment and working directory are every exec's defaults, and its `timeout` is
    /// every exec's default timeout, not the sandbox's lifetime: a sandbox lives until it is
    /// closed or dropped.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), oci_sandbox::SandboxError> {
    /// use oci_sandbox::{ExecConfig, NamespaceContainer, SandboxConfig};
    ///
    /// let runtime = NamespaceContainer::new().await?;
    /// let config = NamespaceContainer::build_config(&SandboxConfig::default(), "true", vec![]);
    /// let sandbox = runtime.start(&config).await?;
    /// let write = ExecConfig::new("sh", vec!["-c".into(), "echo state > /tmp/f".into()]);
    /// sandbox.exec(&write).await?.wait().await?;
    /// let read = ExecConfig::new("cat", vec!["/tmp/f".into()]);
    /// let out = sandbox.exec(&read).await?.wait_with_output().await?;
    /// assert_eq!(out.stdout, b"state\n");
    /// sandbox.close().await;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`spawn`](Self::spawn) that concern the config or the runtime;
    /// [`SandboxError::Timeout`] if the launcher does not come up within 30 s.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future leaves no container, bundle or process.
    pub async fn start(&self, config: &ContainerConfig) -> Result<Sandbox, SandboxError> {
        self.launch(config, false).await
    }

    /// Starts a container whose init is the launcher, with `config`'s policy. `one_shot`: it
    /// runs `config`'s command once (the spawn modes), which is checked first, and ends with
    /// it.
    pub(crate) async fn launch(
        &self,
        config: &ContainerConfig,
        one_shot: bool,
    ) -> Result<Sandbox, SandboxError> {
        use tracing::Instrument;
        // Refills of warm pools wait for it.
        let _cold = self.warm_store().cold_launch();
        let id = config.id.clone().unwrap_or_else(crate::host::state::new_id);
        // Every event of the container (its start here, its supervisor's later) is in it.
        let span = tracing::debug_span!(
            "container",
            %id,
            runtime = %self.runtime(),
            mode = if one_shot { "spawn" } else { "sandbox" },
        );
        let launched = self
            .launch_in_span(config, one_shot, id)
            .instrument(span.clone())
            .await;
        match &launched {
            Err(err) => {
                span.in_scope(|| tracing::debug!(%err, "the container could not start"));
                // A spawn's failure is counted by the spawn.
                if !one_shot {
                    self.count_failure(err);
                }
            }
            Ok(_) if !one_shot => self.count_sandbox_started(),
            Ok(_) => {}
        }
        launched
    }

    async fn launch_in_span(
        &self,
        config: &ContainerConfig,
        one_shot: bool,
        id: String,
    ) -> Result<Sandbox, SandboxError> {
        if let Some(name) = &config.name {
            if one_shot {
                return Err(SandboxError::invalid(
                    "name",
                    "a spawn lives as long as its command: create a named sandbox instead                      (NamespaceContainer::create)",
                ));
            }
            return self.create_named(config, name).await;
        }
        let mode = if one_shot {
            LaunchMode::Spawn
        } else {
            LaunchMode::Sandbox
        };
        let (live, applied) = self.launch_live(config, mode, id, None, Vec::new()).await?;
        let sandbox = Sandbox::new(self.clone(), live, applied, config.clone(), one_shot);
        if let crate::Network::Egress(policy) = &sandbox.config().network {
            sandbox.start_egress(policy.clone()).await?;
        }
        Ok(sandbox)
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
        self.spawn_with(config, |sandbox| async move {
            sandbox.exec(&command_of(sandbox.config())).await
        })
        .await
    }

    /// Runs `config`'s command once with `run`: in a warm container if a pool has one
    /// ([`warm`](Self::warm)), else in a container started for it.
    async fn spawn_with<T, F, Fut>(
        &self,
        config: &ContainerConfig,
        run: F,
    ) -> Result<T, SandboxError>
    where
        F: FnOnce(Sandbox) -> Fut,
        Fut: std::future::Future<Output = Result<T, SandboxError>>,
    {
        let (ran, warm) = match self.take_warm(config).await {
            Ok(Some((sandbox, start))) => {
                let ran = run(sandbox).await;
                // The command runs (or could not start): refills may go.
                drop(start);
                (ran, true)
            }
            Ok(None) => match self.launch(config, true).await {
                Ok(sandbox) => (run(sandbox).await, false),
                Err(err) => (Err(err), false),
            },
            Err(err) => (Err(err), false),
        };
        match &ran {
            Ok(_) => self.count_spawn(warm),
            Err(err) => self.count_failure(err),
        }
        ran
    }

    /// A warm container's sandbox for a spawn of `config`, if a pool has one ready: with the
    /// container's config as applied, and the spawn's command, environment and limits over
    /// it (with the image's defaults and the proxy's variables, as a cold spawn gets them),
    /// checked as a cold spawn's config is, its writable binds handed to the container's ids
    /// as a cold start hands them. `None` (a cold spawn) without one, or when a bind's source
    /// was replaced since the container started.
    async fn take_warm(
        &self,
        config: &ContainerConfig,
    ) -> Result<Option<(Sandbox, crate::container::StartUnderWay)>, SandboxError> {
        let Some(taken) = self.warm_store().take(config).await else {
            return Ok(None);
        };
        let applied = match spawn_over(taken.container(), config) {
            Ok(applied) => applied,
            Err(err) => {
                taken.put_back();
                return Err(err);
            }
        };
        let (runtime, data) = (self.runtime(), self.data_dir().to_path_buf());
        let checked = applied.clone();
        // One hop off the workers; the container comes back with the verdict.
        let (taken, verdict) = crate::sys::blocking("checking the spawn's config", move || {
            let verdict = checked.validate().and_then(|()| {
                if !taken.container().binds_unchanged_blocking() {
                    return Ok(false);
                }
                if let Some(base) = taken.container().live.userns_base {
                    let identity = crate::spec::identity::HostIdentity::Root { userns_base: base };
                    crate::container::hand_over_blocking(identity, &checked, &data, runtime)?;
                }
                Ok(true)
            });
            Ok((taken, verdict))
        })
        .await?;
        match verdict {
            Ok(true) => {}
            Ok(false) => {
                taken.discard();
                return Ok(None);
            }
            Err(err) => {
                taken.put_back();
                return Err(err);
            }
        }
        let (warm, start) = taken.into_container();
        tracing::debug!(id = %warm.live.container.id, "spawn in a warm container");
        let sandbox = Sandbox::new(self.clone(), warm.live, applied, config.clone(), true);
        if let crate::Network::Egress(policy) = &sandbox.config().network {
            sandbox.start_egress(policy.clone()).await?;
        }
        Ok(Some((sandbox, start)))
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
    /// let runtime = NamespaceContainer::new().await?;
    /// let config = NamespaceContainer::build_config(&SandboxConfig::default(), "sh", vec!["-c".into(), "echo out; echo err >&2".into()]);
    /// let capture = runtime.spawn_captured(&config, OutputMode::Combined).await?;
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
        self.spawn_with(config, |sandbox| async move {
            sandbox
                .exec_captured(&command_of(sandbox.config()), mode)
                .await
        })
        .await
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
        self.spawn_with(config, |sandbox| async move {
            sandbox
                .exec_interactive(&command_of(sandbox.config()))
                .await
        })
        .await
    }
}

/// The config a spawn of `config` runs with in `warm`: the container's spec side as applied,
/// and `config`'s exec side with the image's defaults and the proxy's variables.
fn spawn_over(
    warm: &crate::container::WarmContainer,
    config: &ContainerConfig,
) -> Result<ContainerConfig, SandboxError> {
    let mut own = config.clone();
    if let Some(image) = &warm.live.image {
        crate::image::apply::apply(image, &mut own)?;
    }
    let mut own = crate::config::network::with_proxy_env(&own).unwrap_or(own);
    let mut applied = warm.applied.clone();
    applied.set_exec_side(own.take_exec_side());
    Ok(applied)
}
