//! `oci-sandbox run`: one command in a sandbox of its own, like `docker run --rm`: stdio
//! passed through (or a PTY with `-t`), Ctrl-C and SIGTERM forwarded, the command's exit
//! status as the process's (128 + n for a signal, 124 for a timeout).

use std::io::IsTerminal;
use std::os::fd::AsFd;

use nix::sys::signal::Signal;
use nix::sys::termios::{self, SetArg, Termios};
use oci_sandbox::{ExitStatus, NamespaceContainer, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

use crate::policy::PolicyArgs;

/// Runs `command` and returns the exit code to leave with.
pub async fn run(policy: PolicyArgs, tty: bool, command: Vec<String>) -> Result<i32, String> {
    let (program, args) = command
        .split_first()
        .ok_or("run: no command (oci-sandbox run [flags] -- CMD ARGS...)")?;
    let runtime = policy.container().await?;
    let config = policy.sandbox_config()?;
    let mut config = NamespaceContainer::build_config(&config, program.clone(), args.to_vec());
    let status = if tty {
        run_tty(&runtime, &config).await?
    } else {
        config.stdin = Stdio::Inherit;
        config.stdout = Stdio::Inherit;
        config.stderr = Stdio::Inherit;
        // Taken before the spawn: a Ctrl-C as soon as the command runs is the command's.
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut process = runtime.spawn(&config).await.map_err(|e| e.to_string())?;
        loop {
            tokio::select! {
                status = process.wait() => break status.map_err(|e| e.to_string())?,
                _ = interrupt.recv() => { let _ = process.signal(Signal::SIGINT).await; }
                _ = terminate.recv() => { let _ = process.signal(Signal::SIGTERM).await; }
            }
        }
    };
    runtime.close().await;
    Ok(exit_code(&status))
}

/// The process's exit code for `status`: its code, 128 + a signal's number, 124 for a
/// timeout (as coreutils' `timeout`).
pub fn exit_code(status: &ExitStatus) -> i32 {
    if status.timed_out() {
        return 124;
    }
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// The host terminal in raw mode until dropped.
struct RawMode(Option<Termios>);

impl RawMode {
    fn enter() -> Result<Self, String> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawMode(None));
        }
        let saved = termios::tcgetattr(stdin.as_fd()).map_err(|e| e.to_string())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).map_err(|e| e.to_string())?;
        Ok(RawMode(Some(saved)))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, valid for the call.
    let rc = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// `-t`: the command on a PTY, the host's terminal raw and relayed both ways (Ctrl-C is a
/// byte the PTY turns into the command's SIGINT), its size followed.
async fn run_tty(
    runtime: &NamespaceContainer,
    config: &oci_sandbox::ContainerConfig,
) -> Result<ExitStatus, String> {
    let session = runtime
        .spawn_interactive(config)
        .await
        .map_err(|e| e.to_string())?;
    if let Some((cols, rows)) = terminal_size() {
        let _ = session.resize(cols, rows);
    }
    let _raw = RawMode::enter()?;
    let (mut from_pty, mut to_pty) = session.split();
    let mut winch = signal(SignalKind::window_change()).map_err(|e| e.to_string())?;
    let keyboard = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                n = stdin.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => if to_pty.write_all(&buf[..n]).await.is_err() { break },
                },
                _ = winch.recv() => {
                    if let Some((cols, rows)) = terminal_size() {
                        let _ = to_pty.resize(cols, rows);
                    }
                }
            }
        }
    });
    let mut stdout = tokio::io::stdout();
    let mut buf = [0u8; 4096];
    loop {
        match from_pty.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stdout.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                let _ = stdout.flush().await;
            }
        }
    }
    keyboard.abort();
    session.wait().await.map_err(|e| e.to_string())
}
