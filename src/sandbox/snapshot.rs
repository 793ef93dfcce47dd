//! Snapshots of a sandbox, forks from them, rollbacks to them (see [`crate::snapshot`]), and
//! background commands, which a gVisor snapshot carries.

use crate::container::LaunchMode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{MAX_CONCURRENT_EXECS, START_DEADLINE, Sandbox, end_live, files, network};
use crate::config::ExecConfig;
use crate::container::NamespaceContainer;
use crate::error::{SandboxError, SnapshotErrorKind};
use crate::launcher;
use crate::oci::cli::{ContainerFlags, Sub};
use crate::runtimes::OciRuntime;
use crate::snapshot::{Snapshot, Store};

/// How long a snapshot waits for the slots of commands that have just ended.
const QUIET_GRACE: Duration = Duration::from_millis(200);

/// How long a detach refused with EBUSY is asked again (a helper just stopped is reaped).
const DETACH_RETRIES: Duration = Duration::from_millis(500);

/// How long `runsc checkpoint` may take.
const CHECKPOINT_DEADLINE: Duration = Duration::from_secs(60);

/// What [`Sandbox::snapshot_with`] takes and leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotOptions {
    /// Require processes and memory in the snapshot: on runc and crun, which cannot carry
    /// them, the snapshot is refused ([`SnapshotErrorKind::Unsupported`]) instead of taking
    /// the files only. gVisor's snapshots always carry them. Off by default.
    pub processes: bool,
    /// Let the sandbox go on from the snapshot (the default); `false` closes it, which
    /// saves its restart.
    pub keep_running: bool,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            processes: false,
            keep_running: true,
        }
    }
}

impl SnapshotOptions {
    /// The default options with [`processes`](Self::processes) set to `processes`.
    pub fn processes(mut self, processes: bool) -> Self {
        self.processes = processes;
        self
    }

    /// The default options with [`keep_running`](Self::keep_running) set to `keep_running`.
    pub fn keep_running(mut self, keep_running: bool) -> Self {
        self.keep_running = keep_running;
        self
    }
}

impl Sandbox {
    /// Takes a snapshot of the sandbox and lets it go on from there: see
    /// [`snapshot_with`](Self::snapshot_with) for what it takes and what happens to the
    /// sandbox.
    ///
    /// ```no_run
    /// # async fn demo(runtime: oci_sandbox::NamespaceContainer, sandbox: oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
    /// use oci_sandbox::ExecConfig;
    ///
    /// sandbox.exec(&ExecConfig::shell("echo v1 > /srv/state")).await?.wait().await?;
    /// let saved = sandbox.snapshot().await?;
    /// // Ten candidates from the same state, each in a sandbox of its own.
    /// let mut forks = Vec::new();
    /// for _ in 0..10 {
    ///     forks.push(runtime.start_from(&saved).await?);
    /// }
    /// // The parent goes on, and can go back.
    /// sandbox.exec(&ExecConfig::shell("rm /srv/state")).await?.wait().await?;
    /// sandbox.restore(&saved).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`snapshot_with`](Self::snapshot_with).
    pub async fn snapshot(&self) -> Result<Snapshot, SandboxError> {
        self.snapshot_with(SnapshotOptions::default()).await
    }

    /// Takes a snapshot of the sandbox's writable state: on runc and crun its writable root
    /// (`/tmp` included), on gVisor also its memory and processes. Writable binds are the
    /// host's, not the sandbox's, and are not in it.
    ///
    /// What the sandbox goes through, by runtime:
    ///
    /// - **runc, crun**: the container ends (its background commands with it: no process
    ///   state can be taken there), its writable layer becomes the snapshot (a rename, no
    ///   data copied), and with [`keep_running`](SnapshotOptions::keep_running) it starts
    ///   again, same id, on the snapshot's files with a new writable layer.
    /// - **gVisor**: the launcher detaches from the host, `runsc checkpoint` saves the
    ///   sandbox and stops it, and with `keep_running` it is restored from that checkpoint
    ///   at once (runsc 20221219's `--leave-running` hangs and breaks the sandbox here):
    ///   processes started with [`exec_background`](Self::exec_background) run on.
    ///
    /// The snapshot is refused while something runs that holds a connection to the host: a
    /// command ([`exec`](Self::exec) and the like, jobs), a file transfer or watch, an
    /// exposed port's connection. Wait for them, or run long-lived processes with
    /// [`exec_background`](Self::exec_background). An egress policy's forwarder stops for
    /// the snapshot (its proxied connections end) and starts again in the sandbox that goes
    /// on; its event stream goes on.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Snapshot`]: [`NotEnabled`](SnapshotErrorKind::NotEnabled) without
    /// [`SandboxConfig::snapshots`](crate::SandboxConfig::snapshots),
    /// [`Busy`](SnapshotErrorKind::Busy) (the sandbox goes on untouched),
    /// [`Unsupported`](SnapshotErrorKind::Unsupported) when
    /// [`processes`](SnapshotOptions::processes) is asked of runc or crun (without it, their
    /// snapshot takes the files and ends every process, those of
    /// [`exec_background`](Self::exec_background) included: ask for `processes` to have it
    /// refused instead);
    /// [`SandboxError::SandboxClosed`] and the like for a sandbox that is no more; the
    /// runtime's errors (a failed checkpoint ends the sandbox).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: once it has the sandbox to itself (at once, unless a command or request
    /// is starting, or another snapshot or restore runs), the snapshot runs to its end in a
    /// task of its own, before anything started later; a dropped future then leaves the
    /// sandbox running (from the snapshot, or closed as asked), and its snapshot, which
    /// nobody holds, is removed. Dropped before that, it did nothing.
    pub async fn snapshot_with(&self, options: SnapshotOptions) -> Result<Snapshot, SandboxError> {
        // A paused or hibernated sandbox resumes first.
        drop(self.enter().await?);
        let swap = Arc::clone(&self.inner.gate).write_owned().await;
        let this = self.clone();
        in_own_task(async move { this.take_snapshot(options, swap).await }).await
    }

    async fn take_snapshot(
        &self,
        options: SnapshotOptions,
        _swap: tokio::sync::OwnedRwLockWriteGuard<()>,
    ) -> Result<Snapshot, SandboxError> {
        self.check_alive()?;
        let runtime = self.inner.owner.runtime();
        if !self.inner.config.snapshots {
            return Err(SandboxError::snapshot(
                SnapshotErrorKind::NotEnabled,
                format!(
                    "sandbox {} was started without SandboxConfig::snapshots",
                    self.id()
                ),
            ));
        }
        if options.processes && runtime != OciRuntime::Gvisor {
            return Err(SandboxError::snapshot(
                SnapshotErrorKind::Unsupported,
                format!(
                    "{runtime} cannot save processes or memory (it would need CRIU): only \
                     gVisor's snapshots carry them"
                ),
            ));
        }
        self.end_kernels(
            "a snapshot was taken: the context's state is gone; run again for a fresh one",
        )?;
        self.check_quiet().await?;
        let begun = std::time::Instant::now();
        // The egress forwarder holds host sockets: it stops, and starts again in the
        // container that goes on (or in each fork).
        self.stop_forwarder().await;
        let taken = self.take_state().await;
        if taken.as_ref().is_err_and(|_| self.check_alive().is_ok()) {
            // Refused before anything was stopped: the sandbox goes on as it was.
            self.restart_forwarder().await?;
        }
        let snapshot = taken?;
        tracing::debug!(sandbox = %self.id(), snapshot = snapshot.id(), elapsed_ms = crate::sys::ms_since(begun), "snapshot taken");
        // Every job died with the container.
        self.inner.jobs.clear();
        if options.keep_running {
            self.replace_live(&snapshot).await?;
        } else {
            self.mark_closed();
        }
        Ok(snapshot)
    }

    /// Takes the snapshot proper: see [`snapshot_with`](Self::snapshot_with).
    async fn take_state(&self) -> Result<Snapshot, SandboxError> {
        let runtime = self.inner.owner.runtime();
        let store = self.inner.owner.snapshot_store().to_path_buf();
        let dir = crate::sys::blocking("creating a snapshot's directory", move || {
            Store::new_dir_blocking(&store)
        })
        .await?;
        let live = self.live();
        let taken = match runtime {
            OciRuntime::Gvisor => self.checkpoint(&live, dir.clone()).await,
            _ => self.take_layer(&live, dir.clone()).await,
        };
        match taken {
            Ok(snapshot) => Ok(snapshot),
            Err(err) => {
                let _ = crate::sys::blocking("removing a failed snapshot", move || {
                    crate::sys::fs_tree::remove_tree_blocking(&dir)
                        .map_err(|e| SandboxError::io("removing a snapshot", &dir, e))
                })
                .await;
                Err(err)
            }
        }
    }

    /// Starts the egress forwarder again in the sandbox's current container, if it has an
    /// egress policy.
    pub(super) async fn restart_forwarder(&self) -> Result<(), SandboxError> {
        match self.inner.egress.get() {
            Some(egress) => self.start_forwarder(Arc::clone(egress)).await,
            None => Ok(()),
        }
    }

    /// Rolls the sandbox back to `snapshot`, in place: everything running in it is killed,
    /// and it starts again (same id, same handle, its clones too) from the snapshot's state:
    /// its files, and on gVisor its processes. The snapshot may be any of this sandbox's or
    /// of its forks' (the same runtime and config), and stays usable.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Snapshot`] with [`Mismatch`](SnapshotErrorKind::Mismatch) for a
    /// snapshot of another runtime or config (the sandbox goes on untouched); the start's
    /// errors, after which the sandbox has ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`snapshot_with`](Self::snapshot_with) is: once it has the sandbox to
    /// itself, the restore runs to its end in a task of its own, before anything started
    /// later.
    pub async fn restore(&self, snapshot: &Snapshot) -> Result<(), SandboxError> {
        drop(self.enter().await?);
        let swap = Arc::clone(&self.inner.gate).write_owned().await;
        let (this, snapshot) = (self.clone(), snapshot.clone());
        in_own_task(async move { this.restore_now(&snapshot, swap).await }).await
    }

    async fn restore_now(
        &self,
        snapshot: &Snapshot,
        _swap: tokio::sync::OwnedRwLockWriteGuard<()>,
    ) -> Result<(), SandboxError> {
        self.check_alive()?;
        check_runtime(snapshot, self.inner.owner.runtime())?;
        if !same_config(snapshot.config(), &self.inner.asked) {
            return Err(SandboxError::snapshot(
                SnapshotErrorKind::Mismatch,
                format!(
                    "snapshot {} is of a sandbox with another config than {}'s",
                    snapshot.id(),
                    self.id()
                ),
            ));
        }
        self.stop_forwarder().await;
        let live = self.live();
        end_live(&live).await;
        live.container.finished().await;
        self.inner.jobs.clear();
        self.replace_live(snapshot).await
    }

    /// Starts `exec` in the background: its stdin, stdout and stderr are the sandbox's own
    /// `/dev/null` (redirect to a file in the sandbox to keep its output), and it runs until
    /// it ends or the sandbox does, with no handle and nothing of the host's held for it.
    /// Returns its pid in the sandbox. A gVisor snapshot carries it, and it runs on in each
    /// fork; on runc and crun a snapshot ends it.
    ///
    /// # Errors
    ///
    /// Those of [`exec`](Self::exec).
    pub async fn exec_background(&self, exec: &ExecConfig) -> Result<u32, SandboxError> {
        let _start = self.enter().await?;
        let (argv, env, cwd) = self.resolve(exec)?;
        self.check_alive()?;
        self.inner.background.store(true, Ordering::Release);
        let conn = self
            .send(&cwd, &argv, &env, launcher::Stdio::Background)
            .await?;
        match tokio::time::timeout(START_DEADLINE, conn.receive()).await {
            Ok(Ok(Some(crate::launcher::Reply::Started { pid }))) => Ok(pid as u32),
            Ok(Ok(Some(crate::launcher::Reply::StartFailed { errno }))) => Err(
                crate::supervisor::exec::start_failure(&exec.command, &cwd, errno),
            ),
            Ok(Ok(_)) | Ok(Err(_)) => Err(self.ended_error().unwrap_or(SandboxError::Process {
                context: "starting a background command",
                source: std::io::Error::other("the launcher did not answer"),
            })),
            Err(_) => Err(SandboxError::Timeout {
                what: format!("starting a command in sandbox {}", self.id()),
                after: START_DEADLINE,
            }),
        }
    }

    /// Refuses a snapshot while something holds a connection to the host. A command that
    /// has just ended gives its slot back from its supervisor, a moment after its handle has
    /// seen the end: the slots get [`QUIET_GRACE`] to come back.
    pub(super) async fn check_quiet(&self) -> Result<(), SandboxError> {
        let inner = &self.inner;
        let busy = |what: &str| {
            Err(SandboxError::snapshot(
                SnapshotErrorKind::Busy,
                format!("sandbox {} {what}", self.id()),
            ))
        };
        let all = |slots: &Arc<tokio::sync::Semaphore>, n: usize| {
            let slots = Arc::clone(slots);
            async move { slots.acquire_many_owned(n as u32).await.ok() }
        };
        let quiet = async {
            tokio::join!(
                all(&inner.slots, MAX_CONCURRENT_EXECS),
                all(&inner.file_slots, files::FILE_HELPERS),
                all(&inner.watch_slots, files::WATCHES),
                all(&inner.expose_slots, network::EXPOSED_CONNECTIONS),
            )
        };
        match tokio::time::timeout(QUIET_GRACE, quiet).await {
            Ok(_) => Ok(()),
            Err(_) if inner.slots.available_permits() < MAX_CONCURRENT_EXECS => {
                busy("runs commands (wait for them, or use exec_background)")
            }
            Err(_) if inner.expose_slots.available_permits() < network::EXPOSED_CONNECTIONS => {
                busy("serves connections to an exposed port")
            }
            Err(_) => busy("moves files or watches them"),
        }
    }

    /// runc, crun: ends the container and has its teardown move the writable layer into
    /// `dir`.
    async fn take_layer(
        &self,
        live: &super::Live,
        dir: std::path::PathBuf,
    ) -> Result<Snapshot, SandboxError> {
        let layer = Snapshot::layer_in(&dir);
        *live.harvest.lock().expect("not poisoned") = Some(layer.clone());
        end_live(live).await;
        live.container.finished().await;
        let moved = tokio::fs::symlink_metadata(&layer)
            .await
            .is_ok_and(|m| m.is_dir());
        if !moved {
            self.mark_closed();
            return Err(SandboxError::io(
                "taking the sandbox's writable layer (the sandbox has ended)",
                &layer,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        Ok(Snapshot::new_layer(
            dir,
            self.inner.owner.runtime(),
            self.inner.asked.clone(),
            live.base.clone(),
        ))
    }

    /// gVisor: detaches the launcher and checkpoints the sandbox into `dir`, which stops it.
    pub(super) async fn checkpoint(
        &self,
        live: &super::Live,
        dir: std::path::PathBuf,
    ) -> Result<Snapshot, SandboxError> {
        let token = format!(
            "{}{}",
            crate::host::state::random_token(),
            crate::host::state::random_token()
        );
        // A helper that has just been told to go (the egress forwarder) may not be reaped
        // yet: EBUSY is asked again for a moment.
        let detach = async {
            let give_up = tokio::time::Instant::now() + DETACH_RETRIES;
            loop {
                match live.control.detach(&token).await {
                    Ok(Err(libc::EBUSY)) if tokio::time::Instant::now() < give_up => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => return other,
                }
            }
        };
        let detached = tokio::time::timeout(START_DEADLINE, detach).await;
        match detached {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(libc::EBUSY))) => {
                return Err(SandboxError::snapshot(
                    SnapshotErrorKind::Busy,
                    format!("sandbox {} holds connections to the host", self.id()),
                ));
            }
            Ok(Ok(Err(errno))) => {
                // Code in the sandbox may hold the attach address: the sandbox goes on.
                return Err(SandboxError::snapshot(
                    SnapshotErrorKind::Busy,
                    format!(
                        "the launcher of sandbox {} cannot listen for its attach: {}",
                        self.id(),
                        std::io::Error::from_raw_os_error(errno)
                    ),
                ));
            }
            Ok(Err(source)) => {
                return Err(self.ended_error().unwrap_or(SandboxError::Process {
                    context: "detaching the sandbox's launcher",
                    source,
                }));
            }
            Err(_) => {
                return Err(SandboxError::Timeout {
                    what: format!("detaching the launcher of sandbox {}", self.id()),
                    after: START_DEADLINE,
                });
            }
        }
        let image = Snapshot::checkpoint_in(&dir);
        let flags = ContainerFlags {
            log: None,
            host_network: live.container.host_network,
            memory_root: true,
        };
        let sub = Sub::Checkpoint {
            id: self.id(),
            image: &image,
        };
        let checkpointed = live
            .container
            .cli
            .call(flags, sub, CHECKPOINT_DEADLINE)
            .await;
        if let Err(err) = checkpointed {
            // A detached launcher serves no one: the sandbox is lost.
            self.mark_closed();
            live.container.start_kill();
            live.container.finished().await;
            return Err(err);
        }
        // The checkpoint stopped the sandbox: its teardown removes what is left of it.
        live.container.finished().await;
        Ok(Snapshot::new_checkpoint(
            dir,
            self.inner.owner.runtime(),
            self.inner.asked.clone(),
            token,
        ))
    }

    /// Starts the sandbox's container again from `snapshot`, same id, and puts it in place
    /// of the one that has ended.
    async fn replace_live(&self, snapshot: &Snapshot) -> Result<(), SandboxError> {
        let id = self.id().to_owned();
        // A named sandbox's containers each hold its lock.
        let holds = match self.durable_hold() {
            Some(hold) => vec![hold?],
            None => Vec::new(),
        };
        let started = self
            .inner
            .owner
            .launch_live(
                snapshot.config(),
                LaunchMode::Sandbox,
                id,
                Some(snapshot),
                holds,
            )
            .await;
        match started {
            Ok((live, _)) => {
                *self.inner.live.write().expect("not poisoned") = Arc::new(live);
                self.restart_forwarder().await
            }
            Err(err) => {
                self.mark_closed();
                Err(err)
            }
        }
    }

    /// The sandbox is no more (closed by a snapshot that does not keep it running, or lost).
    pub(super) fn mark_closed(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.activity.close();
        self.inner.exposed.cancel();
    }
}

impl NamespaceContainer {
    /// Starts a new sandbox from `snapshot` (a fork): its files, and on gVisor its memory
    /// and processes, are the snapshot's; what it does next is its own. As often as wanted:
    /// each fork has its own writable layer over the snapshot's (runc, crun: nothing is
    /// copied) or its own restored sandbox (gVisor).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Snapshot`] with [`Mismatch`](SnapshotErrorKind::Mismatch) for a
    /// snapshot of another runtime; those of [`start`](Self::start).
    pub async fn start_from(&self, snapshot: &Snapshot) -> Result<Sandbox, SandboxError> {
        check_runtime(snapshot, self.runtime())?;
        if let Some(name) = &snapshot.config().name {
            // Its /workspace and /tmp are the named sandbox's own directories: a fork would
            // share them.
            return Err(SandboxError::snapshot(
                SnapshotErrorKind::Unsupported,
                format!(
                    "snapshot {} is of named sandbox {name:?}, whose files are its own: restore                      it in place instead",
                    snapshot.id()
                ),
            ));
        }
        let id = crate::host::state::new_id();
        let (live, applied) = self
            .launch_live(
                snapshot.config(),
                LaunchMode::Sandbox,
                id,
                Some(snapshot),
                Vec::new(),
            )
            .await?;
        let sandbox = Sandbox::new(
            self.clone(),
            live,
            applied,
            snapshot.config().clone(),
            false,
        );
        if let crate::Network::Egress(policy) = &sandbox.config().network {
            sandbox.start_egress(policy.clone()).await?;
        }
        Ok(sandbox)
    }

    /// Reads a snapshot that [`Snapshot::save`] wrote to `dir`, to start sandboxes from.
    /// Its files stay where they are and are used in place: leave `dir` as it is while any
    /// sandbox started from it runs. The snapshot's manifest holds the config its forks
    /// start with (binds of host paths included), so the directory and the manifest must be
    /// the caller's alone (its owner, not writable by group or others), as `save` makes
    /// them: load only snapshots you saved or trust as you trust your configs.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Snapshot`]: [`Mismatch`](SnapshotErrorKind::Mismatch) for a snapshot
    /// of another runtime, [`Corrupt`](SnapshotErrorKind::Corrupt) for a directory that is
    /// missing, holds no snapshot, is not the caller's alone, whose files do not match its
    /// manifest, or that holds what no saved snapshot does (set-id bits, a device other than
    /// an overlayfs whiteout, a file capability or `trusted.*` attribute, a mount point:
    /// the reason names the entry). The directory is only read, never changed.
    pub async fn load_snapshot(
        &self,
        dir: impl AsRef<std::path::Path>,
    ) -> Result<Snapshot, SandboxError> {
        let (dir, runtime) = (dir.as_ref().to_path_buf(), self.runtime());
        crate::sys::blocking("loading a snapshot", move || {
            Snapshot::load_blocking(&dir, Some(runtime))
        })
        .await
    }
}

/// Runs `work` in a task of its own and waits for it: a caller that goes away does not cut
/// a snapshot or restore in the middle of its swap.
pub(super) async fn in_own_task<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, SandboxError>> + Send + 'static,
) -> Result<T, SandboxError> {
    tokio::spawn(work).await.unwrap_or_else(|e| {
        Err(SandboxError::Process {
            context: "taking or restoring a snapshot",
            source: std::io::Error::other(e.to_string()),
        })
    })
}

fn check_runtime(snapshot: &Snapshot, runtime: OciRuntime) -> Result<(), SandboxError> {
    if snapshot.runtime() != runtime {
        return Err(SandboxError::snapshot(
            SnapshotErrorKind::Mismatch,
            format!(
                "snapshot {} is of a {} sandbox, not {runtime}",
                snapshot.id(),
                snapshot.runtime()
            ),
        ));
    }
    Ok(())
}

/// Whether two configs are the same but for their ids.
fn same_config(a: &crate::ContainerConfig, b: &crate::ContainerConfig) -> bool {
    let value = |c: &crate::ContainerConfig| {
        let mut c = c.clone();
        c.id = None;
        serde_json::to_value(&c).ok()
    };
    value(a) == value(b)
}
