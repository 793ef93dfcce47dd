//! An agent loop over a code interpreter: each line on stdin is a JSON tool call
//! `{"language": "python" | "javascript" | "shell", "code": "..."}`, run in one persistent
//! context per language of one sandbox (what a cell defines, the next sees); each reply is a
//! JSON line with its stdout, stderr, results (PNGs as their size), error and timing, and
//! its output streamed first as `{"stream": ...}` lines while it runs.
//!
//! ```text
//! printf '%s\n' '{"code": "x = 6"}' '{"code": "x * 7"}' \
//!   '{"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 4])\nplt.show()"}' \
//!   '{"language": "shell", "code": "cd /tmp; ls | wc -l"}' \
//!   | cargo run --example code_interpreter
//! ```

use std::collections::HashMap;

use futures::StreamExt;
use oci_sandbox::{Code, ExecutionEvent, Language, NamespaceContainer, SandboxConfig};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = NamespaceContainer::new().await?;
    let sandbox = runtime.create(&SandboxConfig::default()).await?;
    let mut contexts = HashMap::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let call: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                println!(
                    "{}",
                    serde_json::json!({ "error": format!("not JSON: {e}") })
                );
                continue;
            }
        };
        let language: Language = match call["language"].as_str().unwrap_or("python").parse() {
            Ok(l) => l,
            Err(e) => {
                println!("{}", serde_json::json!({ "error": e.to_string() }));
                continue;
            }
        };
        let context = match contexts.get(&language) {
            Some(c) => Clone::clone(c),
            None => {
                let c = sandbox.code_context(language).await?;
                contexts.insert(language, c.clone());
                c
            }
        };
        let code = Code::new(call["code"].as_str().unwrap_or_default())
            .timeout(std::time::Duration::from_secs(30));
        let mut running = context.run_streaming(code);
        while let Some(event) = running.next().await {
            if let ExecutionEvent::Stdout(text) | ExecutionEvent::Stderr(text) = event {
                println!("{}", serde_json::json!({ "stream": text }));
            }
        }
        match running.finish().await {
            Ok(done) => {
                let results: Vec<serde_json::Value> = done
                    .results
                    .iter()
                    .map(|r| match r.png() {
                        Some(png) => {
                            serde_json::json!({ "image/png": format!("{} bytes", png.len()) })
                        }
                        None => serde_json::json!({ "text/plain": r.text() }),
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "execution_count": done.execution_count,
                        "stdout": done.stdout,
                        "stderr": done.stderr,
                        "results": results,
                        "error": done.error.as_ref().map(|e| e.to_string()),
                        "timed_out": done.timed_out,
                        "wall_ms": done.wall_time.as_secs_f64() * 1e3,
                    })
                );
            }
            Err(e) => println!("{}", serde_json::json!({ "error": e.to_string() })),
        }
    }
    sandbox.close().await;
    runtime.close().await;
    Ok(())
}
