//! What rmcp leaves out of JSON-RPC: an answer to a request that is not JSON at all. The SDK
//! drops such a line (stdio) or answers HTTP 415 with text; a client is owed a JSON-RPC
//! error (`-32700 Parse error`, id null), and the server goes on.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The JSON-RPC answer to a message that does not parse.
pub const PARSE_ERROR: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error: not a JSON message"}}"#;

/// The longest message line read from stdin (a tool call's code, a file's content).
const MAX_MESSAGE: usize = 64 << 20;

/// stdio for rmcp behind a filter: lines from stdin that are JSON go to the server, the
/// others get [`PARSE_ERROR`] on stdout; the server's lines go to stdout whole (one writer,
/// so an error never lands inside a reply).
pub fn filtered_stdio() -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
    let (server_in, mut to_server) = tokio::io::duplex(1 << 20);
    let (mut from_server, server_out) = tokio::io::duplex(1 << 20);
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let errors = lines_tx.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut stdin)
                .take(MAX_MESSAGE as u64 + 1)
                .read_until(b'\n', &mut line)
                .await;
            match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let body = line.strip_suffix(b"\n").unwrap_or(&line);
            if body.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
                if to_server.write_all(&line).await.is_err() {
                    break;
                }
                if !line.ends_with(b"\n") && to_server.write_all(b"\n").await.is_err() {
                    break;
                }
            } else {
                let _ = errors.send(format!("{PARSE_ERROR}\n").into_bytes()).await;
                // A line past the bound: the rest of it is skipped too.
                if !line.ends_with(b"\n") {
                    let mut rest = Vec::new();
                    let _ = stdin.read_until(b'\n', &mut rest).await;
                }
            }
        }
        // stdin's end is the server's.
        drop(to_server);
    });
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(&mut from_server);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if lines_tx.send(line.clone()).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines_rx.recv().await {
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });
    (server_in, server_out)
}

/// HTTP: a POST whose body is not JSON gets [`PARSE_ERROR`] (400) instead of the SDK's text.
pub async fn parse_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if request.method() != axum::http::Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_MESSAGE).await {
        Ok(b) => b,
        Err(_) => {
            return (
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
            )
                .into_response();
        }
    };
    if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            PARSE_ERROR,
        )
            .into_response();
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}
