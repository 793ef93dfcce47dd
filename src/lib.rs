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
//! let runtime = NamespaceContainer::new().await?; // runc from $PATH
//! let policy = SandboxConfig { timeout: Some(Duration::from_secs(5)), ..SandboxConfig::default() };
//! let config = NamespaceContainer::build_config(&policy, "python3", vec!["-c".into(), "print(6*7)".into()]);
//!
//! let output = runtime.spawn(&config).await?.wait_with_output().await?;
//! assert!(output.status.success());
//! assert_eq!(output.stdout, b"42\n");
//! runtime.close().await; // wait for background cleanup before exiting
//! # Ok(()) }
//! ```
//!
//! # What is what
//!
//! A [`NamespaceContainer`] is a configured OCI runtime (which runtime, its binary, a state
//! root, for gVisor its platform) that makes containers: build one per process and runtime,
//! clone it freely (it is an `Arc`). A [`SandboxConfig`] is a policy (filesystem, network,
//! limits, security); [`NamespaceContainer::build_config`] turns it and a command into a
//! [`ContainerConfig`], the concrete request. Each spawn makes one container for one
//! command; a [`Sandbox`] is one long-lived container for many commands.
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
//! # Exec for agents
//!
//! A tool call is one exec in a long-lived sandbox. Its command's lifetime is the exec's:
//! whatever it started in the background ends with it, so `wait_with_output` returns when the
//! command does. Every status says how it ended and what it used.
//!
//! ```no_run
//! use std::time::Duration;
//! use oci_sandbox::{ExecConfig, NamespaceContainer, OutputCap, OutputMode, SandboxConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), oci_sandbox::SandboxError> {
//! let runtime = NamespaceContainer::new().await?;
//! let policy = SandboxConfig {
//!     workdir: Some("/srv/agent-7".into()),           // mounted at /workspace, the cwd
//!     idle_lifetime: Some(Duration::from_secs(600)),  // closed after 10 idle minutes
//!     ..SandboxConfig::default()
//! };
//! let sandbox = runtime.start(&NamespaceContainer::build_config(&policy, "true", vec![])).await?;
//!
//! // A shell line with a 30 s limit, killed early if silent for 10 s; at most 64 KiB of
//! // each stream kept (head and tail), the whole spilled to files.
//! let call = ExecConfig {
//!     timeout: Some(Duration::from_secs(30)),
//!     idle_timeout: Some(Duration::from_secs(10)),
//!     ..ExecConfig::shell("pip list 2>&1 | tail -5")
//! };
//! let out = sandbox.exec(&call).await?
//!     .wait_with_output_capped(OutputCap::new(64 * 1024).spill_to("/var/tmp/call-1"))
//!     .await?;
//! println!("{} ({} bytes elided) {:?}", out.status, out.stdout_dropped, out.status.usage());
//!
//! // No limit for one exec: Some(Duration::MAX). A server as a background job, its log
//! // replayed from any offset by whoever asks later. Python buffers a pipe's or a file's
//! // output: run it with -u (or PYTHONUNBUFFERED=1) to stream it as it is written.
//! let server = ExecConfig { timeout: Some(Duration::MAX), ..ExecConfig::new("python3", ["-u", "-m", "http.server"]) };
//! let job = sandbox.spawn_job(&server, OutputMode::Combined).await?;
//! let _log = sandbox.attach(job.id(), 0)?;
//!
//! // Output as it is written (files the container writes, tailed), and a terminal.
//! let build = sandbox.exec_captured(&ExecConfig::shell("make -j2"), OutputMode::Separate).await?;
//! let _stream = build.output.stdout_stream();
//! let _shell = sandbox.exec_interactive(&ExecConfig { cwd: Some("/workspace".into()), ..ExecConfig::shell("bash") }).await?;
//! sandbox.close().await;
//! # Ok(()) }
//! ```
//!
//! # Lifecycle
//!
//! Every handle owns its container. Dropping it, cancelling the future that holds it, a
//! timeout or a panic kills the container, deletes it from the runtime and removes its bundle,
//! in a background task with a deadline; [`NamespaceContainer::close`] ends what is still open
//! and waits for those tasks (call it on shutdown).
//! Whatever a command started in the background ends with it.
//! Containers left by a process that crashed are removed by the next [`NamespaceContainer`]
//! built on the same state root.
//!
//! # Caveats
//!
//! - The library has no process-wide side effects: it never becomes a child subreaper and
//!   never reaps a process it did not spawn. Exit statuses come from its own init in every
//!   container (the launcher), exact on every runtime (`exit(137)` is a code, not a signal).
//! - A container dies with its owner: when the process that started it exits (even by
//!   `SIGKILL`), the container's init sees its control socket close and ends it.
//! - Building a [`NamespaceContainer`] raises the process's soft `RLIMIT_NOFILE` to its hard
//!   limit (once): each live sandbox holds two fds, so the common soft default of 1024 would cap
//!   a process at a few hundred sandboxes. This is the only process-wide setting it changes.
//! - Each runc/crun container runs as root with a host id range of its own (leased under
//!   `/run/oci-sandbox-id-ranges`) in a user namespace owned by that range.
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
//! host uid of its own. `tests/escape.rs` and `tests/escape_sandbox.rs` attack each of these
//! on every runtime; `docs/SECURITY.md` states what the boundary promises.

#![warn(missing_docs)]

// The README's Rust snippets compile as written.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

// The layers, lowest first; a module imports only from its own layer's modules and the
// layers below (tests/layers.rs checks it; docs/ARCHITECTURE.md has one line per module).
// 0. leaves
mod error;
mod runtimes;
mod status;
// 1. system calls, fds, processes
mod sys;
// 2. what the user configures
mod config;
// 3. config to OCI spec (pure)
mod spec;
// 4. the host: state dirs, bundles, cgroups, id ranges, capture files; the image store; the
//    snapshot store
mod host;
mod image;
mod snapshot;
// 5. the runtime CLI, the launcher's channel, the egress proxy
mod launcher;
mod net;
mod oci;
// 6. one task per container and per exec
mod supervisor;
// 7. the handles
mod handle;
// 8. the public API
mod backend;
mod container;
mod pool;
#[cfg(feature = "prometheus")]
mod prometheus;
mod sandbox;

pub use config::image::{
    Image, ImageProgress, ProgressStage, PulledImage, RegistryAuth, RegistryImage, RegistryLimits,
};
pub use config::network::{
    EGRESS_PROXY_PORT, EVENT_METHOD_MAX, EVENT_TEXT_MAX, EgressCounts, EgressDecision, EgressEvent,
    EgressPolicy, INJECTION_DEFAULT_PORTS,
};
pub use config::{
    Bind, ContainerConfig, ExecConfig, IntoArgs, Limits, MIN_MEMORY_LIMIT, MIN_PIDS_LIMIT, Mount,
    MountKind, Network, OutputMode, SandboxConfig, Security, SpecHook, Stdio, VolumeMount,
};
pub use container::{
    ContainerEntry, ImageLayer, NamespaceContainer, NamespaceContainerBuilder, UnenforcedLimits,
    WarmPoolStats,
};
pub use error::{
    ImageErrorKind, InterpreterErrorKind, RuntimeOp, SandboxError, SessionErrorKind,
    SnapshotErrorKind,
};

pub use handle::capture::ProcessCapture;
pub use handle::collect::OutputCap;
pub use handle::file::{FileReader, FileWriter};
pub use handle::job::Job;
pub use handle::process::ContainerProcess;
pub use handle::pty::{PtyReader, PtySession, PtyWriter};
pub use host::capture::{CapturedOutput, MAX_OUTPUT_LINE};
pub use host::sessions::{SandboxInfo, SandboxState};
pub use host::volumes::{MIN_VOLUME_SIZE, VolumeInfo, VolumeOptions};
pub use launcher::{FileKind, FileMetadata};
pub use nix::sys::signal::Signal;
pub use oci_spec::runtime::Spec;
pub use pool::SandboxPool;
#[cfg(feature = "prometheus")]
pub use prometheus::{PROMETHEUS_CONTENT_TYPE, encode_prometheus};
pub use runtimes::{GvisorPlatform, OciRuntime, PlatformChoice};
pub use sandbox::{
    Code, CodeContext, Execution, ExecutionError, ExecutionEvent, ExecutionStream, Language,
    MimeBundle,
};
pub use sandbox::{
    DirEntry, EgressEvents, FileEvent, FileEvents, HibernateOptions, MAX_CONCURRENT_EXECS,
    READ_FILE_LIMIT, RuntimeMetrics, Sandbox, SandboxMetrics, SandboxReading, SnapshotOptions,
};
pub use snapshot::Snapshot;
pub use spec::identity::{DEFAULT_USERNS_BASE, USERNS_SIZE};
pub use status::{ExitStatus, Output, SandboxExpiry, SandboxUsage, TimeHistogram, Usage};
