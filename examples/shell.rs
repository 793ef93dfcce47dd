//! An interactive shell in a sandbox, from your own terminal.
//!
//! ```text
//! cargo run --example shell               # sh under runc
//! cargo run --example shell -- crun bash  # runtime and program
//! ```
//!
//! The terminal is put in raw mode (restored on exit), its size is passed through and kept in
//! sync on SIGWINCH, and the exit status is printed at the end.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};
use oci_sandbox::{NamespaceContainer, OciRuntime, SandboxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};

/// Restores the terminal's settings when dropped.
struct RawMode(Option<Termios>);

impl RawMode {
    fn enter() -> nix::Result<Self> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(RawMode(None));
        }
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)?;
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

/// Our terminal's size as (columns, rows).
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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kind = match args.next().as_deref() {
        None | Some("runc") => OciRuntime::Runc,
        Some("crun") => OciRuntime::Crun,
        Some("runsc" | "gvisor") => OciRuntime::Gvisor,
        Some(other) => return Err(format!("unknown runtime {other:?}").into()),
    };
    let program = args.next().unwrap_or_else(|| "sh".into());
    let runtime = NamespaceContainer::with_runtime(kind).await?;
    let policy = SandboxConfig {
        timeout: None,
        ..SandboxConfig::default()
    };
    let session = runtime
        .spawn_interactive(&NamespaceContainer::build_config(&policy, program, vec![]))
        .await?;
    if let Some((cols, rows)) = terminal_size() {
        session.resize(cols, rows)?;
    }
    eprintln!(
        "[sandbox {} on {}; exit the shell to leave]\r",
        session.id(),
        kind
    );

    let status = {
        let _raw = RawMode::enter()?;
        let (mut from_pty, mut to_pty) = session.split();
        let mut winch = signal(SignalKind::window_change())?;
        // Keyboard to the PTY (tokio's stdin reads on a blocking thread).
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
        // The PTY to the screen, until the shell exits (EIO, read as end of file).
        let mut stdout = tokio::io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            match from_pty.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    stdout.write_all(&buf[..n]).await?;
                    stdout.flush().await?;
                }
            }
        }
        keyboard.abort();
        session.wait().await?
    };
    eprintln!("[{status}]");
    drop(session);
    runtime.close().await;
    // tokio's stdin thread may still be blocked in read(2): leave without waiting for it.
    std::process::exit(status.code().unwrap_or(1));
}
