//! A sandbox's network beyond its loopback: the egress proxy of
//! [`Network::Egress`](crate::Network::Egress) ([`Sandbox::set_egress`],
//! [`Sandbox::egress_events`]) and exposed ports ([`Sandbox::expose`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::broadcast;

use super::Sandbox;
use crate::config::network::{EGRESS_PROXY_PORT, EgressEvent, EgressPolicy};
use crate::error::SandboxError;
use crate::launcher::Started;
use crate::launcher::net_protocol::{CONNECTION, NetOp, NetRequest};

/// Connections to a sandbox's exposed ports at once (a relay thread each in one launcher
/// helper per port); more wait in the host kernel's backlog.
pub(super) const EXPOSED_CONNECTIONS: usize = 128;

/// How long the launcher has to start a network helper.
const HELPER_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The [`EgressEvent`]s of a sandbox from the moment it was asked for
/// ([`Sandbox::egress_events`]). Ends when the sandbox is gone. A subscriber more than 1024
/// events behind skips the oldest (a tracing warning says how many).
pub struct EgressEvents {
    inner: Pin<Box<dyn Stream<Item = EgressEvent> + Send>>,
}

impl std::fmt::Debug for EgressEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressEvents").finish_non_exhaustive()
    }
}

impl Stream for EgressEvents {
    type Item = EgressEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<EgressEvent>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl Sandbox {
    /// Starts the launcher's forwarder and the proxy that serves it.
    pub(crate) async fn start_egress(&self, policy: EgressPolicy) -> Result<(), SandboxError> {
        let egress = crate::net::Egress::new(self.id().to_owned(), policy);
        let _ = self.inner.egress.set(egress.clone());
        self.start_forwarder(egress).await
    }

    /// Starts a forwarder for `egress` in the sandbox's (current) container: at its start,
    /// and again after a snapshot or restore has replaced the container.
    pub(super) async fn start_forwarder(
        &self,
        egress: Arc<crate::net::Egress>,
    ) -> Result<(), SandboxError> {
        let request = NetRequest {
            op: NetOp::Forward,
            port: EGRESS_PROXY_PORT,
            uid: self.inner.config.uid,
            gid: self.inner.config.gid,
        };
        let channel = self
            .net_helper(request, "starting the egress forwarder")
            .await?;
        let run = egress.stop.child_token();
        let tracker = self.inner.owner.tracker().clone();
        let served = self
            .inner
            .owner
            .tracker()
            .spawn(crate::net::serve_forwarder(
                channel,
                egress,
                tracker,
                run.clone(),
            ));
        *self.inner.forwarder.lock().expect("not poisoned") = Some((run, served));
        Ok(())
    }

    /// Stops the sandbox's egress forwarder, if it has one, and waits until its proxy has let
    /// go of the forwarder's channel (the launcher's helper then exits): a snapshot cannot
    /// carry it.
    pub(super) async fn stop_forwarder(&self) {
        let running = self.inner.forwarder.lock().expect("not poisoned").take();
        if let Some((run, served)) = running {
            run.cancel();
            let _ = served.await;
        }
    }

    /// Sends a network request and waits for its helper's start.
    async fn net_helper(
        &self,
        request: NetRequest,
        context: &'static str,
    ) -> Result<crate::launcher::Connection, SandboxError> {
        self.check_alive()?;
        let process = |source| SandboxError::Process { context, source };
        let started = async {
            let channel = self.live().control.net_request(request).await?;
            let started = channel.started().await?;
            Ok::<_, std::io::Error>((channel, started))
        };
        match tokio::time::timeout(HELPER_DEADLINE, started).await {
            Err(_) => Err(SandboxError::Timeout {
                what: context.to_owned(),
                after: HELPER_DEADLINE,
            }),
            Ok(Err(e)) => Err(self.ended_error().unwrap_or_else(|| process(e))),
            Ok(Ok((channel, Started::Running))) => Ok(channel),
            Ok(Ok((_, Started::Failed(errno)))) => {
                Err(process(std::io::Error::from_raw_os_error(errno.abs())))
            }
        }
    }

    /// Replaces the sandbox's egress policy: connections opened from now on are checked
    /// against `policy`; open ones go on.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] (field `network`) for a bad policy, or when the
    /// sandbox was not started with [`Network::Egress`](crate::Network::Egress) (its network
    /// namespace has no way out to change).
    pub fn set_egress(&self, policy: EgressPolicy) -> Result<(), SandboxError> {
        policy.validate()?;
        match self.inner.egress.get() {
            Some(egress) => {
                egress.set(policy);
                Ok(())
            }
            None => Err(SandboxError::invalid(
                "network",
                "the sandbox has no egress proxy: start it with Network::Egress",
            )),
        }
    }

    /// The egress proxy's decisions from now on, one [`EgressEvent`] per connection; an empty
    /// stream without [`Network::Egress`](crate::Network::Egress).
    pub fn egress_events(&self) -> EgressEvents {
        let Some(egress) = self.inner.egress.get() else {
            return EgressEvents {
                inner: Box::pin(futures::stream::empty()),
            };
        };
        let rx = egress.subscribe();
        EgressEvents {
            inner: Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(event) => return Some((event, rx)),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "an egress event subscriber fell behind");
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })),
        }
    }

    /// Exposes the sandbox's `127.0.0.1:port` (a server a command started in it) on the
    /// host: returns a new listener address on the host's loopback, whose connections are
    /// relayed to the port inside. The listener closes with the sandbox. Works with every
    /// network mode, the host's included.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
    /// use oci_sandbox::ExecConfig;
    /// let server = ExecConfig::new("python3", vec!["-m".into(), "http.server".into(), "8000".into()]);
    /// let _job = sandbox.spawn_job(&server, oci_sandbox::OutputMode::Combined).await?;
    /// let addr = sandbox.expose(8000).await?;
    /// println!("browse http://{addr}/");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] for port 0; [`SandboxError::SandboxEnded`] or
    /// [`SandboxError::SandboxClosed`] when the sandbox is gone; an I/O error if no host
    /// port can be bound. A connection to the port that nothing inside listens on is closed
    /// at once.
    pub async fn expose(&self, port: u16) -> Result<SocketAddr, SandboxError> {
        if port == 0 {
            return Err(SandboxError::invalid("port", "port 0 cannot be exposed"));
        }
        self.check_alive()?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|source| SandboxError::Process {
                context: "binding an exposed port's host listener",
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SandboxError::Process {
                context: "binding an exposed port's host listener",
                source,
            })?;
        // Known to the egress proxy before anyone learns the address, until it closes: no
        // sandbox may be proxied to it.
        let known = crate::net::OwnListener::register(addr);
        let weak = Arc::downgrade(&self.inner);
        let stop = self.inner.exposed.clone();
        let tracker = self.inner.owner.tracker().clone();
        let served = serve_exposed(listener, port, weak, stop, tracker.clone());
        tracker.spawn(async move {
            served.await;
            drop(known);
        });
        Ok(addr)
    }
}

/// The buffer of each direction of an exposed connection's relay on the host: at the limit
/// of [`EXPOSED_CONNECTIONS`], 16 MiB of host memory per sandbox at most (256 KiB buffers
/// were 64 MiB, and idle clients on gVisor made the host hold 63 MiB more).
const RELAY_BUFFER: usize = 64 << 10;

/// How long the accept loop of an exposed port rests when the process is out of fds
/// (`EMFILE`, `ENFILE`) or buffers, rather than spin on the error.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// The accept loop of an exposed port, until the sandbox stops exposing (closed, ended) or is
/// dropped.
///
/// Bounded on the host: an accepted connection waits in the loop itself for a slot (one of
/// [`EXPOSED_CONNECTIONS`]) before the next one is accepted, so at most that many
/// connections (and one waiting per listener) hold host fds (two each: the client's and the
/// relay's end of a socket pair); clients beyond wait in the kernel's backlog, holding
/// nothing of this process. (No task per connection before its slot: they were 3000 tasks
/// and 6000 fds for 3000 clients that had left.) An idle listener holds no slot, so it does
/// not make a snapshot busy. Bounded in the sandbox: one launcher helper
/// serves all the port's open connections with a relay thread each (`launcher/net.c`,
/// op `x`); it is started for the first connection and ends when the last one has (its
/// channel is held by the relays only), so that an idle exposed port holds no helper and a
/// snapshot, which wants no host fd in the sandbox, is not refused for it.
async fn serve_exposed(
    listener: tokio::net::TcpListener,
    port: u16,
    sandbox: std::sync::Weak<super::Inner>,
    stop: tokio_util::sync::CancellationToken,
    tracker: tokio_util::task::TaskTracker,
) {
    let mut helper = std::sync::Weak::<crate::launcher::Connection>::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(e) => {
                tracing::warn!(port, error = %e, "accepting an exposed port's connection");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
                continue;
            }
        };
        // The loop accepts nothing more until this connection has a slot.
        let Some(slots) = sandbox
            .upgrade()
            .map(|inner| Arc::clone(&inner.expose_slots))
        else {
            return;
        };
        let slot = tokio::select! {
            () = stop.cancelled() => return,
            slot = slots.acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        // Traffic wakes a paused or hibernated sandbox (a hibernated one has no helper left).
        let Some(inner) = sandbox.upgrade() else {
            return;
        };
        let woken = Sandbox { inner }.enter().await.map(drop);
        if let Err(e) = woken {
            tracing::debug!(port, error = %e, "an exposed port's sandbox did not resume");
            continue;
        }
        let channel = match helper.upgrade() {
            Some(channel) => channel,
            None => {
                let Some(inner) = sandbox.upgrade() else {
                    return;
                };
                let this = Sandbox { inner };
                let request = NetRequest {
                    op: NetOp::Expose,
                    port,
                    uid: this.inner.config.uid,
                    gid: this.inner.config.gid,
                };
                let started = this.net_helper(request, "serving an exposed port").await;
                // The relays hold no clone of the sandbox: the last user's drop still ends
                // it (and with it this loop).
                drop(this);
                match started {
                    Ok(channel) => {
                        let channel = Arc::new(channel);
                        helper = Arc::downgrade(&channel);
                        channel
                    }
                    Err(e) => {
                        tracing::debug!(port, error = %e, "no helper for an exposed port");
                        continue;
                    }
                }
            }
        };
        let pair = std::os::unix::net::UnixStream::pair().and_then(|(ours, theirs)| {
            ours.set_nonblocking(true)?;
            Ok((tokio::net::UnixStream::from_std(ours)?, theirs))
        });
        let Ok((ours, theirs)) = pair else { continue };
        use std::os::fd::AsRawFd;
        if channel
            .send_with_fd(CONNECTION, theirs.as_raw_fd())
            .await
            .is_err()
        {
            // The helper is gone (its container was replaced by a restore, or ended): the
            // next connection asks the sandbox's current container for one.
            helper = std::sync::Weak::new();
            continue;
        }
        drop(theirs);
        tracker.spawn(relay(client, ours, channel, stop.clone(), slot));
    }
}

/// Relays an exposed port's host connection and its socket to the helper until both ends
/// are done or the sandbox stops exposing; then gives back its slot and its hold on the
/// helper's channel.
async fn relay(
    mut client: tokio::net::TcpStream,
    mut data: tokio::net::UnixStream,
    channel: Arc<crate::launcher::Connection>,
    stop: tokio_util::sync::CancellationToken,
    slot: tokio::sync::OwnedSemaphorePermit,
) {
    let _ = client.set_nodelay(true);
    tokio::select! {
        () = stop.cancelled() => {}
        _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut data, RELAY_BUFFER, RELAY_BUFFER) => {}
    }
    // The helper exits when the last relay's hold on its channel goes.
    drop(channel);
    drop(slot);
}
