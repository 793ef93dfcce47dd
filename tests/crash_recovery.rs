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

fn builder(state: &std::path::Path) -> oci_sandbox::NamespaceContainerBuilder {
    NamespaceContainer::builder()
        .state_dir(state)
        .capture_dir(state.join("captures"))
}

/// The process that gets killed: spawns sleeping containers in every mode (a piped one, a
/// detached one writing captured output, an interactive one, a long-lived sandbox running an
/// exec) and reports their ids.
async fn crash_child(state: &str) {
    let state = std::path::Path::new(state);
    std::fs::create_dir_all(state.join("captures")).unwrap();
    let sandbox = builder(state).build().await.unwrap();
    let config =
        NamespaceContainer::build_config(&SandboxConfig::default(), "sleep", vec![MARKER.into()]);
    let piped = sandbox.spawn(&config).await.unwrap();
    let captured = sandbox
        .spawn_captured(&config, oci_sandbox::OutputMode::Separate)
        .await
        .unwrap();
    let interactive = sandbox.spawn_interactive(&config).await.unwrap();
    let long_lived = sandbox.start(&config).await.unwrap();
    let exec = long_lived
        .exec(&oci_sandbox::ExecConfig::new("sleep", vec![MARKER.into()]))
        .await
        .unwrap();
    std::mem::forget(exec);
    let ids = [
        piped.id().to_owned(),
        captured.id().to_owned(),
        interactive.id().to_owned(),
        long_lived.id().to_owned(),
    ];
    for id in &ids {
        println!("{id}");
    }
    // Wait until all three are running before saying so.
    loop {
        let listed = sandbox.list().await.unwrap();
        if ids.iter().all(|id| listed.contains(id)) {
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
    assert_eq!(ids.len(), 4);

    child.start_kill().unwrap();
    child.wait().await.unwrap();

    // The crash left containers, bundles, capture dirs, cgroups and container processes.
    let captures = || {
        std::fs::read_dir(state.path().join("captures"))
            .unwrap_or_else(|e| {
                panic!(
                    "{e}: {:?}",
                    std::fs::read_dir(state.path()).map(|d| d
                        .filter_map(Result::ok)
                        .map(|e| e.file_name())
                        .collect::<Vec<_>>())
                )
            })
            .count()
    };
    assert_eq!(captures(), 1, "the captured run's dir survived the crash");
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
    // The long-lived sandbox died with its owner, within a second: its launcher read the end
    // of its control socket and killed everything in the container, the exec'd sleep with it.
    let long_lived = &ids[3];
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let state = std::process::Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["state", long_lived])
            .output()
            .unwrap();
        let state = String::from_utf8_lossy(&state.stdout).into_owned();
        if state.contains("\"status\": \"stopped\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox outlived its owner by a second: {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The three spawned containers have no launcher yet: they wait for the sweep.
    assert!(count_processes(MARKER) >= 3);

    let sandbox = builder(state.path()).build().await.unwrap();
    assert!(sandbox.list().await.unwrap().is_empty());
    assert_eq!(captures(), 0, "capture dirs of the dead process are swept");
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
            "container processes survived the sweep: {:?}",
            std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(Result::ok)
                .filter(|e| std::fs::read(e.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(MARKER))
                    .unwrap_or(false))
                .map(|e| std::fs::read_to_string(e.path().join("status"))
                    .unwrap_or_default()
                    .lines()
                    .take(8)
                    .collect::<Vec<_>>()
                    .join(" | "))
                .collect::<Vec<_>>()
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
