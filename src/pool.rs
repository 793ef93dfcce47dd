//! A warm pool of long-lived sandboxes, started ahead of need.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use crate::config::ContainerConfig;
use crate::container::NamespaceContainer;
use crate::error::SandboxError;
use crate::sandbox::Sandbox;

/// Keeps `size` [`Sandbox`]es of one config started ahead of need, and hands one out per task:
/// a caller gets a sandbox without paying its start, and the pool starts a replacement in the
/// background.
///
/// A handed-out sandbox belongs to its caller: dropping or closing it destroys it, and it is
/// never given to another task unless the caller hands it back with
/// [`recycle`](Self::recycle) (for a task that trusts the next one with its files).
///
/// ```no_run
/// # async fn demo() -> Result<(), oci_sandbox::SandboxError> {
/// use oci_sandbox::{ExecConfig, NamespaceContainer, SandboxConfig, SandboxPool};
///
/// let runtime = NamespaceContainer::new().await?;
/// let config = NamespaceContainer::build_config(&SandboxConfig::default(), "true", vec![]);
/// let pool = SandboxPool::new(&runtime, &config, 4).await?;
/// let sandbox = pool.get().await?; // ready at once; the pool starts another
/// let out = sandbox.exec(&ExecConfig::new("uname", vec![])).await?.wait_with_output().await?;
/// drop(sandbox); // destroyed, never reused
/// pool.close().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SandboxPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runtime: NamespaceContainer,
    /// The background starts, which `close` waits for.
    refills: tokio_util::task::TaskTracker,
    config: ContainerConfig,
    size: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Sandbox>,
    starting: usize,
    closed: bool,
}

impl SandboxPool {
    /// Starts `size` sandboxes of `config` (concurrently) and returns when they are ready.
    ///
    /// # Errors
    ///
    /// The first error of [`NamespaceContainer::start`] (a bad config fails here, not at the
    /// first [`get`](Self::get)); the sandboxes already started are destroyed.
    pub async fn new(
        runtime: &NamespaceContainer,
        config: &ContainerConfig,
        size: usize,
    ) -> Result<Self, SandboxError> {
        let mut config = config.clone();
        config.id = None;
        let starts = (0..size).map(|_| runtime.start(&config));
        let started = futures::future::join_all(starts).await;
        let mut ready = VecDeque::with_capacity(size);
        for s in started {
            ready.push_back(s?);
        }
        Ok(SandboxPool {
            inner: Arc::new(Inner {
                runtime: runtime.clone(),
                refills: tokio_util::task::TaskTracker::new(),
                config,
                size,
                state: Mutex::new(State {
                    ready,
                    ..State::default()
                }),
            }),
        })
    }

    /// A started sandbox for the caller alone: a ready one if there is one (one whose init has
    /// died is discarded), else one started now. Either way a replacement starts in the
    /// background.
    ///
    /// # Errors
    ///
    /// [`SandboxError::SandboxEnded`] once the pool is closed; those of
    /// [`NamespaceContainer::start`] when none was ready.
    pub async fn get(&self) -> Result<Sandbox, SandboxError> {
        loop {
            let taken = {
                let mut state = self.state();
                if state.closed {
                    return Err(SandboxError::SandboxEnded {
                        id: "pool".into(),
                        status: None,
                    });
                }
                state.ready.pop_front()
            };
            self.refill();
            match taken {
                Some(sandbox) if sandbox.ended().is_none() => return Ok(sandbox),
                Some(dead) => {
                    tracing::warn!(
                        id = dead.id(),
                        "discarding a pooled sandbox whose init died"
                    );
                    continue;
                }
                None => return self.inner.runtime.start(&self.inner.config).await,
            }
        }
    }

    /// Puts `sandbox` back, first in line for the next [`get`](Self::get), files and all: only
    /// for callers that mean to share it. A sandbox that has ended, or one too many, is destroyed.
    pub fn recycle(&self, sandbox: Sandbox) {
        let mut state = self.state();
        if !state.closed && sandbox.ended().is_none() && state.ready.len() < self.inner.size {
            // Next in line.
            state.ready.push_front(sandbox);
        }
    }

    /// How many sandboxes wait, started.
    pub fn ready(&self) -> usize {
        self.state().ready.len()
    }

    /// Destroys the waiting sandboxes and stops refilling; handed-out ones are their owners'.
    pub async fn close(&self) {
        let ready: Vec<Sandbox> = {
            let mut state = self.state();
            state.closed = true;
            state.ready.drain(..).collect()
        };
        futures::future::join_all(ready.iter().map(Sandbox::close)).await;
        self.inner.refills.close();
        self.inner.refills.wait().await;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts sandboxes in the background until ready + starting reaches the size.
    fn refill(&self) {
        let missing = {
            let mut state = self.state();
            let missing = self
                .inner
                .size
                .saturating_sub(state.ready.len() + state.starting);
            state.starting += missing;
            missing
        };
        for _ in 0..missing {
            let pool: Weak<Inner> = Arc::downgrade(&self.inner);
            let runtime = self.inner.runtime.clone();
            let config = self.inner.config.clone();
            self.inner.refills.spawn(async move {
                let started = runtime.start(&config).await;
                let unwanted = match pool.upgrade() {
                    None => started.ok(),
                    Some(inner) => {
                        let mut state = inner.state.lock().unwrap_or_else(|e| e.into_inner());
                        state.starting -= 1;
                        match started {
                            Ok(sandbox) if !state.closed => {
                                state.ready.push_back(sandbox);
                                None
                            }
                            Ok(sandbox) => Some(sandbox),
                            Err(e) => {
                                tracing::warn!(error = %e, "the pool could not start a sandbox");
                                None
                            }
                        }
                    }
                };
                // Started for a pool that is closed or gone: destroyed before this task ends.
                if let Some(sandbox) = unwanted {
                    sandbox.close().await;
                }
            });
        }
    }
}
