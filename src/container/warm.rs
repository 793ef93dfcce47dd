//! Warm spawns: containers of a config started ahead, each taken by one spawn
//! ([`NamespaceContainer::warm`]).
//!
//! A warm container is a spawn's container up to the moment its command would be sent: the
//! launcher runs as its init and waits for its one request. A spawn whose config has the same
//! spec side (everything but the fields of [`ExecSide`](crate::config::ExecSide), which travel
//! in the request) takes one, sends its command, and the container ends with the command, as a
//! cold one does. Pools refill in the background: at most a few containers start at once
//! ([`NamespaceContainerBuilder::warm_refills`](super::NamespaceContainerBuilder::warm_refills)),
//! and a refill waits while a warm spawn is starting (until its command runs) or while the
//! machine is busy with cold launches (as many as refills may run), so that refills do not
//! slow the spawns they are there to serve.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, watch};

use super::{Inner, Live, NamespaceContainer};
use crate::config::ContainerConfig;
use crate::error::SandboxError;

/// How long a refill waits for the starts under way before it starts anyway.
const YIELD_LIMIT: Duration = Duration::from_millis(250);
/// The longest pause between refills after failures in a row (it doubles from 50 ms).
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A container started ahead for a spawn: its launcher waits for the one command.
#[derive(Debug)]
pub(crate) struct WarmContainer {
    pub live: Live,
    /// Its config as applied (image, volumes, the proxy's variables): the spec side every
    /// spawn it serves runs with.
    pub applied: ContainerConfig,
    /// Device and inode of each bind's source when it started (the runtime bound those): a
    /// spawn after one was replaced on the host goes cold.
    binds: Vec<Option<(u64, u64)>>,
}

impl WarmContainer {
    /// Whether every bind's source is still the one the container bound. Blocking.
    pub(crate) fn binds_unchanged_blocking(&self) -> bool {
        bind_sources_blocking(&self.applied) == self.binds
    }
}

/// Device and inode of each bind source of `config` (followed, as the runtime follows it),
/// `None` for one that cannot be read. Blocking.
fn bind_sources_blocking(config: &ContainerConfig) -> Vec<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    config
        .mounts
        .iter()
        .filter_map(|m| match &m.kind {
            crate::config::MountKind::Bind { source, .. } => Some(
                std::fs::metadata(source)
                    .ok()
                    .map(|meta| (meta.dev(), meta.ino())),
            ),
            _ => None,
        })
        .collect()
}

/// A spawn waiting for a container of its pool's, counted in `PoolState::waiting` until it
/// drops.
struct Waiter {
    pool: Arc<Pool>,
    counted: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.counted {
            self.pool.lock().waiting -= 1;
        }
    }
}

/// A ready container taken from its pool for a spawn, which may give it back unused.
#[derive(Debug)]
pub(crate) struct Taken {
    pool: Arc<Pool>,
    warm: WarmContainer,
    /// The spawn's start: refills wait for it.
    start: StartUnderWay,
}

impl Taken {
    /// Gives the container back unused (the spawn's config was refused): first in line again,
    /// if its pool is open and not full; the take no longer counts.
    pub(crate) fn put_back(self) {
        let mut state = self.pool.lock();
        state.hits = state.hits.saturating_sub(1);
        if !state.closed && state.ready.len() < state.target {
            state.ready.push_front(self.warm);
        }
    }

    /// The container taken.
    pub(crate) fn container(&self) -> &WarmContainer {
        &self.warm
    }

    /// The container, for the spawn, and the mark of its start under way (drop it once the
    /// command runs).
    pub(crate) fn into_container(self) -> (WarmContainer, StartUnderWay) {
        (self.warm, self.start)
    }

    /// Drops the container, which cannot serve the spawn (a bind's source was replaced):
    /// counted as discarded, and the spawn as a miss.
    pub(crate) fn discard(self) {
        let mut state = self.pool.lock();
        state.hits = state.hits.saturating_sub(1);
        state.misses += 1;
        state.discarded += 1;
    }
}

/// How a warm pool is doing, from [`NamespaceContainer::warm_pools`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WarmPoolStats {
    /// The config the pool was made for (its command, environment and the like are the
    /// template's: spawns bring their own).
    pub config: ContainerConfig,
    /// How many containers it keeps ready.
    pub target: usize,
    /// Ready now.
    pub ready: usize,
    /// Starting now.
    pub starting: usize,
    /// Spawns served by a warm container.
    pub hits: u64,
    /// Spawns of its config that found it empty and started cold.
    pub misses: u64,
    /// Containers it started.
    pub started: u64,
    /// Starts that failed (the pool backs off, up to 10 s between tries).
    pub failed: u64,
    /// Ready containers found dead when taken, and removed.
    pub discarded: u64,
    /// The last failed start's error.
    pub last_error: Option<String>,
}

/// The pools of a [`NamespaceContainer`], by spec side.
#[derive(Debug)]
pub(crate) struct WarmPools {
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    shared: Arc<Shared>,
}

/// What the refillers of every pool share.
#[derive(Debug)]
struct Shared {
    /// A permit per container starting for a pool.
    refills: Arc<Semaphore>,
    /// Warm spawns until their command runs, and cold launches, under way: refills let the
    /// first go first, and the second when there are `refill_limit` of them or more.
    warm_starts: AtomicUsize,
    cold_launches: AtomicUsize,
    refill_limit: usize,
    starts_done: Notify,
}

#[derive(Debug)]
struct Pool {
    /// The config its containers start from: the caller's, with an environment of `PATH`
    /// alone (the launcher, the container's init, keeps the environment it starts with;
    /// spawns bring their own).
    template: ContainerConfig,
    state: Mutex<PoolState>,
    /// Wakes the refiller: a container taken, a start ended, the target changed.
    wake: Notify,
    /// Cancelled when the pool closes (ends the refiller's pauses too).
    closed: tokio_util::sync::CancellationToken,
    /// Bumped when a start ends or the pool closes, for [`NamespaceContainer::warm`]
    /// waiting for a full pool.
    filled: watch::Sender<u64>,
    /// The refiller of a pool made outside a Tokio runtime, until `warm`'s future starts it.
    refiller: Mutex<PendingRefiller>,
}

/// A refiller not started yet (see `Pool::refiller`).
#[derive(Default)]
struct PendingRefiller(Option<futures::future::BoxFuture<'static, ()>>);

impl std::fmt::Debug for PendingRefiller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "pending" } else { "none" })
    }
}

#[derive(Debug, Default)]
struct PoolState {
    target: usize,
    ready: VecDeque<WarmContainer>,
    starting: usize,
    /// Spawns waiting for a container that is starting (one each).
    waiting: usize,
    closed: bool,
    failed_in_a_row: u32,
    hits: u64,
    misses: u64,
    started: u64,
    failed: u64,
    discarded: u64,
    last_error: Option<String>,
    /// The last failed start's error itself, for the first `warm` call waiting on the pool.
    last_failure: Option<SandboxError>,
    /// `failed` when the target was last set: `warm` reports failures after it.
    failed_at_set: u64,
}

impl PoolState {
    /// Fewer ready and starting than the target, the containers waited for not counted.
    fn wants_more(&self) -> bool {
        !self.closed && self.ready.len() + self.starting < self.target + self.waiting
    }
}

/// The key of `config`'s spec side (everything but its exec side), or `None` when no warm
/// container can serve it: a config with its own container id or name, or a spec hook (a
/// closure, which no key can compare).
pub(crate) fn key_of(config: &ContainerConfig) -> Option<String> {
    if config.id.is_some() || config.name.is_some() || config.spec_hook.is_some() {
        return None;
    }
    let mut spec_side = config.clone();
    spec_side.take_exec_side();
    serde_json::to_string(&spec_side).ok()
}

/// Counts a start under way while it lives (a warm spawn until its command runs, or a cold
/// launch), for the refills that wait for it.
#[derive(Debug)]
pub(crate) struct StartUnderWay {
    shared: Arc<Shared>,
    warm: bool,
}

impl StartUnderWay {
    fn new(shared: &Arc<Shared>, warm: bool) -> Self {
        shared.counter(warm).fetch_add(1, Ordering::AcqRel);
        StartUnderWay {
            shared: Arc::clone(shared),
            warm,
        }
    }
}

impl Drop for StartUnderWay {
    fn drop(&mut self) {
        self.shared
            .counter(self.warm)
            .fetch_sub(1, Ordering::AcqRel);
        self.shared.starts_done.notify_waiters();
    }
}

/// Gives back a claimed start (`starting`) if the start goes away unfinished.
struct Claim(Option<Arc<Pool>>);

impl Claim {
    fn finish(mut self, result: Result<WarmContainer, SandboxError>) {
        let pool = self.0.take().expect("finished once");
        pool.finish(result);
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            pool.lock().starting -= 1;
            pool.filled.send_modify(|n| *n += 1);
            pool.wake.notify_one();
        }
    }
}

impl WarmPools {
    pub(crate) fn new(refills: usize) -> Self {
        WarmPools {
            pools: Mutex::default(),
            shared: Arc::new(Shared {
                refills: Arc::new(Semaphore::new(refills)),
                warm_starts: AtomicUsize::new(0),
                cold_launches: AtomicUsize::new(0),
                refill_limit: refills,
                starts_done: Notify::new(),
            }),
        }
    }

    fn pools(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks a cold launch under way until the guard drops.
    pub(crate) fn cold_launch(&self) -> StartUnderWay {
        StartUnderWay::new(&self.shared, false)
    }

    /// A ready container for a spawn of `config`, if its pool has one; the refiller starts its
    /// replacement. With none ready, the spawn waits for a start under way that no other
    /// spawn waits for (it ends sooner than a cold launch would, and adds no load); with none
    /// of those either, `None`: a cold spawn. Containers that died while ready are dropped on
    /// the way.
    pub(crate) async fn take(&self, config: &ContainerConfig) -> Option<Taken> {
        if self.pools().is_empty() {
            return None;
        }
        let key = key_of(config)?;
        let pool = self.pools().get(&key).cloned()?;
        let mut filled = pool.filled.subscribe();
        let mut waiter = Waiter {
            pool: Arc::clone(&pool),
            counted: false,
        };
        let warm = loop {
            {
                let mut state = pool.lock();
                let mut found = None;
                while let Some(warm) = state.ready.pop_front() {
                    if matches!(warm.live.container.try_wait(), Ok(None)) {
                        found = Some(warm);
                        break;
                    }
                    state.discarded += 1;
                }
                if let Some(warm) = found {
                    state.hits += 1;
                    break Some(warm);
                }
                let others = state.waiting - usize::from(waiter.counted);
                if state.closed || state.starting <= others {
                    state.misses += 1;
                    break None;
                }
                if !waiter.counted {
                    state.waiting += 1;
                    waiter.counted = true;
                }
            }
            // A start that ended, or the pool closed.
            pool.wake.notify_one();
            if filled.changed().await.is_err() {
                pool.lock().misses += 1;
                break None;
            }
        };
        drop(waiter);
        // Marked before the refiller wakes: its refill waits for this spawn's start.
        let start = StartUnderWay::new(&self.shared, true);
        pool.wake.notify_one();
        Some(Taken {
            pool: Arc::clone(&pool),
            warm: warm?,
            start,
        })
    }

    /// Each pool's figures.
    pub(crate) fn stats(&self) -> Vec<WarmPoolStats> {
        self.pools()
            .values()
            .map(|pool| {
                let s = pool.lock();
                WarmPoolStats {
                    config: pool.template.clone(),
                    target: s.target,
                    ready: s.ready.len(),
                    starting: s.starting,
                    hits: s.hits,
                    misses: s.misses,
                    started: s.started,
                    failed: s.failed,
                    discarded: s.discarded,
                    last_error: s.last_error.clone(),
                }
            })
            .collect()
    }

    /// Closes every pool: their ready containers are dropped (and removed in the
    /// background), their refillers end, and starts under way drop what they start.
    pub(crate) fn close_all(&self) {
        let pools: Vec<Arc<Pool>> = self.pools().drain().map(|(_, pool)| pool).collect();
        for pool in pools {
            pool.close();
        }
    }
}

impl Drop for WarmPools {
    fn drop(&mut self) {
        self.close_all();
    }
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_refiller(&self) -> std::sync::MutexGuard<'_, PendingRefiller> {
        self.refiller.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        let ready = {
            let mut state = self.lock();
            state.closed = true;
            state.target = 0;
            std::mem::take(&mut state.ready)
        };
        drop(ready);
        self.closed.cancel();
        self.wake.notify_one();
        self.filled.send_modify(|n| *n += 1);
    }

    /// Sets the target, dropping ready containers beyond it; returns the one it replaced.
    fn set_target(&self, target: usize) -> usize {
        let extra = {
            let mut state = self.lock();
            let before = std::mem::replace(&mut state.target, target);
            state.failed_at_set = state.failed;
            let keep = state.ready.len().min(target);
            (before, state.ready.split_off(keep))
        };
        let (before, extra) = extra;
        drop(extra);
        self.wake.notify_one();
        before
    }

    /// Claims one start if the pool wants one more.
    fn claim(self: &Arc<Self>) -> Option<Claim> {
        let mut state = self.lock();
        if !state.wants_more() {
            return None;
        }
        state.starting += 1;
        Some(Claim(Some(Arc::clone(self))))
    }

    /// A claimed start ended: its container joins the ready ones (unless the pool no longer
    /// wants it), or its error is counted and kept.
    fn finish(&self, result: Result<WarmContainer, SandboxError>) {
        let mut state = self.lock();
        state.starting -= 1;
        match result {
            Ok(warm) => {
                state.started += 1;
                state.failed_in_a_row = 0;
                if !state.closed && state.ready.len() < state.target {
                    state.ready.push_back(warm);
                }
            }
            Err(err) => {
                state.failed += 1;
                state.failed_in_a_row = state.failed_in_a_row.saturating_add(1);
                state.last_error = Some(err.to_string());
                tracing::warn!(%err, "a warm container could not start");
                state.last_failure = Some(err);
            }
        }
        drop(state);
        self.filled.send_modify(|n| *n += 1);
        self.wake.notify_one();
    }

    /// The pause before the next start, after failures in a row.
    fn backoff(&self) -> Option<Duration> {
        let failures = self.lock().failed_in_a_row;
        (failures > 0).then(|| {
            Duration::from_millis(50)
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_BACKOFF)
        })
    }
}

impl Shared {
    fn counter(&self, warm: bool) -> &AtomicUsize {
        if warm {
            &self.warm_starts
        } else {
            &self.cold_launches
        }
    }

    /// Waits while a warm spawn is starting, or while `refill_limit` cold launches or more
    /// are under way (one or two are a sequence of spawns the pool could not keep up with: a
    /// refill is what helps them), up to [`YIELD_LIMIT`].
    async fn yield_to_starts(&self) {
        let deadline = tokio::time::Instant::now() + YIELD_LIMIT;
        loop {
            let done = self.starts_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.warm_starts.load(Ordering::Acquire) == 0
                && self.cold_launches.load(Ordering::Acquire) < self.refill_limit
            {
                return;
            }
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return;
            }
        }
    }
}

/// Keeps `pool` at its target while the runtime lives and the pool is open.
async fn refill(owner: Weak<Inner>, shared: Arc<Shared>, pool: Arc<Pool>) {
    loop {
        // Until the pool wants one more (or is closed).
        loop {
            let woken = pool.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let state = pool.lock();
                if state.closed {
                    return;
                }
                if state.wants_more() {
                    break;
                }
            }
            woken.await;
        }
        if let Some(pause) = pool.backoff() {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = pool.closed.cancelled() => return,
            }
        }
        let Ok(permit) = Arc::clone(&shared.refills).acquire_owned().await else {
            return;
        };
        shared.yield_to_starts().await;
        let Some(claim) = pool.claim() else {
            continue;
        };
        let Some(inner) = owner.upgrade() else {
            return;
        };
        let runtime = NamespaceContainer { inner };
        let template = pool.template.clone();
        let closed = pool.closed.clone();
        runtime.clone().inner.tracker.spawn(async move {
            // A start still under way when the pool closes is dropped (which removes what it
            // made), not awaited.
            let started = tokio::select! {
                started = runtime.start_warm(&template) => Some(started),
                () = closed.cancelled() => None,
            };
            drop(runtime);
            drop(permit);
            if let Some(started) = started {
                claim.finish(started);
            }
        });
    }
}

impl NamespaceContainer {
    /// Keeps `count` containers of `config` started ahead for its spawns, and returns once
    /// they are ready; `0` ends the pool.
    ///
    /// A [`spawn`](Self::spawn), [`spawn_captured`](Self::spawn_captured) or
    /// [`spawn_interactive`](Self::spawn_interactive) whose config differs from `config` only
    /// in what its command brings (command, args, environment, working directory, timeouts,
    /// output limit, stdio) takes one of them instead of starting a container: its command
    /// starts in a few milliseconds in place of a runtime's whole start. The container is
    /// the one its config would have made, started ahead and never used before; the spawn
    /// uses it once, as a cold spawn uses its own, and it is removed when the command ends. A
    /// config that differs in anything else (a mount, a limit, the network, the image, the
    /// user) is spawned cold, as is every spawn while the pool is empty: never an error.
    ///
    /// Each container taken is replaced in the background: at most
    /// [`warm_refills`](crate::NamespaceContainerBuilder::warm_refills) start at once for all
    /// pools, and a refill lets a warm spawn's start go first (until its command runs), and
    /// cold launches when as many are under way as refills may run (up to 250 ms). Warm
    /// containers die with their owner like every other (their launcher ends with its control
    /// socket) and are swept by the next process; [`close`](Self::close) ends the pools.
    /// [`warm_pools`](Self::warm_pools) shows how each is doing.
    ///
    /// What a warm container fixed when it started: an image given by tag is resolved then
    /// (spawns take what the pool started); a bind's source is the file or directory found
    /// then (a spawn after it was replaced on the host goes cold, and the container is
    /// dropped); its volumes are held, so that [`remove_volume`](Self::remove_volume) is
    /// `InUse` while a pool of them lives. Its init keeps the config's `PATH` and no other
    /// variable of it: the spawns bring their own environment.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), oci_sandbox::SandboxError> {
    /// use oci_sandbox::{NamespaceContainer, SandboxConfig};
    ///
    /// let runtime = NamespaceContainer::new().await?;
    /// let policy = SandboxConfig::default();
    /// runtime.warm(&NamespaceContainer::build_config(&policy, "true", vec![]), 4).await?;
    /// // Served by a warm container: another command, the same spec.
    /// let echo = NamespaceContainer::build_config(&policy, "echo", vec!["hi".into()]);
    /// let output = runtime.spawn(&echo).await?.wait_with_output().await?;
    /// assert_eq!(output.stdout, b"hi\n");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] for a config with its own
    /// [`id`](ContainerConfig::id), [`name`](ContainerConfig::name) or
    /// [`spec_hook`](ContainerConfig::spec_hook) (no warm container can serve it), and
    /// every error of [`spawn`](Self::spawn) the config or the runtime gives: the first
    /// container that fails to start fails the call, and a pool made by it is removed.
    ///
    /// The pool is set when `warm` is called, before its future is polled: spawns find it at
    /// once, and its containers start in the background (`tokio::spawn(runtime.warm(..))`
    /// warms without waiting).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future only stops the waiting.
    pub fn warm(
        &self,
        config: &ContainerConfig,
        count: usize,
    ) -> impl std::future::Future<Output = Result<(), SandboxError>> + Send + 'static {
        let set = self.set_warm(config, count);
        let runtime = self.clone();
        async move {
            match set? {
                Some((pool, key, made, before)) => {
                    runtime.await_fill(pool, key, made, before, count).await
                }
                None => Ok(()),
            }
        }
    }

    /// The synchronous half of [`warm`](Self::warm): the pool set (made, changed or ended)
    /// and its refiller started. Returns the pool to wait for, its key, whether this call
    /// made it and the target it had.
    #[allow(clippy::type_complexity)]
    fn set_warm(
        &self,
        config: &ContainerConfig,
        count: usize,
    ) -> Result<Option<(Arc<Pool>, String, bool, usize)>, SandboxError> {
        let key = key_of(config).ok_or_else(|| {
            SandboxError::invalid(
                "warm",
                "a config with its own id, name or spec hook cannot be served by a warm \
                 container",
            )
        })?;
        // Checked when its first container starts (with its image applied, as a spawn's).
        let warm = &self.inner.warm;
        if count == 0 {
            if let Some(pool) = warm.pools().remove(&key) {
                pool.close();
            }
            return Ok(None);
        }
        let (pool, made, before) = {
            let mut pools = warm.pools();
            match pools.get(&key) {
                Some(pool) => {
                    let pool = Arc::clone(pool);
                    drop(pools);
                    let before = pool.set_target(count);
                    (pool, false, before)
                }
                None => {
                    let mut template = config.clone();
                    template.env.retain(|(k, _)| k == "PATH");
                    let pool = Arc::new(Pool {
                        template,
                        state: Mutex::new(PoolState {
                            target: count,
                            ..PoolState::default()
                        }),
                        wake: Notify::new(),
                        closed: tokio_util::sync::CancellationToken::new(),
                        filled: watch::channel(0).0,
                        refiller: Mutex::default(),
                    });
                    pools.insert(key.clone(), Arc::clone(&pool));
                    (pool, true, 0)
                }
            }
        };
        if made {
            let refiller = refill(
                Arc::downgrade(&self.inner),
                Arc::clone(&warm.shared),
                Arc::clone(&pool),
            );
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(refiller)),
                // Outside a runtime: the first poll of `warm`'s future starts it.
                Err(_) => pool.lock_refiller().0 = Some(Box::pin(refiller)),
            }
        }
        pool.wake.notify_one();
        Ok(Some((pool, key, made, before)))
    }

    /// The asynchronous half of [`warm`](Self::warm): waits until `pool` holds `count`
    /// ready (or closes, or lowers its target), or a start fails; a pool this call made then
    /// goes, one it changed gets its target back.
    async fn await_fill(
        &self,
        pool: Arc<Pool>,
        key: String,
        made: bool,
        before: usize,
        count: usize,
    ) -> Result<(), SandboxError> {
        let pending = pool.lock_refiller().0.take();
        if let Some(refiller) = pending {
            tokio::spawn(refiller);
        }
        let mut filled = pool.filled.subscribe();
        let failure = loop {
            {
                let mut state = pool.lock();
                if state.closed || state.ready.len() >= state.target.min(count) {
                    return Ok(());
                }
                if state.failed > state.failed_at_set {
                    let text = state.last_error.clone().unwrap_or_default();
                    break state.last_failure.take().unwrap_or(SandboxError::Process {
                        context: "starting a warm container",
                        source: std::io::Error::other(text),
                    });
                }
            }
            if filled.changed().await.is_err() {
                return Ok(());
            }
        };
        // (Unless replaced, or changed again, meanwhile.)
        let warm = &self.inner.warm;
        if made {
            let mut pools = warm.pools();
            if pools.get(&key).is_some_and(|p| Arc::ptr_eq(p, &pool)) {
                pools.remove(&key);
                drop(pools);
                pool.close();
            }
        } else if pool.lock().target == count {
            pool.set_target(before);
        }
        Err(failure)
    }

    /// How each warm pool is doing (see [`warm`](Self::warm)).
    pub fn warm_pools(&self) -> Vec<WarmPoolStats> {
        self.inner.warm.stats()
    }

    /// Starts a warm container of `template`: a spawn's container whose command is not sent.
    async fn start_warm(&self, template: &ContainerConfig) -> Result<WarmContainer, SandboxError> {
        use tracing::Instrument;
        let id = crate::host::state::new_id();
        let span = tracing::debug_span!(
            "container",
            %id,
            runtime = %self.runtime(),
            mode = "warm",
        );
        let (live, applied) = self
            .launch_live(template, super::LaunchMode::Warm, id, None, Vec::new())
            .instrument(span)
            .await?;
        let read = applied.clone();
        let binds = crate::sys::blocking("reading a warm container's bind sources", move || {
            Ok(bind_sources_blocking(&read))
        })
        .await?;
        Ok(WarmContainer {
            live,
            applied,
            binds,
        })
    }

    /// Closes the warm pools (see [`close`](Self::close)).
    pub(crate) fn close_warm_pools(&self) {
        self.inner.warm.close_all();
    }

    /// The warm pools, for the spawns that take from them.
    pub(crate) fn warm_store(&self) -> &WarmPools {
        &self.inner.warm
    }
}
