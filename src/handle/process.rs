//! [`ContainerProcess`], the handle of [`spawn`](crate::NamespaceContainer::spawn), and the
//! methods every handle shares.

use crate::error::SandboxError;
use crate::handle::collect::{OutputCap, collect};
use crate::status::ExitStatus;
use crate::status::Output;
use crate::supervisor::Supervised;
use tokio::process::ChildStderr;
use tokio::process::ChildStdin;
use tokio::process::ChildStdout;

/// `wait`, `try_wait`, `start_kill`, `kill` and `signal` for a handle whose `inner` is a
/// [`Supervised`] (the detached handles; `ContainerProcess` also closes its stdin on `wait`).
macro_rules! supervised_handle_methods {
    () => {
        /// Waits for the process to end (for captured output, the files are final then).
        ///
        /// # Cancel safety
        ///
        /// Cancel safe and idempotent.
        pub async fn wait(&self) -> Result<ExitStatus, SandboxError> {
            self.inner.wait().await
        }

        /// The status if the process has ended, without waiting.
        pub fn try_wait(&self) -> Result<Option<ExitStatus>, SandboxError> {
            self.inner.try_wait()
        }

        /// Asks for the process to be killed, without waiting.
        pub fn start_kill(&self) {
            self.inner.start_kill();
        }

        /// Kills the process and waits for it to end.
        pub async fn kill(&self) -> Result<(), SandboxError> {
            self.start_kill();
            self.wait().await.map(drop)
        }

        /// Sends `signal` to the process.
        pub async fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), SandboxError> {
            self.inner.signal(signal).await
        }
    };
}
pub(crate) use supervised_handle_methods;

/// A process running in a container, made by [`NamespaceContainer::spawn`]: like
/// [`tokio::process::Child`], with the container's stdio pipes.
///
/// # Dropping
///
/// Unlike `tokio::process::Child`, dropping the handle ends the process: the container is
/// killed and deleted and its bundle removed, by a background task with a deadline.
/// [`NamespaceContainer::close`] waits for such background work.
///
/// [`NamespaceContainer::spawn`]: crate::NamespaceContainer::spawn
/// [`NamespaceContainer::close`]: crate::NamespaceContainer::close
#[derive(Debug)]
pub struct ContainerProcess {
    /// The container's stdin, when [`Stdio::Piped`](crate::Stdio::Piped).
    pub stdin: Option<ChildStdin>,
    /// The container's stdout, when piped.
    pub stdout: Option<ChildStdout>,
    /// The container's stderr, when piped.
    pub stderr: Option<ChildStderr>,
    inner: Supervised,
    /// Most bytes of each stream [`wait_with_output`](Self::wait_with_output) keeps.
    output_limit: Option<u64>,
}

impl ContainerProcess {
    pub(crate) fn new(
        inner: Supervised,
        stdin: Option<ChildStdin>,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
        output_limit: Option<u64>,
    ) -> Self {
        ContainerProcess {
            stdin,
            stdout,
            stderr,
            inner,
            output_limit,
        }
    }

    /// This process's id, unique on this machine: a spawn's is its container's; a command
    /// exec'd in a [`Sandbox`](crate::Sandbox) has its own (`<sandbox id>-<n>`).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The id of the container it runs in: a spawn's own, or the sandbox's.
    pub fn sandbox_id(&self) -> &str {
        &self.inner.sandbox_id
    }

    /// Waits for the process to end, and for its container to be removed.
    ///
    /// Closes stdin first (as `tokio::process::Child::wait` does), so that a process reading
    /// it sees end of file instead of waiting forever.
    ///
    /// # Errors
    ///
    /// [`SandboxError::CommandNotFound`] or [`SandboxError::Runtime`] when the runtime could
    /// not start the process.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, and idempotent: after it returned once, it returns the same again.
    pub async fn wait(&mut self) -> Result<ExitStatus, SandboxError> {
        self.stdin.take();
        self.inner.wait().await
    }

    /// The status if the process has ended, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, SandboxError> {
        self.inner.try_wait()
    }

    /// Waits for the process while collecting its piped stdout and stderr, each within the
    /// output limit (the config's `output_limit`; 64 MiB by default): past it, the first and
    /// the last half of the limit are kept and the bytes between are counted in
    /// [`Output::stdout_dropped`] / [`Output::stderr_dropped`]. The process is not stopped
    /// for writing more.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: output read so far is lost, and the process is killed (the handle is
    /// dropped).
    pub async fn wait_with_output(self) -> Result<Output, SandboxError> {
        let cap = match self.output_limit {
            Some(limit) => OutputCap::new(limit),
            None => OutputCap::unlimited(),
        };
        self.wait_with_output_capped(cap).await
    }

    /// [`wait_with_output`](Self::wait_with_output) under an explicit cap: how much of the
    /// head and the tail of each stream to keep, and optionally a directory where each whole
    /// stream is written (`stdout`, `stderr`).
    ///
    /// ```no_run
    /// # async fn demo(sandbox: &oci_sandbox::Sandbox) -> Result<(), oci_sandbox::SandboxError> {
    /// use oci_sandbox::{ExecConfig, OutputCap};
    ///
    /// let out = sandbox
    ///     .exec(&ExecConfig::shell("make 2>&1"))
    ///     .await?
    ///     .wait_with_output_capped(OutputCap::new(32 * 1024).spill_to("/var/tmp/build-7"))
    ///     .await?;
    /// if out.stdout_dropped > 0 {
    ///     println!("{} bytes elided; the whole log is in /var/tmp/build-7/stdout", out.stdout_dropped);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`wait`](Self::wait); [`SandboxError::Process`] when a stream cannot be read
    /// or a spill file created (one that exists is never overwritten).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as [`wait_with_output`](Self::wait_with_output).
    pub async fn wait_with_output_capped(mut self, cap: OutputCap) -> Result<Output, SandboxError> {
        self.stdin.take();
        let (stdout, stderr) = (self.stdout.take(), self.stderr.take());
        let (status, stdout, stderr) = tokio::join!(
            self.inner.wait(),
            collect(stdout, &cap, "stdout"),
            collect(stderr, &cap, "stderr")
        );
        let io = |source| SandboxError::Process {
            context: "reading the container's output",
            source,
        };
        let (stdout, stderr) = (stdout.map_err(io)?, stderr.map_err(io)?);
        Ok(Output {
            status: status?,
            stdout: stdout.bytes,
            stderr: stderr.bytes,
            stdout_dropped: stdout.dropped,
            stderr_dropped: stderr.dropped,
        })
    }

    /// Asks for the process to be killed, without waiting.
    pub fn start_kill(&mut self) {
        self.inner.start_kill();
    }

    /// Kills the process (and everything in its container) and waits for it to end.
    pub async fn kill(&mut self) -> Result<(), SandboxError> {
        self.start_kill();
        self.wait().await.map(drop)
    }

    /// Sends `signal` to the process (the container's init).
    ///
    /// # Errors
    ///
    /// [`SandboxError::Runtime`] when the container is no longer running.
    pub async fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), SandboxError> {
        self.inner.signal(signal).await
    }
}
