//! [`ContainerProcess`] (the handle of [`spawn`]), [`ExitStatus`], and the supervisor task that
//! owns each container's lifecycle: timeout, kill, and cleanup however the handle goes away.
//!
//! [`spawn`]: crate::NamespaceContainer::spawn

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::bundle::Bundle;
use crate::capture::CaptureWatch;
use crate::config::Network;
use crate::error::SandboxError;
use crate::pidfd::ProcessWatch;
use crate::runtime::{ContainerFlags, RuntimeCli, SHORT_CALL_DEADLINE, Sub, runtime_message};
use crate::state::{StateDirs, remove_from_runtime, remove_leftovers_blocking};

/// How a sandboxed process ended.
///
/// Tells a normal exit, death by a signal, a timeout, the output limit and the OOM killer
/// apart. On gVisor the status passes through the sandbox process as a code, so a process
/// that called `exit(128 + n)` reads as killed by signal `n` there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExitStatus {
    code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    output_limit_exceeded: bool,
    oom_killed: bool,
}

impl ExitStatus {
    pub(crate) fn exited(code: i32) -> Self {
        ExitStatus {
            code: Some(code),
            signal: None,
            timed_out: false,
            output_limit_exceeded: false,
            oom_killed: false,
        }
    }

    pub(crate) fn signaled(signal: i32) -> Self {
        ExitStatus {
            code: None,
            signal: Some(signal),
            timed_out: false,
            output_limit_exceeded: false,
            oom_killed: false,
        }
    }

    pub(crate) fn killed_by_timeout() -> Self {
        ExitStatus {
            timed_out: true,
            ..Self::signaled(libc::SIGKILL)
        }
    }

    pub(crate) fn killed_by_output_limit() -> Self {
        ExitStatus {
            output_limit_exceeded: true,
            ..Self::signaled(libc::SIGKILL)
        }
    }

    /// True when the process exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The exit code, when the process exited by itself.
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The signal that ended the process, when one did (a timeout kills with `SIGKILL`).
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// True when the library killed the process because its timeout passed.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// True when the library killed the process because its captured output passed the
    /// output limit ([`spawn_captured`](crate::NamespaceContainer::spawn_captured) only).
    pub fn output_limit_exceeded(&self) -> bool {
        self.output_limit_exceeded
    }

    /// True when the kernel's OOM killer killed a process of the container because it passed
    /// its memory limit: the process itself (then [`signal`](Self::signal) is `SIGKILL`, or on
    /// gVisor the whole sandbox was) or one of its children (then the code is whatever the
    /// process made of that). Read from the container's memory cgroup, so always false where
    /// the library cannot set limits (rootless on cgroup v1).
    pub fn oom_killed(&self) -> bool {
        self.oom_killed
    }

    pub(crate) fn with_oom_killed(self, oom_killed: bool) -> Self {
        ExitStatus { oom_killed, ..self }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.output_limit_exceeded {
            return f.write_str("output limit exceeded (killed)");
        }
        if self.oom_killed && self.signal == Some(libc::SIGKILL) {
            return f.write_str("out of memory (killed)");
        }
        match (self.timed_out, self.code, self.signal) {
            (true, _, _) => f.write_str("timed out (killed)"),
            (_, Some(c), _) => write!(f, "exit code {c}"),
            (_, _, Some(s)) => match nix::sys::signal::Signal::try_from(s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
            _ => f.write_str("unknown"),
        }
    }
}

/// The output of a finished process, from [`ContainerProcess::wait_with_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Everything it wrote to stdout (empty unless stdout was piped).
    pub stdout: Vec<u8>,
    /// Everything it wrote to stderr (empty unless stderr was piped).
    pub stderr: Vec<u8>,
}

/// Requests from a handle to its supervisor.
#[derive(Debug)]
pub(crate) enum Control {
    Kill,
}

pub(crate) type Outcome = Option<Result<ExitStatus, Arc<SandboxError>>>;

/// What a supervisor needs to end and clean up one container.
pub(crate) struct Teardown {
    pub cli: RuntimeCli,
    pub dirs: StateDirs,
    pub id: String,
    pub network: Network,
    pub bundle: Option<Bundle>,
}

impl Teardown {
    pub fn new(
        cli: &RuntimeCli,
        dirs: &StateDirs,
        id: String,
        config: &crate::ContainerConfig,
        bundle: Bundle,
    ) -> Self {
        Teardown {
            cli: cli.clone(),
            dirs: dirs.clone(),
            id,
            network: config.network,
            bundle: Some(bundle),
        }
    }

    fn flags<'a>(&self, log: Option<&'a std::path::Path>) -> ContainerFlags<'a> {
        ContainerFlags {
            log,
            network: self.network,
        }
    }

    /// Removes the container, its cgroups and the bundle. `init_exited`: its init is known
    /// to be gone (so is every process of the container).
    ///
    /// A container whose init is gone is removed without a runtime call: its state in the
    /// runtime's root and its cgroups are all there is (on runc and crun a `delete` is a
    /// second runtime process, 10 ms of CPU for runc; on gVisor `runsc delete` waits for the
    /// sandbox process to be reaped, 5 s here, where orphans are adopted by a PID 1 that reaps
    /// them late, and exits 128).
    async fn finish(&mut self, init_exited: bool) {
        if !init_exited {
            remove_from_runtime(&self.cli, &self.id, self.flags(None)).await;
        }
        let root = self.dirs.root.clone();
        let id = self.id.clone();
        let bundle = self.bundle.take().map(Bundle::into_path);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(bundle) = bundle {
                remove_leftovers_blocking(&root, &id, &bundle);
            }
        })
        .await;
    }
}

impl Drop for Teardown {
    /// Reached with the bundle still present only when the supervisor task was dropped before
    /// it finished: the Tokio runtime is shutting down. Clean up synchronously then, since no
    /// task can run any more.
    fn drop(&mut self) {
        if self.bundle.is_none() {
            return;
        }
        let program = |sub| self.cli.program(self.flags(None), sub);
        for (binary, args) in [
            program(Sub::Kill {
                id: &self.id,
                signal: "KILL",
                all: true,
            }),
            program(Sub::Delete {
                id: &self.id,
                force: true,
            }),
        ] {
            run_blocking_with_deadline(&binary, &args, SHORT_CALL_DEADLINE);
        }
        crate::cgroup::reap_blocking(&self.id);
        crate::state::remove_runtime_state_blocking(&self.dirs.root, &self.id);
        // Dropping the bundle removes its directory.
    }
}

fn run_blocking_with_deadline(
    binary: &std::path::Path,
    args: &[std::ffi::OsString],
    deadline: Duration,
) {
    let Ok(mut child) = std::process::Command::new(binary)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return;
    };
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) async fn watch_capture(capture: &mut Option<CaptureWatch>) -> bool {
    match capture {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// How long `<runtime> run --detach` may take to create and start a container, at most.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a killed container's init may take to die before its cgroups are emptied by force.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// How the runtime CLI runs a launcher container, and so how the supervisor learns that it
/// has started.
pub(crate) enum StartMode {
    /// `run --detach --pid-file`: started once the runtime has exited; the init's pid is in
    /// the pid file. For long-lived sandboxes (no runtime process stays) and gVisor (whose
    /// pid file names the sandbox process).
    Detached { pid_file: std::path::PathBuf },
    /// `run` in the foreground, as a user would type it: the runtime waits for the container
    /// and removes it itself when its init ends, in the same process (no second runtime call).
    /// Started once the init's pid arrives, from the launcher's "ready". For spawns on crun,
    /// whose `--detach` costs a fork and a handshake (6 ms here); runc in the foreground
    /// would put pipes of its own on the container's stdio, and costs the same detached.
    Attached { init_pid: oneshot::Receiver<i32> },
}

/// A container supervisor's side of its handle's channels.
struct ContainerChannels {
    control: mpsc::UnboundedReceiver<Control>,
    outcome: watch::Sender<Outcome>,
    started: oneshot::Sender<Result<(), SandboxError>>,
    init_gone: watch::Sender<bool>,
}

/// How the start phase ended.
enum StartEnd {
    /// The runtime exited (detached: it has started the container, or failed to).
    Exited(std::io::Result<std::process::ExitStatus>),
    /// Attached: the init's pid, or `None` when the launch gave up.
    Init(Option<i32>),
    TimedOut,
    /// The handle asked for a kill, or went away, before the container had started.
    Stopped,
}

/// How long a foreground runtime has to remove its container and exit once the init is gone.
const RUNTIME_END_DEADLINE: Duration = Duration::from_secs(10);

/// Watches a container whose init is the library's launcher: the runtime until the container
/// has started (reported on `started`), then the init through a pidfd (it is not this
/// process's child, and nothing reaps it here). A kill request or the handle's drop kills the
/// init, which takes the container with it; the outcome is published once the init has
/// exited, then the container is removed (by the foreground runtime itself, or here without a
/// runtime call). The runtime CLI is always awaited to its end.
async fn supervise_container(
    mut runtime: Child,
    mut teardown: Teardown,
    start_mode: StartMode,
    start_deadline: Duration,
    channels: ContainerChannels,
) {
    let ContainerChannels {
        mut control,
        outcome,
        started,
        init_gone,
    } = channels;
    let attached = matches!(start_mode, StartMode::Attached { .. });
    let (pid_file, init_pid) = match start_mode {
        StartMode::Detached { pid_file } => (Some(pid_file), None),
        StartMode::Attached { init_pid } => (None, Some(init_pid)),
    };
    let end = tokio::select! {
        status = runtime.wait() => StartEnd::Exited(status),
        pid = async { init_pid.expect("checked by the guard").await.ok() }, if init_pid.is_some() => {
            StartEnd::Init(pid)
        }
        _ = tokio::time::sleep(start_deadline) => StartEnd::TimedOut,
        _ = control.recv() => StartEnd::Stopped,
    };
    let mut runtime_running = attached;
    let init = match end {
        StartEnd::Exited(Ok(status)) if status.success() && !attached => {
            runtime_running = false;
            open_init(pid_file.as_deref().expect("detached")).await
        }
        StartEnd::Exited(Ok(status)) => {
            runtime_running = false;
            Err(runtime_failure(&teardown, status).await)
        }
        StartEnd::Exited(Err(e)) => {
            runtime_running = false;
            Err(SandboxError::Process {
                context: "waiting for the runtime",
                source: e,
            })
        }
        StartEnd::Init(Some(pid)) => {
            ProcessWatch::open(pid).map_err(|source| SandboxError::Process {
                context: "opening a pidfd for the container's init",
                source,
            })
        }
        StartEnd::Init(None) | StartEnd::TimedOut | StartEnd::Stopped => {
            Err(SandboxError::Timeout {
                what: format!("{} run", teardown.cli.kind),
                after: start_deadline,
            })
        }
    };
    let init = match init {
        Ok(init) => init,
        Err(e) => {
            if runtime_running {
                // Stop the runtime CLI first, so that it cannot go on creating the container.
                let _ = runtime.start_kill();
                let _ = runtime.wait().await;
            }
            let _ = started.send(Err(e.duplicate()));
            let _ = outcome.send(Some(Err(Arc::new(e))));
            teardown.finish(false).await;
            return;
        }
    };
    if let Some(userns) = teardown.bundle.as_mut().and_then(|b| b.userns.as_mut()) {
        userns.joined();
    }
    let _ = started.send(Ok(()));

    let mut kill_deadline = None;
    loop {
        tokio::select! {
            () = init.exited() => break,
            _ = control.recv(), if kill_deadline.is_none() => {
                init.kill();
                kill_deadline = Some(Instant::now() + KILL_DEADLINE);
            }
            () = sleep_until(kill_deadline) => {
                tracing::warn!(id = teardown.id, "the container outlived its kill; emptying its cgroups");
                let id = teardown.id.clone();
                let _ = tokio::task::spawn_blocking(move || crate::cgroup::reap_blocking(&id)).await;
                kill_deadline = Some(Instant::now() + KILL_DEADLINE);
            }
        }
    }
    init_gone.send_replace(true);
    let oom = crate::cgroup::oom_kills(&teardown.id).await > 0;
    let status = ExitStatus::signaled(libc::SIGKILL).with_oom_killed(oom);
    let _ = outcome.send(Some(Ok(status)));
    if runtime_running {
        // The foreground runtime removes the container now; past its deadline, it is killed
        // and what it left is removed here.
        if tokio::time::timeout(RUNTIME_END_DEADLINE, runtime.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                id = teardown.id,
                "the runtime did not exit after its container; killing it"
            );
            let _ = runtime.start_kill();
            let _ = runtime.wait().await;
        }
    }
    teardown.finish(true).await;
}

/// Reads the runtime's pid file and opens the init for watching.
async fn open_init(pid_file: &std::path::Path) -> Result<ProcessWatch, SandboxError> {
    let text = tokio::fs::read_to_string(pid_file)
        .await
        .map_err(|e| SandboxError::io("reading the runtime's pid file", pid_file, e))?;
    let pid: i32 = text.trim().parse().map_err(|_| {
        SandboxError::io(
            "reading the runtime's pid file",
            pid_file,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not a pid: {text:?}"),
            ),
        )
    })?;
    ProcessWatch::open(pid).map_err(|source| SandboxError::Process {
        context: "opening a pidfd for the container's init",
        source,
    })
}

/// The status of a process the library ended.
pub(crate) fn status_for(ended_by: Option<EndedBy>) -> ExitStatus {
    match ended_by {
        Some(EndedBy::Timeout) => ExitStatus::killed_by_timeout(),
        Some(EndedBy::OutputLimit) => ExitStatus::killed_by_output_limit(),
        _ => ExitStatus::signaled(libc::SIGKILL),
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum EndedBy {
    Timeout,
    OutputLimit,
    Kill,
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The runtime's own error for a failed `run --detach`, with its message from the log.
async fn runtime_failure(teardown: &Teardown, status: std::process::ExitStatus) -> SandboxError {
    let log = match &teardown.bundle {
        Some(bundle) => tokio::fs::read(bundle.log_path()).await.unwrap_or_default(),
        None => Vec::new(),
    };
    SandboxError::Runtime {
        runtime: teardown.cli.kind,
        op: crate::error::RuntimeOp::Run,
        code: status.code(),
        message: runtime_message(&log),
    }
}

/// The control side of a supervised container, shared by every handle type.
#[derive(Debug)]
pub(crate) struct Supervised {
    pub id: String,
    control: mpsc::UnboundedSender<Control>,
    outcome: watch::Receiver<Outcome>,
    pub cli: RuntimeCli,
    pub network: Network,
    /// For a command exec'd in a sandbox: signals and resizes go to its supervisor (the
    /// launcher delivers them), not to the runtime.
    exec_requests: Option<mpsc::UnboundedSender<ExecRequest>>,
    /// For a container: set once its init has exited (so has every process of it), before
    /// the outcome (which reads the OOM count first).
    init_gone: Option<watch::Receiver<bool>>,
    /// The supervisor task, for waiting until everything is removed.
    task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What a handle asks of an exec's supervisor besides a kill.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ExecRequest {
    Signal(i32),
    /// A relayed terminal's new size (columns, rows).
    Resize(u16, u16),
}

impl Supervised {
    /// Starts the supervisor of a launcher container run by `runtime` as `start_mode` says;
    /// the receiver says when the container has started, or why it could not.
    pub fn container(
        tracker: &tokio_util::task::TaskTracker,
        runtime: Child,
        teardown: Teardown,
        start_mode: StartMode,
        start_deadline: Duration,
    ) -> (Self, oneshot::Receiver<Result<(), SandboxError>>) {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let (started_tx, started_rx) = oneshot::channel();
        let (init_gone_tx, init_gone_rx) = watch::channel(false);
        let id = teardown.id.clone();
        let cli = teardown.cli.clone();
        let network = teardown.network;
        let task = tracker.spawn(supervise_container(
            runtime,
            teardown,
            start_mode,
            start_deadline,
            ContainerChannels {
                control: control_rx,
                outcome: outcome_tx,
                started: started_tx,
                init_gone: init_gone_tx,
            },
        ));
        let supervised = Supervised {
            id,
            control: control_tx,
            outcome: outcome_rx,
            cli,
            network,
            exec_requests: None,
            init_gone: Some(init_gone_rx),
            task: tokio::sync::Mutex::new(Some(task)),
        };
        (supervised, started_rx)
    }

    pub async fn wait(&self) -> Result<ExitStatus, SandboxError> {
        let mut rx = self.outcome.clone();
        let done = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| SandboxError::Process {
                context: "waiting for the container",
                source: std::io::Error::other(
                    "the supervisor task ended without a status (runtime shut down)",
                ),
            })?;
        match done.as_ref().expect("checked by wait_for") {
            Ok(status) => Ok(*status),
            Err(e) => Err(e.duplicate()),
        }
    }

    /// Waits until the container's init has exited (every process of it is gone then), or
    /// the supervisor has ended; for an exec, until its outcome.
    pub async fn gone(&self) {
        match &self.init_gone {
            Some(gone) => {
                let _ = gone.clone().wait_for(|gone| *gone).await;
            }
            None => {
                let _ = self.wait().await;
            }
        }
    }

    pub fn try_wait(&self) -> Result<Option<ExitStatus>, SandboxError> {
        match self.outcome.borrow().as_ref() {
            None => Ok(None),
            Some(Ok(s)) => Ok(Some(*s)),
            Some(Err(e)) => Err(e.duplicate()),
        }
    }

    pub fn start_kill(&self) {
        let _ = self.control.send(Control::Kill);
    }

    /// The handle side of an exec's supervisor: its channels, for a command run in the
    /// container `id` (a sandbox).
    pub fn exec(
        id: String,
        cli: RuntimeCli,
        network: Network,
        control: mpsc::UnboundedSender<Control>,
        outcome: watch::Receiver<Outcome>,
        requests: mpsc::UnboundedSender<ExecRequest>,
    ) -> Self {
        Supervised {
            id,
            control,
            outcome,
            cli,
            network,
            exec_requests: Some(requests),
            init_gone: None,
            task: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits until the supervisor has finished: the process has ended and, for a container,
    /// everything of it is removed. Cancel safe (a concurrent caller waits for the first).
    pub async fn finished(&self) {
        let mut task = self.task.lock().await;
        if let Some(handle) = task.as_mut() {
            let _ = handle.await;
            *task = None;
        }
        drop(task);
        let _ = self.wait().await;
    }

    /// Resizes a terminal the launcher relays (gVisor), where the host cannot.
    pub fn resize_relayed(&self, cols: u16, rows: u16) -> std::io::Result<()> {
        match &self.exec_requests {
            Some(requests) => {
                let _ = requests.send(ExecRequest::Resize(cols, rows));
                Ok(())
            }
            None => Err(std::io::Error::from_raw_os_error(libc::ENOTTY)),
        }
    }

    pub async fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), SandboxError> {
        if let Some(requests) = &self.exec_requests {
            if self.try_wait()?.is_some() {
                return Err(SandboxError::Process {
                    context: "signalling the command",
                    source: std::io::Error::from_raw_os_error(libc::ESRCH),
                });
            }
            let _ = requests.send(ExecRequest::Signal(signal as i32));
            return Ok(());
        }
        let name = signal.as_str();
        let name = name.strip_prefix("SIG").unwrap_or(name);
        let flags = ContainerFlags {
            log: None,
            network: self.network,
        };
        // Right after spawn the runtime may still be creating the container: retry briefly.
        let give_up = Instant::now() + Duration::from_secs(2);
        loop {
            match self
                .cli
                .call(
                    flags,
                    Sub::Kill {
                        id: &self.id,
                        signal: name,
                        all: false,
                    },
                    SHORT_CALL_DEADLINE,
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) => {
                    if self.try_wait()?.is_some() || Instant::now() >= give_up {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

/// `wait`, `try_wait`, `start_kill`, `kill` and `signal` for a handle whose `inner` is a
/// [`Supervised`] (the detached handles; `ContainerProcess` also closes its stdin on `wait`).
macro_rules! supervised_handle_methods {
    () => {
        /// Waits for the process to end (for captured output, the files are final then).
        ///
        /// # Cancel safety
        ///
        /// Cancel safe and idempotent.
        pub async fn wait(&self) -> Result<ExitStatus, SandboxError> {
            self.inner.wait().await
        }

        /// The status if the process has ended, without waiting.
        pub fn try_wait(&self) -> Result<Option<ExitStatus>, SandboxError> {
            self.inner.try_wait()
        }

        /// Asks for the process to be killed, without waiting.
        pub fn start_kill(&self) {
            self.inner.start_kill();
        }

        /// Kills the process and waits for it to end.
        pub async fn kill(&self) -> Result<(), SandboxError> {
            self.start_kill();
            self.wait().await.map(drop)
        }

        /// Sends `signal` to the process.
        pub async fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), SandboxError> {
            self.inner.signal(signal).await
        }
    };
}
pub(crate) use supervised_handle_methods;

/// A process running in a container, made by [`NamespaceContainer::spawn`]: like
/// [`tokio::process::Child`], with the container's stdio pipes.
///
/// # Dropping
///
/// Unlike `tokio::process::Child`, dropping the handle ends the process: the container is
/// killed and deleted and its bundle removed, by a background task with a deadline.
/// [`NamespaceContainer::close`] waits for such background work.
///
/// [`NamespaceContainer::spawn`]: crate::NamespaceContainer::spawn
/// [`NamespaceContainer::close`]: crate::NamespaceContainer::close
#[derive(Debug)]
pub struct ContainerProcess {
    /// The container's stdin, when [`Stdio::Piped`](crate::Stdio::Piped).
    pub stdin: Option<ChildStdin>,
    /// The container's stdout, when piped.
    pub stdout: Option<ChildStdout>,
    /// The container's stderr, when piped.
    pub stderr: Option<ChildStderr>,
    inner: Supervised,
}

impl ContainerProcess {
    pub(crate) fn new(
        inner: Supervised,
        stdin: Option<ChildStdin>,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
    ) -> Self {
        ContainerProcess {
            stdin,
            stdout,
            stderr,
            inner,
        }
    }

    /// The container's id (unique on this machine).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Waits for the process to end, and for its container to be removed.
    ///
    /// Closes stdin first (as `tokio::process::Child::wait` does), so that a process reading
    /// it sees end of file instead of waiting forever.
    ///
    /// # Errors
    ///
    /// [`SandboxError::CommandNotFound`] or [`SandboxError::Runtime`] when the runtime could
    /// not start the process.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and idempotent: after it returned once, it returns the same again.
    pub async fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        self.stdin.take();
        self.inner.wait().await
    }

    /// The status if the process has ended, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, SandboxError> {
        self.inner.try_wait()
    }

    /// Waits for the process while collecting all of its piped stdout and stderr.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: output read so far is lost, and the process is killed (the handle is
    /// dropped).
    pub async fn wait_with_output(mut self) -> Result<Output, SandboxError> {
        use tokio::io::AsyncReadExt;
        async fn read_all<R: tokio::io::AsyncRead + Unpin>(
            r: Option<R>,
        ) -> std::io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                r.read_to_end(&mut buf).await?;
            }
            Ok(buf)
        }
        self.stdin.take();
        let (stdout, stderr) = (self.stdout.take(), self.stderr.take());
        let (status, stdout, stderr) =
            tokio::join!(self.inner.wait(), read_all(stdout), read_all(stderr));
        let io = |source| SandboxError::Process {
            context: "reading the container's output",
            source,
        };
        Ok(Output {
            status: status?,
            stdout: stdout.map_err(io)?,
            stderr: stderr.map_err(io)?,
        })
    }

    /// Asks for the process to be killed, without waiting.
    pub fn start_kill(&mut self) {
        self.inner.start_kill();
    }

    /// Kills the process (and everything in its container) and waits for it to end.
    pub async fn kill(&mut self) -> Result<(), SandboxError> {
        self.start_kill();
        self.wait().await.map(drop)
    }

    /// Sends `signal` to the process (the container's init).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Runtime`] when the container is no longer running.
    pub async fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), SandboxError> {
        self.inner.signal(signal).await
    }
}
