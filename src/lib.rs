//! Async, Tokio-native sandboxes: run untrusted commands inside Linux containers through an
//! OCI runtime (runc, crun, or gVisor's runsc).
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use oci_sandbox::{NamespaceContainer, SandboxConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), oci_sandbox::SandboxError> {
//! let sandbox = NamespaceContainer::new().await?; // runc from $PATH
//! let policy = SandboxConfig { timeout: Some(Duration::from_secs(5)), ..SandboxConfig::default() };
//! let config = NamespaceContainer::build_config(&policy, "python3", vec!["-c".into(), "print(6*7)".into()]);
//!
//! let output = sandbox.spawn(&config).await?.wait_with_output().await?;
//! assert!(output.status.success());
//! assert_eq!(output.stdout, b"42\n");
//! sandbox.close().await; // wait for background cleanup before exiting
//! # Ok(()) }
//! ```
//!
//! # Lifecycle
//!
//! Every handle owns its container. Dropping it, cancelling the future that holds it, a
//! timeout or a panic kills the container, deletes it from the runtime and removes its bundle,
//! in a background task with a deadline; [`NamespaceContainer::close`] waits for those tasks.
//! Containers left by a process that crashed are removed by the next [`NamespaceContainer`]
//! built on the same state root.

#![warn(missing_docs)]

mod bundle;
mod capture;
mod config;
mod container;
mod crun_ns;
mod error;
mod gvisor;
mod process;
mod pty;
mod reaper;
mod runtime;
mod spec;
mod state;

pub use capture::{CapturedOutput, OutputMode, ProcessCapture};
pub use config::{
    Bind, ContainerConfig, Limits, Mount, MountKind, Network, SandboxConfig, Security, SpecHook,
    Stdio,
};
pub use container::{NamespaceContainer, NamespaceContainerBuilder};
pub use error::{RuntimeOp, SandboxError};
pub use gvisor::{GvisorPlatform, PlatformChoice};
pub use nix::sys::signal::Signal;
pub use oci_spec::runtime::Spec;
pub use process::{ContainerProcess, ExitStatus, Output};
pub use pty::{PtyReader, PtySession, PtyWriter};
pub use runtime::OciRuntime;
