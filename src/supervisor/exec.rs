//! The supervisor of one command exec'd in a long-lived sandbox through its launcher: the
//! counterpart of a container's supervisor, with the same outcome channel, so the same
//! handles ([`ContainerProcess`](crate::ContainerProcess), [`ProcessCapture`](crate::ProcessCapture),
//! [`PtySession`](crate::PtySession)) serve both.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::error::SandboxError;
use crate::host::capture::CaptureWatch;
use crate::launcher::{Connection, exit_status};
use crate::status::ExitStatus;
use crate::supervisor::{
    Control, EndedBy, ExecRequest, Outcome, sleep_until, status_for, watch_capture,
};

/// How long the launcher has to report a command's end after it was told to kill it.
const KILL_REPORT_DEADLINE: Duration = Duration::from_secs(5);

/// Watches the command to its end: enforces the timeout and the output limit, obeys kill and
/// signal requests; dropping the handle drops the connection, and the launcher kills the
/// command's process group. `oom_before` is the sandbox's OOM-kill count at the start.
/// `container_end`, for a spawn's command: ends its container (the command's end is the
/// container's), awaited before the capture is finished and the outcome published.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn supervise(
    conn: Connection,
    sandbox_id: String,
    timeout: Option<Duration>,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut requests: mpsc::UnboundedReceiver<ExecRequest>,
    outcome: watch::Sender<Outcome>,
    mut capture: Option<CaptureWatch>,
    oom_before: u64,
    _slot: tokio::sync::OwnedSemaphorePermit,
    container_end: Option<futures::future::BoxFuture<'static, ()>>,
) {
    // A timeout too far out to be an instant is no timeout.
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut ended_by: Option<EndedBy> = None;
    // Once the command is to be killed, the launcher has this long to report its end.
    let mut report_deadline = None;
    if capture.as_ref().is_some_and(CaptureWatch::over_limit) {
        ended_by = Some(EndedBy::OutputLimit);
        conn.signal(libc::SIGKILL);
        report_deadline = Some(Instant::now() + KILL_REPORT_DEADLINE);
    }
    let reply = loop {
        tokio::select! {
            reply = conn.receive() => break reply,
            _ = sleep_until(report_deadline), if report_deadline.is_some() => {
                break Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the sandbox's launcher did not report the killed command's end",
                ));
            }
            _ = sleep_until(deadline), if ended_by.is_none() => ended_by = Some(EndedBy::Timeout),
            msg = control.recv(), if ended_by.is_none() => match msg {
                Some(Control::Kill) => ended_by = Some(EndedBy::Kill),
                // The handle is gone: closing the connection makes the launcher kill it.
                None => return,
            },
            Some(request) = requests.recv() => {
                match request {
                    ExecRequest::Signal(signal) => conn.signal(signal),
                    ExecRequest::Resize(cols, rows) => conn.resize(cols, rows),
                }
                continue;
            }
            over = watch_capture(&mut capture), if ended_by.is_none() => {
                if !over {
                    continue;
                }
                ended_by = Some(EndedBy::OutputLimit);
            }
        }
        conn.signal(libc::SIGKILL);
        report_deadline = Some(Instant::now() + KILL_REPORT_DEADLINE);
    };
    let result = match (ended_by, reply) {
        (Some(e), Ok(Some(_))) => Ok(status_for(Some(e))),
        // Killed on our side, and the launcher fell silent: the status is ours to give.
        (Some(e), Err(_)) => Ok(status_for(Some(e))),
        (None, Ok(Some(text))) => match exit_status(&text) {
            Some(status) => {
                let oom = if status.signal() == Some(libc::SIGKILL) || !status.success() {
                    crate::host::cgroup::oom_kills(&sandbox_id).await > oom_before
                } else {
                    false
                };
                Ok(status.with_oom_killed(oom))
            }
            None => Err(SandboxError::Process {
                context: "reading the command's status from the launcher",
                source: std::io::Error::other(format!("unexpected reply {text:?}")),
            }),
        },
        // The launcher closed the connection without a status: it died with the sandbox
        // (killed from outside, or by the OOM killer). A spawn's command died with it.
        (_, Ok(None)) if container_end.is_some() => {
            let oom = crate::host::cgroup::oom_kills(&sandbox_id).await > oom_before;
            Ok(ExitStatus::signaled(libc::SIGKILL).with_oom_killed(oom))
        }
        (_, Ok(None)) => Err(SandboxError::SandboxEnded {
            id: sandbox_id,
            status: None,
        }),
        (_, Err(e)) => Err(SandboxError::Process {
            context: "waiting for the command's status from the launcher",
            source: e,
        }),
    };
    // A spawn's container ends with its command: once its init is gone, so is every process
    // that could still write to the capture files.
    if let Some(end) = container_end {
        end.await;
    }
    if let Some(capture) = capture {
        capture
            .finish(matches!(ended_by, Some(EndedBy::OutputLimit)))
            .await;
    }
    let _ = outcome.send(Some(result.map_err(Arc::new)));
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
