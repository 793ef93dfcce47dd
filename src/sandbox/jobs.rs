//! Background jobs of a [`Sandbox`]: started, listed, found, attached to and forgotten.

use bytes::Bytes;
use futures::Stream;

use super::Sandbox;
use crate::config::{ExecConfig, OutputMode};
use crate::error::SandboxError;
use crate::handle::job::Job;

impl Sandbox {
    /// Starts `exec` as a background job: its output is captured to files (as
    /// [`exec_captured`](Self::exec_captured) does, within the output limit) and it runs on
    /// after the returned handle is dropped, until it ends, is killed, or the sandbox closes.
    ///
    /// ```no_run
    /// # async fn demo(sandbox: &oci_sandbox::Sandbox) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use futures::StreamExt;
    /// use oci_sandbox::{ExecConfig, OutputMode};
    ///
    /// let server = ExecConfig {
    ///     timeout: Some(Duration::MAX), // no limit for this one
    ///     ..ExecConfig::shell("python3 -u -m http.server 8000")
    /// };
    /// let id = sandbox.spawn_job(&server, OutputMode::Combined).await?.id().to_owned();
    /// // ... later, from anywhere that has the sandbox:
    /// let mut log = sandbox.attach(&id, 0)?;
    /// while let Some(chunk) = log.next().await {
    ///     print!("{}", String::from_utf8_lossy(&chunk?));
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`exec_captured`](Self::exec_captured).
    pub async fn spawn_job(
        &self,
        exec: &ExecConfig,
        mode: OutputMode,
    ) -> Result<Job, SandboxError> {
        let capture = self.exec_captured(exec, mode).await?;
        let mut command = vec![exec.command.clone()];
        command.extend(exec.args.iter().cloned());
        let job = Job::new(command, capture);
        self.inner.jobs.insert(job.clone());
        Ok(job)
    }

    /// The sandbox's jobs, running and ended (until forgotten), in start order.
    pub fn jobs(&self) -> Vec<Job> {
        self.inner.jobs.list()
    }

    /// The job with this id, if the sandbox has it.
    pub fn job(&self, id: &str) -> Option<Job> {
        self.inner.jobs.get(id)
    }

    /// The output of job `id` from byte `offset` on, following it until the job ends (see
    /// [`Job::attach`]): a client that reconnects passes the number of bytes it already has.
    ///
    /// # Errors
    ///
    /// [`SandboxError::NoSuchJob`] when the sandbox has no such job.
    pub fn attach(
        &self,
        id: &str,
        offset: u64,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin + use<>, SandboxError>
    {
        Ok(self.job_or_error(id)?.attach(offset))
    }

    /// Removes job `id` from the sandbox's list. A job still running is killed once no
    /// handle of it is left; its output files go with the last handle or stream.
    ///
    /// # Errors
    ///
    /// [`SandboxError::NoSuchJob`] when the sandbox has no such job.
    pub fn forget_job(&self, id: &str) -> Result<Job, SandboxError> {
        self.inner
            .jobs
            .remove(id)
            .ok_or_else(|| self.no_such_job(id))
    }

    fn job_or_error(&self, id: &str) -> Result<Job, SandboxError> {
        self.job(id).ok_or_else(|| self.no_such_job(id))
    }

    fn no_such_job(&self, id: &str) -> SandboxError {
        SandboxError::NoSuchJob {
            sandbox: self.id().to_owned(),
            job: id.to_owned(),
        }
    }
}
