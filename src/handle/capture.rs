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
    inner: Supervised,
}

impl ProcessCapture {
    pub(crate) fn new(output: CapturedOutput, inner: Supervised) -> Self {
        ProcessCapture {
            output: Arc::new(output),
            inner,
        }
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    crate::handle::process::supervised_handle_methods!();
}
