//! A long-lived sandbox's lifetime options: its time to live and its idle lifetime, watched
//! by one task per sandbox that closes it when either runs out.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{Inner, Sandbox};
use crate::status::SandboxExpiry;
use crate::supervisor::sleep_until;

/// What runs in a sandbox, as its lifetime watcher sees it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Activity {
    /// Commands (execs and jobs) running.
    running: usize,
    /// When `running` last changed (or the sandbox started).
    since: Instant,
    /// The sandbox was closed: nothing more to watch.
    closed: bool,
}

/// The sandbox's side of its activity: marks commands running, and the close.
#[derive(Debug)]
pub(super) struct ActivityBoard {
    tx: Arc<watch::Sender<Activity>>,
}

impl Default for ActivityBoard {
    fn default() -> Self {
        let (tx, _) = watch::channel(Activity {
            running: 0,
            since: Instant::now(),
            closed: false,
        });
        ActivityBoard { tx: Arc::new(tx) }
    }
}

impl ActivityBoard {
    /// Marks one more command running, until the returned mark is dropped.
    pub fn busy(&self) -> Busy {
        self.tx.send_modify(|a| {
            a.running += 1;
            a.since = Instant::now();
        });
        Busy {
            tx: Arc::clone(&self.tx),
        }
    }

    /// Whether a command runs.
    pub fn busy_now(&self) -> bool {
        self.tx.borrow().running > 0
    }

    /// How long nothing has run nor been called, if nothing runs now.
    pub fn idle_for(&self) -> Option<Duration> {
        let now = *self.tx.borrow();
        (now.running == 0).then(|| now.since.elapsed())
    }

    /// A call came in: the idle clock starts again.
    pub fn touch(&self) {
        self.tx.send_modify(|a| a.since = Instant::now());
    }

    /// The sandbox is closed: its watcher stops.
    pub fn close(&self) {
        self.tx.send_modify(|a| a.closed = true);
    }

    fn subscribe(&self) -> watch::Receiver<Activity> {
        self.tx.subscribe()
    }
}

/// One command running; dropping it marks its end.
#[derive(Debug)]
pub(super) struct Busy {
    tx: Arc<watch::Sender<Activity>>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.tx.send_modify(|a| {
            a.running -= 1;
            a.since = Instant::now();
        });
    }
}

/// Starts the watcher of `sandbox`'s lifetime options, if it has any. The watcher holds the
/// sandbox weakly: dropping every handle still ends the sandbox, and the watcher with it.
pub(super) fn watch(sandbox: &Sandbox) {
    let config = &sandbox.inner.config;
    let (ttl, idle) = (config.ttl, config.idle_lifetime);
    let sleep = Sleep {
        pause: config.idle_pause,
        hibernate: config
            .idle_hibernate
            .filter(|_| sandbox.inner.durable.is_some()),
    };
    let none =
        ttl.is_none() && idle.is_none() && sleep.pause.is_none() && sleep.hibernate.is_none();
    if sandbox.inner.one_shot || none {
        return;
    }
    let activity = sandbox.inner.activity.subscribe();
    let inner = Arc::downgrade(&sandbox.inner);
    tokio::spawn(watcher(inner, ttl, idle, sleep, activity));
}

/// How long a sandbox stays idle before it is paused, and hibernated.
#[derive(Debug, Clone, Copy)]
struct Sleep {
    pause: Option<Duration>,
    hibernate: Option<Duration>,
}

/// Which sleep is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Pause,
    Hibernate,
}

async fn watcher(
    inner: Weak<Inner>,
    ttl: Option<Duration>,
    idle: Option<Duration>,
    sleep: Sleep,
    mut activity: watch::Receiver<Activity>,
) {
    // Durations too long to be an instant are no limit.
    let ttl_deadline = ttl.and_then(|t| Instant::now().checked_add(t));
    // A sleep that failed (the sandbox was busy) is tried again no sooner than this.
    let mut retry_after: Option<Instant> = None;
    let expiry = loop {
        let now = *activity.borrow_and_update();
        if now.closed {
            return;
        }
        let idle_deadline = match idle {
            Some(i) if now.running == 0 => now.since.checked_add(i),
            _ => None,
        };
        let phase = match inner.upgrade() {
            Some(inner) => Sandbox { inner }.phase(),
            None => return,
        };
        let after = |d: Option<Duration>| match d {
            Some(d) if now.running == 0 => now
                .since
                .checked_add(d)
                .map(|t| retry_after.map_or(t, |r| t.max(r))),
            _ => None,
        };
        // The deeper sleep first when both are due.
        let sleep_due = match (phase, after(sleep.hibernate), after(sleep.pause)) {
            (super::session::Phase::Hibernated, _, _) => None,
            (_, Some(h), Some(p)) if h <= p => Some((h, Due::Hibernate)),
            (super::session::Phase::Running, _, Some(p)) => Some((p, Due::Pause)),
            (_, Some(h), _) => Some((h, Due::Hibernate)),
            _ => None,
        };
        let sleep_deadline = sleep_due.map(|(t, _)| t);
        tokio::select! {
            _ = sleep_until(sleep_deadline), if sleep_deadline.is_some() => {
                let Some(inner) = inner.upgrade() else { return };
                let sandbox = Sandbox { inner };
                let due = sleep_due.map(|(_, d)| d);
                let slept = match due {
                    Some(Due::Hibernate) => sandbox.hibernate().await,
                    _ => sandbox.pause_if_idle(sleep.pause.unwrap_or_default()).await,
                };
                match slept {
                    Ok(()) => retry_after = None,
                    Err(err) => {
                        tracing::debug!(sandbox = %sandbox.id(), %err, ?due, "an idle sandbox could not sleep");
                        retry_after = Instant::now().checked_add(
                            sleep.pause.or(sleep.hibernate).unwrap_or_default().max(Duration::from_millis(100)),
                        );
                    }
                }
                continue;
            }
            _ = sleep_until(ttl_deadline), if ttl_deadline.is_some() => {
                break SandboxExpiry::Ttl(ttl.unwrap_or_default());
            }
            _ = sleep_until(idle_deadline), if idle_deadline.is_some() => {
                break SandboxExpiry::Idle(idle.unwrap_or_default());
            }
            changed = activity.changed() => {
                if changed.is_err() {
                    return; // the sandbox is gone
                }
            }
        }
    };
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let sandbox = Sandbox { inner };
    if sandbox.inner.expired.set(expiry).is_ok() {
        tracing::debug!(sandbox = %sandbox.id(), %expiry, "the sandbox expired: closing it");
        sandbox.close().await;
    }
}
