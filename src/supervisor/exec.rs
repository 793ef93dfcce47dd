//! The supervisor of one command exec'd in a long-lived sandbox through its launcher: the
//! counterpart of a container's supervisor, with the same outcome channel, so the same
//! handles ([`ContainerProcess`](crate::ContainerProcess), [`ProcessCapture`](crate::ProcessCapture),
//! [`PtySession`](crate::PtySession)) serve both.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::SandboxError;
use crate::host::capture::CaptureWatch;
use crate::launcher::{Connection, Reply};
use crate::status::ExitStatus;
use crate::supervisor::{
    Control, EndedBy, ExecRequest, Outcome, sleep_until, status_for, watch_capture,
};

/// How long the launcher has to report a command's end after it was told to kill it.
const KILL_REPORT_DEADLINE: Duration = Duration::from_secs(5);

/// What an exec's supervisor needs of its command's channel: its end, and a way to signal
/// and resize it. The launcher's [`Connection`] is the local one; a remote backend's exec
/// (a `pods/exec` websocket, say) would be another (see `src/backend.rs`).
pub(crate) trait CommandChannel: Send + Sync + 'static {
    /// Waits for the command's end: its status, `None` when the channel closed without one
    /// (the sandbox died), or an error. Cancel safe.
    fn ended(&self) -> BoxFuture<'_, std::io::Result<Option<ExitStatus>>>;
    /// Sends `signal` to the command's process group (fire and forget).
    fn signal(&self, signal: i32);
    /// Resizes the command's terminal (fire and forget).
    fn resize(&self, cols: u16, rows: u16);
}

impl CommandChannel for Connection {
    fn ended(&self) -> BoxFuture<'_, std::io::Result<Option<ExitStatus>>> {
        Box::pin(async move {
            match self.receive().await? {
                None => Ok(None),
                Some(Reply::Exited { status }) => Ok(Some(status)),
                Some(reply) => Err(std::io::Error::other(format!(
                    "unexpected reply {reply:?} where the command's status belongs"
                ))),
            }
        })
    }

    fn signal(&self, signal: i32) {
        Connection::signal(self, signal);
    }

    fn resize(&self, cols: u16, rows: u16) {
        Connection::resize(self, cols, rows);
    }
}

/// One exec's supervision: its channel, limits and the handle's channels.
pub(crate) struct ExecSupervision {
    pub channel: Box<dyn CommandChannel>,
    pub sandbox_id: String,
    pub timeout: Option<Duration>,
    /// Killed after this long without output: seen as capture file events, or as `activity`.
    pub idle_timeout: Option<Duration>,
    /// Marked on every chunk of output the host sees (piped relays, terminal reads).
    pub activity: Option<watch::Receiver<()>>,
    pub control: mpsc::UnboundedReceiver<Control>,
    pub requests: mpsc::UnboundedReceiver<ExecRequest>,
    pub outcome: watch::Sender<Outcome>,
    pub capture: Option<CaptureWatch>,
    /// The sandbox's OOM-kill count at the start.
    pub oom_before: u64,
    /// Held while the command runs, dropped at its end: one of the sandbox's exec slots
    /// and its mark of activity.
    pub slot: Box<dyn Send + Sync>,
    /// Set when the sandbox was closed on purpose (`close`, an expiry): a command that then
    /// ends without a status was killed by it, not lost.
    pub sandbox_closed: Arc<std::sync::atomic::AtomicBool>,
    /// For a spawn's command: ends its container (the command's end is the container's),
    /// awaited before the capture is finished and the outcome published.
    pub container_end: Option<ContainerEnd>,
}

/// Ends a spawn's container; asked (`true`), it also says whether the OOM killer killed
/// anything in it, as the container's supervisor read it before removing the cgroups (when
/// the sandbox died first, a read of the exec's own can come after that removal).
pub(crate) type ContainerEnd = Box<dyn FnOnce(bool) -> BoxFuture<'static, bool> + Send>;

/// Watches the command to its end: enforces the timeout and the output limit, obeys kill and
/// signal requests; dropping the handle drops the channel, and the launcher kills the
/// command's process group.
pub(crate) async fn supervise(mut s: ExecSupervision) {
    let begun = std::time::Instant::now();
    let Some((ended_by, end)) = watch_command(&mut s).await else {
        tracing::debug!("the handle went away: the command is killed");
        return;
    };
    let ran = begun.elapsed();
    // The OOM count is read while the container still runs (crun in the foreground removes
    // its cgroups as soon as its init exits); a spawn's container, when it died first, says
    // what its supervisor read before removing them.
    let maybe_oom = could_be_oom(ended_by, &end);
    let mut oom = maybe_oom && crate::host::cgroup::oom_kills(&s.sandbox_id).await > s.oom_before;
    let one_shot = s.container_end.is_some();
    // A spawn's container ends with its command: once its init is gone, so is every process
    // that could still write to the capture files.
    if let Some(end_container) = s.container_end.take() {
        // Only a launcher that died without a status can have taken the container (and its
        // cgroups) with it before the read above; a reported status means it still ran.
        let ask = maybe_oom && !oom && matches!(end, Ok(None));
        oom |= end_container(ask).await;
    }
    let closed = s.sandbox_closed.load(std::sync::atomic::Ordering::Acquire);
    let result = status_of(ended_by, end, &s.sandbox_id, oom, one_shot || closed)
        .map(|status| status.with_wall_time(ran));
    match &result {
        Ok(status) => tracing::debug!(%status, ran_ms = crate::sys::ms_since(begun), "ended"),
        Err(err) => tracing::debug!(%err, "ended without a status"),
    }
    if let Some(capture) = s.capture.take() {
        capture
            .finish(matches!(ended_by, Some(EndedBy::OutputLimit)))
            .await;
    }
    let _ = s.outcome.send(Some(result.map_err(Arc::new)));
    drop(s.slot);
}

/// The command's end as its channel tells it, and what ended it on our side if anything did;
/// `None` when the handle went away (dropping the channel then kills the command).
async fn watch_command(
    s: &mut ExecSupervision,
) -> Option<(Option<EndedBy>, std::io::Result<Option<ExitStatus>>)> {
    // A timeout too far out to be an instant is no timeout.
    let deadline = s.timeout.and_then(|t| Instant::now().checked_add(t));
    let mut ended_by: Option<EndedBy> = None;
    // Once the command is to be killed, the launcher has this long to report its end.
    let mut report_deadline = None;
    if s.capture.as_ref().is_some_and(CaptureWatch::over_limit) {
        ended_by = Some(EndedBy::OutputLimit);
        s.channel.signal(libc::SIGKILL);
        report_deadline = Some(Instant::now() + KILL_REPORT_DEADLINE);
    }
    let mut last_output = Instant::now();
    loop {
        let idle_deadline = s.idle_timeout.and_then(|t| last_output.checked_add(t));
        tokio::select! {
            end = s.channel.ended() => return Some((ended_by, end)),
            _ = sleep_until(report_deadline), if report_deadline.is_some() => {
                let silent = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the sandbox's launcher did not report the killed command's end",
                );
                return Some((ended_by, Err(silent)));
            }
            _ = sleep_until(deadline), if ended_by.is_none() => ended_by = Some(EndedBy::Timeout),
            _ = sleep_until(idle_deadline), if ended_by.is_none() && idle_deadline.is_some() => {
                ended_by = Some(EndedBy::IdleTimeout);
            }
            Ok(()) = changed(&mut s.activity) => {
                last_output = Instant::now();
                continue;
            }
            msg = s.control.recv(), if ended_by.is_none() => match msg {
                Some(Control::Kill) => ended_by = Some(EndedBy::Kill),
                None => return None,
            },
            Some(request) = s.requests.recv() => {
                match request {
                    ExecRequest::Signal(signal) => s.channel.signal(signal),
                    ExecRequest::Resize(cols, rows) => s.channel.resize(cols, rows),
                }
                continue;
            }
            over = watch_capture(&mut s.capture), if ended_by.is_none() => {
                if !over {
                    last_output = Instant::now();
                    continue;
                }
                ended_by = Some(EndedBy::OutputLimit);
            }
        }
        s.channel.signal(libc::SIGKILL);
        report_deadline = Some(Instant::now() + KILL_REPORT_DEADLINE);
    }
}

/// The next mark of output activity; pending forever without a source (or once it is gone).
async fn changed(activity: &mut Option<watch::Receiver<()>>) -> Result<(), ()> {
    match activity {
        Some(rx) => match rx.changed().await {
            Ok(()) => Ok(()),
            Err(_) => {
                *activity = None;
                Err(())
            }
        },
        None => std::future::pending().await,
    }
}

/// Whether an end could be the OOM killer's: a SIGKILL, a failure, or no status at all (the
/// sandbox died), and nothing of ours ended it.
fn could_be_oom(ended_by: Option<EndedBy>, end: &std::io::Result<Option<ExitStatus>>) -> bool {
    ended_by.is_none()
        && match end {
            Ok(Some(status)) => status.signal() == Some(libc::SIGKILL) || !status.success(),
            Ok(None) => true,
            Err(_) => false,
        }
}

/// The command's status from how it ended; `oom`: the OOM killer struck since it started;
/// `dies_with_container`: a spawn's command, which dies with its container, or a command of
/// a sandbox closed on purpose (killed by the close: a status, not an error).
fn status_of(
    ended_by: Option<EndedBy>,
    end: std::io::Result<Option<ExitStatus>>,
    sandbox_id: &str,
    oom: bool,
    dies_with_container: bool,
) -> Result<ExitStatus, SandboxError> {
    match (ended_by, end) {
        // Killed on our side: the status is ours to give, whether or not the launcher said.
        // The usage is the command's, when it was reported.
        (Some(e), Ok(Some(reported))) => Ok(status_for(Some(e)).with_usage(reported.usage())),
        (Some(e), Err(_)) => Ok(status_for(Some(e))),
        (None, Ok(Some(status))) => Ok(status.with_oom_killed(oom)),
        // The launcher closed the channel without a status: it died with the sandbox
        // (killed from outside, or by the OOM killer). A spawn's command died with it.
        (_, Ok(None)) if dies_with_container => {
            Ok(ExitStatus::signaled(libc::SIGKILL).with_oom_killed(oom))
        }
        (_, Ok(None)) => Err(SandboxError::SandboxEnded {
            id: sandbox_id.to_owned(),
            status: None,
        }),
        (None, Err(e)) => Err(SandboxError::Process {
            context: "waiting for the command's status from the launcher",
            source: e,
        }),
    }
}

/// The error of an exec that could not start: `exec` failed with `errno`, or `chdir` with
/// `-errno`.
pub(crate) fn start_failure(command: &str, cwd: &std::path::Path, errno: i32) -> SandboxError {
    if errno < 0 {
        return SandboxError::invalid(
            "cwd",
            format!(
                "{}: {}",
                cwd.display(),
                std::io::Error::from_raw_os_error(-errno)
            ),
        );
    }
    let message = format!("{command}: {}", std::io::Error::from_raw_os_error(errno));
    if errno == libc::ENOENT || errno == libc::EACCES || errno == libc::ENOTDIR {
        SandboxError::CommandNotFound {
            command: command.to_owned(),
            message: Some(message),
        }
    } else {
        SandboxError::Process {
            context: "starting the command in the sandbox",
            source: std::io::Error::from_raw_os_error(errno),
        }
    }
}

#[cfg(test)]
#[path = "exec_tests.rs"]
mod tests;
