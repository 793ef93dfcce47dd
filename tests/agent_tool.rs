//! Drives `examples/agent_tool.rs` like an agent would: JSON tool calls in, JSON results out,
//! concurrent calls in one sandbox, on runc and runsc.

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

struct Agent {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    results: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Agent {
    fn start(runtime: &str) -> Self {
        let mut child = tokio::process::Command::new(common::example_binary("agent_tool"))
            .args(["--runtime", runtime])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let results = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Agent {
            child,
            stdin,
            results,
        }
    }

    async fn send(&mut self, call: Value) {
        let mut line = call.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.results.next_line())
            .await
            .expect("a result within 60 s")
            .unwrap()
            .expect("the agent ended early");
        serde_json::from_str(&line).unwrap()
    }
}

async fn tool_calls(runtime: &str) {
    let mut agent = Agent::start(runtime);
    agent
        .send(json!({"id": 1, "cmd": ["sh", "-c", "echo remembered > notes.txt; cat notes.txt"]}))
        .await;
    let first = agent.next().await;
    assert_eq!(first["id"], 1, "{first}");
    assert_eq!(first["exit_code"], 0, "{first}");
    assert_eq!(first["stdout"], "remembered\n");

    let started = Instant::now();
    for call in [
        json!({"id": 2, "cmd": ["sh", "-c", "sleep 1; echo a"]}),
        json!({"id": 3, "cmd": ["sh", "-c", "sleep 1; echo b >&2; exit 3"]}),
        json!({"id": 4, "cmd": ["python3", "-c", "import sys; print(sys.stdin.read().upper())"], "stdin": "shout"}),
        json!({"id": 5, "cmd": ["sleep", "30"], "timeout_ms": 300}),
        json!({"id": 6, "cmd": ["cat", "notes.txt"]}),
        json!({"id": 7, "cmd": ["sh", "-c", "yes | head -c 200000"]}),
        json!({"id": 8, "cmd": ["no-such-tool"]}),
        json!({"id": 9, "cmd": ["sh", "-c", "echo $MODE; pwd"], "env": {"MODE": "fast"}, "cwd": "/tmp"}),
    ] {
        agent.send(call).await;
    }
    let mut results = HashMap::new();
    for _ in 0..8 {
        let r = agent.next().await;
        results.insert(r["id"].as_u64().unwrap(), r);
    }
    // Concurrent: the two one-second calls overlapped.
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(results[&2]["stdout"], "a\n");
    assert_eq!(results[&3]["exit_code"], 3);
    assert_eq!(results[&3]["stderr"], "b\n");
    assert_eq!(results[&4]["stdout"], "SHOUT\n");
    assert_eq!(results[&5]["timed_out"], true, "{}", results[&5]);
    assert!(results[&5]["duration_ms"].as_f64().unwrap() < 5000.0);
    assert_eq!(results[&6]["stdout"], "remembered\n");
    assert_eq!(results[&7]["truncated"], true);
    assert_eq!(results[&7]["stdout"].as_str().unwrap().len(), 64 * 1024);
    assert!(
        results[&8]["error"]
            .as_str()
            .unwrap()
            .contains("command not found"),
        "{}",
        results[&8]
    );
    assert_eq!(results[&9]["stdout"], "fast\n/tmp\n");
    assert!(results[&2]["cpu_ms"].as_f64().is_some(), "{}", results[&2]);

    // Files: written, listed, read back; a tree up and down.
    let up = tempfile::tempdir().unwrap();
    std::fs::create_dir(up.path().join("pkg")).unwrap();
    std::fs::write(up.path().join("pkg/data.txt"), "payload").unwrap();
    let down = tempfile::tempdir().unwrap();
    let host = |d: &tempfile::TempDir| d.path().to_str().unwrap().to_owned();
    for call in [
        json!({"id": 10, "tool": "write", "path": "/workspace/in.txt", "content": "from the agent"}),
        json!({"id": 11, "tool": "upload", "host_dir": host(&up), "path": "/workspace/up"}),
    ] {
        agent.send(call).await;
        let r = agent.next().await;
        assert!(r.get("error").is_none(), "{r}");
    }
    agent
        .send(json!({"id": 12, "cmd": ["sh", "-c", "cat in.txt up/pkg/data.txt > out.txt"]}))
        .await;
    assert_eq!(agent.next().await["exit_code"], 0);
    agent
        .send(json!({"id": 13, "tool": "read", "path": "/workspace/out.txt"}))
        .await;
    assert_eq!(agent.next().await["content"], "from the agentpayload");
    agent
        .send(json!({"id": 14, "tool": "list", "path": "/workspace/up"}))
        .await;
    let listed = agent.next().await;
    assert_eq!(listed["entries"][0]["name"], "pkg", "{listed}");
    assert_eq!(listed["entries"][0]["kind"], "dir", "{listed}");
    agent
        .send(
            json!({"id": 15, "tool": "download", "path": "/workspace/up", "host_dir": host(&down)}),
        )
        .await;
    assert_eq!(agent.next().await["downloaded"], true);
    assert_eq!(
        std::fs::read_to_string(down.path().join("pkg/data.txt")).unwrap(),
        "payload"
    );
    agent
        .send(json!({"id": 16, "tool": "read", "path": "/workspace/missing"}))
        .await;
    let missing = agent.next().await;
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("/workspace/missing"),
        "{missing}"
    );

    // End of input: the agent finishes its calls, removes its sandbox and exits.
    let Agent {
        mut child, stdin, ..
    } = agent;
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runc_tool_calls() {
    tool_calls("runc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsc_tool_calls() {
    tool_calls("runsc").await;
}
