//! Long-lived sandboxes: start a container once, exec many commands in it.

use crate::config::ExecConfig;

mod files;
mod jobs;
mod lifetime;
mod network;
mod snapshot;
mod transfer;
pub use files::{DirEntry, FileEvent, FileEvents, READ_FILE_LIMIT};
pub use network::EgressEvents;
pub(crate) use network::with_proxy_env;
pub use snapshot::SnapshotOptions;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::OutputMode;
use crate::config::{ContainerConfig, Stdio};
use crate::container::NamespaceContainer;
use crate::error::SandboxError;
use crate::handle::capture::ProcessCapture;
use crate::handle::process::ContainerProcess;
use crate::handle::pty::PtySession;
use crate::host::capture::CaptureFiles;
use crate::launcher::{self, ControlSocket, Started};
use crate::status::ExitStatus;
use crate::supervisor::Supervised;

/// How long a launcher may take to end its container once its control socket has closed.
const END_DEADLINE: Duration = Duration::from_secs(2);

/// How long the launcher may take to fork and exec a command.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Commands that may run at once in one sandbox: the launcher holds an fd or two for each,
/// within its own limit of 1024 (the default pids limit, 256, is lower still).
pub const MAX_CONCURRENT_EXECS: usize = 480;

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
    /// The container's id: the same across the restarts of a snapshot or a restore.
    id: String,
    /// The running container and its launcher: replaced by a snapshot (which restarts it
    /// on runc and crun, restores it on gVisor) and by [`Sandbox::restore`].
    live: std::sync::RwLock<Arc<Live>>,
    /// Held (shared) by every start of a command or request, and exclusively by a
    /// snapshot or restore while it swaps the container.
    gate: Arc<tokio::sync::RwLock<()>>,
    config: ContainerConfig,
    /// The config as the caller gave it (before its image's applied): a restart's.
    asked: ContainerConfig,
    /// Commands that may run at once (the launcher's table has room for a few more).
    slots: Arc<Semaphore>,
    execs: AtomicU64,
    /// A spawn's container: its one command's end is the container's end.
    one_shot: bool,
    /// [`Sandbox::close`] was called.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Background jobs ([`Sandbox::spawn_job`]).
    jobs: crate::handle::job::JobRegistry,
    /// Commands running, for the idle lifetime.
    activity: lifetime::ActivityBoard,
    /// Set when a lifetime option ended the sandbox.
    expired: std::sync::OnceLock<crate::status::SandboxExpiry>,
    /// File requests that may run at once (the launcher serves 64 helpers): past it they
    /// wait; watches, which hold theirs until dropped, have a few of their own.
    file_slots: Arc<Semaphore>,
    watch_slots: Arc<Semaphore>,
    /// The egress proxy's state, with [`Network::Egress`](crate::Network::Egress).
    egress: std::sync::OnceLock<Arc<crate::net::Egress>>,
    /// The running forwarder's own stop and its task (a snapshot stops it, and starts one in
    /// the new container).
    forwarder: std::sync::Mutex<
        Option<(
            tokio_util::sync::CancellationToken,
            tokio::task::JoinHandle<()>,
        )>,
    >,
    /// Exposed ports' listeners stop when it is cancelled: at close, or when the last clone
    /// goes (the guard cancels it).
    exposed: tokio_util::sync::CancellationToken,
    _exposed_guard: tokio_util::sync::DropGuard,
    /// Connections to exposed ports at once (launcher helpers each).
    expose_slots: Arc<Semaphore>,
}

/// One container of a sandbox: the first, or the one a snapshot or restore started in its
/// place.
#[derive(Debug)]
pub(crate) struct Live {
    pub container: Supervised,
    /// Requests go to the launcher on it; every command gets a channel of its own.
    pub control: ControlSocket,
    /// The host id of the container's id 0, with a user namespace of its own.
    pub userns_base: Option<u32>,
    /// Where its teardown moves its writable layer when a snapshot asks.
    pub harvest: crate::supervisor::container::Harvest,
    /// The snapshot it started from (whose layers it runs on), if any.
    pub base: Option<crate::snapshot::Snapshot>,
}

impl Sandbox {
    /// The running container and its launcher.
    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(&self.inner.live.read().expect("not poisoned"))
    }

    /// The container's config, with its image's config applied.
    pub(crate) fn config(&self) -> &ContainerConfig {
        &self.inner.config
    }

    /// A sandbox on a started launcher `container` with its `control` socket.
    pub(crate) fn new(
        owner: NamespaceContainer,
        live: Live,
        config: ContainerConfig,
        asked: ContainerConfig,
        one_shot: bool,
    ) -> Self {
        let exposed = tokio_util::sync::CancellationToken::new();
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                owner,
                id: live.container.id.clone(),
                live: std::sync::RwLock::new(Arc::new(live)),
                gate: Default::default(),
                config,
                asked,
                slots: Arc::new(Semaphore::new(MAX_CONCURRENT_EXECS)),
                execs: AtomicU64::new(0),
                one_shot,
                closed: Default::default(),
                jobs: Default::default(),
                activity: Default::default(),
                expired: Default::default(),
                file_slots: Arc::new(Semaphore::new(files::FILE_HELPERS)),
                watch_slots: Arc::new(Semaphore::new(files::WATCHES)),
                egress: Default::default(),
                forwarder: Default::default(),
                exposed: exposed.clone(),
                _exposed_guard: exposed.drop_guard(),
                expose_slots: Arc::new(Semaphore::new(network::EXPOSED_CONNECTIONS)),
            }),
        };
        lifetime::watch(&sandbox);
        let open: Arc<dyn crate::container::Closable> = sandbox.inner.clone();
        sandbox.inner.owner.register_open(Arc::downgrade(&open));
        sandbox
    }

    /// The sandbox's container id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The host uid and gid that the sandbox's user (its config's `uid` and `gid`) is, when
    /// the sandbox has a user namespace of its own (as root, on runc and crun): a host
    /// program that puts files straight into the sandbox's `workdir` chowns them to these, so
    /// that the sandbox may change them. `None` otherwise (gVisor, rootless, or
    /// [`Security::user_namespace`](crate::Security::user_namespace) off): the ids are the
    /// host's own there. The file API ([`write_file`](Self::write_file),
    /// [`upload_dir`](Self::upload_dir)) needs none of this.
    pub fn host_ids(&self) -> Option<(u32, u32)> {
        let base = self.live().userns_base?;
        let config = &self.inner.config;
        Some((base + config.uid, base + config.gid))
    }

    /// How the sandbox's init ended, if it has: then the sandbox is unusable.
    pub fn ended(&self) -> Option<ExitStatus> {
        self.live().container.try_wait().ok().flatten()
    }

    /// What the whole sandbox has used so far (CPU time, memory now and at its peak,
    /// processes), read from its cgroups; `None` where it has none the host can read
    /// (rootless on cgroup v1), or once it has ended. Each command's own figures are in its
    /// status ([`ExitStatus::usage`]).
    pub async fn usage(&self) -> Option<crate::status::SandboxUsage> {
        if self.ended().is_some() || self.inner.closed.load(Ordering::Acquire) {
            return None;
        }
        let id = self.id().to_owned();
        crate::sys::blocking("reading the sandbox's cgroups", move || {
            Ok(crate::host::cgroup::usage_blocking(&id))
        })
        .await
        .ok()
        .flatten()
    }

    /// Kills every command in the sandbox and the sandbox itself, and waits until its
    /// container is removed. Clones then report [`SandboxError::SandboxClosed`]; a command
    /// that ran reports its end as killed (`SIGKILL`), with what it printed until then.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.activity.close();
        self.inner.exposed.cancel();
        if let Some(egress) = self.inner.egress.get() {
            egress.stop.cancel();
        }
        // A snapshot or restore under way finishes first (its new container is the one to end).
        let _gate = self.inner.gate.read().await;
        let live = self.live();
        live.container.start_kill();
        live.container.finished().await;
        // Every job died with the container; their outputs stay with the handles left.
        self.inner.jobs.clear();
    }

    /// Ends the container from within and waits until its launcher has exited, which means
    /// every process of it is gone: the launcher reads the end of its control socket, kills
    /// everything, reaps it all and exits (no runtime call). A launcher that does not is killed. The
    /// container's removal goes on in its supervisor.
    pub(crate) async fn end(&self) {
        end_live(&self.live()).await;
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
        let (mut ours, theirs) = exec_stdio(exec)?;
        let activity = match exec.idle_timeout {
            Some(_) => relay_outputs(&mut ours)?,
            None => None,
        };
        let fds = [
            theirs[0].as_raw_fd(),
            theirs[1].as_raw_fd(),
            theirs[2].as_raw_fd(),
        ];
        let (supervised, _) = self
            .run(
                exec,
                launcher::Stdio::Fds(fds),
                Watched {
                    activity,
                    ..Watched::default()
                },
                theirs,
            )
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
            exec.output_limit.or(self.inner.config.output_limit),
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
        let limit = exec.output_limit.or(self.inner.config.output_limit);
        let files = crate::sys::blocking("creating the capture files", move || {
            CaptureFiles::create_blocking(&parent, &name, mode, limit)
        })
        .await?;
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
                Watched {
                    capture: Some(watch),
                    ..Watched::default()
                },
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
        // What is read from the terminal is its output, for the idle timeout.
        let (activity, watched) = match exec.idle_timeout {
            Some(_) => {
                let (tx, rx) = watch::channel(());
                let watched = Watched {
                    activity: Some(rx),
                    ..Watched::default()
                };
                (Some(Arc::new(tx)), watched)
            }
            None => (None, Watched::default()),
        };
        if self.inner.owner.runtime() != crate::OciRuntime::Gvisor {
            // The launcher makes the PTY in the container's own devpts (so that `tty` names
            // it) and hands the controller over.
            let (supervised, controller) = self
                .run(&exec, launcher::Stdio::OwnTerminal, watched, [])
                .await?;
            let controller = controller.expect("an own-terminal start returns its controller");
            return PtySession::from_controller(controller, supervised, SIZE, activity)
                .map_err(setup_err);
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
            .run(&exec, launcher::Stdio::Terminal(raw), watched, [terminal])
            .await?;
        PtySession::from_controller(controller, supervised, SIZE, activity).map_err(setup_err)
    }

    /// Sends the request, waits for the start, and hands the command to its supervisor.
    /// `keep` holds the container-side fds until the launcher has them.
    async fn run<const N: usize>(
        &self,
        exec: &ExecConfig,
        stdio: launcher::Stdio,
        watched: Watched,
        keep: [OwnedFd; N],
    ) -> Result<(Supervised, Option<OwnedFd>), SandboxError> {
        use tracing::Instrument;
        // Its events (the start here, the end in its supervisor) are in it, with the
        // sandbox's id (a spawn's container has its own span, with the same id).
        let mode = match stdio {
            launcher::Stdio::Fds(_) if watched.capture.is_some() => "captured",
            launcher::Stdio::Fds(_) => "piped",
            _ => "terminal",
        };
        let span =
            tracing::debug_span!("exec", sandbox = %self.id(), command = %exec.command, mode);
        let begun = std::time::Instant::now();
        let ran = self
            .run_in_span(exec, stdio, watched, keep)
            .instrument(span.clone())
            .await;
        span.in_scope(|| match &ran {
            Ok(_) => tracing::debug!(elapsed_ms = crate::sys::ms_since(begun), "started"),
            Err(err) => tracing::debug!(%err, "could not start"),
        });
        ran
    }

    async fn run_in_span<const N: usize>(
        &self,
        exec: &ExecConfig,
        stdio: launcher::Stdio,
        watched: Watched,
        keep: [OwnedFd; N],
    ) -> Result<(Supervised, Option<OwnedFd>), SandboxError> {
        let own_terminal = matches!(stdio, launcher::Stdio::OwnTerminal);
        // A snapshot or restore under way finishes first.
        let _start = self.inner.gate.read().await;
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
                crate::host::cgroup::oom_kills(&id).await
            }
        };
        let slot = Arc::clone(&self.inner.slots)
            .try_acquire_owned()
            .map_err(|_| SandboxError::TooManyExecs {
                id: id.clone(),
                limit: MAX_CONCURRENT_EXECS,
            })?;
        // Busy from before the request: an idle lifetime cannot end the sandbox under it.
        let slot = (slot, self.inner.activity.busy());
        let conn = self.send(&cwd, &argv, &env, stdio).await?;
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
                return Err(crate::supervisor::exec::start_failure(
                    &exec.command,
                    &cwd,
                    errno,
                ));
            }
            Ok(Err(e)) => {
                return Err(self.ended_error().unwrap_or(SandboxError::Process {
                    context: "starting the command in the sandbox",
                    source: e,
                }));
            }
        };
        let timeout = exec.timeout.or(self.inner.config.timeout);
        let supervised = self.supervise(
            Box::new(conn),
            timeout,
            exec.idle_timeout,
            watched,
            oom_before,
            slot,
        );
        Ok((supervised, terminal))
    }

    /// Hands a started command to an exec supervisor (in the current span) and returns the
    /// handle side.
    fn supervise(
        &self,
        channel: Box<dyn crate::supervisor::exec::CommandChannel>,
        timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
        watched: Watched,
        oom_before: u64,
        slot: (tokio::sync::OwnedSemaphorePermit, lifetime::Busy),
    ) -> Supervised {
        let id = self.id().to_owned();
        // An exec's own id; a spawn's command is its container's only one, and keeps its id.
        let exec_id = if self.inner.one_shot {
            id.clone()
        } else {
            format!("{id}-{}", self.inner.execs.fetch_add(1, Ordering::Relaxed))
        };
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (requests_tx, requests_rx) = mpsc::unbounded_channel();
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let supervision = crate::supervisor::exec::ExecSupervision {
            channel,
            sandbox_id: id.clone(),
            timeout,
            idle_timeout,
            activity: watched.activity,
            control: control_rx,
            requests: requests_rx,
            outcome: outcome_tx,
            capture: watched.capture,
            oom_before,
            slot: Box::new(slot),
            sandbox_closed: Arc::clone(&self.inner.closed),
            container_end: self.inner.one_shot.then(|| {
                let sandbox = self.clone();
                Box::new(move |want_oom: bool| {
                    Box::pin(async move {
                        sandbox.end().await;
                        want_oom
                            && sandbox
                                .live()
                                .container
                                .wait()
                                .await
                                .is_ok_and(|s| s.oom_killed())
                    }) as futures::future::BoxFuture<'static, bool>
                }) as crate::supervisor::exec::ContainerEnd
            }),
        };
        self.inner
            .owner
            .tracker()
            .spawn(tracing::Instrument::in_current_span(
                crate::supervisor::exec::supervise(supervision),
            ));
        let live = self.live();
        let container = &live.container;
        Supervised::exec(
            exec_id,
            id,
            container.cli.clone(),
            container.host_network,
            control_tx,
            outcome_rx,
            requests_tx,
        )
    }

    /// Sends a start request to the launcher, within [`START_DEADLINE`].
    async fn send(
        &self,
        cwd: &std::path::Path,
        argv: &[String],
        env: &[(String, String)],
        stdio: launcher::Stdio,
    ) -> Result<launcher::Connection, SandboxError> {
        let live = self.live();
        let request = live.control.request(cwd, argv, env, stdio);
        match tokio::time::timeout(START_DEADLINE, request).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {
                Err(SandboxError::invalid("args", e.to_string()))
            }
            Ok(Err(e)) => Err(self.ended_error().unwrap_or(SandboxError::Process {
                context: "sending the command to the sandbox's launcher",
                source: e,
            })),
            Err(_) => Err(SandboxError::Timeout {
                what: format!("sending a command to sandbox {}", self.id()),
                after: START_DEADLINE,
            }),
        }
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
        crate::config::merge_env(&mut check.env, &exec.env);
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
        if let Some(expiry) = self.inner.expired.get() {
            return Some(SandboxError::SandboxExpired {
                id: self.id().to_owned(),
                expiry: *expiry,
            });
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Some(SandboxError::SandboxClosed {
                id: self.id().to_owned(),
            });
        }
        let status = self.live().container.try_wait();
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

/// Ends `live`'s container from within and waits until its launcher has exited, which means
/// every process of it is gone: the launcher reads the end of its control socket, kills
/// everything, reaps it all and exits (no runtime call). A launcher that does not is killed.
/// The container's removal goes on in its supervisor.
pub(crate) async fn end_live(live: &Live) {
    live.control.shutdown();
    // The launcher's exit shows first as the end of its control socket (it has reaped
    // every process by then); the init's exit, on gVisor, only once the whole sandbox
    // has gone down (4 ms later).
    let exited = async {
        tokio::select! {
            () = live.control.closed() => {}
            () = live.container.gone() => {}
        }
    };
    if tokio::time::timeout(END_DEADLINE, exited).await.is_err() {
        live.container.start_kill();
        live.container.gone().await;
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
/// What an exec's supervisor watches besides the command: its capture files, and marks of
/// output the host saw (for the idle timeout).
#[derive(Default)]
struct Watched {
    capture: Option<crate::host::capture::CaptureWatch>,
    activity: Option<watch::Receiver<()>>,
}

/// Puts a relay that marks activity (for an idle timeout) between the command's piped
/// stdout and stderr and the caller; the receiver of those marks, if any stream is piped.
fn relay_outputs(
    ours: &mut [Option<OwnedFd>; 3],
) -> Result<Option<watch::Receiver<()>>, SandboxError> {
    if ours[1].is_none() && ours[2].is_none() {
        return Ok(None);
    }
    let (tx, rx) = watch::channel(());
    let tx = Arc::new(tx);
    for end in ours[1..].iter_mut() {
        if let Some(fd) = end.take() {
            let relayed = crate::handle::relay::relayed(fd, Arc::clone(&tx)).map_err(|source| {
                SandboxError::Process {
                    context: "relaying the command's output",
                    source,
                }
            })?;
            *end = Some(relayed);
        }
    }
    Ok(Some(rx))
}

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

impl crate::container::Closable for Inner {
    fn close_now(self: Arc<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let sandbox = Sandbox { inner: self };
            sandbox.close().await;
        })
    }
}
