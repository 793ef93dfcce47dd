//! Unit tests of the exec supervisor over a fake [`CommandChannel`]: no container, no root.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, watch};

use super::*;

/// A command that ends when told to (or when killed, if it obeys kills), and records the
/// signals and resizes it gets.
struct FakeCommand {
    end: tokio::sync::Mutex<Option<oneshot::Receiver<Option<ExitStatus>>>>,
    obeys_kill: bool,
    killed: tokio::sync::Notify,
    signals: Arc<Mutex<Vec<i32>>>,
    resizes: Arc<Mutex<Vec<(u16, u16)>>>,
}

impl CommandChannel for FakeCommand {
    fn ended(&self) -> BoxFuture<'_, std::io::Result<Option<ExitStatus>>> {
        Box::pin(async move {
            let mut end = self.end.lock().await;
            let Some(rx) = end.as_mut() else {
                return std::future::pending().await;
            };
            tokio::select! {
                status = rx => Ok(status.unwrap_or(None)),
                () = self.killed.notified(), if self.obeys_kill => {
                    Ok(Some(ExitStatus::signaled(libc::SIGKILL)))
                }
            }
        })
    }

    fn signal(&self, signal: i32) {
        self.signals.lock().unwrap().push(signal);
        if signal == libc::SIGKILL {
            self.killed.notify_one();
        }
    }

    fn resize(&self, cols: u16, rows: u16) {
        self.resizes.lock().unwrap().push((cols, rows));
    }
}

struct Harness {
    end: Option<oneshot::Sender<Option<ExitStatus>>>,
    control: mpsc::UnboundedSender<Control>,
    requests: mpsc::UnboundedSender<ExecRequest>,
    outcome: watch::Receiver<Outcome>,
    signals: Arc<Mutex<Vec<i32>>>,
    resizes: Arc<Mutex<Vec<(u16, u16)>>>,
    slots: Arc<tokio::sync::Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

fn start(timeout: Option<Duration>, obeys_kill: bool, one_shot: bool) -> Harness {
    start_with(
        timeout,
        obeys_kill,
        one_shot.then(|| {
            Box::new(|_want_oom: bool| Box::pin(async { false }) as BoxFuture<'static, bool>)
                as ContainerEnd
        }),
    )
}

fn start_with(
    timeout: Option<Duration>,
    obeys_kill: bool,
    container_end: Option<ContainerEnd>,
) -> Harness {
    start_watching(timeout, obeys_kill, container_end, None)
}

/// With an idle timeout fed by `activity`.
fn start_watching(
    timeout: Option<Duration>,
    obeys_kill: bool,
    container_end: Option<ContainerEnd>,
    idle: Option<(Duration, watch::Receiver<()>)>,
) -> Harness {
    let (end_tx, end_rx) = oneshot::channel();
    let signals = Arc::new(Mutex::new(Vec::new()));
    let resizes = Arc::new(Mutex::new(Vec::new()));
    let channel = FakeCommand {
        end: tokio::sync::Mutex::new(Some(end_rx)),
        obeys_kill,
        killed: tokio::sync::Notify::new(),
        signals: signals.clone(),
        resizes: resizes.clone(),
    };
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (requests_tx, requests_rx) = mpsc::unbounded_channel();
    let (outcome_tx, outcome_rx) = watch::channel(None);
    let slots = Arc::new(tokio::sync::Semaphore::new(1));
    let slot = slots.clone().try_acquire_owned().unwrap();
    let supervision = ExecSupervision {
        channel: Box::new(channel),
        sandbox_id: "osb-no-such-container".into(),
        timeout,
        idle_timeout: idle.as_ref().map(|(t, _)| *t),
        activity: idle.map(|(_, rx)| rx),
        control: control_rx,
        requests: requests_rx,
        outcome: outcome_tx,
        capture: None,
        oom_before: 0,
        slot: Box::new(slot),
        sandbox_closed: Default::default(),
        container_end,
    };
    Harness {
        end: Some(end_tx),
        control: control_tx,
        requests: requests_tx,
        outcome: outcome_rx,
        signals,
        resizes,
        slots,
        task: tokio::spawn(supervise(supervision)),
    }
}

impl Harness {
    async fn outcome(&mut self) -> Result<ExitStatus, String> {
        let done = self.outcome.wait_for(Option::is_some).await.unwrap();
        match done.as_ref().unwrap() {
            Ok(status) => Ok(*status),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[tokio::test]
async fn the_command_s_own_status_is_published_and_its_slot_freed() {
    let mut h = start(None, true, false);
    h.end
        .take()
        .unwrap()
        .send(Some(ExitStatus::exited(3)))
        .unwrap();
    let status = h.outcome().await.unwrap();
    assert_eq!(status.code(), Some(3));
    assert!(!status.timed_out() && !status.oom_killed());
    h.task.await.unwrap();
    assert_eq!(h.slots.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_kills_the_command_and_says_so() {
    let mut h = start(Some(Duration::from_secs(30)), true, false);
    let status = h.outcome().await.unwrap();
    assert!(status.timed_out(), "{status}");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(*h.signals.lock().unwrap(), [libc::SIGKILL]);
}

#[tokio::test(start_paused = true)]
async fn output_keeps_an_idle_timeout_off_and_silence_kills() {
    let (tx, rx) = watch::channel(());
    let idle = Duration::from_secs(2);
    let mut h = start_watching(None, true, None, Some((idle, rx)));
    // Output every second for ten seconds: never idle for two.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_replace(());
        assert!(h.signals.lock().unwrap().is_empty(), "killed while writing");
    }
    let silent_from = tokio::time::Instant::now();
    let status = h.outcome().await.unwrap();
    assert!(status.idle_timed_out() && status.timed_out(), "{status}");
    assert!(silent_from.elapsed() >= idle);
    assert_eq!(*h.signals.lock().unwrap(), [libc::SIGKILL]);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_of_duration_max_is_no_timeout() {
    let mut h = start(Some(Duration::MAX), true, false);
    tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
    assert!(h.outcome.borrow().is_none());
    h.end
        .take()
        .unwrap()
        .send(Some(ExitStatus::exited(0)))
        .unwrap();
    assert!(h.outcome().await.unwrap().success());
    assert!(h.signals.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_kill_request_kills_and_the_status_is_ours() {
    let mut h = start(None, true, false);
    h.control.send(Control::Kill).unwrap();
    let status = h.outcome().await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!status.timed_out());
}

#[tokio::test(start_paused = true)]
async fn a_launcher_silent_after_a_kill_does_not_hang_the_handle() {
    let mut h = start(None, false, false);
    h.control.send(Control::Kill).unwrap();
    // The launcher never reports: the supervisor gives the status itself after its deadline.
    let status = h.outcome().await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
}

#[tokio::test]
async fn signals_and_resizes_go_to_the_command() {
    let mut h = start(None, true, false);
    h.requests.send(ExecRequest::Signal(libc::SIGTERM)).unwrap();
    h.requests.send(ExecRequest::Resize(120, 40)).unwrap();
    tokio::task::yield_now().await;
    while h.resizes.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    h.end
        .take()
        .unwrap()
        .send(Some(ExitStatus::signaled(libc::SIGTERM)))
        .unwrap();
    assert_eq!(h.outcome().await.unwrap().signal(), Some(libc::SIGTERM));
    assert_eq!(*h.signals.lock().unwrap(), [libc::SIGTERM]);
    assert_eq!(*h.resizes.lock().unwrap(), [(120, 40)]);
}

#[tokio::test]
async fn a_dropped_handle_ends_the_supervisor_without_an_outcome() {
    let h = start(None, true, false);
    let Harness {
        control,
        task,
        outcome,
        slots,
        end: _end,
        ..
    } = h;
    drop(control);
    task.await.unwrap();
    assert!(outcome.borrow().is_none());
    // The channel (and with it the command) and the slot are gone.
    assert_eq!(slots.available_permits(), 1);
}

#[tokio::test]
async fn a_channel_closed_without_a_status_is_the_sandbox_s_end_or_a_spawn_s_kill() {
    let mut h = start(None, true, false);
    h.end.take().unwrap().send(None).unwrap();
    let err = h.outcome().await.unwrap_err();
    assert!(err.contains("osb-no-such-container"), "{err}");

    let mut h = start(None, true, true);
    h.end.take().unwrap().send(None).unwrap();
    assert_eq!(h.outcome().await.unwrap().signal(), Some(libc::SIGKILL));
}

/// A spawn's container that was OOM-killed, and records whether it was asked.
fn oom_killed_container(asked: Arc<Mutex<Option<bool>>>) -> Option<ContainerEnd> {
    Some(Box::new(move |want_oom: bool| {
        *asked.lock().unwrap() = Some(want_oom);
        Box::pin(async move { want_oom }) as BoxFuture<'static, bool>
    }))
}

#[tokio::test]
async fn a_spawn_s_oom_kill_comes_from_its_container_s_supervisor() {
    // The sandbox died (no status): asked, the container says the OOM killer struck.
    let asked = Arc::new(Mutex::new(None));
    let mut h = start_with(None, true, oom_killed_container(asked.clone()));
    h.end.take().unwrap().send(None).unwrap();
    let status = h.outcome().await.unwrap();
    assert!(status.oom_killed(), "{status}");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert_eq!(*asked.lock().unwrap(), Some(true));

    // A success is nobody's OOM kill: the container is not asked.
    let asked = Arc::new(Mutex::new(None));
    let mut h = start_with(None, true, oom_killed_container(asked.clone()));
    h.end
        .take()
        .unwrap()
        .send(Some(ExitStatus::exited(0)))
        .unwrap();
    assert!(!h.outcome().await.unwrap().oom_killed());
    assert_eq!(*asked.lock().unwrap(), Some(false));
}

#[tokio::test]
async fn a_spawn_s_container_is_asked_only_when_its_launcher_died() {
    // A reported failure: the container still ran when the count was read.
    let asked = Arc::new(Mutex::new(None));
    let mut h = start_with(None, true, oom_killed_container(asked.clone()));
    h.end
        .take()
        .unwrap()
        .send(Some(ExitStatus::signaled(libc::SIGKILL)))
        .unwrap();
    assert!(!h.outcome().await.unwrap().oom_killed());
    assert_eq!(*asked.lock().unwrap(), Some(false));
}
