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
//! Fields of a command call: `cmd` (required), `id` (echoed back), `timeout_ms` (default
//! 30 s), `stdin` (text), `env` (object), `cwd`. The workspace (`/workspace`, a temp dir)
//! persists across calls. `--runtime runc|crun|runsc` picks the runtime (default runc).
//!
//! File calls name a `tool`: `{"tool": "write", "path": "/workspace/a.txt", "content": "..."}`,
//! `{"tool": "read", "path": ...}`, `{"tool": "list", "path": ...}` (name, kind, size),
//! `{"tool": "upload", "host_dir": ..., "path": ...}` and `{"tool": "download", "path": ...,
//! "host_dir": ...}` (whole trees).

use std::sync::Arc;
use std::time::{Duration, Instant};

use oci_sandbox::{ExecConfig, NamespaceContainer, OciRuntime, OutputCap, SandboxConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

/// Most bytes of stdout (and of stderr) a result carries: its first and last halves.
const OUTPUT_CAP: u64 = 64 * 1024;

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
    let sandbox = containers.create(&policy).await?;
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
    let text = |key: &str| -> Result<String, String> {
        call.get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or(format!("\"{key}\" must be a string"))
    };
    let err = |e: oci_sandbox::SandboxError| e.to_string();
    match call.get("tool").and_then(Value::as_str).unwrap_or("exec") {
        "exec" => run_command(sandbox, call).await,
        "write" => {
            let content = text("content")?;
            sandbox
                .write_file(text("path")?, content.as_bytes())
                .await
                .map_err(err)?;
            Ok(json!({ "written": content.len() }))
        }
        "read" => {
            let bytes = sandbox.read_file(text("path")?).await.map_err(err)?;
            Ok(json!({ "content": String::from_utf8_lossy(&bytes) }))
        }
        "list" => {
            let entries = sandbox.list_dir(text("path")?).await.map_err(err)?;
            let entries: Vec<Value> = entries
                .iter()
                .map(|e| {
                    json!({
                        "name": e.name,
                        "kind": format!("{:?}", e.metadata.kind).to_lowercase(),
                        "size": e.metadata.size,
                    })
                })
                .collect();
            Ok(json!({ "entries": entries }))
        }
        "upload" => {
            sandbox
                .upload_dir(text("host_dir")?, text("path")?)
                .await
                .map_err(err)?;
            Ok(json!({ "uploaded": true }))
        }
        "download" => {
            sandbox
                .download_dir(text("path")?, text("host_dir")?)
                .await
                .map_err(err)?;
            Ok(json!({ "downloaded": true }))
        }
        other => Err(format!("unknown tool {other:?}")),
    }
}

async fn run_command(sandbox: &oci_sandbox::Sandbox, call: &Value) -> Result<Value, String> {
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
    // The head and the tail of each stream (a traceback's end matters most).
    let output = process.wait_with_output_capped(OutputCap::new(OUTPUT_CAP));
    let ((), output) = tokio::join!(feed, output);
    let output = output.map_err(|e| e.to_string())?;
    let status = output.status;
    Ok(json!({
        "exit_code": status.code(),
        "signal": status.signal(),
        "timed_out": status.timed_out(),
        "oom_killed": status.oom_killed(),
        "stdout": String::from_utf8_lossy(&output.stdout),
        "stderr": String::from_utf8_lossy(&output.stderr),
        "truncated": output.stdout_dropped > 0 || output.stderr_dropped > 0,
        "cpu_ms": status.usage().map(|u| (u.user_cpu + u.system_cpu).as_secs_f64() * 1e3),
        "peak_rss_kib": status.usage().map(|u| u.peak_rss_bytes / 1024),
    }))
}
