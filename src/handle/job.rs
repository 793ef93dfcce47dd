//! [`Job`], a background command of a [`Sandbox`](crate::Sandbox), and the sandbox's registry
//! of them.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

use crate::error::SandboxError;
use crate::handle::capture::ProcessCapture;
use crate::host::capture::CapturedOutput;
use crate::status::ExitStatus;
use crate::supervisor::Supervised;

/// A command running in the background of a [`Sandbox`](crate::Sandbox), from
/// [`Sandbox::spawn_job`](crate::Sandbox::spawn_job).
///
/// Unlike every other handle, dropping it does not end the command: the sandbox keeps the
/// job, lists it in [`Sandbox::jobs`](crate::Sandbox::jobs), finds it again by its id
/// ([`Sandbox::job`](crate::Sandbox::job)) and replays its output from any offset
/// ([`Sandbox::attach`](crate::Sandbox::attach)), until the job is forgotten
/// ([`Sandbox::forget_job`](crate::Sandbox::forget_job)) or the sandbox closes. Its timeout
/// is its exec config's, as for any exec: pass `Some(Duration::MAX)` for none.
///
/// Cloning it gives another handle on the same job.
#[derive(Debug, Clone)]
pub struct Job {
    inner: Arc<JobInner>,
}

#[derive(Debug)]
struct JobInner {
    command: Vec<String>,
    started: SystemTime,
    output: Arc<CapturedOutput>,
    process: Supervised,
}

impl Job {
    pub(crate) fn new(command: Vec<String>, capture: ProcessCapture) -> Self {
        Job {
            inner: Arc::new(JobInner {
                command,
                started: SystemTime::now(),
                output: capture.output,
                process: capture.inner,
            }),
        }
    }

    /// The job's id (`<sandbox id>-<n>`, as every exec's), unique on this machine.
    pub fn id(&self) -> &str {
        &self.inner.process.id
    }

    /// The id of the sandbox it runs in.
    pub fn sandbox_id(&self) -> &str {
        &self.inner.process.sandbox_id
    }

    /// The program and its arguments.
    pub fn command(&self) -> &[String] {
        &self.inner.command
    }

    /// When it was started.
    pub fn started(&self) -> SystemTime {
        self.inner.started
    }

    /// Its captured output: the files, their streams, whether the output limit cut them.
    pub fn output(&self) -> &Arc<CapturedOutput> {
        &self.inner.output
    }

    /// Its stdout (in [`OutputMode::Combined`](crate::OutputMode::Combined), stdout and
    /// stderr) from byte `offset` on, following it until the job ends: 0 replays everything.
    pub fn attach(
        &self,
        offset: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + use<> {
        self.inner.output.stdout_stream_from(offset)
    }

    /// Waits for the job to end and returns its status. Cancel safe and idempotent.
    pub async fn wait(&self) -> Result<ExitStatus, SandboxError> {
        self.inner.process.wait().await
    }

    /// The status if the job has ended, without waiting.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>, SandboxError> {
        self.inner.process.try_wait()
    }

    /// Asks for the job to be killed (with everything it started), without waiting.
    pub fn start_kill(&self) {
        self.inner.process.start_kill();
    }

    /// Kills the job (with everything it started) and waits for its end.
    pub async fn kill(&self) -> Result<(), SandboxError> {
        self.start_kill();
        self.wait().await.map(drop)
    }

    /// Sends `signal` to the job's process group.
    pub async fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), SandboxError> {
        self.inner.process.signal(signal).await
    }

    fn ended(&self) -> bool {
        self.inner.process.try_wait().map_or(true, |s| s.is_some())
    }
}

/// The jobs of one sandbox, in start order. Ended jobs stay listed (with their status and
/// output) until forgotten; past [`JobRegistry::MAX_ENDED`] of them, the oldest go.
#[derive(Debug, Default)]
pub(crate) struct JobRegistry {
    jobs: Mutex<Vec<Job>>,
}

impl JobRegistry {
    /// Ended jobs kept listed at most.
    pub const MAX_ENDED: usize = 256;

    pub fn insert(&self, job: Job) {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.push(job);
        let ended = jobs.iter().filter(|j| j.ended()).count();
        if ended > Self::MAX_ENDED {
            let mut excess = ended - Self::MAX_ENDED;
            jobs.retain(|j| {
                let drop = excess > 0 && j.ended();
                excess -= usize::from(drop);
                !drop
            });
        }
    }

    pub fn list(&self) -> Vec<Job> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn get(&self, id: &str) -> Option<Job> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.iter().find(|j| j.id() == id).cloned()
    }

    /// Forgets every job (the sandbox has closed).
    pub fn clear(&self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn remove(&self, id: &str) -> Option<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let at = jobs.iter().position(|j| j.id() == id)?;
        Some(jobs.remove(at))
    }
}
