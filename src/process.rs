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

    /// Reads a runtime's exit code the way runc, crun and runsc pass the container's status
    /// through: `128 + n` for death by signal `n`.
    pub(crate) fn from_runtime_code(code: i32) -> Self {
        if (129..=128 + 64).contains(&code) {
            Self::signaled(code - 128)
        } else {
            Self::exited(code)
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
    /// The command as configured, to name it in a command-not-found error.
    pub command: String,
    /// A detached container's init, once known (for the synchronous cleanup).
    pub init_pid: Option<i32>,
    /// An init orphaned by a cut-short start, to reap once the container is killed (before
    /// its cgroups can go: cgroup v2 keeps a cgroup busy while a zombie of it is unreaped).
    pub orphan: Option<crate::reaper::PidWaiter>,
    /// The runtime CLI was killed mid-way: its helpers may be our zombies too.
    pub aborted: bool,
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
            command: config.command.clone(),
            init_pid: None,
            orphan: None,
            aborted: false,
        }
    }

    fn flags<'a>(&self, log: Option<&'a std::path::Path>) -> ContainerFlags<'a> {
        ContainerFlags {
            log,
            network: self.network,
        }
    }

    /// Removes the container (if the runtime left it), its cgroups and the bundle.
    ///
    /// The host-side part runs every time, in one blocking hop: a runtime that removed the
    /// container itself may still have left a cgroup that its dying processes kept busy.
    async fn finish(&mut self, container: Leftover) {
        match container {
            Leftover::Running => {
                remove_from_runtime(&self.cli, &self.id, self.flags(None), true).await
            }
            Leftover::Stopped => {
                remove_from_runtime(&self.cli, &self.id, self.flags(None), false).await
            }
        }
        if let Some(orphan) = self.orphan.take() {
            let _ = tokio::time::timeout(KILL_DEADLINE, orphan.wait()).await;
        }
        let root = self.dirs.root.clone();
        let id = self.id.clone();
        let bundle = self.bundle.take().map(Bundle::into_path);
        let aborted = self.aborted;
        let gvisor = self.cli.kind == crate::OciRuntime::Gvisor;
        let _ = tokio::task::spawn_blocking(move || {
            if aborted && gvisor {
                crate::reaper::reap_runsc_helpers_blocking();
            } else if aborted {
                // Inits that died before they could exec, and the runtime's helpers.
                crate::reaper::reap_unstarted_inits();
            }
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
        // A detached container's init is our child (we are its subreaper): reap it.
        if let Some(pid) = self.init_pid {
            crate::reaper::reap_blocking(pid, SHORT_CALL_DEADLINE);
        }
        crate::reaper::reap_unstarted_inits();
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

/// What of a container may be left for cleanup.
#[derive(Debug, Clone, Copy)]
enum Leftover {
    Stopped,
    Running,
}

/// How long `<runtime> run --detach` may take to create and start a container.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long a killed container's init may take to die before its cgroups are emptied by force.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// Watches a detached container: the runtime's `run --detach` until it has started the
/// container (reporting that on `started`), then the container's init through a pidfd (this
/// process is its subreaper). Enforces the timeout and the output limit, obeys kill requests
/// and the handle's drop, then publishes the outcome and removes the container.
#[allow(clippy::too_many_arguments)]
async fn supervise_detached(
    mut runtime: Child,
    mut teardown: Teardown,
    pid_file: std::path::PathBuf,
    timeout: Option<Duration>,
    mut control: mpsc::UnboundedReceiver<Control>,
    outcome: watch::Sender<Outcome>,
    mut capture: Option<CaptureWatch>,
    started: oneshot::Sender<Result<(), SandboxError>>,
) {
    // Until the init's pid is claimed below, the orphan sweep must not take it.
    let start_guard = crate::reaper::StartGuard::new();
    let deadline = timeout.map(|t| Instant::now() + t);
    let start_deadline = Some(Instant::now() + START_DEADLINE);
    let mut ended_by: Option<EndedBy> = None;
    let mut start_timed_out = false;

    // Phase 1: the runtime creates and starts the container, then exits.
    let runtime_status = loop {
        tokio::select! {
            status = runtime.wait() => break Some(status),
            _ = sleep_until(deadline) => ended_by = Some(EndedBy::Timeout),
            _ = sleep_until(start_deadline) => start_timed_out = true,
            msg = control.recv() => ended_by = Some(match msg {
                Some(Control::Kill) => EndedBy::Kill,
                None => EndedBy::HandleDropped,
            }),
            over = watch_capture(&mut capture) => {
                if !over {
                    continue;
                }
                ended_by = Some(EndedBy::OutputLimit);
            }
        }
        break None;
    };
    let runtime_succeeded = matches!(&runtime_status, Some(Ok(s)) if s.success());
    let failure = match runtime_status {
        None => {
            // Stopped while starting: kill the runtime CLI first so that it cannot go on.
            let _ = runtime.start_kill();
            let _ = runtime.wait().await;
            start_timed_out.then(|| SandboxError::Timeout {
                what: format!("{} run --detach", teardown.cli.kind),
                after: START_DEADLINE,
            })
        }
        Some(Err(e)) => Some(SandboxError::Process {
            context: "waiting for the runtime",
            source: e,
        }),
        Some(Ok(status)) if !status.success() => {
            Some(match interpret_exit(&teardown, status).await {
                Err(e) => e,
                Ok(_) => SandboxError::Runtime {
                    runtime: teardown.cli.kind,
                    op: crate::error::RuntimeOp::Run,
                    code: status.code(),
                    message: "the runtime failed without a message".to_owned(),
                },
            })
        }
        Some(Ok(_)) => None,
    };
    // The container is running (or made); find its init.
    let waiter = if runtime_succeeded {
        match open_init(&pid_file).await {
            Ok((pid, w)) => {
                teardown.init_pid = Some(pid);
                Some(w)
            }
            Err(e) => {
                let _ = started.send(Err(e.duplicate()));
                return end_detached(teardown, capture, outcome, Err(e), Leftover::Running, None)
                    .await;
            }
        }
    } else {
        None
    };
    drop(start_guard);
    let Some(waiter) = waiter else {
        // The runtime may have made the init before it was stopped or failed; once it is
        // killed it is our zombie (we are its subreaper): find it now to reap it at the end.
        teardown.orphan = find_init(&pid_file, &teardown.dirs.root.join(&teardown.id)).await;
        teardown.aborted = true;
        let result = match failure {
            Some(e) => {
                let _ = started.send(Err(e.duplicate()));
                Err(e)
            }
            None => {
                let _ = started.send(Ok(()));
                Ok(status_for(ended_by))
            }
        };
        return end_detached(
            teardown,
            capture,
            outcome,
            result,
            Leftover::Running,
            ended_by,
        )
        .await;
    };
    let _ = started.send(Ok(()));

    // Phase 2: wait for the init to exit.
    let mut kill_deadline = None;
    if ended_by.is_some() || capture.as_ref().is_some_and(CaptureWatch::over_limit) {
        ended_by.get_or_insert(EndedBy::OutputLimit);
        if !kill_container(&teardown).await {
            waiter.kill();
        }
        kill_deadline = Some(Instant::now() + KILL_DEADLINE);
    }
    // gVisor's pid file names the sandbox process, which exits with the container's status
    // passed through as a code (128 + n for signal n); runc and crun's names the init itself.
    let through_sandbox = teardown.cli.kind == crate::OciRuntime::Gvisor;
    let waited = loop {
        tokio::select! {
            status = waiter.wait() => break status,
            _ = sleep_until(deadline), if ended_by.is_none() => ended_by = Some(EndedBy::Timeout),
            msg = control.recv(), if ended_by.is_none() => ended_by = Some(match msg {
                Some(Control::Kill) => EndedBy::Kill,
                None => EndedBy::HandleDropped,
            }),
            over = watch_capture(&mut capture), if ended_by.is_none() => {
                if !over {
                    continue;
                }
                ended_by = Some(EndedBy::OutputLimit);
            }
            _ = sleep_until(kill_deadline) => {
                tracing::warn!(id = teardown.id, "the container outlived its kill; emptying its cgroups");
                let id = teardown.id.clone();
                let _ = tokio::task::spawn_blocking(move || crate::cgroup::reap_blocking(&id)).await;
                waiter.kill();
                kill_deadline = Some(Instant::now() + KILL_DEADLINE);
                continue;
            }
        }
        if !kill_container(&teardown).await {
            waiter.kill();
        }
        kill_deadline = Some(Instant::now() + KILL_DEADLINE);
    };
    let oom_killed = || async {
        let id = teardown.id.clone();
        tokio::task::spawn_blocking(move || crate::cgroup::oom_kills_blocking(&id) > 0)
            .await
            .unwrap_or(false)
    };
    let result = match (ended_by, waited) {
        (Some(e), _) => Ok(status_for(Some(e))),
        (None, Ok(status)) if through_sandbox => Ok(status
            .code()
            .map(ExitStatus::from_runtime_code)
            .unwrap_or(status)
            .with_oom_killed(oom_killed().await)),
        (None, Ok(status)) => Ok(status.with_oom_killed(oom_killed().await)),
        (None, Err(e)) => Err(SandboxError::Process {
            context: "waiting for the container's init",
            source: e,
        }),
    };
    end_detached(
        teardown,
        capture,
        outcome,
        result,
        Leftover::Stopped,
        ended_by,
    )
    .await;
    if through_sandbox {
        // The gofer and the Sentry's helpers were re-parented to us when `run --detach`
        // exited; they are gone with the sandbox.
        reap_orphans().await;
    }
}

/// The init of a container whose start was cut short, from the pid file or the runtime's
/// state (runc and crun record `init_process_pid`), opened for reaping.
async fn find_init(
    pid_file: &std::path::Path,
    state_dir: &std::path::Path,
) -> Option<crate::reaper::PidWaiter> {
    if let Ok((_, w)) = open_init(pid_file).await {
        return Some(w);
    }
    let state = tokio::fs::read(state_dir.join("state.json")).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&state).ok()?;
    let pid = i32::try_from(v.get("init_process_pid")?.as_i64()?).ok()?;
    crate::reaper::PidWaiter::open(pid).ok()
}

/// Reads the runtime's pid file and opens the init for waiting.
async fn open_init(
    pid_file: &std::path::Path,
) -> Result<(i32, crate::reaper::PidWaiter), SandboxError> {
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
    crate::reaper::PidWaiter::open(pid)
        .map(|w| (pid, w))
        .map_err(|source| SandboxError::Process {
            context: "opening a pidfd for the container's init",
            source,
        })
}

/// `kill --all KILL`; the init's exit then ends the wait. False when the runtime refused
/// (the container does not exist yet, or any more).
async fn kill_container(teardown: &Teardown) -> bool {
    teardown
        .cli
        .call(
            teardown.flags(None),
            Sub::Kill {
                id: &teardown.id,
                signal: "KILL",
                all: true,
            },
            SHORT_CALL_DEADLINE,
        )
        .await
        .is_ok()
}

/// Reaps a gVisor sandbox's gofer and helpers once it has ended (blocking scans, off the
/// workers).
async fn reap_orphans() {
    let _ = tokio::task::spawn_blocking(crate::reaper::reap_runsc_helpers_blocking).await;
}

/// The status of a container the library ended.
pub(crate) fn status_for(ended_by: Option<EndedBy>) -> ExitStatus {
    match ended_by {
        Some(EndedBy::Timeout) => ExitStatus::killed_by_timeout(),
        Some(EndedBy::OutputLimit) => ExitStatus::killed_by_output_limit(),
        _ => ExitStatus::signaled(libc::SIGKILL),
    }
}

/// Ends a detached container: a container that may still run is removed before the files are
/// made final (else it would write on); a stopped one after the outcome is published, so that
/// waiters need not wait for the runtime's `delete`.
async fn end_detached(
    mut teardown: Teardown,
    capture: Option<CaptureWatch>,
    outcome: watch::Sender<Outcome>,
    result: Result<ExitStatus, SandboxError>,
    leftover: Leftover,
    ended_by: Option<EndedBy>,
) {
    let still_running = matches!(leftover, Leftover::Running);
    if still_running {
        teardown.finish(leftover).await;
    }
    if let Some(capture) = capture {
        capture
            .finish(matches!(ended_by, Some(EndedBy::OutputLimit)))
            .await;
    }
    let _ = outcome.send(Some(result.map_err(Arc::new)));
    if !still_running {
        teardown.finish(leftover).await;
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum EndedBy {
    Timeout,
    OutputLimit,
    Kill,
    HandleDropped,
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Turns the runtime's exit into the container's status, or the runtime's own error.
async fn interpret_exit(
    teardown: &Teardown,
    status: std::process::ExitStatus,
) -> Result<ExitStatus, SandboxError> {
    use std::os::unix::process::ExitStatusExt;
    let Some(code) = status.code() else {
        return Ok(ExitStatus::signaled(
            status.signal().unwrap_or(libc::SIGKILL),
        ));
    };
    if code == teardown.cli.kind.failure_code()
        && let Some(bundle) = &teardown.bundle
    {
        // The runtime's own failures are in its log; the container's exit code 1 leaves none.
        let log = tokio::fs::read(bundle.log_path()).await.unwrap_or_default();
        if !log.is_empty() {
            let message = runtime_message(&log);
            if message != "no message" {
                return Err(runtime_failure(teardown, code, message));
            }
        }
    }
    Ok(ExitStatus::from_runtime_code(code))
}

fn runtime_failure(teardown: &Teardown, code: i32, message: String) -> SandboxError {
    let lower = message.to_ascii_lowercase();
    // runc/crun: `exec: "x": executable file not found in $PATH` or `exec: ...: no such file
    // or directory`; runsc: `creating process: failed to load /x: no such file or directory`.
    let missing = lower.contains("no such file or directory")
        && (lower.contains("exec") || lower.contains("failed to load"));
    if lower.contains("executable file not found") || missing {
        SandboxError::CommandNotFound {
            command: teardown.command.clone(),
            message: Some(message),
        }
    } else {
        SandboxError::Runtime {
            runtime: teardown.cli.kind,
            op: crate::error::RuntimeOp::Run,
            code: Some(code),
            message,
        }
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
    /// Starts the supervisor of a detached runtime process (`run --detach --pid-file`); the
    /// receiver says when the container has started, or why it could not.
    pub fn detached(
        tracker: &tokio_util::task::TaskTracker,
        runtime: Child,
        teardown: Teardown,
        pid_file: std::path::PathBuf,
        timeout: Option<Duration>,
        capture: Option<CaptureWatch>,
    ) -> (Self, oneshot::Receiver<Result<(), SandboxError>>) {
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (outcome_tx, outcome_rx) = watch::channel(None);
        let (started_tx, started_rx) = oneshot::channel();
        let id = teardown.id.clone();
        let cli = teardown.cli.clone();
        let network = teardown.network;
        let task = tracker.spawn(supervise_detached(
            runtime, teardown, pid_file, timeout, control_rx, outcome_tx, capture, started_tx,
        ));
        let supervised = Supervised {
            id,
            control: control_tx,
            outcome: outcome_rx,
            cli,
            network,
            exec_requests: None,
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

    /// The supervisor's handle side, for the sandbox that owns this container's init.
    pub(crate) fn into_supervised(self) -> Supervised {
        self.inner
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
