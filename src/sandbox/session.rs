//! Durable sandboxes: named ones that outlive their process ([`NamespaceContainer::create`],
//! [`connect`](NamespaceContainer::connect), [`sandboxes`](NamespaceContainer::sandboxes),
//! [`remove_sandbox`](NamespaceContainer::remove_sandbox)), and the phases every long-lived
//! sandbox goes through: running, paused (frozen), hibernated (no container), each call
//! resuming it first. docs/SESSIONS.md has the design and the figures.

use crate::container::LaunchMode;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Inner, Sandbox};
use crate::config::{ContainerConfig, MountKind, SandboxConfig};
use crate::container::{HeldSession, NamespaceContainer};
use crate::error::{SandboxError, SessionErrorKind};
use crate::host::sessions::{
    HIBERNATED, Record, STORE, SandboxInfo, SandboxState, SessionLock, TMP, WORKSPACE, now_ms,
};
use crate::host::volumes::{VolumeInfo, VolumeOptions};
use crate::runtimes::OciRuntime;
use crate::snapshot::{Snapshot, Store};

/// Where a sandbox is in its life, besides closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Phase {
    Running = 0,
    Paused = 1,
    Hibernated = 2,
}

/// What [`Sandbox::hibernate_with`] must keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HibernateOptions {
    /// Keep processes and memory through the hibernation: on runc and crun, which cannot
    /// (no CRIU), the hibernation is refused ([`SessionErrorKind::Unsupported`]) instead of
    /// ending them. gVisor's hibernations always keep them. Off by default.
    pub processes: bool,
}

impl HibernateOptions {
    /// The default options with [`processes`](Self::processes) set to `processes`.
    pub fn processes(mut self, processes: bool) -> Self {
        self.processes = processes;
        self
    }
}

/// A named sandbox's durable side: its lock (shared with each of its containers, which
/// release it once they are removed) and its record.
#[derive(Debug)]
pub(super) struct Durable {
    name: String,
    lock: std::sync::Mutex<Option<Arc<SessionLock>>>,
    dir: PathBuf,
    record: std::sync::Mutex<Record>,
    /// Held while the record is written.
    writing: std::sync::Mutex<()>,
}

impl Sandbox {
    pub(super) fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::Acquire) {
            1 => Phase::Paused,
            2 => Phase::Hibernated,
            _ => Phase::Running,
        }
    }

    fn set_phase(&self, phase: Phase) {
        self.inner.phase.store(phase as u8, Ordering::Release);
    }

    /// The sandbox's name, if it is a named one ([`SandboxConfig::name`]).
    pub fn name(&self) -> Option<&str> {
        self.inner.durable.as_ref().map(|d| d.name.as_str())
    }

    /// What the sandbox is doing: running, paused or hibernated.
    pub fn state(&self) -> SandboxState {
        match self.phase() {
            Phase::Running => SandboxState::Running,
            Phase::Paused => SandboxState::Paused,
            Phase::Hibernated => SandboxState::Hibernated,
        }
    }

    /// Marks a call, for [`SandboxConfig::idle_pause`] and
    /// [`SandboxConfig::idle_hibernate`] and the listing's last use.
    fn touch(&self) {
        self.inner.last_used.store(now_ms(), Ordering::Relaxed);
        self.inner.activity.touch();
    }

    /// Enters the sandbox for a call: resumes it first if it is paused or hibernated, and
    /// holds the gate (shared) so that no pause, hibernation or snapshot starts until the
    /// call has started.
    pub(super) async fn enter(
        &self,
    ) -> Result<tokio::sync::OwnedRwLockReadGuard<()>, SandboxError> {
        self.touch();
        loop {
            let gate = Arc::clone(&self.inner.gate).read_owned().await;
            if self.phase() == Phase::Running {
                return Ok(gate);
            }
            drop(gate);
            self.wake().await?;
        }
    }

    /// Freezes the sandbox: every process of it stops where it is (the cgroup freezer; on
    /// gVisor the whole sandbox, its kernel included), keeping its memory; it uses no CPU
    /// until [`resume`](Self::resume) or any call on it (an exec, a file call, a connection
    /// to an exposed port), which resumes it first. Commands running keep running once
    /// resumed; their timeouts count the pause. Idempotent.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
    /// sandbox.pause().await?; // no CPU from here
    /// let out = sandbox.exec(&oci_sandbox::ExecConfig::shell("echo back")).await?; // resumed
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SandboxError::Session`] with [`Unsupported`](SessionErrorKind::Unsupported) where
    /// the host cannot freeze its cgroup (rootless on cgroup v1); those of a closed or
    /// ended sandbox. A hibernated sandbox stays hibernated (it holds nothing to freeze).
    pub async fn pause(&self) -> Result<(), SandboxError> {
        let swap = Arc::clone(&self.inner.gate).write_owned().await;
        let this = self.clone();
        super::snapshot::in_own_task(async move {
            let _swap = swap;
            this.check_alive_or_hibernated()?;
            if this.phase() != Phase::Running {
                return Ok(());
            }
            this.freeze(true).await?;
            this.set_phase(Phase::Paused);
            this.record_state(SandboxState::Paused).await;
            Ok(())
        })
        .await
    }

    /// The idle pause: like [`pause`](Self::pause), but only if, with the sandbox to itself,
    /// nothing has run or been called for `idle` and nothing holds a connection to the host
    /// (a command, a transfer, an exposed port's connection): an idle sleep never freezes
    /// work.
    pub(super) async fn pause_if_idle(
        &self,
        idle: std::time::Duration,
    ) -> Result<(), SandboxError> {
        let swap = Arc::clone(&self.inner.gate).write_owned().await;
        let this = self.clone();
        super::snapshot::in_own_task(async move {
            let _swap = swap;
            this.check_alive_or_hibernated()?;
            let inner = &this.inner;
            // A code context's idle kernel does not keep the sandbox awake.
            let kernels = inner.kernel_execs.load(Ordering::Acquire);
            let quiet = inner.slots.available_permits() + kernels == super::MAX_CONCURRENT_EXECS
                && inner.file_slots.available_permits() == super::files::FILE_HELPERS
                && inner.watch_slots.available_permits() == super::files::WATCHES
                && inner.expose_slots.available_permits() == super::network::EXPOSED_CONNECTIONS;
            let idle_long_enough = inner.activity.idle_for().is_some_and(|d| d >= idle);
            if this.phase() != Phase::Running || !quiet || !idle_long_enough {
                return Err(SandboxError::session(
                    this.name().unwrap_or(this.id()),
                    SessionErrorKind::Busy,
                    "not idle any more",
                ));
            }
            this.freeze(true).await?;
            this.set_phase(Phase::Paused);
            this.record_state(SandboxState::Paused).await;
            Ok(())
        })
        .await
    }

    /// Hibernates the sandbox if nothing holds its gate now (for `max_running`: a busy one
    /// is not waited for). Whether it did.
    async fn hibernate_if_free(&self) -> Result<bool, SandboxError> {
        let Ok(swap) = Arc::clone(&self.inner.gate).try_write_owned() else {
            return Ok(false);
        };
        let this = self.clone();
        super::snapshot::in_own_task(async move {
            let _swap = swap;
            this.hibernate_now(HibernateOptions::default()).await
        })
        .await
        .map(|()| true)
    }

    /// A hold on a named sandbox's lock for one more of its containers (`None`: unnamed).
    pub(super) fn durable_hold(&self) -> Option<Result<crate::container::Hold, SandboxError>> {
        self.inner.durable.as_ref().map(Durable::hold)
    }

    /// Resumes a paused or hibernated sandbox (any call does it too). Idempotent.
    ///
    /// # Errors
    ///
    /// Those of a start, for a hibernated sandbox (it stays hibernated: a later call tries
    /// again); those of a closed sandbox.
    pub async fn resume(&self) -> Result<(), SandboxError> {
        self.touch();
        self.wake().await
    }

    /// Hibernates a named sandbox ([`SandboxConfig::name`]): it is written to disk and
    /// stopped, and holds no process or memory until the next call resumes it (or a later
    /// process [`connect`](NamespaceContainer::connect)s to it). See
    /// [`hibernate_with`](Self::hibernate_with).
    ///
    /// # Errors
    ///
    /// Those of [`hibernate_with`](Self::hibernate_with).
    pub async fn hibernate(&self) -> Result<(), SandboxError> {
        self.hibernate_with(HibernateOptions::default()).await
    }

    /// Hibernates a named sandbox: what it keeps, by runtime:
    ///
    /// - **runc, crun**: its files (`/workspace`, `/tmp`, its volumes), always on disk
    ///   anyway; its processes end (no CRIU here): ask for
    ///   [`processes`](HibernateOptions::processes) to have that refused instead.
    /// - **gVisor**: its files, and its memory and processes (a checkpoint in its directory,
    ///   restored by the next call): a process started with
    ///   [`exec_background`](Self::exec_background) runs on from where it was.
    ///
    /// Refused while something holds a connection to the host (a command with a handle, a
    /// file transfer or watch, an exposed port's connection), as a snapshot is: wait for
    /// them, or run long-lived processes with `exec_background`. An egress policy's
    /// forwarder stops and starts again at the resume. Idempotent.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Session`]: [`Unsupported`](SessionErrorKind::Unsupported) for a
    /// sandbox without a name, or `processes` on runc or crun; [`Busy`](SessionErrorKind::Busy)
    /// (it goes on untouched); the runtime's errors (a failed checkpoint ends the sandbox).
    ///
    /// # Cancel safety
    ///
    /// Once it has the sandbox to itself, the hibernation runs to its end in a task of its
    /// own.
    pub async fn hibernate_with(&self, options: HibernateOptions) -> Result<(), SandboxError> {
        let swap = Arc::clone(&self.inner.gate).write_owned().await;
        let this = self.clone();
        super::snapshot::in_own_task(async move {
            let _swap = swap;
            this.hibernate_now(options).await
        })
        .await
    }

    async fn hibernate_now(&self, options: HibernateOptions) -> Result<(), SandboxError> {
        self.check_alive_or_hibernated()?;
        let Some(durable) = &self.inner.durable else {
            return Err(SandboxError::session(
                self.id(),
                SessionErrorKind::Unsupported,
                "only a named sandbox (SandboxConfig::name) hibernates: its state is kept \
                 under its name",
            ));
        };
        let runtime = self.inner.owner.runtime();
        if options.processes && runtime != OciRuntime::Gvisor {
            return Err(SandboxError::session(
                &durable.name,
                SessionErrorKind::Unsupported,
                format!(
                    "{runtime} cannot keep processes or memory through a hibernation (it would \
                     need CRIU): only gVisor's do"
                ),
            ));
        }
        match self.phase() {
            Phase::Hibernated => return Ok(()),
            Phase::Paused => {
                self.freeze(false).await?;
                self.set_phase(Phase::Running);
            }
            Phase::Running => {}
        }
        // Code contexts' kernels hold pipes to the host: they end (a running cell makes it
        // Busy), and their next run says their state is gone.
        let ended = self
            .end_kernels(
                "the sandbox hibernated: the context's state is gone; run again for a fresh one",
            )
            .and(self.check_quiet().await);
        ended.map_err(|e| match e {
            SandboxError::Snapshot { reason, .. } => {
                SandboxError::session(&durable.name, SessionErrorKind::Busy, reason)
            }
            e => e,
        })?;
        let begun = std::time::Instant::now();
        self.stop_forwarder().await;
        let live = self.live();
        // A checkpoint only where there is memory to keep: a process of exec_background's
        // (on gVisor nothing else outlives its exec), or a root whose writes live in memory.
        // Otherwise the files are all on disk, and a cold start is the cheaper resume.
        let keep_memory = runtime == OciRuntime::Gvisor
            && (options.processes
                || self.inner.background.load(Ordering::Acquire)
                || !self.inner.asked.security.readonly_rootfs);
        if keep_memory {
            let taken = self.checkpoint_into(&live, &durable.dir).await;
            if let Err(err) = taken {
                if self.check_alive().is_ok() {
                    self.restart_forwarder().await?;
                }
                return Err(err);
            }
        } else {
            super::end_live(&live).await;
            live.container.finished().await;
        }
        self.inner.jobs.clear();
        self.set_phase(Phase::Hibernated);
        self.record_state(SandboxState::Hibernated).await;
        tracing::debug!(sandbox = %self.id(), name = %durable.name, elapsed_ms = crate::sys::ms_since(begun), "hibernated");
        Ok(())
    }

    /// gVisor: checkpoints the sandbox (which stops it) into the session's `store/`, and
    /// saves it as `hibernated/` (hard links: the same file system).
    async fn checkpoint_into(&self, live: &super::Live, dir: &Path) -> Result<(), SandboxError> {
        let store = dir.join(STORE);
        let made = crate::sys::blocking("creating a hibernation's directory", move || {
            Store::new_dir_blocking(&store)
        })
        .await?;
        let snapshot = self.checkpoint(live, made).await?;
        let (target, partial) = (dir.join(HIBERNATED), dir.join(".hibernated.new"));
        let cleared = partial.clone();
        crate::sys::blocking("clearing a hibernation", move || {
            crate::sys::fs_tree::remove_tree_blocking(&cleared)
                .map_err(|e| SandboxError::io("clearing a hibernation", &cleared, e))
        })
        .await?;
        snapshot.save(&partial).await?;
        crate::sys::blocking("keeping a hibernation", move || {
            let _ = crate::sys::fs_tree::remove_tree_blocking(&target);
            std::fs::rename(&partial, &target)
                .map_err(|e| SandboxError::io("keeping a hibernation", &target, e))
        })
        .await
    }

    /// Resumes a paused or hibernated sandbox, under the gate held exclusively.
    async fn wake(&self) -> Result<(), SandboxError> {
        if self.phase() == Phase::Running {
            return self.check_alive();
        }
        // Before the gate: making room hibernates others, which take their own gates. Not
        // for a sandbox that cannot wake anyway.
        self.check_alive_or_hibernated()?;
        if let (Phase::Hibernated, Some(name)) = (self.phase(), self.name()) {
            self.inner.owner.make_room(Some(name)).await;
        }
        let swap = Arc::clone(&self.inner.gate).write_owned().await;
        let this = self.clone();
        super::snapshot::in_own_task(async move {
            let _swap = swap;
            this.check_alive_or_hibernated()?;
            match this.phase() {
                Phase::Running => Ok(()),
                Phase::Paused => {
                    this.freeze(false).await?;
                    this.set_phase(Phase::Running);
                    this.record_state(SandboxState::Running).await;
                    Ok(())
                }
                Phase::Hibernated => this.wake_from_disk().await,
            }
        })
        .await
    }

    /// Starts a hibernated sandbox's container again: from its files (and on gVisor its
    /// checkpoint, consumed once restored). A failure leaves it hibernated.
    async fn wake_from_disk(&self) -> Result<(), SandboxError> {
        let begun = std::time::Instant::now();
        let durable = self
            .inner
            .durable
            .as_ref()
            .expect("only named sandboxes hibernate");
        let owner = &self.inner.owner;
        let from = hibernation(owner, &durable.dir).await?;
        let hold = durable.hold()?;
        // Running before the container starts: an owner killed from here on leaves a
        // record that says it crashed, and the next connect sweeps its container.
        self.record_state_now(SandboxState::Running).await;
        let (live, _) = owner
            .launch_live(
                &self.inner.asked,
                LaunchMode::Sandbox,
                self.id().to_owned(),
                from.as_ref(),
                vec![hold],
            )
            .await?;
        *self.inner.live.write().expect("not poisoned") = Arc::new(live);
        self.set_phase(Phase::Running);
        // A restored checkpoint carried its processes; a cold start has none.
        self.inner
            .background
            .store(from.is_some(), Ordering::Release);
        if from.is_some() {
            consume_hibernation(&durable.dir).await;
        }
        self.record_state(SandboxState::Running).await;
        tracing::debug!(sandbox = %self.id(), name = %durable.name, elapsed_ms = crate::sys::ms_since(begun), "resumed");
        self.restart_forwarder().await
    }

    /// Freezes or thaws the sandbox's cgroup.
    pub(super) async fn freeze(&self, frozen: bool) -> Result<(), SandboxError> {
        let id = self.id().to_owned();
        let name = self.name().unwrap_or(self.id()).to_owned();
        crate::sys::blocking("freezing a sandbox", move || {
            crate::host::cgroup::freeze_blocking(&id, frozen).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    SandboxError::session(
                        name,
                        SessionErrorKind::Unsupported,
                        "the host cannot freeze this sandbox: it has no cgroup of its own \
                         (rootless on cgroup v1)",
                    )
                } else {
                    SandboxError::io(
                        "freezing a sandbox's cgroup",
                        format!("/oci-sandbox/{id}"),
                        e,
                    )
                }
            })
        })
        .await
    }

    /// A sandbox that is closed or whose container died is an error; a hibernated one is not.
    pub(super) fn check_alive_or_hibernated(&self) -> Result<(), SandboxError> {
        if self.phase() == Phase::Hibernated {
            if let Some(err) = self
                .ended_error()
                .filter(|e| !matches!(e, SandboxError::SandboxEnded { .. }))
            {
                return Err(err);
            }
            return Ok(());
        }
        self.check_alive()
    }

    /// Writes a named sandbox's state into its record, in the background (the record is
    /// for listings; a failure is logged). Each write takes the newest state under a lock of
    /// its own, so that writes finishing out of order still leave the newest; each holds the
    /// session's lock, whose release writes last.
    async fn record_state(&self, state: SandboxState) {
        let Some(durable) = &self.inner.durable else {
            return;
        };
        {
            let mut record = durable.record.lock().expect("not poisoned");
            record.state = state;
            record.last_used_ms = self.inner.last_used.load(Ordering::Relaxed);
        }
        let lock = durable.lock.lock().expect("not poisoned").clone();
        let Some(lock) = lock else { return };
        let inner = Arc::clone(&self.inner);
        drop(tokio::task::spawn_blocking(move || {
            let Some(durable) = &inner.durable else {
                return;
            };
            let _one_writer = durable.writing.lock().unwrap_or_else(|e| e.into_inner());
            let record = durable.record.lock().expect("not poisoned").clone();
            if let Err(err) = lock.write_record_blocking(&record) {
                tracing::warn!(%err, "recording a named sandbox's state");
            }
        }));
    }

    /// Writes a named sandbox's state into its record and waits for the write.
    async fn record_state_now(&self, state: SandboxState) {
        let Some(durable) = &self.inner.durable else {
            return;
        };
        let record = {
            let mut record = durable.record.lock().expect("not poisoned");
            record.state = state;
            record.last_used_ms = self.inner.last_used.load(Ordering::Relaxed);
            record.clone()
        };
        let lock = durable.lock.lock().expect("not poisoned").clone();
        let Some(lock) = lock else { return };
        let inner = Arc::clone(&self.inner);
        let written = crate::sys::blocking("recording a sandbox's state", move || {
            let _one_writer = inner
                .durable
                .as_ref()
                .map(|d| d.writing.lock().unwrap_or_else(|e| e.into_inner()));
            lock.write_record_blocking(&record)
        })
        .await;
        if let Err(err) = written {
            tracing::warn!(%err, "recording a named sandbox's state");
        }
    }

    /// Lets a named sandbox go (closed): once its last container is removed, its lock is
    /// released and its record says it is hibernated. Returns when the lock is let go (the
    /// container must have ended already), so that a connect or removal right after works.
    pub(super) async fn release_durable(&self) {
        if let Some(durable) = &self.inner.durable {
            let released = durable.release(self.inner.last_used.load(Ordering::Relaxed));
            self.inner.owner.held().remove(&durable.name);
            if let Some(released) = released {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), released).await;
            }
        }
    }
}

impl Durable {
    /// A hold on the lock for a container of the sandbox.
    fn hold(&self) -> Result<crate::container::Hold, SandboxError> {
        let lock = self.lock.lock().expect("not poisoned").clone();
        match lock {
            Some(lock) => Ok(Box::new(lock)),
            None => Err(SandboxError::session(
                &self.name,
                SessionErrorKind::InUse,
                "this handle has let the sandbox go",
            )),
        }
    }

    /// Gives the lock up: its last holder (this, or the last container) writes the record
    /// and lets it go. A receiver told when it has.
    fn release(&self, last_used_ms: u64) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let lock = self.lock.lock().expect("not poisoned").take()?;
        let mut record = self.record.lock().expect("not poisoned").clone();
        record.state = SandboxState::Hibernated;
        record.last_used_ms = last_used_ms;
        lock.release_with(record);
        Some(lock.released())
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        let last = self.record.lock().map(|r| r.last_used_ms).unwrap_or(0);
        drop(self.release(last.max(now_ms())));
    }
}

impl HeldSession for Inner {
    fn state(&self) -> (SandboxState, u64) {
        let sandbox_phase = self.phase.load(Ordering::Acquire);
        let state = match sandbox_phase {
            1 => SandboxState::Paused,
            2 => SandboxState::Hibernated,
            _ => SandboxState::Running,
        };
        (state, self.last_used.load(Ordering::Relaxed))
    }

    fn busy(&self) -> bool {
        self.activity.busy_now()
    }

    fn handle(self: Arc<Self>) -> Box<dyn std::any::Any + Send> {
        Box::new(Sandbox { inner: self })
    }
}

/// The lock of a sandbox whose start failed, once no container holds it any more (a failed
/// container's teardown may still run for a moment), when `fresh`: the half-made sandbox
/// is then removed.
async fn take_back(mut lock: Arc<SessionLock>, fresh: bool) -> Option<SessionLock> {
    if !fresh {
        return None;
    }
    let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Arc::try_unwrap(lock) {
            Ok(lock) => return Some(lock),
            Err(held) if tokio::time::Instant::now() < give_up => {
                lock = held;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(_) => return None,
        }
    }
}

/// gVisor: the sandbox's last hibernation, if it has one to restore.
async fn hibernation(
    owner: &NamespaceContainer,
    dir: &Path,
) -> Result<Option<Snapshot>, SandboxError> {
    if owner.runtime() != OciRuntime::Gvisor {
        return Ok(None);
    }
    let saved = dir.join(HIBERNATED);
    let exists = tokio::fs::symlink_metadata(&saved).await.is_ok();
    if !exists {
        return Ok(None);
    }
    owner.load_snapshot(&saved).await.map(Some)
}

/// Removes a hibernation's and a resume's leftovers in a session's directory `dir`: its
/// checkpoint store (a hibernation is saved out of it), a half-saved hibernation, and
/// consumed ones. Blocking.
fn sweep_leftovers_blocking(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == STORE || name == ".hibernated.new" || name.starts_with(".consumed-") {
            let _ = crate::sys::fs_tree::remove_tree_blocking(&entry.path());
        }
    }
}

/// Removes a hibernation once the sandbox runs from it (it would be stale afterwards), off
/// the resume's path: renamed aside at once, removed in the background.
async fn consume_hibernation(dir: &Path) {
    let saved = dir.join(HIBERNATED);
    let aside = dir.join(format!(".consumed-{}", crate::host::state::random_token()));
    let _ = crate::sys::blocking("removing a restored hibernation", move || {
        std::fs::rename(&saved, &aside)
            .map_err(|e| SandboxError::io("removing a restored hibernation", &saved, e))?;
        drop(tokio::task::spawn_blocking(move || {
            let _ = crate::sys::fs_tree::remove_tree_blocking(&aside);
        }));
        Ok(())
    })
    .await;
}

/// The config a named sandbox's containers run with: `config` with the session's
/// `/workspace` (its working directory and `HOME` unless an image says otherwise) and `/tmp`
/// bound from its directory `dir`.
fn session_config(
    config: &ContainerConfig,
    dir: &Path,
    runtime: OciRuntime,
) -> Result<ContainerConfig, SandboxError> {
    let workspace = Path::new(SandboxConfig::WORKDIR);
    if config.mounts.iter().any(|m| m.destination == workspace) {
        return Err(SandboxError::invalid(
            "workdir",
            "a named sandbox's /workspace is its own (kept under its name): mount host \
             directories elsewhere",
        ));
    }
    if !config.security.readonly_rootfs && runtime != OciRuntime::Gvisor {
        return Err(SandboxError::invalid(
            "writable_root",
            "a named sandbox on runc or crun keeps /workspace, /tmp and its volumes; a writable \
             root would lose its other writes at every hibernation: install into /workspace \
             or a volume (on gVisor a hibernation keeps the root)",
        ));
    }
    let mut c = config.clone();
    c.mounts.retain(|m| {
        m.destination != Path::new("/tmp") || !matches!(m.kind, MountKind::Tmpfs { .. })
    });
    for (sub, destination) in [(TMP, Path::new("/tmp")), (WORKSPACE, workspace)] {
        c.mounts.push(crate::config::Mount {
            destination: destination.to_path_buf(),
            kind: MountKind::Bind {
                source: dir.join(sub),
                writable: true,
            },
        });
    }
    if c.cwd == Path::new("/tmp") {
        c.cwd = workspace.to_path_buf();
        for (k, v) in &mut c.env {
            if k == "HOME" && v == "/tmp" {
                *v = SandboxConfig::WORKDIR.to_owned();
            }
        }
    }
    // gVisor keeps a writable root's writes in the sandbox's memory, which a hibernation's
    // checkpoint saves.
    if runtime == OciRuntime::Gvisor && !c.security.readonly_rootfs {
        c.snapshots = true;
    }
    Ok(c)
}

impl NamespaceContainer {
    /// Creates a long-lived sandbox with `config`'s policy, without a command: commands then
    /// run in it with [`Sandbox::exec`] and the like. With a
    /// [`name`](SandboxConfig::name) it is durable: its config, `/workspace` (its working
    /// directory), `/tmp`, volumes and (gVisor) last hibernation live in the
    /// [data dir](crate::NamespaceContainerBuilder::data_dir) and survive this process
    /// (its exit, a crash, a `SIGKILL`: on runc and crun every write of a completed call is
    /// there); any later process gets it back with [`connect`](Self::connect), and
    /// [`remove_sandbox`](Self::remove_sandbox) deletes it.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), oci_sandbox::SandboxError> {
    /// use oci_sandbox::{ExecConfig, NamespaceContainer, SandboxConfig};
    ///
    /// let runtime = NamespaceContainer::new().await?;
    /// let config = SandboxConfig {
    ///     name: Some("conversation-42".into()),
    ///     ..SandboxConfig::default()
    /// };
    /// let sandbox = runtime.create(&config).await?;
    /// sandbox.exec(&ExecConfig::shell("echo kept > notes.txt")).await?.wait().await?;
    /// sandbox.hibernate().await?; // no process, no memory
    /// drop(sandbox);
    /// // ... in this process or any later one:
    /// let again = runtime.connect("conversation-42").await?;
    /// assert_eq!(again.read_file("/workspace/notes.txt").await?, "kept\n");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`start`](Self::start); [`SandboxError::Session`] with
    /// [`Exists`](SessionErrorKind::Exists) for a name in use; [`SandboxError::InvalidConfig`]
    /// for a bad name, a `workdir` (a named sandbox's `/workspace` is its own), or a writable
    /// root on runc or crun. A failed creation leaves nothing under the name.
    ///
    /// # Cancel safety
    ///
    /// A dropped future leaves no container; a named sandbox's directory may stay (its
    /// record then says it crashed), to be connected to or removed.
    pub async fn create(&self, config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let config = Self::build_config(config, "", Vec::<String>::new());
        self.start(&config).await
    }

    /// Creates named sandbox `config.name` and starts it (see [`create`](Self::create)).
    pub(super) async fn create_named(
        &self,
        config: &ContainerConfig,
        name: &str,
    ) -> Result<Sandbox, SandboxError> {
        config.validate_durable()?;
        if self.held().get(name).is_some_and(|w| w.strong_count() > 0) {
            return Err(SandboxError::session(
                name,
                SessionErrorKind::Exists,
                "this process holds a sandbox of that name",
            ));
        }
        // Checked before anything is made.
        session_config(config, Path::new("/"), self.runtime())?;
        let record = Record::new(name, self.runtime(), config.clone());
        let (store, written) = (self.sessions().clone(), record.clone());
        let owner = (config.uid, config.gid);
        let lock = crate::sys::blocking("creating a named sandbox", move || {
            store.create_blocking(&written, owner)
        })
        .await?;
        let started = self.start_session(lock, record, true).await;
        if let Err((err, lock)) = started {
            if let Some(lock) = lock {
                let _ = crate::sys::blocking("removing a failed named sandbox", move || {
                    lock.discard_blocking()
                })
                .await;
            }
            return Err(err);
        }
        started.map_err(|(e, _)| e)
    }

    /// Gives back named sandbox `name`, running: the one this process holds (a clone of its
    /// handle), or, held by nobody, started again from its directory as the last process
    /// left it (after a clean exit, a crash or a `SIGKILL` of its owner): its files, and on
    /// gVisor after a [`hibernate`](Sandbox::hibernate) its memory and processes.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Session`]: [`NotFound`](SessionErrorKind::NotFound),
    /// [`InUse`](SessionErrorKind::InUse) (another process holds it: of two connecting at
    /// once, one gets it and the other this), [`Mismatch`](SessionErrorKind::Mismatch) (a
    /// sandbox of another runtime), [`Corrupt`](SessionErrorKind::Corrupt) (its record is
    /// unreadable, or its hibernation altered); those of [`start`](Self::start) (an image
    /// that can no longer be found, for one). A failed connect leaves the sandbox as it was.
    pub async fn connect(&self, name: &str) -> Result<Sandbox, SandboxError> {
        crate::config::validate_name("name", name)?;
        if let Some(sandbox) = self.held_sandbox(name) {
            sandbox.resume().await?;
            return Ok(sandbox);
        }
        let store = self.sessions().clone();
        let n = name.to_owned();
        let (lock, record) = self
            .while_released_here(name, move || store.open_blocking(&n))
            .await?;
        if record.runtime != self.runtime() {
            return Err(SandboxError::session(
                name,
                SessionErrorKind::Mismatch,
                format!(
                    "it is a {} sandbox; connect with a NamespaceContainer of that runtime",
                    record.runtime
                ),
            ));
        }
        if matches!(record.state, SandboxState::Running | SandboxState::Paused) {
            // Its holder died: whatever is left of its container goes before a new one
            // writes the same directories.
            self.sweep().await?;
        }
        self.start_session(lock, record, false)
            .await
            .map_err(|(e, _)| e)
    }

    /// With [`max_running`](crate::NamespaceContainerBuilder::max_running): hibernates the
    /// least recently used idle named sandboxes (but `starting`) until one more may run.
    async fn make_room(&self, starting: Option<&str>) {
        let (Some(max), lock) = self.max_running() else {
            return;
        };
        let _one_at_a_time = lock.lock().await;
        loop {
            let running: Vec<(String, Arc<dyn HeldSession>)> = self
                .held()
                .iter()
                .filter(|(name, _)| Some(name.as_str()) != starting)
                .filter_map(|(name, held)| Some((name.clone(), held.upgrade()?)))
                .filter(|(_, held)| held.state().0 != SandboxState::Hibernated)
                .collect();
            if running.len() < max {
                return;
            }
            // The least recently used idle one that is free now: one whose gate is taken (a
            // call starting, a transfer) is not waited for.
            let mut idle: Vec<(String, Arc<dyn HeldSession>)> = running
                .into_iter()
                .filter(|(_, held)| !held.busy())
                .collect();
            idle.sort_by_key(|(_, held)| held.state().1);
            let mut made = false;
            for (name, held) in idle {
                let Ok(sandbox) = held.handle().downcast::<Sandbox>() else {
                    continue;
                };
                match sandbox.hibernate_if_free().await {
                    Ok(true) => {
                        made = true;
                        break;
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::debug!(%name, %err, "could not hibernate a sandbox to make room");
                    }
                }
            }
            if !made {
                return; // every one is busy: one more runs
            }
        }
    }

    /// The handle this process holds on named sandbox `name`, if any.
    fn held_sandbox(&self, name: &str) -> Option<Sandbox> {
        let held = self.held().get(name)?.upgrade()?;
        let handle = held.handle().downcast::<Sandbox>().ok()?;
        (!handle.inner.closed.load(Ordering::Acquire)).then_some(*handle)
    }

    /// Starts named sandbox `record.name`'s container on its directory, holding `lock`. On
    /// failure: the error, and the lock back if nothing holds it any more (`fresh`: to
    /// remove the half-made sandbox).
    async fn start_session(
        &self,
        lock: SessionLock,
        record: Record,
        fresh: bool,
    ) -> Result<Sandbox, (SandboxError, Option<SessionLock>)> {
        let dir = lock.dir().to_path_buf();
        let name = record.name.clone();
        self.make_room(Some(&name)).await;
        let lock = Arc::new(lock);
        let give_back = |lock: Arc<SessionLock>| take_back(lock, fresh);
        let effective = match session_config(&record.config, &dir, self.runtime()) {
            Ok(c) => c,
            Err(e) => return Err((e, give_back(lock).await)),
        };
        // What an earlier holder's cut-short hibernation or resume left.
        let leftovers = dir.clone();
        let _ = crate::sys::blocking("sweeping a sandbox's leftovers", move || {
            sweep_leftovers_blocking(&leftovers);
            Ok(())
        })
        .await;
        let from = match hibernation(self, &dir).await {
            Ok(from) => from,
            Err(e) => return Err((e, give_back(lock).await)),
        };
        let id = crate::host::state::new_id();
        let hold: crate::container::Hold = Box::new(Arc::clone(&lock));
        let launched = self
            .launch_live(
                &effective,
                LaunchMode::Sandbox,
                id,
                from.as_ref(),
                vec![hold],
            )
            .await;
        let (live, applied) = match launched {
            Ok(started) => started,
            Err(e) => return Err((e, give_back(lock).await)),
        };
        if fresh && (applied.uid, applied.gid) != (record.config.uid, record.config.gid) {
            // An image's user: the new, empty directories are its own.
            let (dir, ids) = (dir.clone(), (applied.uid, applied.gid));
            let _ = crate::sys::blocking("handing a sandbox its directories", move || {
                for sub in [WORKSPACE, TMP] {
                    let path = dir.join(sub);
                    std::os::unix::fs::chown(&path, Some(ids.0), Some(ids.1)).map_err(|e| {
                        SandboxError::io("handing a sandbox its directories", &path, e)
                    })?;
                }
                Ok(())
            })
            .await;
        }
        let mut record = record;
        record.state = SandboxState::Running;
        record.last_used_ms = now_ms();
        let durable = Durable {
            name: name.clone(),
            lock: std::sync::Mutex::new(Some(lock)),
            dir: dir.clone(),
            record: std::sync::Mutex::new(record),
            writing: Default::default(),
        };
        let sandbox =
            Sandbox::with_durable(self.clone(), live, applied, effective, false, Some(durable));
        // A restored checkpoint carried its processes.
        sandbox
            .inner
            .background
            .store(from.is_some(), Ordering::Release);
        sandbox.record_state(SandboxState::Running).await;
        let weak: std::sync::Weak<dyn HeldSession> = {
            let strong: Arc<dyn HeldSession> = sandbox.inner.clone();
            Arc::downgrade(&strong)
        };
        self.held().insert(name.clone(), weak);
        if let crate::Network::Egress(policy) = &sandbox.config().network
            && let Err(err) = sandbox.start_egress(policy.clone()).await
        {
            sandbox.close().await;
            if fresh {
                // Nothing of a failed creation stays.
                let store = self.sessions().clone();
                let _ = crate::sys::blocking("removing a failed named sandbox", move || {
                    store.remove_blocking(&name)
                })
                .await;
            }
            return Err((err, None));
        }
        // Consumed last: a connect dropped before here leaves the hibernation to restore.
        if from.is_some() {
            consume_hibernation(&dir).await;
        }
        Ok(sandbox)
    }

    /// Every named sandbox of the data dir (for this runtime and the others), with its
    /// labels, state, times and disk use, by name.
    pub async fn sandboxes(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        let here: std::collections::HashMap<String, (SandboxState, u64)> = self
            .held()
            .iter()
            .filter_map(|(name, held)| Some((name.clone(), held.upgrade()?.state())))
            .collect();
        let store = self.sessions().clone();
        crate::sys::blocking("listing named sandboxes", move || {
            Ok(store.list_blocking(&|name| here.get(name).copied()))
        })
        .await
    }

    /// Removes named sandbox `name` and everything it kept (its files, its hibernation);
    /// its volumes stay. A handle this process holds on it is closed first.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Session`]: [`NotFound`](SessionErrorKind::NotFound),
    /// [`InUse`](SessionErrorKind::InUse) while another process holds it.
    pub async fn remove_sandbox(&self, name: &str) -> Result<(), SandboxError> {
        crate::config::validate_name("name", name)?;
        if let Some(sandbox) = self.held_sandbox(name) {
            sandbox.close().await;
        }
        let store = self.sessions().clone();
        let n = name.to_owned();
        self.while_released_here(name, move || store.remove_blocking(&n))
            .await
    }

    /// Runs `op` (blocking) on named sandbox `name`; while a handle of this process on it is
    /// letting it go (its last handle dropped: the lock goes once its container is removed,
    /// a moment later), `InUse` is waited out, up to 10 s.
    async fn while_released_here<T: Send + 'static>(
        &self,
        name: &str,
        op: impl Fn() -> Result<T, SandboxError> + Send + Sync + 'static,
    ) -> Result<T, SandboxError> {
        let op = Arc::new(op);
        let give_up = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let attempt = Arc::clone(&op);
            let done = crate::sys::blocking("opening a named sandbox", move || attempt()).await;
            let releasing = self.held().get(name).is_some_and(|w| w.strong_count() == 0);
            match done {
                Err(SandboxError::Session {
                    kind: SessionErrorKind::InUse,
                    ..
                }) if releasing && tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                other => {
                    if other.is_ok() {
                        let mut held = self.held();
                        if held.get(name).is_some_and(|w| w.strong_count() == 0) {
                            held.remove(name);
                        }
                    }
                    return other;
                }
            }
        }
    }

    /// Creates volume `name`: a directory the library keeps, mounted into sandboxes by
    /// [`SandboxConfig::volumes`] (read-write or read-only, any number at once), kept until
    /// [`remove_volume`](Self::remove_volume), whatever happens to the sandboxes. With a
    /// [size limit](VolumeOptions::size_limit) (root only) it is a file system of that size
    /// (writes past it fail with `ENOSPC`); its disk use is what was written.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Session`]: [`Exists`](SessionErrorKind::Exists),
    /// [`Unsupported`](SessionErrorKind::Unsupported) (a size limit rootless);
    /// [`SandboxError::InvalidConfig`] for a bad name or a size below
    /// [`MIN_VOLUME_SIZE`](crate::MIN_VOLUME_SIZE).
    pub async fn create_volume(
        &self,
        name: &str,
        options: &VolumeOptions,
    ) -> Result<VolumeInfo, SandboxError> {
        self.volume_store()
            .create(name, options, self.is_rootless())
            .await
    }

    /// Every volume of the data dir, by name.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>, SandboxError> {
        self.volume_store().list().await
    }

    /// Volume `name`'s description.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Session`] with [`NotFound`](SessionErrorKind::NotFound).
    pub async fn volume(&self, name: &str) -> Result<VolumeInfo, SandboxError> {
        crate::config::validate_name("name", name)?;
        self.volume_store().info(name).await
    }

    /// Removes volume `name` and its files.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Session`]: [`NotFound`](SessionErrorKind::NotFound),
    /// [`InUse`](SessionErrorKind::InUse) while a running sandbox mounts it.
    pub async fn remove_volume(&self, name: &str) -> Result<(), SandboxError> {
        self.volume_store().remove(name).await
    }
}
