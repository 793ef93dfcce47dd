//! How sandboxes and spawns start: [`NamespaceContainer::start`] and the spawn modes, a
//! container launched (`container/launch.rs`) and wrapped in a [`Sandbox`], used once by a
//! spawn. Here rather than in `container/`, so that `container/` never names the sandbox
//! built on it (the modules import one way only).

use crate::config::{ContainerConfig, OutputMode};
use crate::container::{NamespaceContainer, command_of};
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
        if let Err(err) = &launched {
            span.in_scope(|| tracing::debug!(%err, "the container could not start"));
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
        let (live, applied) = self
            .launch_live(config, one_shot, id, None, Vec::new())
            .await?;
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
        let sandbox = self.launch(config, true).await?;
        sandbox.exec(&command_of(sandbox.config())).await
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
        let sandbox = self.launch(config, true).await?;
        sandbox
            .exec_captured(&command_of(sandbox.config()), mode)
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
        let sandbox = self.launch(config, true).await?;
        sandbox
            .exec_interactive(&command_of(sandbox.config()))
            .await
    }
}
