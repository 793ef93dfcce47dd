//! [`ExecConfig`]: one command to run in a long-lived sandbox.

use std::path::PathBuf;
use std::time::Duration;

use super::Stdio;

/// One command to run in a [`Sandbox`](crate::Sandbox): like a [`ContainerConfig`](crate::ContainerConfig)'s command, with its own
/// environment additions, working directory, timeout and stdio.
///
/// ```
/// use std::time::Duration;
/// use oci_sandbox::ExecConfig;
///
/// let mut exec = ExecConfig::new("python3", vec!["-c".into(), "print(6*7)".into()]);
/// exec.env.push(("DEBUG".into(), "1".into()));
/// exec.timeout = Some(Duration::from_secs(5));
///
/// // A shell line, and the rest by default:
/// let ls = ExecConfig { cwd: Some("/tmp".into()), ..ExecConfig::shell("ls -la | head -3") };
/// assert_eq!(ls.args, ["-c", "ls -la | head -3"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// The program, resolved against the `PATH` of the command's environment.
    pub command: String,
    /// Its arguments (without the program itself).
    pub args: Vec<String>,
    /// Added to the sandbox's environment (later entries win).
    pub env: Vec<(String, String)>,
    /// The working directory; the sandbox's when `None`.
    pub cwd: Option<PathBuf>,
    /// Wall-clock limit; the sandbox config's `timeout` when `None`, and no limit at all for
    /// `Some(Duration::MAX)` (any duration is accepted: one too far out to be an instant is
    /// none). Past it, the command and everything it started are killed (the sandbox lives
    /// on) and the status says timed out.
    pub timeout: Option<Duration>,
    /// Killed (status [`idle_timed_out`](crate::ExitStatus::idle_timed_out)) once it has
    /// written nothing to stdout or stderr for this long: a tool call stuck on a prompt or a
    /// network read. `None` (the default): no idle limit. Piped output then passes through a
    /// relay of the library's (one copy on the host); captured output is watched in its files;
    /// a terminal counts what is read from it.
    pub idle_timeout: Option<Duration>,
    /// Most bytes kept of each output stream; the sandbox config's `output_limit` when
    /// `None`, and no limit for `Some(u64::MAX)`. Piped ([`exec`](crate::Sandbox::exec)):
    /// what [`wait_with_output`](crate::ContainerProcess::wait_with_output) keeps (head and
    /// tail). Captured: past it the command is killed and the files cut.
    pub output_limit: Option<u64>,
    /// Standard input ([`exec`](crate::Sandbox::exec) only).
    pub stdin: Stdio,
    /// Standard output ([`exec`](crate::Sandbox::exec) only).
    pub stdout: Stdio,
    /// Standard error ([`exec`](crate::Sandbox::exec) only).
    pub stderr: Stdio,
}

impl Default for ExecConfig {
    /// No command yet (an exec of it fails with `InvalidConfig`), piped stdio, the sandbox's
    /// environment, directory and timeout.
    fn default() -> Self {
        ExecConfig::new("", Vec::new())
    }
}

impl ExecConfig {
    /// `sh -c <script>`: a shell line, with pipes, redirections and `&&`.
    pub fn shell(script: impl Into<String>) -> Self {
        ExecConfig::new("sh", vec!["-c".into(), script.into()])
    }

    /// `command` with `args`, piped stdio, the sandbox's environment, directory and timeout.
    pub fn new(command: impl Into<String>, args: impl super::IntoArgs) -> Self {
        ExecConfig {
            command: command.into(),
            args: args.into_args(),
            env: Vec::new(),
            cwd: None,
            timeout: None,
            idle_timeout: None,
            output_limit: None,
            stdin: Stdio::Piped,
            stdout: Stdio::Piped,
            stderr: Stdio::Piped,
        }
    }
}
