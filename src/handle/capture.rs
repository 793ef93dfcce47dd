//! [`ProcessCapture`], the handle of [`spawn_captured`](crate::NamespaceContainer::spawn_captured).

use std::sync::Arc;

use crate::error::SandboxError;
use crate::host::capture::CapturedOutput;
use crate::status::ExitStatus;
use crate::supervisor::Supervised;

/// The process and its captured output, from [`NamespaceContainer::spawn_captured`].
///
/// Dropping it kills the process (like every handle), but the files stay as long as
/// `output` or a stream of it is alive.
///
/// [`NamespaceContainer::spawn_captured`]: crate::NamespaceContainer::spawn_captured
#[derive(Debug)]
pub struct ProcessCapture {
    /// The output files and their streams.
    pub output: Arc<CapturedOutput>,
    pub(crate) inner: Supervised,
}

impl ProcessCapture {
    pub(crate) fn new(output: CapturedOutput, inner: Supervised) -> Self {
        ProcessCapture {
            output: Arc::new(output),
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

    crate::handle::process::supervised_handle_methods!();
}
