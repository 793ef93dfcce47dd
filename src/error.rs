//! [`SandboxError`]: every way a sandbox operation can fail.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::runtimes::OciRuntime;

/// The runtime subcommand that failed, carried by [`SandboxError::Runtime`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RuntimeOp {
    /// `<runtime> --version`.
    Version,
    /// `<runtime> run` (create, start and wait in one call).
    Run,
    /// `<runtime> kill`.
    Kill,
    /// `<runtime> delete`.
    Delete,
    /// `<runtime> list`.
    List,
    /// `runsc checkpoint`.
    Checkpoint,
    /// `runsc restore`.
    Restore,
    /// `<runtime> exec`.
    Exec,
}

impl std::fmt::Display for RuntimeOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeOp::Version => "version",
            RuntimeOp::Run => "run",
            RuntimeOp::Kill => "kill",
            RuntimeOp::Delete => "delete",
            RuntimeOp::List => "list",
            RuntimeOp::Checkpoint => "checkpoint",
            RuntimeOp::Restore => "restore",
            RuntimeOp::Exec => "exec",
        })
    }
}

/// What kind of failure a [`SandboxError::Image`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ImageErrorKind {
    /// No such image, tag, digest or file.
    NotFound,
    /// The registry refused the credentials (or wants some).
    Unauthorized,
    /// Content whose digest is not the one it was named by.
    DigestMismatch,
    /// Not an image of a known format: a broken index, manifest, config or archive.
    InvalidFormat,
    /// A layer that would write outside its directory (`..`, links out), or is otherwise
    /// unsafe to unpack.
    UnsafeLayer,
    /// The registry could not be reached or answered with an error.
    Registry,
    /// Something this library does not support (a media type, a platform, rootless images).
    Unsupported,
    /// A manifest, config or blob larger than its descriptor declares, or than the cap on
    /// JSON documents (4 MiB); the transfer was cut at the first byte past the limit.
    TooLarge,
    /// The registry did not connect, went silent, or the pull outlasted its total deadline
    /// ([`RegistryLimits`](crate::RegistryLimits)).
    Timeout,
}

impl std::fmt::Display for ImageErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageErrorKind::NotFound => "not found",
            ImageErrorKind::Unauthorized => "unauthorized",
            ImageErrorKind::DigestMismatch => "digest mismatch",
            ImageErrorKind::InvalidFormat => "invalid format",
            ImageErrorKind::UnsafeLayer => "unsafe layer",
            ImageErrorKind::Registry => "registry error",
            ImageErrorKind::Unsupported => "unsupported",
            ImageErrorKind::TooLarge => "too large",
            ImageErrorKind::Timeout => "timed out",
        })
    }
}

/// What kind of failure a [`SandboxError::Snapshot`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SnapshotErrorKind {
    /// The sandbox was not started with [`SandboxConfig::snapshots`](crate::SandboxConfig::snapshots).
    NotEnabled,
    /// Something runs that a snapshot cannot carry or must not cut: a command or file
    /// transfer with the host, a watch, an egress proxy, an exposed port's connection.
    Busy,
    /// The runtime cannot do what was asked (process state on runc or crun).
    Unsupported,
    /// A snapshot of another runtime than the one asked to start it, or (to restore) of a
    /// sandbox of another config.
    Mismatch,
    /// A saved snapshot's directory is missing, incomplete or altered, or holds what no
    /// snapshot of the library's holds (set-id bits, a device other than an overlayfs
    /// whiteout, a file capability or `trusted.*` attribute, a mount point).
    Corrupt,
}

impl std::fmt::Display for SnapshotErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotErrorKind::NotEnabled => "snapshots not enabled",
            SnapshotErrorKind::Busy => "busy",
            SnapshotErrorKind::Unsupported => "unsupported",
            SnapshotErrorKind::Mismatch => "mismatch",
            SnapshotErrorKind::Corrupt => "corrupt",
        })
    }
}

/// What kind of failure a [`SandboxError::Session`] is: a named sandbox
/// ([`SandboxConfig::name`](crate::SandboxConfig::name)) or a
/// [volume](crate::NamespaceContainer::create_volume) that could not be made, found, taken
/// or changed. Nothing of a failed call is left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SessionErrorKind {
    /// No sandbox (or volume) of that name.
    NotFound,
    /// A sandbox (or volume) of that name exists already.
    Exists,
    /// Another handle has it: a process (this one or another) holds the named sandbox, or
    /// a running sandbox mounts the volume.
    InUse,
    /// Its state on disk is unreadable, incomplete or altered (the reason says what).
    Corrupt,
    /// It belongs to another runtime than the one asked.
    Mismatch,
    /// Something holds on to the host that a hibernation cannot carry or must not cut (a
    /// command with a handle, a file transfer or watch, an exposed port's connection).
    Busy,
    /// What was asked cannot be done here: processes kept through a hibernation on runc or
    /// crun, a pause without cgroups (rootless), a volume size limit without root.
    Unsupported,
}

impl std::fmt::Display for SessionErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SessionErrorKind::NotFound => "not found",
            SessionErrorKind::Exists => "exists",
            SessionErrorKind::InUse => "in use",
            SessionErrorKind::Corrupt => "corrupt",
            SessionErrorKind::Mismatch => "mismatch",
            SessionErrorKind::Busy => "busy",
            SessionErrorKind::Unsupported => "unsupported",
        })
    }
}

/// What kind of failure a [`SandboxError::Interpreter`] is: a code context
/// ([`Sandbox::code_context`](crate::Sandbox::code_context)) that could not run a cell. An
/// error *in* the code (an exception) is no failure: it is the execution's
/// [`error`](crate::Execution::error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InterpreterErrorKind {
    /// The sandbox's root has no interpreter for the language (`python3`, `node`, `sh`).
    Unavailable,
    /// The context's interpreter died (`os._exit`, a crash, the OOM killer, an interrupt it
    /// ignored past its deadline): its state is gone; [`restart`](crate::CodeContext::restart)
    /// makes a new one (a later run does too).
    Died,
    /// The context was closed.
    Closed,
    /// The code is not UTF-8.
    InvalidCode,
}

impl std::fmt::Display for InterpreterErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InterpreterErrorKind::Unavailable => "unavailable",
            InterpreterErrorKind::Died => "died",
            InterpreterErrorKind::Closed => "closed",
            InterpreterErrorKind::InvalidCode => "invalid code",
        })
    }
}

/// Everything that can go wrong when creating, running or cleaning up a sandbox.
///
/// Variants are structured so that a caller can act on them: an invalid config names the
/// field, a runtime failure carries the runtime's own message and exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The runtime binary was not found on `$PATH`, or the given path is not an executable file.
    #[error("{runtime} runtime binary not found: {detail}")]
    RuntimeNotFound {
        /// Which runtime was looked for.
        runtime: OciRuntime,
        /// Where it was looked for, and what was wrong.
        detail: String,
    },

    /// No background job with this id in the sandbox (it never existed there, or was
    /// forgotten with [`Sandbox::forget_job`](crate::Sandbox::forget_job)).
    #[error("sandbox {sandbox} has no job {job:?}")]
    NoSuchJob {
        /// The sandbox asked.
        sandbox: String,
        /// The job id asked for.
        job: String,
    },

    /// A field of the configuration is invalid; nothing was created.
    #[error("invalid config: {field}: {reason}")]
    InvalidConfig {
        /// The offending field, e.g. `env`, `mounts[2].source`, `cwd`.
        field: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A container with this id already exists in the library's state root.
    #[error("a container with id {id:?} already exists")]
    DuplicateId {
        /// The id that was asked for.
        id: String,
    },

    /// The command does not exist (or is not executable) inside the container.
    #[error("command not found in the container: {command:?}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    CommandNotFound {
        /// The command as given in the config.
        command: String,
        /// The runtime's message, when the runtime reported it.
        message: Option<String>,
    },

    /// The runtime itself failed (as opposed to the command inside the container).
    #[error("{runtime} {op} failed{}: {message}", code.map(|c| format!(" with exit code {c}")).unwrap_or_default())]
    Runtime {
        /// Which runtime.
        runtime: OciRuntime,
        /// Which subcommand.
        op: RuntimeOp,
        /// The runtime's exit code, when it exited.
        code: Option<i32>,
        /// The runtime's own error message (from its log, or its stderr).
        message: String,
    },

    /// A runtime call or the handshake with it did not finish within its deadline.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// The deadline that passed.
        after: Duration,
    },

    /// An I/O error on a path the library manages (bundle, state root, log).
    #[error("{context}: {path}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// An I/O error on the process's pipes or another handle without a path.
    #[error("{context}: {source}")]
    Process {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A long-lived [`Sandbox`](crate::Sandbox) ended by itself: its time to live ran out,
    /// or it was idle too long. Its commands were killed and its container removed.
    ///
    /// The three "gone" errors tell who ended the sandbox: [`SandboxExpired`] its own
    /// lifetime options, [`SandboxClosed`] the caller ([`Sandbox::close`] or
    /// [`NamespaceContainer::close`]), [`SandboxEnded`] something else (its init died or
    /// was killed from outside, the OOM killer). A command that was running when the
    /// sandbox expired or was closed reports that as its status (killed, `SIGKILL`) with its
    /// output; only under [`SandboxEnded`] does its `wait` fail too.
    ///
    /// [`SandboxExpired`]: SandboxError::SandboxExpired
    /// [`SandboxClosed`]: SandboxError::SandboxClosed
    /// [`SandboxEnded`]: SandboxError::SandboxEnded
    /// [`Sandbox::close`]: crate::Sandbox::close
    /// [`NamespaceContainer::close`]: crate::NamespaceContainer::close
    #[error("sandbox {id} has ended: {expiry}")]
    SandboxExpired {
        /// The sandbox's container id.
        id: String,
        /// Which of its lifetime options ended it.
        expiry: crate::status::SandboxExpiry,
    },

    /// A long-lived [`Sandbox`](crate::Sandbox) is no longer running and nobody asked: its
    /// init (the launcher) died or was killed from outside. It is never silently restarted.
    /// (See [`SandboxExpired`](SandboxError::SandboxExpired) for how the three "gone" errors
    /// differ.)
    #[error("sandbox {id} is no longer running{}", status.map(|s| format!(" ({s})")).unwrap_or_default())]
    SandboxEnded {
        /// The sandbox's container id.
        id: String,
        /// How its init ended, when known.
        status: Option<crate::ExitStatus>,
    },

    /// A long-lived [`Sandbox`](crate::Sandbox) was closed ([`Sandbox::close`]), by this
    /// handle or a clone of it.
    ///
    /// [`Sandbox::close`]: crate::Sandbox::close
    #[error("sandbox {id} is closed")]
    SandboxClosed {
        /// The sandbox's container id.
        id: String,
    },

    /// A long-lived [`Sandbox`](crate::Sandbox) already runs as many commands as it may at
    /// once; retry when one has ended.
    #[error("sandbox {id} already runs {limit} commands at once")]
    TooManyExecs {
        /// The sandbox's container id.
        id: String,
        /// The most commands it runs at once.
        limit: usize,
    },

    /// No gVisor platform could run a container here; each one's failure is listed.
    #[error("no gVisor platform works here: {}", failures.iter().map(|(p, why)| format!("{p}: {why}")).collect::<Vec<_>>().join("; "))]
    NoGvisorPlatform {
        /// Each platform tried, with why it failed.
        failures: Vec<(crate::GvisorPlatform, String)>,
    },

    /// The OCI spec could not be built or serialised.
    #[error("building the OCI spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),

    /// An image could not be found, fetched, verified or unpacked; nothing of it is left on
    /// disk.
    #[error("image {image}: {kind}: {reason}")]
    Image {
        /// The image, as the caller named it.
        image: String,
        /// What went wrong, to act on.
        kind: ImageErrorKind,
        /// The details.
        reason: String,
    },

    /// A snapshot could not be taken, saved, loaded or started from; the sandbox it was
    /// asked of goes on as it was, and nothing of the attempt is left on disk.
    #[error("snapshot: {kind}: {reason}")]
    Snapshot {
        /// What went wrong, to act on.
        kind: SnapshotErrorKind,
        /// The details.
        reason: String,
    },

    /// A code context could not run a cell (see [`InterpreterErrorKind`]).
    #[error("code context ({language}): {kind}: {reason}")]
    Interpreter {
        /// The context's language.
        language: &'static str,
        /// What went wrong, to act on.
        kind: InterpreterErrorKind,
        /// The details (for a death, what the interpreter last wrote to its stderr).
        reason: String,
    },

    /// A named sandbox or a volume could not be created, connected to, changed or removed.
    #[error("{what} {name:?}: {kind}: {reason}")]
    Session {
        /// "sandbox" or "volume".
        what: &'static str,
        /// Its name.
        name: String,
        /// What went wrong, to act on.
        kind: SessionErrorKind,
        /// The details.
        reason: String,
    },
}

impl SandboxError {
    /// The variant's name in `snake_case` (`invalid_config`, `runtime`, `timeout`, ...): a
    /// stable label for counting failures by kind (see
    /// [`RuntimeMetrics::failures`](crate::RuntimeMetrics::failures)).
    pub fn kind(&self) -> &'static str {
        match self {
            SandboxError::RuntimeNotFound { .. } => "runtime_not_found",
            SandboxError::NoSuchJob { .. } => "no_such_job",
            SandboxError::InvalidConfig { .. } => "invalid_config",
            SandboxError::DuplicateId { .. } => "duplicate_id",
            SandboxError::CommandNotFound { .. } => "command_not_found",
            SandboxError::Runtime { .. } => "runtime",
            SandboxError::Timeout { .. } => "timeout",
            SandboxError::Io { .. } => "io",
            SandboxError::Process { .. } => "process",
            SandboxError::SandboxExpired { .. } => "sandbox_expired",
            SandboxError::SandboxEnded { .. } => "sandbox_ended",
            SandboxError::SandboxClosed { .. } => "sandbox_closed",
            SandboxError::TooManyExecs { .. } => "too_many_execs",
            SandboxError::NoGvisorPlatform { .. } => "no_gvisor_platform",
            SandboxError::Spec(_) => "spec",
            SandboxError::Image { .. } => "image",
            SandboxError::Snapshot { .. } => "snapshot",
            SandboxError::Interpreter { .. } => "interpreter",
            SandboxError::Session { .. } => "session",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        SandboxError::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        SandboxError::Io {
            context,
            path: path.into(),
            source,
        }
    }

    /// A copy of this error, for outcomes that several waiters receive. I/O causes are
    /// rebuilt with the same kind and message.
    pub(crate) fn duplicate(&self) -> SandboxError {
        let io_copy = |e: &io::Error| io::Error::new(e.kind(), e.to_string());
        match self {
            SandboxError::RuntimeNotFound { runtime, detail } => SandboxError::RuntimeNotFound {
                runtime: *runtime,
                detail: detail.clone(),
            },
            SandboxError::InvalidConfig { field, reason } => SandboxError::InvalidConfig {
                field: field.clone(),
                reason: reason.clone(),
            },
            SandboxError::DuplicateId { id } => SandboxError::DuplicateId { id: id.clone() },
            SandboxError::NoSuchJob { sandbox, job } => SandboxError::NoSuchJob {
                sandbox: sandbox.clone(),
                job: job.clone(),
            },
            SandboxError::TooManyExecs { id, limit } => SandboxError::TooManyExecs {
                id: id.clone(),
                limit: *limit,
            },
            SandboxError::SandboxClosed { id } => SandboxError::SandboxClosed { id: id.clone() },
            SandboxError::SandboxExpired { id, expiry } => SandboxError::SandboxExpired {
                id: id.clone(),
                expiry: *expiry,
            },
            SandboxError::SandboxEnded { id, status } => SandboxError::SandboxEnded {
                id: id.clone(),
                status: *status,
            },
            SandboxError::CommandNotFound { command, message } => SandboxError::CommandNotFound {
                command: command.clone(),
                message: message.clone(),
            },
            SandboxError::Runtime {
                runtime,
                op,
                code,
                message,
            } => SandboxError::Runtime {
                runtime: *runtime,
                op: *op,
                code: *code,
                message: message.clone(),
            },
            SandboxError::Timeout { what, after } => SandboxError::Timeout {
                what: what.clone(),
                after: *after,
            },
            SandboxError::Io {
                context,
                path,
                source,
            } => SandboxError::Io {
                context,
                path: path.clone(),
                source: io_copy(source),
            },
            SandboxError::Process { context, source } => SandboxError::Process {
                context,
                source: io_copy(source),
            },
            SandboxError::NoGvisorPlatform { failures } => SandboxError::NoGvisorPlatform {
                failures: failures.clone(),
            },
            SandboxError::Spec(e) => {
                SandboxError::Spec(oci_spec::OciSpecError::Other(e.to_string()))
            }
            SandboxError::Image {
                image,
                kind,
                reason,
            } => SandboxError::Image {
                image: image.clone(),
                kind: *kind,
                reason: reason.clone(),
            },
            SandboxError::Snapshot { kind, reason } => SandboxError::Snapshot {
                kind: *kind,
                reason: reason.clone(),
            },
            SandboxError::Interpreter {
                language,
                kind,
                reason,
            } => SandboxError::Interpreter {
                language,
                kind: *kind,
                reason: reason.clone(),
            },
            SandboxError::Session {
                what,
                name,
                kind,
                reason,
            } => SandboxError::Session {
                what,
                name: name.clone(),
                kind: *kind,
                reason: reason.clone(),
            },
        }
    }

    pub(crate) fn snapshot(kind: SnapshotErrorKind, reason: impl Into<String>) -> Self {
        SandboxError::Snapshot {
            kind,
            reason: reason.into(),
        }
    }

    pub(crate) fn session(
        name: impl Into<String>,
        kind: SessionErrorKind,
        reason: impl Into<String>,
    ) -> Self {
        SandboxError::Session {
            what: "sandbox",
            name: name.into(),
            kind,
            reason: reason.into(),
        }
    }

    pub(crate) fn volume(
        name: impl Into<String>,
        kind: SessionErrorKind,
        reason: impl Into<String>,
    ) -> Self {
        SandboxError::Session {
            what: "volume",
            name: name.into(),
            kind,
            reason: reason.into(),
        }
    }

    /// True when retrying the same call later may succeed (runtime contention, deadlines).
    pub fn is_retriable(&self) -> bool {
        matches!(self, SandboxError::Timeout { .. })
    }
}
