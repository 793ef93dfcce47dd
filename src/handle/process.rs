//! [`ContainerProcess`], the handle of [`spawn`](crate::NamespaceContainer::spawn), and the
//! methods every handle shares.

use crate::error::SandboxError;
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
}

impl ContainerProcess {
    pub(crate) fn new(
        inner: Supervised,
        stdin: Option<ChildStdin>,
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
    ) -> Self {
        ContainerProcess {
            stdin,
            stdout,
            stderr,
            inner,
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

    /// Waits for the process while collecting all of its piped stdout and stderr.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: output read so far is lost, and the process is killed (the handle is
    /// dropped).
    pub async fn wait_with_output(mut self) -> Result<Output, SandboxError> {
        use tokio::io::AsyncReadExt;
        async fn read_all<R: tokio::io::AsyncRead + Unpin>(
            r: Option<R>,
        ) -> std::io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                r.read_to_end(&mut buf).await?;
            }
            Ok(buf)
        }
        self.stdin.take();
        let (stdout, stderr) = (self.stdout.take(), self.stderr.take());
        let (status, stdout, stderr) =
            tokio::join!(self.inner.wait(), read_all(stdout), read_all(stderr));
        let io = |source| SandboxError::Process {
            context: "reading the container's output",
            source,
        };
        Ok(Output {
            status: status?,
            stdout: stdout.map_err(io)?,
            stderr: stderr.map_err(io)?,
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
