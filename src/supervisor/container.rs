//! The supervisor of one container: its start (the runtime CLI, detached or in the
//! foreground), the watch on its init, its kill, and its removal however its handle goes away.

use crate::error::SandboxError;
use crate::host::bundle::Bundle;
use crate::host::state::StateDirs;
use crate::host::state::remove_leftovers_blocking;
use crate::oci::cli::ContainerFlags;
use crate::oci::cli::RuntimeCli;
use crate::oci::cli::SHORT_CALL_DEADLINE;
use crate::oci::cli::Sub;
use crate::oci::cli::runtime_message;
use crate::oci::sweep::remove_from_runtime;
use crate::status::ExitStatus;
use crate::supervisor::Control;
use crate::supervisor::Outcome;
use crate::supervisor::Supervised;
use crate::supervisor::sleep_until;
use crate::sys::pidfd::ProcessWatch;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::sync::watch;
use tokio::time::Instant;

/// What a supervisor needs to end and clean up one container.
pub(crate) struct Teardown {
    pub cli: RuntimeCli,
    pub dirs: StateDirs,
    pub id: String,
    pub host_network: bool,
    pub memory_root: bool,
    pub bundle: Option<Bundle>,
    /// Where the bundle's upper layer (`rw/upper`) goes before the bundle is removed, when
    /// a snapshot asks for it (see [`Harvest`]).
    pub harvest: Harvest,
    /// The snapshot whose layers the container runs on: kept until it is removed.
    pub keep: Option<crate::snapshot::Snapshot>,
    /// Where the teardown's time goes (from the kill, or the init's own end, to the
    /// container's removal), if anywhere.
    pub times: Option<Arc<crate::sys::histogram::DurationHistogram>>,
}

/// A snapshot's claim on a container's writable layer: set before the container is ended,
/// its teardown moves the layer there (a rename) instead of removing it.
pub(crate) type Harvest = std::sync::Arc<std::sync::Mutex<Option<std::path::PathBuf>>>;

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
            host_network: !config.network.is_isolated(),
            memory_root: config.snapshots && cli.kind == crate::OciRuntime::Gvisor,
            bundle: Some(bundle),
            harvest: Harvest::default(),
            keep: None,
            times: None,
        }
    }

    fn flags<'a>(&self, log: Option<&'a std::path::Path>) -> ContainerFlags<'a> {
        ContainerFlags {
            log,
            host_network: self.host_network,
            memory_root: self.memory_root,
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
        let base = self
            .bundle
            .as_ref()
            .and_then(|b| b.userns.as_ref())
            .map(|ns| ns.base());
        let bundle = self.bundle.take().map(Bundle::into_path);
        let harvest = self.harvest.lock().expect("not poisoned").take();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(bundle) = bundle {
                if let Some(dest) = harvest {
                    let upper = crate::image::mount::Points::in_bundle(&bundle).upper();
                    // The layer goes into the store with the container's own ids, as an
                    // image's layers are, so that any sandbox's idmapping applies to it, and
                    // without set-id bits or file capabilities (a copy-up keeps a lower
                    // file's, and writes through `mmap` keep them): one walk by fds.
                    let moved = std::fs::rename(&upper, &dest)
                        .and_then(|()| crate::sys::layer_tree::clean_layer_blocking(&dest, base));
                    if let Err(err) = moved {
                        tracing::warn!(%err, ?upper, ?dest, "moving the writable layer");
                        let _ = crate::sys::fs_tree::remove_tree_blocking(&dest);
                    }
                }
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
        // A state root removed under us (its owner's temp dir, gone before the runtime shut
        // down) holds no container to kill, and a runtime call would create it again.
        if self.dirs.root.exists() {
            let command = |sub| self.cli.std_command(self.flags(None), sub);
            for cmd in [
                command(Sub::Kill {
                    id: &self.id,
                    signal: "KILL",
                    all: true,
                }),
                command(Sub::Delete {
                    id: &self.id,
                    force: true,
                }),
            ] {
                run_blocking_with_deadline(cmd, SHORT_CALL_DEADLINE);
            }
        }
        crate::host::cgroup::reap_blocking(&self.id);
        crate::host::state::remove_runtime_state_blocking(&self.dirs.root, &self.id);
        // Dropping the bundle removes its directory.
    }
}

fn run_blocking_with_deadline(mut cmd: std::process::Command, deadline: Duration) {
    let Ok(mut child) = cmd.spawn() else {
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
    /// The runtime exited (detached: it has started the container, or failed to; the pid
    /// file names the init).
    Exited(
        std::io::Result<std::process::ExitStatus>,
        Option<std::path::PathBuf>,
    ),
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
    let end = start_phase(&mut runtime, start_mode, start_deadline, &mut control).await;
    // A foreground runtime runs as long as its container; a detached one has exited.
    // (Detached, a runtime that has not exited hangs or was stopped: it is killed below
    // before the teardown, so that it cannot go on creating the container after it.)
    let runtime_running = !matches!(end, StartEnd::Exited(..));
    let init = match open_started(end, &teardown, start_deadline).await {
        Ok(init) => init,
        Err(e) => {
            if runtime_running {
                // Stop the runtime CLI first, so that it cannot go on creating the container.
                let _ = runtime.start_kill();
                let _ = runtime.wait().await;
            }
            tracing::debug!(err = %e, "the runtime did not start the container");
            let _ = started.send(Err(e.duplicate()));
            let _ = outcome.send(Some(Err(Arc::new(e))));
            teardown.finish(false).await;
            return;
        }
    };
    if let Some(userns) = teardown.bundle.as_mut().and_then(|b| b.userns.as_mut()) {
        userns.joined();
    }
    let running_since = std::time::Instant::now();
    tracing::debug!(init = init.pid(), "the init runs");
    let _ = started.send(Ok(()));

    let killed_at = watch_phase(&init, &mut control, &teardown.id).await;
    let teardown_from = killed_at.unwrap_or_else(Instant::now);
    tracing::debug!(
        ran_ms = crate::sys::ms_since(running_since),
        killed = killed_at.is_some(),
        "the init has exited"
    );
    init_gone.send_replace(true);
    let oom = crate::host::cgroup::oom_kills(&teardown.id).await > 0;
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
    if let Some(times) = &teardown.times {
        times.record(teardown_from.elapsed());
    }
    tracing::debug!("removed");
}

/// The start phase: until the runtime has exited (detached), the init's pid has come
/// (attached), the deadline has passed or the handle has asked for a kill or gone.
async fn start_phase(
    runtime: &mut Child,
    start_mode: StartMode,
    start_deadline: Duration,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> StartEnd {
    let init_pid = match start_mode {
        StartMode::Detached { pid_file } => {
            return tokio::select! {
                status = runtime.wait() => StartEnd::Exited(status, Some(pid_file)),
                _ = tokio::time::sleep(start_deadline) => StartEnd::TimedOut,
                _ = control.recv() => StartEnd::Stopped,
            };
        }
        StartMode::Attached { init_pid } => init_pid,
    };
    tokio::select! {
        status = runtime.wait() => StartEnd::Exited(status, None),
        pid = init_pid => StartEnd::Init(pid.ok()),
        _ = tokio::time::sleep(start_deadline) => StartEnd::TimedOut,
        _ = control.recv() => StartEnd::Stopped,
    }
}

/// The started container's init, watched, or why there is none.
async fn open_started(
    end: StartEnd,
    teardown: &Teardown,
    start_deadline: Duration,
) -> Result<ProcessWatch, SandboxError> {
    match end {
        StartEnd::Exited(Ok(status), Some(pid_file)) if status.success() => {
            open_init(&pid_file).await
        }
        // A foreground runtime that exits before its init's pid came: the container is gone.
        StartEnd::Exited(Ok(status), _) => Err(runtime_failure(teardown, status).await),
        StartEnd::Exited(Err(e), _) => Err(SandboxError::Process {
            context: "waiting for the runtime",
            source: e,
        }),
        StartEnd::Init(Some(pid)) => watch_init(pid),
        StartEnd::TimedOut => Err(SandboxError::Timeout {
            what: format!("{} run", teardown.cli.kind),
            after: start_deadline,
        }),
        StartEnd::Init(None) | StartEnd::Stopped => Err(SandboxError::Process {
            context: "starting the container",
            source: std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "stopped before it had started (killed, or its launch abandoned)",
            ),
        }),
    }
}

/// The run phase: until the init has exited. A kill request (or the handle's drop) kills it
/// through its pidfd; one that outlives the kill has its cgroups emptied. Returns whether it
/// was killed, and when (the start of its teardown).
async fn watch_phase(
    init: &ProcessWatch,
    control: &mut mpsc::UnboundedReceiver<Control>,
    id: &str,
) -> Option<Instant> {
    let mut kill_deadline = None;
    let mut killed_at = None;
    loop {
        tokio::select! {
            () = init.exited() => return killed_at,
            _ = control.recv(), if kill_deadline.is_none() => {
                init.kill();
                killed_at = Some(Instant::now());
                kill_deadline = Some(Instant::now() + KILL_DEADLINE);
            }
            () = sleep_until(kill_deadline) => {
                tracing::warn!(id, "the container outlived its kill; emptying its cgroups");
                let id = id.to_owned();
                let _ = tokio::task::spawn_blocking(move || crate::host::cgroup::reap_blocking(&id)).await;
                kill_deadline = Some(Instant::now() + KILL_DEADLINE);
            }
        }
    }
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
    watch_init(pid)
}

/// Opens the container's init (`pid`) for watching.
fn watch_init(pid: i32) -> Result<ProcessWatch, SandboxError> {
    ProcessWatch::open(pid).map_err(|source| SandboxError::Process {
        context: "opening a pidfd for the container's init",
        source,
    })
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
        let host_network = teardown.host_network;
        // In the span of its caller: the container's.
        let task = tracker.spawn(tracing::Instrument::in_current_span(supervise_container(
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
        )));
        let supervised = Supervised {
            sandbox_id: id.clone(),
            id,
            control: control_tx,
            outcome: outcome_rx,
            cli,
            host_network,
            exec_requests: None,
            init_gone: Some(init_gone_rx),
            task: tokio::sync::Mutex::new(Some(task)),
        };
        (supervised, started_rx)
    }
}

#[cfg(test)]
#[path = "container_tests.rs"]
mod tests;
