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
//!
//! # Caveats
//!
//! - The detached modes ([`NamespaceContainer::spawn_captured`],
//!   [`NamespaceContainer::spawn_interactive`]) get a container's exit status by being its
//!   init's parent: on the first such spawn the process makes itself a child subreaper
//!   (`PR_SET_CHILD_SUBREAPER`). Orphaned descendants of your own child processes are then
//!   re-parented to your process instead of to init; the library reaps only container
//!   processes and the runtimes' own helpers.
//! - With the foreground runtime of [`NamespaceContainer::spawn`], a process that calls
//!   `exit(128 + n)` cannot be told from one killed by signal `n` (the runtime reports both the
//!   same way); the detached modes report exact statuses on runc and crun.
//! - Root is required for now (cgroup limits, crun's mount namespace on hybrid cgroups).

#![warn(missing_docs)]

mod bundle;
mod capture;
mod cgroup;
mod config;
mod container;
mod crun_ns;
mod error;
mod gvisor;
mod process;
mod pty;
mod reaper;
mod runtime;
mod seccomp;
mod spec;
mod state;
mod userns;

pub use capture::{CapturedOutput, OutputMode, ProcessCapture};
pub use config::{
    Bind, ContainerConfig, Limits, Mount, MountKind, Network, SandboxConfig, Security, SpecHook,
    Stdio,
};
pub use container::{NamespaceContainer, NamespaceContainerBuilder, UnenforcedLimits};
pub use error::{RuntimeOp, SandboxError};
pub use gvisor::{GvisorPlatform, PlatformChoice};
pub use nix::sys::signal::Signal;
pub use oci_spec::runtime::Spec;
pub use process::{ContainerProcess, ExitStatus, Output};
pub use pty::{PtyReader, PtySession, PtyWriter};
pub use runtime::OciRuntime;
pub use userns::{DEFAULT_USERNS_BASE, USERNS_SIZE};
