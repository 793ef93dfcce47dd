//! Commands in a [`Sandbox`]: [`Sandbox::exec`] (piped stdio), [`Sandbox::exec_captured`]
//! (capture files), [`Sandbox::exec_interactive`] (a terminal), the request to the launcher
//! and the exec's supervisor.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{MAX_CONCURRENT_EXECS, START_DEADLINE, Sandbox, lifetime};
use crate::config::{ExecConfig, OutputMode, Stdio};
#[cfg(doc)]
use crate::container::NamespaceContainer;
use crate::error::SandboxError;
use crate::handle::capture::ProcessCapture;
use crate::handle::process::ContainerProcess;
use crate::handle::pty::PtySession;
use crate::host::capture::CaptureFiles;
use crate::launcher::{self, Started};
use crate::supervisor::Supervised;

impl Sandbox {
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
        // A snapshot or restore under way finishes first; a paused or hibernated sandbox
        // resumes.
        let _start = self.enter().await?;
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
        // Busy from before the request: an idle lifetime cannot end the sandbox under it. A
        // code context's kernel is not (its cells are, while they run), and is counted apart.
        let kernel = super::code::KERNEL_EXEC.try_with(|_| ()).is_ok();
        let slot = (
            slot,
            (!kernel).then(|| self.inner.activity.busy()),
            kernel.then(|| super::code::KernelMark::new(&self.inner.kernel_execs)),
            (!kernel).then(|| super::metrics::Running::new(&self.inner.commands_running)),
        );
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
        slot: (
            tokio::sync::OwnedSemaphorePermit,
            Option<lifetime::Busy>,
            Option<super::code::KernelMark>,
            Option<super::metrics::Running>,
        ),
    ) -> Supervised {
        let id = self.id().to_owned();
        self.inner.commands_started.fetch_add(1, Ordering::Relaxed);
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
    pub(super) async fn send(
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
    pub(super) fn resolve(
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
