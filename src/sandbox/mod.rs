//! Long-lived sandboxes: start a container once, exec many commands in it.

mod code;
mod exec;
mod files;
mod jobs;
mod lifetime;
mod metrics;
mod network;
mod session;
mod snapshot;
mod start;
mod transfer;
pub(crate) use crate::container::Live;
pub use code::{
    Code, CodeContext, Execution, ExecutionError, ExecutionEvent, ExecutionStream, Language,
    MimeBundle,
};
pub use files::{DirEntry, FileEvent, FileEvents, READ_FILE_LIMIT};
pub use metrics::{RuntimeMetrics, SandboxMetrics, SandboxReading};
pub use network::EgressEvents;
pub use session::HibernateOptions;
pub use snapshot::SnapshotOptions;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::ContainerConfig;
use crate::container::NamespaceContainer;
use crate::error::SandboxError;
use crate::status::ExitStatus;

/// How long a launcher may take to end its container once its control socket has closed.
const END_DEADLINE: Duration = Duration::from_secs(2);

/// How long the launcher may take to fork and exec a command.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// Commands that may run at once in one sandbox: the launcher holds an fd or two for each,
/// within its own limit of 1024 (the default pids limit, 256, is lower still).
pub const MAX_CONCURRENT_EXECS: usize = 480;

/// A long-lived container from [`NamespaceContainer::start`]: commands exec'd in it share
/// its filesystem (what one writes, the next sees), namespaces and limits.
///
/// Its init is a small launcher (`launcher/launcher.c`, built with the crate) that forks and
/// execs each command on request, so an exec costs a fork and an exec inside the running
/// container instead of a runtime call: the command inherits the container's namespaces,
/// cgroups, capabilities, `no_new_privileges` and seccomp filter, exactly like the init.
///
/// Clones share the sandbox. When the last clone is dropped, or [`close`](Self::close) is
/// called, the container and every command still running in it are killed and removed, with
/// the same guarantees as a spawned container. If its init dies (killed from outside, OOM),
/// the sandbox reports [`SandboxError::SandboxEnded`] on every later exec; it is never
/// silently restarted.
#[derive(Debug, Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    owner: NamespaceContainer,
    /// The container's id: the same across the restarts of a snapshot or a restore.
    id: String,
    /// The running container and its launcher: replaced by a snapshot (which restarts it
    /// on runc and crun, restores it on gVisor) and by [`Sandbox::restore`].
    live: std::sync::RwLock<Arc<Live>>,
    /// Held (shared) by every start of a command or request, and exclusively by a
    /// snapshot or restore while it swaps the container.
    gate: Arc<tokio::sync::RwLock<()>>,
    config: ContainerConfig,
    /// The config as the caller gave it (before its image's applied): a restart's.
    asked: ContainerConfig,
    /// Commands that may run at once (the launcher's table has room for a few more).
    slots: Arc<Semaphore>,
    execs: AtomicU64,
    /// Commands started, and running (code kernels apart), for [`Sandbox::metrics`].
    commands_started: AtomicU64,
    commands_running: Arc<AtomicU64>,
    /// Its disk figure (for [`Sandbox::metrics`]).
    disk: Arc<crate::host::disk_gauge::DiskGauge>,
    /// A spawn's container: its one command's end is the container's end.
    one_shot: bool,
    /// [`Sandbox::close`] was called.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Background jobs ([`Sandbox::spawn_job`]).
    jobs: crate::handle::job::JobRegistry,
    /// Commands running, for the idle lifetime.
    activity: lifetime::ActivityBoard,
    /// Set when a lifetime option ended the sandbox.
    expired: std::sync::OnceLock<crate::status::SandboxExpiry>,
    /// File requests that may run at once (the launcher serves 64 helpers): past it they
    /// wait; watches, which hold theirs until dropped, have a few of their own.
    file_slots: Arc<Semaphore>,
    watch_slots: Arc<Semaphore>,
    /// The egress proxy's state, with [`Network::Egress`](crate::Network::Egress).
    egress: std::sync::OnceLock<Arc<crate::net::Egress>>,
    /// The running forwarder's own stop and its task (a snapshot stops it, and starts one in
    /// the new container).
    forwarder: std::sync::Mutex<
        Option<(
            tokio_util::sync::CancellationToken,
            tokio::task::JoinHandle<()>,
        )>,
    >,
    /// Exposed ports' listeners stop when it is cancelled: at close, or when the last clone
    /// goes (the guard cancels it).
    exposed: tokio_util::sync::CancellationToken,
    _exposed_guard: tokio_util::sync::DropGuard,
    /// Connections to exposed ports at once (launcher helpers each).
    expose_slots: Arc<Semaphore>,
    /// Running, paused or hibernated (see `session::Phase`): changed under the gate,
    /// held exclusively.
    phase: std::sync::atomic::AtomicU8,
    /// When a call last came in (milliseconds since the epoch).
    last_used: AtomicU64,
    /// A named sandbox's durable side.
    durable: Option<session::Durable>,
    /// [`Sandbox::exec_background`] ran in the current container: its processes may live
    /// (on gVisor nothing else outlives its exec), which a hibernation must keep.
    background: std::sync::atomic::AtomicBool,
    /// The default code context ([`Sandbox::run_code`]), made on first use.
    code: tokio::sync::OnceCell<code::CodeContext>,
    /// Every code context of the sandbox: their kernels end before a hibernation or a
    /// snapshot, which cannot carry their pipes.
    code_contexts: std::sync::Mutex<Vec<std::sync::Weak<code::ContextInner>>>,
    /// Kernels running (each holds an exec slot without making the sandbox busy).
    kernel_execs: Arc<std::sync::atomic::AtomicUsize>,
}

impl Sandbox {
    /// The running container and its launcher.
    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(&self.inner.live.read().expect("not poisoned"))
    }

    /// The container's config, with its image's config applied.
    pub(crate) fn config(&self) -> &ContainerConfig {
        &self.inner.config
    }

    /// A sandbox on a started launcher `container` with its `control` socket.
    pub(crate) fn new(
        owner: NamespaceContainer,
        live: Live,
        config: ContainerConfig,
        asked: ContainerConfig,
        one_shot: bool,
    ) -> Self {
        Self::with_durable(owner, live, config, asked, one_shot, None)
    }

    fn with_durable(
        owner: NamespaceContainer,
        live: Live,
        config: ContainerConfig,
        asked: ContainerConfig,
        one_shot: bool,
        durable: Option<session::Durable>,
    ) -> Self {
        let exposed = tokio_util::sync::CancellationToken::new();
        let sandbox = Sandbox {
            inner: Arc::new(Inner {
                owner,
                id: live.container.id.clone(),
                live: std::sync::RwLock::new(Arc::new(live)),
                gate: Default::default(),
                config,
                asked,
                slots: Arc::new(Semaphore::new(MAX_CONCURRENT_EXECS)),
                execs: AtomicU64::new(0),
                commands_started: AtomicU64::new(0),
                commands_running: Default::default(),
                disk: Default::default(),
                one_shot,
                closed: Default::default(),
                jobs: Default::default(),
                activity: Default::default(),
                expired: Default::default(),
                file_slots: Arc::new(Semaphore::new(files::FILE_HELPERS)),
                watch_slots: Arc::new(Semaphore::new(files::WATCHES)),
                egress: Default::default(),
                forwarder: Default::default(),
                exposed: exposed.clone(),
                _exposed_guard: exposed.drop_guard(),
                expose_slots: Arc::new(Semaphore::new(network::EXPOSED_CONNECTIONS)),
                phase: Default::default(),
                last_used: AtomicU64::new(crate::host::sessions::now_ms()),
                durable,
                background: Default::default(),
                code: Default::default(),
                code_contexts: Default::default(),
                kernel_execs: Default::default(),
            }),
        };
        lifetime::watch(&sandbox);
        let open: Arc<dyn crate::container::Closable> = sandbox.inner.clone();
        sandbox.inner.owner.register_open(Arc::downgrade(&open));
        sandbox
    }

    /// The sandbox's container id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The host uid and gid that the sandbox's user (its config's `uid` and `gid`) is, when
    /// the sandbox has a user namespace of its own (as root, on runc and crun): a host
    /// program that puts files straight into the sandbox's `workdir` chowns them to these, so
    /// that the sandbox may change them. `None` otherwise (gVisor, rootless, or
    /// [`Security::user_namespace`](crate::Security::user_namespace) off): the ids are the
    /// host's own there. The file API ([`write_file`](Self::write_file),
    /// [`upload_dir`](Self::upload_dir)) needs none of this.
    pub fn host_ids(&self) -> Option<(u32, u32)> {
        let base = self.live().userns_base?;
        let config = &self.inner.config;
        Some((base + config.uid, base + config.gid))
    }

    /// Whether the sandbox was closed ([`close`](Self::close), a lifetime option, its
    /// `NamespaceContainer`'s close): every call then fails.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) || self.inner.expired.get().is_some()
    }

    /// How the sandbox's init ended, if it has: then the sandbox is unusable. A hibernated
    /// sandbox has no init running, but has not ended: `None`.
    pub fn ended(&self) -> Option<ExitStatus> {
        if self.phase() == session::Phase::Hibernated {
            return None;
        }
        self.live().container.try_wait().ok().flatten()
    }

    /// What the whole sandbox has used so far (CPU time, memory now and at its peak,
    /// processes), read from its cgroups; `None` where it has none the host can read
    /// (rootless on cgroup v1), or once it has ended. Each command's own figures are in its
    /// status ([`ExitStatus::usage`]).
    pub async fn usage(&self) -> Option<crate::status::SandboxUsage> {
        if self.ended().is_some()
            || self.inner.closed.load(Ordering::Acquire)
            || self.phase() == session::Phase::Hibernated
        {
            return None;
        }
        let id = self.id().to_owned();
        crate::sys::blocking("reading the sandbox's cgroups", move || {
            Ok(crate::host::cgroup::usage_blocking(&id))
        })
        .await
        .ok()
        .flatten()
    }

    /// Kills every command in the sandbox and the sandbox itself, and waits until its
    /// container is removed. Clones then report [`SandboxError::SandboxClosed`]; a command
    /// that ran reports its end as killed (`SIGKILL`), with what it printed until then.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.activity.close();
        self.inner.exposed.cancel();
        if let Some(egress) = self.inner.egress.get() {
            egress.stop.cancel();
        }
        // A snapshot or restore under way finishes first (its new container is the one to end).
        let _gate = self.inner.gate.read().await;
        // Frozen tasks die only once thawed.
        if self.phase() == session::Phase::Paused {
            let _ = self.freeze(false).await;
        }
        let live = self.live();
        live.container.start_kill();
        live.container.finished().await;
        // Every job died with the container; their outputs stay with the handles left.
        self.inner.jobs.clear();
        self.release_durable().await;
    }

    /// Ends the container from within and waits until its launcher has exited, which means
    /// every process of it is gone: the launcher reads the end of its control socket, kills
    /// everything, reaps it all and exits (no runtime call). A launcher that does not is killed. The
    /// container's removal goes on in its supervisor.
    pub(crate) async fn end(&self) {
        end_live(&self.live()).await;
    }

    fn check_alive(&self) -> Result<(), SandboxError> {
        match self.ended_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn ended_error(&self) -> Option<SandboxError> {
        if let Some(expiry) = self.inner.expired.get() {
            return Some(SandboxError::SandboxExpired {
                id: self.id().to_owned(),
                expiry: *expiry,
            });
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Some(SandboxError::SandboxClosed {
                id: self.id().to_owned(),
            });
        }
        let status = self.live().container.try_wait();
        match status {
            Ok(None) => None,
            Ok(Some(status)) => Some(SandboxError::SandboxEnded {
                id: self.id().to_owned(),
                status: Some(status),
            }),
            Err(_) => Some(SandboxError::SandboxEnded {
                id: self.id().to_owned(),
                status: None,
            }),
        }
    }
}

/// Ends `live`'s container from within and waits until its launcher has exited, which means
/// every process of it is gone: the launcher reads the end of its control socket, kills
/// everything, reaps it all and exits (no runtime call). A launcher that does not is killed.
/// The container's removal goes on in its supervisor.
pub(crate) async fn end_live(live: &Live) {
    live.control.shutdown();
    // The launcher's exit shows first as the end of its control socket (it has reaped
    // every process by then); the init's exit, on gVisor, only once the whole sandbox
    // has gone down (4 ms later).
    let exited = async {
        tokio::select! {
            () = live.control.closed() => {}
            () = live.container.gone() => {}
        }
    };
    if tokio::time::timeout(END_DEADLINE, exited).await.is_err() {
        live.container.start_kill();
        live.container.gone().await;
    }
}

impl Drop for Inner {
    /// A paused sandbox's last handle: its frozen tasks would take their `SIGKILL` only once
    /// thawed (the container's teardown thaws too; this is sooner).
    fn drop(&mut self) {
        if self.phase.load(Ordering::Acquire) == session::Phase::Paused as u8 {
            let id = self.id.clone();
            let thaw = move || crate::host::cgroup::thaw_now(&id);
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn_blocking(thaw)),
                Err(_) => thaw(),
            }
        }
    }
}

impl crate::container::Closable for Inner {
    fn close_now(self: Arc<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            let sandbox = Sandbox { inner: self };
            sandbox.close().await;
        })
    }

    fn open_sandbox(self: Arc<Self>) -> Option<Box<dyn std::any::Any + Send>> {
        let sandbox = Sandbox { inner: self };
        (!sandbox.inner.one_shot && !sandbox.is_closed())
            .then(|| Box::new(sandbox) as Box<dyn std::any::Any + Send>)
    }
}
