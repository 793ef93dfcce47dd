//! A sandbox's egress: the host side of [`Network::Egress`](crate::Network::Egress).
//!
//! The sandbox has its own network namespace with loopback only. The launcher's forwarder
//! (`launcher/net.c`) listens on its `127.0.0.1:3128`; for each connection it asks the host,
//! over its channel, for a socket, and relays the connection over it. The host end of that
//! socket is served by [`proxy::serve`]: an HTTP proxy (`CONNECT` tunnels and plain-HTTP
//! forwarding) that checks the sandbox's current policy before it resolves or connects
//! anything, and reports each decision as an [`EgressEvent`].
//!
//! No path, no listening socket and no resolver is visible to the sandbox: the only way out
//! is a socket the host made for one connection, handed over the launcher's channel (the same
//! on every runtime, gVisor included, which refuses host Unix sockets by default).

pub(crate) mod proxy;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

use crate::config::network::{EgressCounts, EgressEvent, EgressPolicy};
use crate::launcher::Connection;
use crate::launcher::net_protocol::{ACCEPTED, CONNECTION};

/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// Connections of one sandbox through the proxy at once. Past it the forwarder's next
/// connection waits for a socket (in its queue of 256; past that it closes new ones): a
/// sandbox cannot spend the host's fds (two per connection) without bound, gVisor's
/// included, whose relay processes no host pids limit counts.
pub(crate) const MAX_CONNECTIONS: usize = 256;

/// One sandbox's egress state: its policy (changed live) and its events.
#[derive(Debug)]
pub(crate) struct Egress {
    pub sandbox: String,
    /// Cancelled when the sandbox is closed: every forwarder and proxied connection ends
    /// with it, whatever its upstream does. Each forwarder runs under a child of it, which
    /// also ends with that forwarder (see [`serve_forwarder`]).
    pub stop: tokio_util::sync::CancellationToken,
    policy: RwLock<Arc<EgressPolicy>>,
    events: broadcast::Sender<EgressEvent>,
    /// What went through so far (see [`Egress::counts`]).
    pub(crate) counters: Counters,
}

/// A sandbox's egress counters, bumped by the proxy as it goes.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    allowed: AtomicU64,
    denied: AtomicU64,
    failed: AtomicU64,
    open: AtomicU64,
    /// Bumped by the relays as bytes go (see [`Counted`]).
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) received: Arc<AtomicU64>,
}

/// An allowed connection, counted as open until dropped.
pub(crate) struct OpenConnection<'a>(&'a Counters);

impl Counters {
    /// Counts an allowed connection (at once: a tunnel cut by a close or a snapshot is
    /// counted too), and as open while the guard lives.
    pub(crate) fn opened(&self) -> OpenConnection<'_> {
        self.allowed.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Egress {
    /// The state for `sandbox` under a policy already validated.
    pub(crate) fn new(sandbox: String, policy: EgressPolicy) -> Arc<Self> {
        Arc::new(Egress {
            sandbox,
            stop: Default::default(),
            policy: RwLock::new(Arc::new(policy)),
            events: broadcast::channel(EVENT_BACKLOG).0,
            counters: Counters::default(),
        })
    }

    /// The counters now.
    pub(crate) fn counts(&self) -> EgressCounts {
        let c = &self.counters;
        EgressCounts {
            allowed: c.allowed.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            bytes_sent: c.sent.load(Ordering::Relaxed),
            bytes_received: c.received.load(Ordering::Relaxed),
        }
    }

    /// The policy new connections are checked against.
    pub(crate) fn policy(&self) -> Arc<EgressPolicy> {
        self.policy.read().expect("egress policy").clone()
    }

    /// Replaces the policy (already validated) for every later connection.
    pub(crate) fn set(&self, policy: EgressPolicy) {
        *self.policy.write().expect("egress policy") = Arc::new(policy);
    }

    /// Events from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<EgressEvent> {
        self.events.subscribe()
    }

    /// Sends `event` to the subscribers and as a tracing event.
    pub(crate) fn report(&self, event: EgressEvent) {
        // Allowed ones were counted when they opened.
        let counter = match &event.decision {
            crate::config::network::EgressDecision::Allowed { .. } => None,
            crate::config::network::EgressDecision::Denied { .. } => Some(&self.counters.denied),
            crate::config::network::EgressDecision::Failed { .. } => Some(&self.counters.failed),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        match &event.decision {
            crate::config::network::EgressDecision::Allowed { rule } => tracing::debug!(
                sandbox = %event.sandbox, host = %event.host, port = event.port,
                method = %event.method, %rule, sent = event.bytes_sent,
                received = event.bytes_received, "egress allowed"
            ),
            crate::config::network::EgressDecision::Denied { reason } => tracing::debug!(
                sandbox = %event.sandbox, host = %event.host, port = event.port,
                method = %event.method, %reason, "egress denied"
            ),
            crate::config::network::EgressDecision::Failed { rule, error } => tracing::debug!(
                sandbox = %event.sandbox, host = %event.host, port = event.port,
                method = %event.method, %rule, %error, "egress failed"
            ),
        }
        let _ = self.events.send(event.capped());
    }
}

/// The host listeners of this process that lead into a sandbox (exposed ports): the proxy
/// refuses a connection that lands on one, whatever the policy says, so that a sandbox
/// cannot reach itself or another sandbox through the host with an injected credential.
static OWN_LISTENERS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<SocketAddr, usize>>,
> = std::sync::LazyLock::new(Default::default);

/// One registered listener; unregistered when dropped.
#[derive(Debug)]
pub(crate) struct OwnListener(SocketAddr);

impl OwnListener {
    /// Registers `addr` (a bound listener's local address).
    pub(crate) fn register(addr: SocketAddr) -> OwnListener {
        let addr = canonical_addr(addr);
        *OWN_LISTENERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(addr)
            .or_default() += 1;
        OwnListener(addr)
    }
}

impl Drop for OwnListener {
    fn drop(&mut self) {
        let mut all = OWN_LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = all.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                all.remove(&self.0);
            }
        }
    }
}

/// Whether a connection to `peer` lands on a listener of this process's (an unspecified
/// listener address counts for every address of its port).
pub(crate) fn is_own_listener(peer: SocketAddr) -> bool {
    let peer = canonical_addr(peer);
    let all = OWN_LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    all.contains_key(&peer)
        || all
            .keys()
            .any(|l| l.port() == peer.port() && l.ip().is_unspecified())
}

/// `addr` with an IPv4-mapped IPv6 address as the IPv4 address it is.
pub(crate) fn canonical_addr(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(crate::config::network::canonical(addr.ip()), addr.port())
}

/// Sockets sent to the forwarder ahead of its connections (its spares).
const SPARES: usize = 2;

/// Serves a forwarder's channel until it closes: a socket pair per connection the forwarder
/// accepted (and [`SPARES`] ahead), one end to the forwarder, the other to a proxy task on
/// `tracker`.
pub(crate) async fn serve_forwarder(
    channel: Connection,
    egress: Arc<Egress>,
    tracker: TaskTracker,
    run: tokio_util::sync::CancellationToken,
) {
    // The forwarder's connections end with it: when its channel closes (the sandbox ended),
    // when `run` is cancelled (a snapshot stops it: its channel is dropped here, and the
    // launcher's helper exits), or when the sandbox is closed (`run` is a child of `stop`).
    tokio::select! {
        () = forward(channel, egress, tracker, run.clone()) => {}
        () = run.cancelled() => {}
    }
    run.cancel();
}

async fn forward(
    channel: Connection,
    egress: Arc<Egress>,
    tracker: TaskTracker,
    run: tokio_util::sync::CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut ahead = SPARES;
    loop {
        if ahead > 0 {
            ahead -= 1;
        } else {
            match channel.receive_record().await {
                Ok(Some(record)) if record == ACCEPTED => {}
                Ok(Some(other)) => {
                    tracing::warn!(record = %other.escape_ascii(), "unexpected record from the egress forwarder");
                    return;
                }
                Ok(None) | Err(_) => return,
            }
        }
        // When the sandbox is gone its connections end, and with them the wait.
        let slot = Arc::clone(&slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let pair = std::os::unix::net::UnixStream::pair().and_then(|(ours, theirs)| {
            ours.set_nonblocking(true)?;
            Ok((tokio::net::UnixStream::from_std(ours)?, theirs))
        });
        let (ours, theirs) = match pair {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "no socket for an egress connection");
                return;
            }
        };
        use std::os::fd::AsRawFd;
        if channel
            .send_with_fd(CONNECTION, theirs.as_raw_fd())
            .await
            .is_err()
        {
            return;
        }
        drop(theirs);
        let (egress, run) = (egress.clone(), run.clone());
        tracker.spawn(async move {
            proxy::serve(ours, egress, run).await;
            drop(slot);
        });
    }
}
