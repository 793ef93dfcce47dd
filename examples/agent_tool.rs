//! An agent's tool-call loop: JSON tool calls on stdin, one per line, run concurrently in one
//! long-lived sandbox; one JSON result per call on stdout, as each finishes.
//!
//! ```text
//! $ cargo run --example agent_tool
//! {"id": 1, "cmd": ["sh", "-c", "echo hi > notes.txt; cat notes.txt"]}
//! {"id":1,"exit_code":0,"signal":null,"timed_out":false,"oom_killed":false,"stdout":"hi\n","stderr":"","truncated":false,"duration_ms":2.1}
//! {"id": 2, "cmd": ["python3", "-c", "import sys; print(sys.stdin.read().upper())"], "stdin": "shout", "timeout_ms": 2000}
//! {"id":2,"exit_code":0,...,"stdout":"SHOUT\n",...}
//! ```
//!
//! Fields of a call: `cmd` (required), `id` (echoed back), `timeout_ms` (default 30 s),
//! `stdin` (text), `env` (object), `cwd`. The workspace (`/workspace`, a temp dir) persists
//! across calls. `--runtime runc|crun|runsc` picks the runtime (default runc).

use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_sandbox::{ExecConfig, NamespaceContainer, OciRuntime, SandboxConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// Most bytes of stdout (and of stderr) a result carries; the rest is read and dropped.
const OUTPUT_CAP: usize = 64 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = match std::env::args()
        .skip_while(|a| a != "--runtime")
        .nth(1)
        .as_deref()
    {
        Some("crun") => OciRuntime::Crun,
        Some("runsc") | Some("gvisor") => OciRuntime::Gvisor,
        _ => OciRuntime::Runc,
    };
    let workspace = tempfile::tempdir()?;
    let policy = SandboxConfig {
        workdir: Some(workspace.path().to_path_buf()),
        timeout: Some(Duration::from_secs(30)),
        ..SandboxConfig::default()
    };
    let containers = NamespaceContainer::with_runtime(runtime).await?;
    let sandbox = containers
        .start(&NamespaceContainer::build_config(&policy, "true", vec![]))
        .await?;
    let out = Arc::new(Mutex::new(tokio::io::stdout()));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut calls = tokio::task::JoinSet::new();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let (sandbox, out) = (sandbox.clone(), out.clone());
        calls.spawn(async move {
            let result = match serde_json::from_str::<Value>(&line) {
                Ok(call) => run_call(&sandbox, &call).await,
                Err(e) => json!({ "id": null, "error": format!("not JSON: {e}") }),
            };
            let mut text = result.to_string();
            text.push('\n');
            let mut out = out.lock().await;
            let _ = out.write_all(text.as_bytes()).await;
            let _ = out.flush().await;
        });
    }
    while calls.join_next().await.is_some() {}
    sandbox.close().await;
    containers.close().await;
    Ok(())
}

async fn run_call(sandbox: &oci_sandbox::Sandbox, call: &Value) -> Value {
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let started = Instant::now();
    match execute(sandbox, call).await {
        Ok(mut result) => {
            result["id"] = id;
            result["duration_ms"] = json!((started.elapsed().as_secs_f64() * 1e4).round() / 10.0);
            result
        }
        Err(error) => json!({ "id": id, "error": error }),
    }
}

async fn execute(sandbox: &oci_sandbox::Sandbox, call: &Value) -> Result<Value, String> {
    let cmd: Vec<String> = call
        .get("cmd")
        .and_then(Value::as_array)
        .ok_or("\"cmd\" must be an array of strings")?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or("\"cmd\" must be an array of strings")?;
    let (program, args) = cmd.split_first().ok_or("\"cmd\" is empty")?;
    let mut exec = ExecConfig::new(program.clone(), args.to_vec());
    if let Some(ms) = call.get("timeout_ms").and_then(Value::as_u64) {
        exec.timeout = Some(Duration::from_millis(ms));
    }
    if let Some(env) = call.get("env").and_then(Value::as_object) {
        for (k, v) in env {
            exec.env
                .push((k.clone(), v.as_str().unwrap_or_default().to_owned()));
        }
    }
    if let Some(cwd) = call.get("cwd").and_then(Value::as_str) {
        exec.cwd = Some(cwd.into());
    }
    let stdin = call
        .get("stdin")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let mut process = sandbox.exec(&exec).await.map_err(|e| e.to_string())?;
    let mut input = process.stdin.take().expect("piped");
    let feed = async move {
        let _ = input.write_all(stdin.as_bytes()).await;
    };
    let stdout = capped(process.stdout.take().expect("piped"));
    let stderr = capped(process.stderr.take().expect("piped"));
    let ((), (stdout, out_cut), (stderr, err_cut)) = tokio::join!(feed, stdout, stderr);
    let status = process.wait().await.map_err(|e| e.to_string())?;
    Ok(json!({
        "exit_code": status.code(),
        "signal": status.signal(),
        "timed_out": status.timed_out(),
        "oom_killed": status.oom_killed(),
        "stdout": String::from_utf8_lossy(&stdout),
        "stderr": String::from_utf8_lossy(&stderr),
        "truncated": out_cut || err_cut,
    }))
}

/// Reads a stream to its end, keeping at most [`OUTPUT_CAP`] bytes; says whether it cut.
async fn capped(mut stream: impl tokio::io::AsyncRead + Unpin) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut cut = false;
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        cut |= n > room;
    }
    (kept, cut)
}
