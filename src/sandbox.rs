//! Long-lived sandboxes: start a container once, exec many commands in it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};

use crate::capture::{CaptureFiles, OutputMode, ProcessCapture};
use crate::config::{ContainerConfig, Stdio};
use crate::container::NamespaceContainer;
use crate::error::SandboxError;
use crate::launcher::{self, ControlSocket, Started};
use crate::process::{ContainerProcess, ExitStatus, Supervised};
use crate::pty::PtySession;

/// How long a new sandbox's launcher may take to listen.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The least time a spawn's container gets to start, whatever its command's timeout.
const MIN_START_DEADLINE: Duration = Duration::from_secs(10);

/// How long a launcher may take to end its container once its control socket has closed.
const END_DEADLINE: Duration = Duration::from_secs(2);

/// How long the launcher may take to fork and exec a command.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Commands that may run at once in one sandbox: the launcher holds an fd or two for each,
/// within its own limit of 1024 (the default pids limit, 256, is lower still).
pub const MAX_CONCURRENT_EXECS: usize = 480;

/// One command to run in a [`Sandbox`]: like a [`ContainerConfig`]'s command, with its own
/// environment additions, working directory, timeout and stdio.
///
/// ```
/// use std::time::Duration;
/// use oci_sandbox::ExecConfig;
///
/// let mut exec = ExecConfig::new("python3", vec!["-c".into(), "print(6*7)".into()]);
/// exec.env.push(("DEBUG".into(), "1".into()));
/// exec.timeout = Some(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// The program, resolved against the `PATH` of the command's environment.
    pub command: String,
    /// Its arguments (without the program itself).
    pub args: Vec<String>,
    /// Added to the sandbox's environment (later entries win).
    pub env: Vec<(String, String)>,
    /// The working directory; the sandbox's when `None`.
    pub cwd: Option<PathBuf>,
    /// Wall-clock limit; the sandbox config's `timeout` when `None`. Past it, the command's
    /// process group is killed (the sandbox lives on) and the status says timed out.
    pub timeout: Option<Duration>,
    /// Standard input ([`exec`](Sandbox::exec) only).
    pub stdin: Stdio,
    /// Standard output ([`exec`](Sandbox::exec) only).
    pub stdout: Stdio,
    /// Standard error ([`exec`](Sandbox::exec) only).
    pub stderr: Stdio,
}

impl ExecConfig {
    /// `command` with `args`, piped stdio, the sandbox's environment, directory and timeout.
    pub fn new(command: impl Into<String>, args: Vec<String>) -> Self {
        ExecConfig {
            command: command.into(),
            args,
            env: Vec::new(),
            cwd: None,
            timeout: None,
            stdin: Stdio::Piped,
            stdout: Stdio::Piped,
            stderr: Stdio::Piped,
        }
    }
}

/// A long-lived container from [`NamespaceContainer::start`]: commands exec'd in it share
/// its filesystem (what one writes, the next sees), namespaces and limits.
///
/// Its init is a small launcher (`launcher/launcher.c`, built with the crate) that forks and
/// execs each command on request, so an exec costs a fork and an exec inside the running
/// container instead of a runtime call: the command inherits the container's namespaces,
/// cgroups, capabilities, `no_new_privileges` and seccomp filter, exactly like the init.
///
/// Clones share the sandbox. When the last clone is dropped, or [`close`](Self::close) is
/// called, the container and every command still running in it are killed and removed, with
/// the same guarantees as a spawned container. If its init dies (killed from outside, OOM),
/// the sandbox reports [`SandboxError::SandboxEnded`] on every later exec; it is never
/// silently restarted.
#[derive(Debug, Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    owner: NamespaceContainer,
    container: Supervised,
    config: ContainerConfig,
    /// Requests go to the launcher on it; every command gets a channel of its own.
    control: ControlSocket,
    /// Commands that may run at once (the launcher's table has room for a few more).
    slots: Arc<Semaphore>,
    execs: AtomicU64,
    /// A spawn's container: its one command's end is the container's end.
    one_shot: bool,
}

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
        let id = config.id.clone().unwrap_or_else(crate::state::new_id);
        self.launcher().await?;
        let (control, launcher_end) =
            ControlSocket::pair().map_err(|source| SandboxError::Process {
                context: "opening the sandbox's control socket",
                source,
            })?;
        // A spawn's container gets as long to start as its command's timeout, within
        // 10..30 s (a runtime that hangs, as runsc on kvm does, fails that soon).
        let start_deadline = match config.timeout {
            Some(t) if one_shot => t.clamp(MIN_START_DEADLINE, crate::process::START_DEADLINE),
            _ => crate::process::START_DEADLINE,
        };
        let mut init = config.clone();
        init.id = Some(id.clone());
        init.command = format!("/{}", launcher::PATH_IN_ROOTFS);
        init.args = Vec::new();
        init.timeout = None;
        // The launcher's end of the control socket is the container's stdin: no path. A
        // spawn on crun runs its runtime in the foreground (see `StartMode`).
        let attached = one_shot && self.runtime() == crate::OciRuntime::Crun;
        let start = self
            // Checked once, before the bundle is written: a spawn's config with its own
            // command (which must be on PATH), a long-lived sandbox's as its launcher's.
            .run_launcher(
                &init,
                if one_shot { config } else { &init },
                launcher_end,
                start_deadline,
                attached,
            )
            .await?;
        let container = start.container;
        let mut started = std::pin::pin!(async {
            start
                .started
                .await
                .unwrap_or_else(|_| Err(supervisor_gone()))
        });
        // The runtime's start and the launcher's "ready" race: a detached runtime usually
        // exits first, a foreground one waits for the pid that "ready" brings.
        let mut is_started = false;
        let ready = {
            let ready = tokio::time::timeout(start_deadline + READY_DEADLINE, control.ready());
            let mut ready = std::pin::pin!(ready);
            loop {
                tokio::select! {
                    result = &mut started, if !is_started => {
                        result?;
                        is_started = true;
                    }
                    ready = &mut ready => break ready,
                }
            }
        };
        match ready {
            Ok(Ok(pid)) => {
                if let Some(init_pid) = start.init_pid {
                    let _ = init_pid.send(pid);
                }
                if !is_started {
                    started.await?;
                }
            }
            Ok(Err(_)) => {
                // The runtime's own error, when it failed.
                if !is_started {
                    started.await?;
                }
                let status = container.wait().await.ok();
                return Err(SandboxError::SandboxEnded { id, status });
            }
            Err(_) => {
                return Err(SandboxError::Timeout {
                    what: format!("the launcher of sandbox {id}"),
                    after: start_deadline + READY_DEADLINE,
                });
            }
        }
        Ok(Sandbox {
            inner: Arc::new(Inner {
                owner: self.clone(),
                container,
                config: config.clone(),
                control,
                slots: Arc::new(Semaphore::new(MAX_CONCURRENT_EXECS)),
                execs: AtomicU64::new(0),
                one_shot,
            }),
        })
    }
}

impl Sandbox {
    /// The sandbox's container id.
    pub fn id(&self) -> &str {
        &self.inner.container.id
    }

    /// How the sandbox's init ended, if it has: then the sandbox is unusable.
    pub fn ended(&self) -> Option<ExitStatus> {
        self.inner.container.try_wait().ok().flatten()
    }

    /// Kills every command in the sandbox and the sandbox itself, and waits until its
    /// container is removed. Clones then report [`SandboxError::SandboxEnded`].
    pub async fn close(&self) {
        self.inner.container.start_kill();
        self.inner.container.finished().await;
    }

    /// Ends the container from within and waits until its launcher has exited, which means
    /// every process of it is gone: the launcher reads the end of its control socket, kills
    /// everything, reaps it all and exits (no runtime call). A launcher that does not is killed. The
    /// container's removal goes on in its supervisor.
    pub(crate) async fn end(&self) {
        self.inner.control.shutdown();
        // The launcher's exit shows first as the end of its control socket (it has reaped
        // every process by then); the init's exit, on gVisor, only once the whole sandbox
        // has gone down (4 ms later).
        let exited = async {
            tokio::select! {
                () = self.inner.control.closed() => {}
                () = self.inner.container.gone() => {}
            }
        };
        if tokio::time::timeout(END_DEADLINE, exited).await.is_err() {
            self.inner.container.start_kill();
            self.inner.container.gone().await;
        }
    }

    /// Runs `exec` in the sandbox with piped (or null, or inherited) stdio, like
    /// [`NamespaceContainer::spawn`].
    ///
    /// # Errors
    ///
    /// [`SandboxError::SandboxEnded`] when the sandbox's init is gone;
    /// [`SandboxError::CommandNotFound`] when the command cannot be executed;
    /// [`SandboxError::InvalidConfig`] for an empty command, NUL bytes, a bad environment key or
    /// a working directory that does not exist in the sandbox.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future leaves no process (the launcher kills a command whose
    /// connection closed).
    pub async fn exec(&self, exec: &ExecConfig) -> Result<ContainerProcess, SandboxError> {
        let (ours, theirs) = exec_stdio(exec)?;
        let fds = [
            theirs[0].as_raw_fd(),
            theirs[1].as_raw_fd(),
            theirs[2].as_raw_fd(),
        ];
        let (supervised, _) = self
            .run(exec, launcher::Stdio::Fds(fds), None, theirs)
            .await?;
        let [stdin, stdout, stderr] = ours;
        let stdin = stdin
            .map(|fd| tokio::process::ChildStdin::from_std(std::process::ChildStdin::from(fd)))
            .transpose();
        let stdout = stdout
            .map(|fd| tokio::process::ChildStdout::from_std(std::process::ChildStdout::from(fd)))
            .transpose();
        let stderr = stderr
            .map(|fd| tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(fd)))
            .transpose();
        let pipe_err = |source| SandboxError::Process {
            context: "registering the command's pipes",
            source,
        };
        Ok(ContainerProcess::new(
            supervised,
            stdin.map_err(pipe_err)?,
            stdout.map_err(pipe_err)?,
            stderr.map_err(pipe_err)?,
        ))
    }

    /// Runs `exec` in the sandbox with stdout and stderr written to files and tailed as
    /// streams, like [`NamespaceContainer::spawn_captured`] (stdin is `/dev/null`; the
    /// sandbox config's output limit applies).
    ///
    /// # Errors
    ///
    /// Those of [`exec`](Self::exec), and I/O errors creating the capture files.
    pub async fn exec_captured(
        &self,
        exec: &ExecConfig,
        mode: OutputMode,
    ) -> Result<ProcessCapture, SandboxError> {
        let n = self.inner.execs.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}", self.id());
        let parent = self.inner.owner.capture_parent().to_path_buf();
        let limit = self.inner.config.output_limit;
        let files = tokio::task::spawn_blocking(move || {
            CaptureFiles::create_blocking(&parent, &name, mode, limit)
        })
        .await
        .map_err(|e| SandboxError::Process {
            context: "creating the capture files",
            source: std::io::Error::other(e),
        })??;
        let null = open_null()?;
        let fds = [
            null.as_raw_fd(),
            files.stdout.as_raw_fd(),
            files.stderr.as_raw_fd(),
        ];
        let CaptureFiles {
            stdout,
            stderr,
            output,
            watch,
        } = files;
        let (supervised, _) = self
            .run(
                exec,
                launcher::Stdio::Fds(fds),
                Some(watch),
                [null, stdout.into(), stderr.into()],
            )
            .await?;
        Ok(ProcessCapture::new(output, supervised))
    }

    /// Runs `exec` in the sandbox on a new pseudo-terminal (80x24 until resized), like
    /// [`NamespaceContainer::spawn_interactive`].
    ///
    /// # Errors
    ///
    /// Those of [`exec`](Self::exec).
    pub async fn exec_interactive(&self, exec: &ExecConfig) -> Result<PtySession, SandboxError> {
        const SIZE: (u16, u16) = (80, 24);
        // A terminal's programs expect TERM.
        let mut exec = exec.clone();
        if !exec.env.iter().any(|(k, _)| k == "TERM")
            && !self.inner.config.env.iter().any(|(k, _)| k == "TERM")
        {
            exec.env.push(("TERM".into(), "xterm".into()));
        }
        let setup_err = |source| SandboxError::Process {
            context: "setting up the PTY",
            source,
        };
        if self.inner.container.cli.kind != crate::OciRuntime::Gvisor {
            // The launcher makes the PTY in the container's own devpts (so that `tty` names
            // it) and hands the controller over.
            let (supervised, controller) = self
                .run(&exec, launcher::Stdio::OwnTerminal, None, [])
                .await?;
            let controller = controller.expect("an own-terminal start returns its controller");
            return PtySession::from_controller(controller, supervised, SIZE).map_err(setup_err);
        }
        // gVisor cannot hand a PTY of its kernel to the host: the launcher makes one and
        // relays it over a stream socket, which stands in for the controller.
        let (controller, terminal) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| SandboxError::Process {
            context: "opening the terminal's socket pair",
            source: e.into(),
        })?;
        let raw = terminal.as_raw_fd();
        let (supervised, _) = self
            .run(&exec, launcher::Stdio::Terminal(raw), None, [terminal])
            .await?;
        PtySession::from_controller(controller, supervised, SIZE).map_err(setup_err)
    }

    /// Sends the request, waits for the start, and hands the command to its supervisor.
    /// `keep` holds the container-side fds until the launcher has them.
    async fn run<const N: usize>(
        &self,
        exec: &ExecConfig,
        stdio: launcher::Stdio,
        capture: Option<crate::capture::CaptureWatch>,
        keep: [OwnedFd; N],
    ) -> Result<(Supervised, Option<OwnedFd>), SandboxError> {
        let own_terminal = matches!(stdio, launcher::Stdio::OwnTerminal);
        let (argv, env, cwd) = self.resolve(exec)?;
        self.check_alive()?;
        let id = self.id().to_owned();
        // Rootless there is no cgroup to count OOM kills in, and a spawn's container is new
        // (none yet): no read on their exec path.
        // Read while the launcher forks and execs the command (about 0.1 ms against 0.7:
        // done before the command can have allocated much), off the exec's path.
        let skip_oom = self.inner.owner.is_rootless() || self.inner.one_shot;
        let oom_before = async {
            if skip_oom {
                0
            } else {
                crate::cgroup::oom_kills(&id).await
            }
        };
        let slot = Arc::clone(&self.inner.slots)
            .try_acquire_owned()
            .map_err(|_| SandboxError::TooManyExecs {
                id: id.clone(),
                limit: MAX_CONCURRENT_EXECS,
            })?;
        let request = self.inner.control.request(&cwd, &argv, &env, stdio);
        let conn = match tokio::time::timeout(START_DEADLINE, request).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(SandboxError::invalid("args", e.to_string()));
            }
            Ok(Err(e)) => {
                return Err(self.ended_error().unwrap_or(SandboxError::Process {
                    context: "sending the command to the sandbox's launcher",
                    source: e,
                }));
            }
            Err(_) => {
                return Err(SandboxError::Timeout {
                    what: format!("sending a command to sandbox {id}"),
                    after: START_DEADLINE,
                });
            }
        };
        // The launcher answers within a fork and an exec; a deadline keeps a wedged sandbox
        // from hanging the caller.
        let start = async {
            // A PTY the launcher made: its controller comes first (or the start failure).
            let terminal = if own_terminal {
                match conn.terminal().await? {
                    Ok(controller) => Some(controller),
                    Err(failed) => return Ok((failed, None)),
                }
            } else {
                None
            };
            conn.started().await.map(|s| (s, terminal))
        };
        let (oom_before, started) =
            tokio::join!(oom_before, tokio::time::timeout(START_DEADLINE, start));
        drop(keep);
        let terminal = match started {
            Err(_) => {
                return Err(SandboxError::Timeout {
                    what: format!("starting a command in sandbox {id}"),
                    after: START_DEADLINE,
                });
            }
            Ok(Ok((Started::Running, terminal))) => terminal,
            Ok(Ok((Started::Failed(errno), _))) => {
                return Err(crate::exec::start_failure(&exec.command, &cwd, errno));
            }
            Ok(Err(e)) => {
                return Err(self.ended_error().unwrap_or(SandboxError::Process {
                    context: "starting the command in the sandbox",
                    source: e,
                }));
            }
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let timeout = exec.timeout.or(self.inner.config.timeout);
        self.inner.owner.tracker().spawn(crate::exec::supervise(
            conn,
            id.clone(),
            timeout,
            control_rx,
            requests_rx,
            outcome_tx,
            capture,
            oom_before,
            slot,
            self.inner.one_shot.then(|| self.clone()),
        ));
        let container = &self.inner.container;
        let supervised = Supervised::exec(
            id,
            container.cli.clone(),
            container.network,
            control_tx,
            outcome_rx,
            requests_tx,
        );
        Ok((supervised, terminal))
    }

    /// argv, the whole environment and the working directory of `exec`, checked.
    #[allow(clippy::type_complexity)]
    fn resolve(
        &self,
        exec: &ExecConfig,
    ) -> Result<(Vec<String>, Vec<(String, String)>, PathBuf), SandboxError> {
        let mut check = self.inner.config.clone();
        check.command = exec.command.clone();
        check.args = exec.args.clone();
        for (k, v) in &exec.env {
            check.env.retain(|(key, _)| key != k);
            check.env.push((k.clone(), v.clone()));
        }
        if let Some(cwd) = &exec.cwd {
            check.cwd = cwd.clone();
        }
        check.validate_command_line()?;
        let mut argv = Vec::with_capacity(exec.args.len() + 1);
        argv.push(exec.command.clone());
        argv.extend(exec.args.iter().cloned());
        Ok((argv, check.env, check.cwd))
    }

    fn check_alive(&self) -> Result<(), SandboxError> {
        match self.ended_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn ended_error(&self) -> Option<SandboxError> {
        let status = self.inner.container.try_wait();
        match status {
            Ok(None) => None,
            Ok(Some(status)) => Some(SandboxError::SandboxEnded {
                id: self.id().to_owned(),
                status: Some(status),
            }),
            Err(_) => Some(SandboxError::SandboxEnded {
                id: self.id().to_owned(),
                status: None,
            }),
        }
    }
}

fn open_null() -> Result<OwnedFd, SandboxError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| SandboxError::io("opening /dev/null", std::path::Path::new("/dev/null"), e))
}

/// Our ends and the command's ends of its stdio.
#[allow(clippy::type_complexity)]
fn exec_stdio(exec: &ExecConfig) -> Result<([Option<OwnedFd>; 3], [OwnedFd; 3]), SandboxError> {
    let pipe_err = |e: nix::errno::Errno| SandboxError::Process {
        context: "creating the command's pipes",
        source: e.into(),
    };
    let mut ours: [Option<OwnedFd>; 3] = [None, None, None];
    let mut theirs = Vec::with_capacity(3);
    for (i, how) in [exec.stdin, exec.stdout, exec.stderr]
        .into_iter()
        .enumerate()
    {
        let fd = match how {
            Stdio::Piped => {
                let (read, write) =
                    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(pipe_err)?;
                let (mine, its) = if i == 0 { (write, read) } else { (read, write) };
                nix::fcntl::fcntl(
                    &mine,
                    nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
                )
                .map_err(pipe_err)?;
                ours[i] = Some(mine);
                its
            }
            Stdio::Null => open_null()?,
            Stdio::Inherit => {
                // SAFETY: fds 0, 1 and 2 stay open for the life of the process.
                let own = unsafe { std::os::fd::BorrowedFd::borrow_raw(i as i32) };
                own.try_clone_to_owned()
                    .map_err(|source| SandboxError::Process {
                        context: "duplicating this process's stdio",
                        source,
                    })?
            }
        };
        theirs.push(fd);
    }
    let theirs: [OwnedFd; 3] = theirs.try_into().expect("three fds");
    Ok((ours, theirs))
}

fn supervisor_gone() -> SandboxError {
    SandboxError::Process {
        context: "starting the container",
        source: std::io::Error::other("the supervisor ended without reporting"),
    }
}
