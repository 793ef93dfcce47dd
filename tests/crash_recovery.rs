//! A process using the library is SIGKILLed with containers running; the next
//! `NamespaceContainer` built on the same state root removes everything it left.
//!
//! This file has its own `main` (harness = false) so that it can re-run itself as the process
//! that crashes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use oci_sandbox::{NamespaceContainer, SandboxConfig};
use tokio::io::AsyncBufReadExt;

const MARKER: &str = "100.6161";

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--crash-child") {
        rt.block_on(crash_child(&args[pos + 1]));
        return;
    }
    // `cargo test -- <filter>` passes other flags: run the one test whatever they are.
    let started = Instant::now();
    rt.block_on(sweep_removes_what_a_killed_process_left());
    println!(
        "test sweep_removes_what_a_killed_process_left ... ok ({:?})",
        started.elapsed()
    );
    println!("1 passed, 0 failed");
}

/// The process that gets killed: spawns three sleeping containers and reports their ids.
async fn crash_child(state: &str) {
    let sandbox = NamespaceContainer::builder()
        .state_dir(state)
        .build()
        .await
        .unwrap();
    let config =
        NamespaceContainer::build_config(&SandboxConfig::default(), "sleep", vec![MARKER.into()]);
    let mut handles = Vec::new();
    for _ in 0..3 {
        let p = sandbox.spawn(&config).await.unwrap();
        println!("{}", p.id());
        handles.push(p);
    }
    // Wait until all three are running before saying so.
    loop {
        let listed = sandbox.list().await.unwrap();
        if handles.iter().all(|h| listed.iter().any(|l| l == h.id())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("ready");
    std::future::pending::<()>().await;
}

async fn sweep_removes_what_a_killed_process_left() {
    let state = tempfile::Builder::new()
        .prefix("osb-crash-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg("--crash-child")
        .arg(state.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ids = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "ready" {
                return;
            }
            ids.push(line);
        }
        panic!("the child ended before it was ready");
    });
    ready.await.expect("child ready within 30 s");
    assert_eq!(ids.len(), 3);

    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // The crash left containers, bundles, cgroups and container processes.
    let runc_list = |root: &std::path::Path| {
        let out = std::process::Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(["list", "-q"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let root = state.path().join("runc/state");
    let left = runc_list(&root);
    for id in &ids {
        assert!(
            left.contains(id),
            "{id} should have survived the crash: {left:?}"
        );
        assert!(state.path().join("runc/bundles").join(id).exists());
    }
    assert!(count_processes(MARKER) >= 3);

    let sandbox = NamespaceContainer::builder()
        .state_dir(state.path())
        .build()
        .await
        .unwrap();
    assert!(sandbox.list().await.unwrap().is_empty());
    assert!(runc_list(&root).is_empty());
    assert_eq!(
        std::fs::read_dir(state.path().join("runc/bundles"))
            .unwrap()
            .count(),
        0
    );
    for id in &ids {
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .filter_map(Result::ok)
        {
            let cg = h.path().join("oci-sandbox").join(id);
            assert!(!cg.exists(), "cgroup left: {}", cg.display());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_processes(MARKER) > 0 {
        assert!(
            Instant::now() < deadline,
            "container processes survived the sweep"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second sweep finds nothing more.
    assert!(sandbox.sweep().await.unwrap().is_empty());
}

fn count_processes(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}
