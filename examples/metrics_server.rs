//! Serves every sandbox's figures and the library's own at `/metrics`, in Prometheus' text
//! format (feature `prometheus`), on 127.0.0.1.
//!
//! It starts two sandboxes, each with labels: `burner`, which spins a CPU loop under half a
//! core, and `idle`. A line on stdin closes the burner (its series then go stale in
//! Prometheus); the end of stdin, or Ctrl-C, ends the example.
//!
//! ```text
//! cargo run --features prometheus --example metrics_server -- [--port 9464] [--runtime runc]
//! curl -s http://127.0.0.1:9464/metrics | grep oci_sandbox_cpu
//! ```
//!
//! A Prometheus scrape config for it:
//!
//! ```yaml
//! scrape_configs:
//!   - job_name: oci-sandbox
//!     scrape_interval: 5s
//!     static_configs: [{ targets: ["127.0.0.1:9464"] }]
//! ```
//!
//! Requests must name the server as `127.0.0.1:<port>` or `localhost:<port>` (403 otherwise),
//! as Prometheus does with the target above.
//!
//! Each scrape gathers the figures first (`NamespaceContainer::metrics`, off the async
//! workers) and formats them after; one scrape's cost is a few file reads per sandbox and a
//! walk of its writable directories.

use std::collections::BTreeMap;

use axum::http::header::CONTENT_TYPE;
use axum::{Router, extract::State, response::IntoResponse, routing::get};
use oci_sandbox::{ExecConfig, NamespaceContainer, OciRuntime, SandboxConfig};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut port, mut runtime) = (9464u16, OciRuntime::Runc);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next().ok_or("--port N")?.parse()?,
            "--runtime" => {
                runtime = match args.next().as_deref() {
                    Some("runc") => OciRuntime::Runc,
                    Some("crun") => OciRuntime::Crun,
                    Some("runsc") => OciRuntime::Gvisor,
                    _ => return Err("--runtime runc|crun|runsc".into()),
                }
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let sandboxes = NamespaceContainer::builder()
        .runtime(runtime)
        .build()
        .await?;

    let labelled = |role: &str| SandboxConfig {
        labels: BTreeMap::from([("role".to_owned(), role.to_owned())]),
        cpu_millicores: Some(500),
        memory_limit: Some(256 << 20),
        ..SandboxConfig::default()
    };
    let burner = sandboxes.create(&labelled("burner")).await?;
    let idle = sandboxes.create(&labelled("idle")).await?;
    let spinning = burner
        .exec(&ExecConfig::shell("while :; do :; done"))
        .await?;

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let port = listener.local_addr()?.port();
    // Only this address as the Host: a page of a DNS-rebound name cannot read the figures
    // (ids, names, labels) through the browser.
    let hosts = [format!("127.0.0.1:{port}"), format!("localhost:{port}")];
    let app = Router::new()
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let allowed = request
                    .headers()
                    .get(axum::http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|h| hosts.iter().any(|a| a == h));
                async move {
                    if allowed {
                        next.run(request).await
                    } else {
                        axum::http::StatusCode::FORBIDDEN.into_response()
                    }
                }
            },
        ))
        .with_state(sandboxes.clone());
    // The test (and a person) reads these lines.
    println!("listening http://{}/metrics", listener.local_addr()?);
    println!("burner {}", burner.id());
    println!("idle {}", idle.id());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut spinning = Some(spinning);
    let mut burner = Some(burner);
    loop {
        tokio::select! {
            line = stdin.next_line() => match line {
                Ok(Some(_)) => {
                    if let Some(b) = burner.take() {
                        drop(spinning.take());
                        b.close().await;
                        println!("closed burner");
                    }
                }
                _ => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    server.abort();
    sandboxes.close().await;
    Ok(())
}

/// One scrape: every figure gathered, then formatted.
async fn metrics(State(sandboxes): State<NamespaceContainer>) -> impl IntoResponse {
    let body = sandboxes.metrics().await.to_prometheus();
    ([(CONTENT_TYPE, oci_sandbox::PROMETHEUS_CONTENT_TYPE)], body)
}
