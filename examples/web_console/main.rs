//! A web console for one sandbox: a terminal (xterm.js over a websocket to
//! `Sandbox::exec_interactive`), the sandbox's commands with live logs, and its runtime and
//! limits.
//!
//! ```text
//! make demo-web                              # fetches xterm.js from npm, prints the URL
//! cargo run --example web_console [runc|crun|runsc]   # $PORT (0: any), $WEB_ASSETS
//! ```
//!
//! Routes: `GET /` (the page), `GET /assets/{file}` (xterm.js, its CSS and fit addon, from
//! `$WEB_ASSETS`, default `target/web-assets`), `GET /api/info`, `GET /api/commands`,
//! `POST /api/commands` (`{"command": "..."}`, run with `sh -c`, output captured), `WS /ws/term`
//! (binary frames: terminal bytes both ways; text frames from the page: `{"resize":[cols,rows]}`),
//! `WS /ws/logs/{n}` (a command's output from its first byte, following; then a text frame with
//! its status as JSON), `WS /ws/metrics` (the sandbox's live figures, `Sandbox::metrics`, a
//! JSON text frame a second).
//!
//! Requests must name the server as `127.0.0.1:<port>` or `localhost:<port>` (a DNS-rebound
//! name is refused) and, when a browser sends its `Origin`, come from this page (403 otherwise):
//! another page the user has open cannot type into the terminal or run commands. SIGINT and
//! SIGTERM close the sandbox before the server exits.
//!
//! Bounds: 64 websockets at once (more are closed with 1013 "try again later"); frames of at
//! most 64 KiB (a larger one closes the socket with 1009); a text frame that is not a resize
//! closes it with 1003; a browser that does not read (a send waits over 5 s) is closed with
//! 1008, or dropped when even that cannot be sent; one that falls 256 chunks behind the
//! terminal's broadcast (whose buffer is shared and bounded) skips what it missed, with a note
//! on its screen; 32 commands running at once, and the last 20 finished ones kept (an older
//! one goes with its log files). The terminal's shell lives on between connections (a reconnect replays its last
//! 64 KiB of output) and ends 30 s after the last client left.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use oci_sandbox::{
    ExecConfig, NamespaceContainer, OciRuntime, OutputMode, ProcessCapture, PtyWriter, Sandbox,
    SandboxConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, broadcast};

const PAGE: &str = include_str!("index.html");
const MAX_SOCKETS: usize = 64;
const MAX_FRAME: usize = 64 * 1024;
const SCREEN_BYTES: usize = 64 * 1024;
const CLIENT_BACKLOG: usize = 256;
const MAX_COMMANDS: usize = 32;
const TERMINAL_GRACE: Duration = Duration::from_secs(30);
/// Finished commands kept (with their logs) for the list.
const KEPT_FINISHED: usize = 20;
/// A send to a browser that takes longer means it does not read: it is dropped.
const SEND_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct App {
    runtime: OciRuntime,
    sandbox: Sandbox,
    policy: Arc<SandboxConfig>,
    assets: Arc<std::path::PathBuf>,
    sockets: Arc<Semaphore>,
    terminal: Arc<tokio::sync::Mutex<Option<Arc<Terminal>>>>,
    commands: Arc<Mutex<Commands>>,
    /// A running command holds one until it ends.
    command_slots: Arc<Semaphore>,
    /// The names this server answers to (`127.0.0.1:<port>`, `localhost:<port>`).
    hosts: Arc<Vec<String>>,
}

/// The commands run so far: the running ones and the last [`KEPT_FINISHED`] finished ones
/// (an older finished one goes, with its capture files).
#[derive(Default)]
struct Commands {
    next: usize,
    list: VecDeque<Arc<Command>>,
}

/// The shared shell: its input side, its output broadcast and the recent screen.
struct Terminal {
    writer: tokio::sync::Mutex<PtyWriter>,
    output: broadcast::Sender<Bytes>,
    screen: Mutex<VecDeque<u8>>,
    clients: std::sync::atomic::AtomicUsize,
    ended: tokio_util::sync::CancellationToken,
}

struct Command {
    n: usize,
    command: String,
    started: Instant,
    capture: ProcessCapture,
    ended: Mutex<Option<(oci_sandbox::ExitStatus, Duration)>>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = match std::env::args().nth(1).as_deref() {
        Some("crun") => OciRuntime::Crun,
        Some("runsc") | Some("gvisor") => OciRuntime::Gvisor,
        _ => OciRuntime::Runc,
    };
    let runtime_handle = NamespaceContainer::builder()
        .runtime(runtime)
        .build()
        .await?;
    let policy = SandboxConfig::default();
    let sandbox = runtime_handle.create(&policy).await?;
    let assets = std::env::var_os("WEB_ASSETS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target/web-assets"));
    if !assets.join("xterm.js").exists() {
        return Err(format!(
            "{} has no xterm.js: run `make web-assets` (it fetches xterm.js from npm)",
            assets.display()
        )
        .into());
    }
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    let app = App {
        runtime,
        sandbox: sandbox.clone(),
        policy: Arc::new(policy),
        assets: Arc::new(assets),
        sockets: Arc::new(Semaphore::new(MAX_SOCKETS)),
        terminal: Default::default(),
        commands: Default::default(),
        command_slots: Arc::new(Semaphore::new(MAX_COMMANDS)),
        hosts: Arc::new(vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
        ]),
    };
    let router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/assets/{file}", get(asset))
        .route("/api/info", get(info))
        .route("/api/commands", get(list).post(run))
        .route("/ws/term", get(term_socket))
        .route("/ws/logs/{n}", get(log_socket))
        .route("/ws/metrics", get(metrics_socket))
        .layer(axum::middleware::from_fn_with_state(app.clone(), same_site))
        .with_state(app);
    // Both handlers are in place before the URL is out: a SIGINT right after it (a test's
    // stop, a quick Ctrl-C) would otherwise kill the process before `ctrl_c()` is first
    // polled, leaving the sandbox to the next start's sweep.
    use tokio::signal::unix::{SignalKind, signal};
    let (mut int, mut term) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    println!("web console on http://{}/", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    sandbox.close().await;
    runtime_handle.close().await;
    Ok(())
}

async fn asset(State(app): State<App>, Path(file): Path<String>) -> Response {
    let kind = match file.as_str() {
        "xterm.js" | "addon-fit.js" => "text/javascript",
        "xterm.css" => "text/css",
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    match tokio::fs::read(app.assets.join(&file)).await {
        Ok(body) => ([(header::CONTENT_TYPE, kind)], body).into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn info(State(app): State<App>) -> Json<serde_json::Value> {
    let p = &app.policy;
    Json(serde_json::json!({
        "runtime": app.runtime.to_string(),
        "sandbox": app.sandbox.id(),
        "limits": {
            "memory_bytes": p.memory_limit,
            "pids": p.pids_limit,
            "cpu_millicores": p.cpu_millicores,
            "tmp_bytes": p.tmp_size,
        },
        "network": format!("{:?}", p.network),
    }))
}

fn command_json(c: &Command) -> serde_json::Value {
    let ended = *c.ended.lock().unwrap();
    let (state, code, duration, usage) = match &ended {
        None => ("running", None, c.started.elapsed(), None),
        Some((status, took)) => (
            "finished",
            Some(status.to_string()),
            *took,
            status.usage().map(|u| {
                serde_json::json!({
                    "user_cpu_ms": u.user_cpu.as_millis() as u64,
                    "system_cpu_ms": u.system_cpu.as_millis() as u64,
                    "peak_rss_bytes": u.peak_rss_bytes,
                })
            }),
        ),
    };
    serde_json::json!({
        "n": c.n,
        "command": c.command,
        "state": state,
        "status": code,
        "duration_ms": duration.as_millis() as u64,
        "usage": usage,
    })
}

async fn list(State(app): State<App>) -> Json<serde_json::Value> {
    let commands: Vec<Arc<Command>> = app.commands.lock().unwrap().list.iter().cloned().collect();
    Json(serde_json::Value::Array(
        commands.iter().map(|c| command_json(c)).collect(),
    ))
}

#[derive(serde::Deserialize)]
struct RunRequest {
    command: String,
}

/// Every request must name this server as its host (`127.0.0.1:<port>` or
/// `localhost:<port>`: a DNS-rebound name is refused) and, when a browser says where it comes
/// from (`Origin`, sent with every websocket handshake and cross-site request), come from this
/// console's own page: another site the user has open cannot drive the sandbox (cross-site
/// websocket hijacking, CSRF, DNS rebinding). Clients that are not browsers send no `Origin`.
async fn same_site(
    State(app): State<App>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = req.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let Some(host) = host.filter(|h| app.hosts.iter().any(|ok| ok == h)) else {
        return (StatusCode::FORBIDDEN, "unknown host").into_response();
    };
    let origins: Vec<_> = headers.get_all(header::ORIGIN).iter().collect();
    let same = match origins.as_slice() {
        [] => true,
        [one] => one.to_str().is_ok_and(|o| o == format!("http://{host}")),
        _ => false,
    };
    if !same {
        return (StatusCode::FORBIDDEN, "cross-site requests are refused").into_response();
    }
    next.run(req).await
}

async fn run(State(app): State<App>, Json(req): Json<RunRequest>) -> Response {
    if req.command.trim().is_empty() || req.command.len() > 4096 {
        return (StatusCode::BAD_REQUEST, "a command of 1..4096 bytes").into_response();
    }
    // Taken before the exec and held until the command ends: concurrent requests cannot
    // run more than MAX_COMMANDS together.
    let Ok(slot) = app.command_slots.clone().try_acquire_owned() else {
        return (StatusCode::TOO_MANY_REQUESTS, "too many commands running").into_response();
    };
    let exec = ExecConfig::new("sh", vec!["-c".to_owned(), req.command.clone()]);
    let capture = match app.sandbox.exec_captured(&exec, OutputMode::Combined).await {
        Ok(c) => c,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let command = {
        let mut commands = app.commands.lock().unwrap();
        let c = Arc::new(Command {
            n: commands.next,
            command: req.command,
            started: Instant::now(),
            capture,
            ended: Mutex::new(None),
        });
        commands.next += 1;
        commands.list.push_back(c.clone());
        c
    };
    let (watched, commands) = (command.clone(), app.commands.clone());
    tokio::spawn(async move {
        let status = watched.capture.wait().await;
        if let Ok(status) = status {
            *watched.ended.lock().unwrap() = Some((status, watched.started.elapsed()));
        }
        drop(slot);
        // The oldest finished commands beyond KEPT_FINISHED go (their capture files with the
        // last handle: a log socket still streaming one keeps it until it is done).
        let mut commands = commands.lock().unwrap();
        let finished = |c: &Arc<Command>| c.ended.lock().unwrap().is_some();
        while commands.list.iter().filter(|c| finished(c)).count() > KEPT_FINISHED {
            let oldest = commands
                .list
                .iter()
                .position(finished)
                .expect("one finished");
            commands.list.remove(oldest);
        }
    });
    Json(command_json(&command)).into_response()
}

/// Closes `socket` with `code` and `reason`.
async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// Upgrades to a websocket with the frame bound, served by `serve` while it holds one of the
/// [`MAX_SOCKETS`] slots (without one it is closed at once with 1013).
fn upgrade<F, Fut>(sockets: &Arc<Semaphore>, ws: WebSocketUpgrade, serve: F) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slot = sockets.clone().try_acquire_owned();
    ws.max_frame_size(MAX_FRAME)
        .max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| async move {
            let Ok(_slot) = slot else {
                return close(socket, 1013, "too many connections").await;
            };
            serve(socket).await;
        })
}

async fn term_socket(State(app): State<App>, ws: WebSocketUpgrade) -> Response {
    upgrade(&app.sockets.clone(), ws, move |socket| async move {
        let terminal = match terminal(&app).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "no terminal");
                return close(socket, 1011, "the terminal could not start").await;
            }
        };
        serve_terminal(socket, terminal).await;
    })
}

/// The shared terminal, started if there is none (or the last one ended).
async fn terminal(app: &App) -> Result<Arc<Terminal>, oci_sandbox::SandboxError> {
    let mut slot = app.terminal.lock().await;
    if let Some(t) = slot.as_ref()
        && !t.ended.is_cancelled()
    {
        return Ok(t.clone());
    }
    let mut exec = ExecConfig::new("sh", Vec::<String>::new());
    exec.env.push(("PS1".into(), "$ ".into()));
    let session = app.sandbox.exec_interactive(&exec).await?;
    let (mut reader, writer) = session.split();
    let terminal = Arc::new(Terminal {
        writer: tokio::sync::Mutex::new(writer),
        output: broadcast::channel(CLIENT_BACKLOG).0,
        screen: Mutex::new(VecDeque::with_capacity(SCREEN_BYTES)),
        clients: Default::default(),
        ended: Default::default(),
    });
    let t = terminal.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            // Ended by the shell's exit, or by the grace period after the last client (the
            // session, dropped below, kills the shell).
            let read = tokio::select! {
                r = reader.read(&mut buf) => r,
                () = t.ended.cancelled() => break,
            };
            let n = match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = Bytes::copy_from_slice(&buf[..n]);
            {
                let mut screen = t.screen.lock().unwrap();
                screen.extend(chunk.iter().copied());
                let over = screen.len().saturating_sub(SCREEN_BYTES);
                screen.drain(..over);
            }
            let _ = t.output.send(chunk);
        }
        t.ended.cancel();
        // The writer half (in the terminal, until the next one replaces it) would keep the
        // shell alive: it ends now, with its grace period, not when the next one starts.
        let _ = session.kill().await;
    });
    *slot = Some(terminal.clone());
    Ok(terminal)
}

#[derive(serde::Deserialize)]
struct Control {
    resize: (u16, u16),
}

async fn serve_terminal(socket: WebSocket, terminal: Arc<Terminal>) {
    use std::sync::atomic::Ordering;
    terminal.clients.fetch_add(1, Ordering::SeqCst);
    let (mut tx, mut rx) = socket.split();
    // Subscribe before the replay: nothing falls between the two.
    let mut output = terminal.output.subscribe();
    let replay: Vec<u8> = terminal.screen.lock().unwrap().iter().copied().collect();
    let mut outcome: Option<(u16, &'static str)> = None;
    let slow = (1008, "too slow: reconnect to resync");
    if !replay.is_empty() {
        match tokio::time::timeout(SEND_DEADLINE, tx.send(Message::Binary(replay.into()))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => outcome = Some((1001, "gone")),
            Err(_) => outcome = Some(slow),
        }
    }
    while outcome.is_none() {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Ok(bytes) => {
                    match tokio::time::timeout(SEND_DEADLINE, tx.send(Message::Binary(bytes))).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => outcome = Some((1001, "gone")),
                        Err(_) => outcome = Some(slow),
                    }
                }
                // Behind the shell by more than the broadcast holds (a flood): what it missed
                // is skipped, and said so, as a terminal drops what it cannot draw.
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("\r\n[web console: {n} chunks of output skipped]\r\n");
                    let sent = tx.send(Message::Binary(note.into_bytes().into()));
                    match tokio::time::timeout(SEND_DEADLINE, sent).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => outcome = Some((1001, "gone")),
                        Err(_) => outcome = Some(slow),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => outcome = Some((1000, "the shell ended")),
            },
            () = terminal.ended.cancelled() => outcome = Some((1000, "the shell ended")),
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(input))) => {
                    let mut w = terminal.writer.lock().await;
                    if w.write_all(&input).await.is_err() {
                        outcome = Some((1011, "the shell is gone"));
                    }
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Control>(&text) {
                    Ok(Control { resize: (cols, rows) }) if (1..=1000).contains(&cols) && (1..=1000).contains(&rows) => {
                        let _ = terminal.writer.lock().await.resize(cols, rows);
                    }
                    _ => outcome = Some((1003, "text frames are resize requests only")),
                },
                Some(Ok(Message::Close(_))) | None => outcome = Some((1000, "bye")),
                Some(Ok(_)) => {}
                Some(Err(_)) => outcome = Some((1009, "a frame over 64 KiB, or a broken one")),
            },
        }
    }
    let (code, reason) = outcome.unwrap_or((1000, "bye"));
    let close = tx.send(Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    })));
    let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
    if terminal.clients.fetch_sub(1, Ordering::SeqCst) == 1 {
        // The last client: the shell waits a while for a reconnect, then ends.
        let t = terminal.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TERMINAL_GRACE).await;
            if t.clients.load(Ordering::SeqCst) == 0 {
                t.ended.cancel();
            }
        });
    }
}

async fn log_socket(
    State(app): State<App>,
    Path(n): Path<usize>,
    ws: WebSocketUpgrade,
) -> Response {
    let command = app
        .commands
        .lock()
        .unwrap()
        .list
        .iter()
        .find(|c| c.n == n)
        .cloned();
    let Some(command) = command else {
        return StatusCode::NOT_FOUND.into_response();
    };
    upgrade(&app.sockets.clone(), ws, move |socket| async move {
        let (mut tx, mut rx) = socket.split();
        // From the first byte, following the file until the command ends; each send
        // waits for the socket, so a slow browser slows its own stream only.
        let mut stream = command.capture.output.stdout_stream();
        let streamed = async {
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                // A page that does not read for SEND_DEADLINE is dropped.
                match tokio::time::timeout(SEND_DEADLINE, tx.send(Message::Binary(chunk))).await {
                    Ok(Ok(())) => {}
                    _ => return false,
                }
            }
            true
        };
        let done = tokio::select! {
            done = streamed => done,
            // The browser closing ends the stream too.
            _ = async { while let Some(Ok(m)) = rx.next().await { if matches!(m, Message::Close(_)) { break } } } => false,
        };
        if done {
            let _ = command.capture.wait().await;
            let status = command_json(&command);
            let ending = async {
                tx.send(Message::Text(status.to_string().into())).await?;
                tx.send(Message::Close(Some(CloseFrame {
                    code: 1000,
                    reason: "ended".into(),
                })))
                .await
            };
            let _ = tokio::time::timeout(SEND_DEADLINE, ending).await;
        }
    })
}

/// The sandbox's figures once a second, as JSON, until the page goes or the sandbox ends.
async fn metrics_socket(State(app): State<App>, ws: WebSocketUpgrade) -> Response {
    let figures = match app.sandbox.metrics(Duration::from_secs(1)) {
        Ok(f) => f,
        Err(_) => return StatusCode::GONE.into_response(),
    };
    upgrade(&app.sockets.clone(), ws, move |socket| async move {
        let (mut tx, mut rx) = socket.split();
        let mut figures = Box::pin(figures);
        let sent = async {
            while let Some(m) = figures.next().await {
                let json = serde_json::json!({
                    "state": m.state.to_string(),
                    "cpu_seconds": m.cpu.map(|d| d.as_secs_f64()),
                    "cpu_share": m.cpu_share,
                    "cpu_limit_cores": m.cpu_limit_cores,
                    "memory_bytes": m.memory_bytes,
                    "memory_limit_bytes": m.memory_limit_bytes,
                    "peak_memory_bytes": m.peak_memory_bytes,
                    "pids": m.pids,
                    "oom_kills": m.oom_kills,
                    "disk_bytes": m.disk_bytes,
                    "execs_running": m.execs_running,
                    "execs_started": m.execs_started,
                });
                let send = tx.send(Message::Text(json.to_string().into()));
                match tokio::time::timeout(SEND_DEADLINE, send).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        };
        tokio::select! {
            () = sent => {}
            _ = async { while let Some(Ok(m)) = rx.next().await { if matches!(m, Message::Close(_)) { break } } } => {}
        }
    })
}
