//! The supervisors: one task per container ([`container`]) and per command exec'd in a
//! sandbox ([`exec`]), each owning its process's lifecycle (timeout, kill, output limit,
//! cleanup) and publishing its outcome to the handles through [`Supervised`].

use crate::error::SandboxError;
use crate::host::capture::CaptureWatch;
use crate::oci::cli::ContainerFlags;
use crate::oci::cli::RuntimeCli;
use crate::oci::cli::SHORT_CALL_DEADLINE;
use crate::oci::cli::Sub;
use crate::status::ExitStatus;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio::time::Instant;

pub(crate) mod container;
pub(crate) mod exec;

/// Requests from a handle to its supervisor.
#[derive(Debug)]
pub(crate) enum Control {
    Kill,
}

pub(crate) type Outcome = Option<Result<ExitStatus, Arc<SandboxError>>>;

pub(crate) async fn watch_capture(capture: &mut Option<CaptureWatch>) -> bool {
    match capture {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// The status of a process the library ended.
pub(crate) fn status_for(ended_by: Option<EndedBy>) -> ExitStatus {
    match ended_by {
        Some(EndedBy::Timeout) => ExitStatus::killed_by_timeout(),
        Some(EndedBy::IdleTimeout) => ExitStatus::killed_by_idle_timeout(),
        Some(EndedBy::OutputLimit) => ExitStatus::killed_by_output_limit(),
        _ => ExitStatus::signaled(libc::SIGKILL),
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum EndedBy {
    Timeout,
    /// No output for the idle timeout.
    IdleTimeout,
    OutputLimit,
    Kill,
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The control side of a supervised container, shared by every handle type.
#[derive(Debug)]
pub(crate) struct Supervised {
    pub id: String,
    /// The container it runs in (the same as `id` for a container, or a spawn's command).
    pub sandbox_id: String,
    control: mpsc::UnboundedSender<Control>,
    outcome: watch::Receiver<Outcome>,
    pub cli: RuntimeCli,
    pub host_network: bool,
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
        sandbox_id: String,
        cli: RuntimeCli,
        host_network: bool,
        control: mpsc::UnboundedSender<Control>,
        outcome: watch::Receiver<Outcome>,
        requests: mpsc::UnboundedSender<ExecRequest>,
    ) -> Self {
        Supervised {
            id,
            sandbox_id,
            control,
            outcome,
            cli,
            host_network,
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
            host_network: self.host_network,
            memory_root: false,
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
