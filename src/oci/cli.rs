//! The runtime CLI layer: [`OciRuntime`], finding its binary, and the one place that builds
//! every runtime command line and runs the short ones with a deadline.
//!
//! Everything the library asks of runc, crun or runsc goes through [`RuntimeCli`]; the spawn
//! modes, streams and PTY never build an argv themselves.

use crate::runtimes::OciRuntime;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::sync::Arc;

use serde::Deserialize;
use tokio::process::Command;

use super::crun_ns::MountNamespace;

use crate::error::{RuntimeOp, SandboxError};
use crate::runtimes::GvisorPlatform;

/// Named flags, so that each string is spelled once.
mod flag {
    pub const ROOT: &str = "--root";
    pub const LOG: &str = "--log";
    pub const LOG_FORMAT: &str = "--log-format";
    pub const JSON: &str = "json";
    pub const BUNDLE: &str = "--bundle";
    pub const DETACH: &str = "--detach";
    pub const PID_FILE: &str = "--pid-file";
    pub const ALL: &str = "--all";
    pub const FORCE: &str = "--force";
    pub const FORMAT_JSON: &str = "--format=json";
    pub const VERSION: &str = "--version";
    pub const NETWORK_NONE: &str = "--network=none";
    pub const NETWORK_HOST: &str = "--network=host";
    pub const PLATFORM: &str = "--platform";
    pub const ROOTLESS: &str = "--rootless";
    pub const OCI_SECCOMP: &str = "--oci-seccomp";
    pub const NO_NEW_KEYRING: &str = "--no-new-keyring";
    pub const OVERLAY_ROOT_MEMORY: &str = "--overlay2=root:memory";
    pub const IMAGE_PATH: &str = "--image-path";
}

/// One runtime subcommand and its own options: those the library calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sub<'a> {
    Run {
        id: &'a str,
        bundle: &'a Path,
        detach: bool,
        pid_file: Option<&'a Path>,
    },
    Kill {
        id: &'a str,
        signal: &'a str,
        all: bool,
    },
    Delete {
        id: &'a str,
        force: bool,
    },
    List,
    /// gVisor: save the container's memory, processes and in-memory files to `image` and
    /// stop it.
    Checkpoint {
        id: &'a str,
        image: &'a Path,
    },
    /// gVisor: create and start container `id` from a checkpoint in `image`, detached.
    Restore {
        id: &'a str,
        bundle: &'a Path,
        image: &'a Path,
        pid_file: &'a Path,
    },
    /// Runs `argv` in container `id` (the attach of a restored sandbox's launcher).
    Exec {
        id: &'a str,
        argv: &'a [&'a str],
    },
}

impl Sub<'_> {
    fn op(&self) -> RuntimeOp {
        match self {
            Sub::Run { .. } => RuntimeOp::Run,
            Sub::Kill { .. } => RuntimeOp::Kill,
            Sub::Delete { .. } => RuntimeOp::Delete,
            Sub::List => RuntimeOp::List,
            Sub::Checkpoint { .. } => RuntimeOp::Checkpoint,
            Sub::Restore { .. } => RuntimeOp::Restore,
            Sub::Exec { .. } => RuntimeOp::Exec,
        }
    }

    /// `no_new_keyring`: `run` and `create` keep the runtime's keyring (runc, crun).
    fn push_args(&self, argv: &mut Vec<OsString>, no_new_keyring: bool) {
        fn opt(argv: &mut Vec<OsString>, name: &str, value: Option<&Path>) {
            if let Some(v) = value {
                argv.push(name.into());
                argv.push(v.into());
            }
        }
        match *self {
            Sub::Run {
                id,
                bundle,
                detach,
                pid_file,
            } => {
                argv.extend(["run".into(), flag::BUNDLE.into(), bundle.into()]);
                if detach {
                    argv.push(flag::DETACH.into());
                }
                opt(argv, flag::PID_FILE, pid_file);
                if no_new_keyring {
                    argv.push(flag::NO_NEW_KEYRING.into());
                }
                argv.push(id.into());
            }
            Sub::Kill { id, signal, all } => {
                argv.push("kill".into());
                if all {
                    argv.push(flag::ALL.into());
                }
                argv.extend([id.into(), signal.into()]);
            }
            Sub::Delete { id, force } => {
                argv.push("delete".into());
                if force {
                    argv.push(flag::FORCE.into());
                }
                argv.push(id.into());
            }
            Sub::List => argv.extend(["list".into(), flag::FORMAT_JSON.into()]),
            Sub::Checkpoint { id, image } => {
                argv.extend(["checkpoint".into(), flag::IMAGE_PATH.into(), image.into()]);
                argv.push(id.into());
            }
            Sub::Restore {
                id,
                bundle,
                image,
                pid_file,
            } => {
                argv.extend(["restore".into(), flag::BUNDLE.into(), bundle.into()]);
                argv.extend([flag::IMAGE_PATH.into(), image.into(), flag::DETACH.into()]);
                opt(argv, flag::PID_FILE, Some(pid_file));
                argv.push(id.into());
            }
            Sub::Exec { id, argv: args } => {
                argv.extend(["exec".into(), id.into()]);
                argv.extend(args.iter().map(OsString::from));
            }
        }
    }
}

/// Per-container settings that become global flags (the same on every subcommand of one
/// container: runsc requires it).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ContainerFlags<'a> {
    /// Where the runtime writes its own log (JSON lines), apart from the container's output.
    pub log: Option<&'a Path>,
    /// Whether the container uses the host's network (runsc takes it as a global flag; every
    /// other mode is a network namespace of its own).
    pub host_network: bool,
    /// gVisor: the root's writes are kept in the sandbox's memory, where a checkpoint
    /// saves them (a sandbox that may be snapshotted).
    pub memory_root: bool,
}

/// A located runtime binary, the state root the library owns for it, and its fixed flags.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeCli {
    pub kind: OciRuntime,
    pub binary: PathBuf,
    pub root: PathBuf,
    pub gvisor_platform: Option<GvisorPlatform>,
    /// A mount namespace the runtime runs in, entered between fork and exec: crun on hybrid
    /// cgroups, in a namespace where the cgroup v2 mount is gone (see `crun_ns`).
    pub mount_ns: Option<Arc<MountNamespace>>,
}

/// How long a short runtime call (kill, delete, state, list, version) may take.
pub(crate) const SHORT_CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Waits for `child` with its stdout and stderr read to the end; `None` past `deadline`,
/// when it is killed and reaped.
async fn run_to_end(
    mut child: tokio::process::Child,
    deadline: Duration,
) -> Option<std::io::Result<std::process::Output>> {
    use tokio::io::AsyncReadExt;
    async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf).await;
        }
        buf
    }
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let all = async {
        let (status, stdout, stderr) =
            tokio::join!(child.wait(), read_all(stdout), read_all(stderr));
        status.map(|status| std::process::Output {
            status,
            stdout,
            stderr,
        })
    };
    match tokio::time::timeout(deadline, all).await {
        Ok(out) => Some(out),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            None
        }
    }
}

impl RuntimeCli {
    /// The full argv (without the binary) for `sub`.
    pub fn argv(&self, flags: ContainerFlags<'_>, sub: Sub<'_>) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![flag::ROOT.into(), self.root.clone().into()];
        if let Some(log) = flags.log {
            match self.kind {
                OciRuntime::Crun => {
                    let mut v = OsString::from("--log=file:");
                    v.push(log);
                    argv.push(v);
                    argv.push("--log-format=json".into());
                }
                OciRuntime::Runc | OciRuntime::Gvisor => {
                    argv.extend([flag::LOG.into(), log.into()]);
                    argv.extend([flag::LOG_FORMAT.into(), flag::JSON.into()]);
                }
            }
        }
        if self.kind == OciRuntime::Gvisor {
            argv.push(
                if flags.host_network {
                    flag::NETWORK_HOST
                } else {
                    flag::NETWORK_NONE
                }
                .into(),
            );
            if let Some(p) = self.gvisor_platform {
                argv.extend([flag::PLATFORM.into(), p.as_flag().into()]);
            }
            if flags.memory_root {
                argv.push(flag::OVERLAY_ROOT_MEMORY.into());
            }
            // Apply the spec's seccomp profile inside the sandbox too (off by default).
            argv.push(flag::OCI_SECCOMP.into());
            // As root, `--rootless` hangs (with host networking); without root it is required.
            if !nix::unistd::geteuid().is_root() {
                argv.push(flag::ROOTLESS.into());
            }
        }
        // runc and crun would make each container a session keyring, charged against the
        // 200 keys of its root's uid; the container has no use for one (keyctl is refused).
        sub.push_args(&mut argv, self.kind != OciRuntime::Gvisor);
        argv
    }

    /// A blocking-API command for `sub`, all stdio null: the runtime with its argv, entering
    /// the runtime's mount namespace first where it has one (the same pid runs the runtime:
    /// signals to it reach the runtime).
    pub fn std_command(&self, flags: ContainerFlags<'_>, sub: Sub<'_>) -> std::process::Command {
        let argv = self.argv(flags, sub);
        tracing::debug!(runtime = %self.kind, binary = ?self.binary, ?argv, mount_ns = ?self.mount_ns.as_ref().map(|n| n.file()), "runtime call");
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(ns) = &self.mount_ns {
            ns.enter_before_exec(&mut cmd);
        }
        cmd
    }

    /// A command for `sub` with all stdio set to null; callers set what they read.
    pub fn command(&self, flags: ContainerFlags<'_>, sub: Sub<'_>) -> Command {
        let mut cmd = Command::from(self.std_command(flags, sub));
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs a short subcommand to completion within `deadline`, returning its stdout.
    ///
    /// A non-zero exit becomes [`SandboxError::Runtime`] carrying the runtime's message.
    pub async fn call(
        &self,
        flags: ContainerFlags<'_>,
        sub: Sub<'_>,
        deadline: Duration,
    ) -> Result<Vec<u8>, SandboxError> {
        let op = sub.op();
        self.output(self.command(flags, sub), op, deadline).await
    }

    /// Runs `cmd` to completion within `deadline`, returning its stdout; a non-zero exit
    /// becomes [`SandboxError::Runtime`] for `op` with the runtime's message.
    async fn output(
        &self,
        mut cmd: Command,
        op: RuntimeOp,
        deadline: Duration,
    ) -> Result<Vec<u8>, SandboxError> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        // Awaited to its end in a task of its own, killed past the deadline: a caller that
        // goes away leaves neither a running runtime call nor a zombie.
        let out = match tokio::spawn(run_to_end(child, deadline)).await {
            Ok(Some(Ok(out))) => out,
            Ok(Some(Err(e))) => return Err(self.spawn_error(e)),
            Ok(None) | Err(_) => {
                return Err(SandboxError::Timeout {
                    what: format!("{} {op}", self.kind),
                    after: deadline,
                });
            }
        };
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(SandboxError::Runtime {
                runtime: self.kind,
                op,
                code: out.status.code(),
                message: runtime_message(&out.stderr),
            })
        }
    }

    /// Maps a failure to start the runtime binary itself.
    pub fn spawn_error(&self, e: std::io::Error) -> SandboxError {
        if matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
        ) {
            SandboxError::RuntimeNotFound {
                runtime: self.kind,
                detail: format!("{}: {e}", self.binary.display()),
            }
        } else {
            SandboxError::Process {
                context: "starting the runtime",
                source: e,
            }
        }
    }

    /// The runtime's version line (`runc version 1.1.5`).
    pub async fn version(&self) -> Result<String, SandboxError> {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(flag::VERSION)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = self
            .output(cmd, RuntimeOp::Version, SHORT_CALL_DEADLINE)
            .await?;
        let text = String::from_utf8_lossy(&out);
        Ok(text.lines().next().unwrap_or_default().trim().to_owned())
    }

    /// The ids of the containers in the library's state root.
    pub async fn list(&self) -> Result<Vec<String>, SandboxError> {
        #[derive(Deserialize)]
        struct Entry {
            id: String,
        }
        // `runc list` reads the state dir's entries, then stats each: a container removed in
        // between (the library removes a finished container's state itself, and so do other
        // processes sharing the root) fails the whole call with ENOENT. Such a list is
        // retried: the next one no longer sees that container.
        let mut attempts = 0;
        let out = loop {
            match self
                .call(ContainerFlags::default(), Sub::List, SHORT_CALL_DEADLINE)
                .await
            {
                Err(SandboxError::Runtime { message, .. })
                    if attempts < 5 && is_not_found(&message) =>
                {
                    attempts += 1;
                }
                other => break other?,
            }
        };
        let text = String::from_utf8_lossy(&out);
        let text = text.trim();
        if text.is_empty() || text == "null" {
            return Ok(Vec::new());
        }
        let entries: Vec<Entry> =
            serde_json::from_str(text).map_err(|e| SandboxError::Runtime {
                runtime: self.kind,
                op: RuntimeOp::List,
                code: Some(0),
                message: format!("unreadable list output: {e}"),
            })?;
        Ok(entries.into_iter().map(|e| e.id).collect())
    }

    /// `kill --all KILL` then `delete --force`: ends a container whatever state it is in.
    /// Idempotent: a container that does not exist is not an error.
    pub async fn destroy(&self, flags: ContainerFlags<'_>, id: &str) -> Result<(), SandboxError> {
        // The kill fails when the container is already stopped or gone; delete settles both.
        let _ = self
            .call(
                flags,
                Sub::Kill {
                    id,
                    signal: "KILL",
                    all: true,
                },
                SHORT_CALL_DEADLINE,
            )
            .await;
        self.delete(flags, id).await
    }

    /// `delete --force` (enough for a stopped container). Idempotent.
    pub async fn delete(&self, flags: ContainerFlags<'_>, id: &str) -> Result<(), SandboxError> {
        match self
            .call(flags, Sub::Delete { id, force: true }, SHORT_CALL_DEADLINE)
            .await
        {
            Ok(_) => Ok(()),
            Err(SandboxError::Runtime { message, .. }) if is_not_found(&message) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether a runtime message says the container does not exist.
pub(crate) fn is_not_found(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("does not exist") || m.contains("not found") || m.contains("no such file")
}

/// Finds `name` on `$PATH` (or checks an explicit path), without blocking the caller's worker.
pub(crate) async fn locate(
    kind: OciRuntime,
    explicit: Option<PathBuf>,
) -> Result<PathBuf, SandboxError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    crate::sys::blocking("looking up the runtime binary", move || {
        locate_blocking(kind, explicit, &path_var)
    })
    .await
}

fn locate_blocking(
    kind: OciRuntime,
    explicit: Option<PathBuf>,
    path_var: &OsStr,
) -> Result<PathBuf, SandboxError> {
    let executable = crate::sys::is_executable;
    if let Some(p) = explicit {
        return if executable(&p) {
            Ok(p)
        } else {
            Err(SandboxError::RuntimeNotFound {
                runtime: kind,
                detail: format!("{} is not an executable file", p.display()),
            })
        };
    }
    std::env::split_paths(path_var)
        .map(|dir| dir.join(kind.binary_name()))
        .find(|p| executable(p))
        .ok_or_else(|| SandboxError::RuntimeNotFound {
            runtime: kind,
            detail: format!("{} is not on $PATH", kind.binary_name()),
        })
}

/// The runtime's own message from its log or stderr: JSON lines (`{"level":"error","msg":..}`)
/// at error level or above, or the plain text when it is not JSON.
pub(crate) fn runtime_message(raw: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Line {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    let text = String::from_utf8_lossy(raw);
    let mut errors = Vec::new();
    let mut plain = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match serde_json::from_str::<Line>(line) {
            Ok(l) if matches!(l.level.as_str(), "error" | "fatal" | "panic") => errors.push(l.msg),
            Ok(_) => {}
            Err(_) => plain.push(line.to_owned()),
        }
    }
    // Without an error line, the log's last lines of any level say what it was doing
    // (runsc logs its sandbox's death as a warning, or nothing at error level).
    let chosen = if !errors.is_empty() {
        errors
    } else if !plain.is_empty() {
        plain
    } else {
        let all: Vec<String> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Line>(l.trim()).ok())
            .map(|l| l.msg)
            .filter(|m| !m.is_empty())
            .collect();
        all[all.len().saturating_sub(3)..].to_vec()
    };
    let msg = chosen.join("; ");
    if msg.is_empty() {
        return NO_MESSAGE.to_owned();
    }
    msg
}

/// What a runtime that failed without writing anything is reported with.
pub(crate) const NO_MESSAGE: &str = "the runtime wrote no message (its exit code says how it \
     failed; for gVisor, a memory limit too small for its kernel does this)";

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
