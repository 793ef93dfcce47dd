//! An HTTP server that runs sandboxed commands and streams their output over websockets.
//!
//! ```text
//! cargo run --example ws_logs                  # listens on 127.0.0.1:8080 (or $PORT; 0 = any)
//! curl -s -X POST localhost:8080/run -d '{"cmd": ["sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done"]}'
//! # -> {"id":"osb-..."}; then open ws://localhost:8080/logs/osb-... in a websocket client
//! ```
//!
//! `GET /logs/{id}` sends the combined stdout/stderr as binary messages from the first byte,
//! as it comes (any number of clients, joining at any time), then one text message with the
//! exit status as JSON, then closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use oci_sandbox::{NamespaceContainer, OutputMode, ProcessCapture, SandboxConfig};
use serde::Deserialize;

#[derive(Clone)]
struct App {
    sandbox: NamespaceContainer,
    jobs: Arc<Mutex<HashMap<String, Arc<ProcessCapture>>>>,
}

#[derive(Deserialize)]
struct RunRequest {
    cmd: Vec<String>,
    timeout_ms: Option<u64>,
}

async fn run(State(app): State<App>, Json(req): Json<RunRequest>) -> Response {
    let Some((command, args)) = req.cmd.split_first() else {
        return (StatusCode::BAD_REQUEST, "cmd must not be empty").into_response();
    };
    let policy = SandboxConfig {
        timeout: Some(Duration::from_millis(req.timeout_ms.unwrap_or(60_000))),
        ..SandboxConfig::default()
    };
    let config = NamespaceContainer::build_config(&policy, command.clone(), args.to_vec());
    match app
        .sandbox
        .spawn_captured(&config, OutputMode::Combined)
        .await
    {
        Ok(capture) => {
            let id = capture.id().to_owned();
            app.jobs
                .lock()
                .unwrap()
                .insert(id.clone(), Arc::new(capture));
            Json(serde_json::json!({ "id": id })).into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn logs(State(app): State<App>, Path(id): Path<String>, ws: WebSocketUpgrade) -> Response {
    let Some(job) = app.jobs.lock().unwrap().get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "no such job").into_response();
    };
    ws.on_upgrade(move |socket| stream_logs(socket, job))
}

async fn stream_logs(mut socket: WebSocket, job: Arc<ProcessCapture>) {
    let mut output = Box::pin(job.output.stdout_stream());
    while let Some(chunk) = output.next().await {
        let Ok(chunk) = chunk else { return };
        if socket.send(Message::Binary(chunk)).await.is_err() {
            return; // the client went away
        }
    }
    let status = match job.wait().await {
        Ok(s) => serde_json::json!({
            "code": s.code(),
            "signal": s.signal(),
            "timed_out": s.timed_out(),
            "truncated": job.output.truncated(),
            "status": s.to_string(),
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    let _ = socket.send(Message::Text(status.to_string().into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = App {
        sandbox: NamespaceContainer::new().await?,
        jobs: Arc::default(),
    };
    let router = Router::new()
        .route("/run", post(run))
        .route("/logs/{id}", get(logs))
        .with_state(app.clone());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    // Ctrl-C's handler is in place before the address is out (a SIGINT right after it would
    // otherwise kill the process before its jobs are cleaned up).
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // The first line of output is the address, for scripts and tests that start the server.
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            interrupt.recv().await;
        })
        .await?;
    app.jobs.lock().unwrap().clear();
    app.sandbox.close().await;
    Ok(())
}
