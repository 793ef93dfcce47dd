//! The backend seam: where a backend other than the local runtime CLI (a Kubernetes one,
//! later: see SCALE-OUT in docs/ARCHITECTURE.md) plugs in under the same public API.
//!
//! The public handles never talk to the runtime CLI. Each sits on two things a backend
//! provides:
//!
//! - a [`Supervised`](crate::supervisor::Supervised): the handle side of a supervisor task (the outcome as a watch channel,
//!   kill requests, signals and resizes). The local backend's supervisors are
//!   [`supervisor::container`](crate::supervisor::container) (the runtime CLI, a pidfd on the
//!   init) and [`supervisor::exec`](crate::supervisor::exec); a remote backend runs its own
//!   task and publishes into the same channels (a pod's phase, an exec's status object);
//! - for a command exec'd in a container, a
//!   [`CommandChannel`](crate::supervisor::exec::CommandChannel): its end, a way to signal and
//!   resize it. The local one is the launcher's per-exec socket pair
//!   ([`launcher::Connection`](crate::launcher::Connection)); a remote one would be the
//!   `pods/exec` websocket's status and resize channels. The exec supervisor (timeout,
//!   output limit, kill, OOM attribution) works on either.
//!
//! What stays local-only, and how a remote backend would answer it:
//!
//! | operation | local | remote |
//! |---|---|---|
//! | launch (`spawn*`, `start`) | bundle, runtime CLI, launcher handshake (`container::launch`) | a pod or agent-sandbox claim, readiness awaited |
//! | piped stdio | fds passed to the launcher, `tokio::process` pipe types | the exec stream's channels (a public boxed-stream type would replace the pipe types) |
//! | captured output | files the container writes, tailed | exec writing files in the pod and following them, or the log endpoint |
//! | PTY | the controller fd (or the gVisor relay's socket) in `AsyncFd` | exec with `tty: true` and the resize channel |
//! | cleanup | pidfd kill, state and cgroup removal, the sweep | owner references, labels and a sweep by label |
//!
//! Only the local backend exists; the seam is these two types, kept free of local-only
//! requirements, not a trait object threaded through the API.
