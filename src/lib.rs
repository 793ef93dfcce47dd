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
//! # Three modes, and long-lived sandboxes
//!
//! [`NamespaceContainer::spawn`] (piped stdio, like `tokio::process::Child`),
//! [`spawn_captured`](NamespaceContainer::spawn_captured) (files tailed as streams) and
//! [`spawn_interactive`](NamespaceContainer::spawn_interactive) (a PTY) each run one command in
//! a fresh container. For many commands in one workspace, [`NamespaceContainer::start`] starts
//! a [`Sandbox`] whose [`exec`](Sandbox::exec), [`exec_captured`](Sandbox::exec_captured) and
//! [`exec_interactive`](Sandbox::exec_interactive) return the same handles in about a
//! millisecond (an in-container launcher forks them); [`SandboxPool`] keeps sandboxes started
//! ahead of need.
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
//! - Containers run detached, and the library gets an exit status by being the init's parent:
//!   on the first spawn the process makes itself a child subreaper
//!   (`PR_SET_CHILD_SUBREAPER`). Orphaned descendants of your own child processes are then
//!   re-parented to your process instead of to init; the library reaps only container
//!   processes and the runtimes' own helpers.
//! - On gVisor the status passes through the sandbox process as a code, so a process that
//!   calls `exit(128 + n)` reads as killed by signal `n` there.
//! - As root, a config's writable binds are handed (`chown -R`) to the user namespace's
//!   unprivileged range unless [`Security::user_namespace`] is off.
//! - Without root (rootless: runc and runsc; crun needs root on hybrid cgroups), memory, pids
//!   and CPU limits cannot be enforced on cgroup v1: see [`UnenforcedLimits`].
//!
//! # Containment
//!
//! The default policy drops every capability, sets `no_new_privileges`, applies a seccomp
//! profile (no mounts, namespaces, `ptrace`, modules, kexec, BPF, keyring...), masks `/proc`
//! paths, mounts the root read-only, hides `/home`, `/root`, `/etc/shadow` and the host's
//! environment, gives the container no network, and as root maps its root to an unprivileged
//! host uid. `tests/escape.rs` attacks each of these on every runtime.

#![warn(missing_docs)]

mod bundle;
mod capture;
mod cgroup;
mod config;
mod container;
mod crun_ns;
mod error;
mod exec;
mod fs_tree;
mod gvisor;
mod launcher;
mod pidfd;
mod pool;
mod process;
mod pty;
mod runtime;
mod sandbox;
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
pub use pool::SandboxPool;
pub use process::{ContainerProcess, ExitStatus, Output};
pub use pty::{PtyReader, PtySession, PtyWriter};
pub use runtime::OciRuntime;
pub use sandbox::{ExecConfig, MAX_CONCURRENT_EXECS, Sandbox};
pub use userns::{DEFAULT_USERNS_BASE, USERNS_SIZE};
