//! What a new user tripped on (issue 31), each kept as a test: `NamespaceContainer::close`
//! with handles alive, a sandbox closed under a running command, limits the runtimes cannot
//! start under, errors that name the field the user set, conveniences users expected.

mod common;

use std::time::Duration;

use common::TestSandbox;
use oci_sandbox::{ExecConfig, OciRuntime, SandboxConfig, SandboxError};

/// A server keeps sandboxes and processes in a map and closes the runtime on shutdown:
/// `close` ends them all and returns (before: it waited for every handle to be dropped, over
/// three minutes, until killed).
async fn close_ends_what_still_runs(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let mut running = sandbox
        .exec(&ExecConfig::shell("echo started; sleep 600"))
        .await
        .unwrap();
    let mut spawned = t
        .sandbox
        .spawn(&t.config("/bin/sleep", &["600"]))
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(60), t.sandbox.close()).await;
    assert!(
        closed.is_ok(),
        "close() hung while a sandbox and a process lived"
    );
    let status = tokio::time::timeout(Duration::from_secs(10), spawned.wait())
        .await
        .expect("the spawned process's wait")
        .unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    let status = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the exec's wait")
        .unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    match sandbox.exec(&ExecConfig::shell("true")).await {
        Err(SandboxError::SandboxClosed { .. }) => {}
        other => panic!("{other:?}"),
    }
    // The runtime goes on working after close.
    let out = t
        .sandbox
        .spawn(&t.config("/bin/echo", &["again"]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"again\n");
    t.assert_nothing_left(&[sandbox.id()], None).await;
}

/// A sandbox closed under a running command: the command's handle gets its status (killed)
/// and what it printed (before: `Err("... is no longer running")`, the output lost).
async fn closing_under_a_command_keeps_its_output(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let process = sandbox
        .exec(&ExecConfig::shell("echo before-close; sleep 600"))
        .await
        .unwrap();
    let output = async {
        let closer = sandbox.clone();
        let close = async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            closer.close().await;
        };
        let (out, ()) = tokio::join!(process.wait_with_output(), close);
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("wait_with_output under close")
        .expect("the command's output, not an error");
    assert_eq!(out.status.signal(), Some(9), "{}", out.status);
    assert_eq!(out.stdout, b"before-close\n");
    drop(sandbox);
    t.sandbox.close().await;
}

/// Limits no runtime can start under are refused before anything is made, naming the field
/// (before: runc "unable to set memory limit to 1", crun an OOM, runsc "run failed: no
/// message"; a zero timeout was accepted and ignored), and a missing workdir is named as
/// such (before: "mounts[2].source").
async fn bad_limits_and_paths_name_the_field(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let cases: Vec<(SandboxConfig, &str)> = vec![
        (
            SandboxConfig {
                memory_limit: Some(1),
                ..SandboxConfig::default()
            },
            "limits.memory",
        ),
        (
            SandboxConfig {
                pids_limit: Some(0),
                ..SandboxConfig::default()
            },
            "limits.pids",
        ),
        (
            SandboxConfig {
                timeout: Some(Duration::ZERO),
                ..SandboxConfig::default()
            },
            "timeout",
        ),
        (
            SandboxConfig {
                workdir: Some("/nonexistent/osb-workdir".into()),
                ..SandboxConfig::default()
            },
            "workdir",
        ),
    ];
    for (policy, expected) in cases {
        let config = oci_sandbox::NamespaceContainer::build_config(&policy, "true", vec![]);
        for started in [
            t.sandbox.start(&config).await.map(|_| ()),
            t.sandbox.spawn(&config).await.map(|_| ()),
        ] {
            match started {
                Err(SandboxError::InvalidConfig { field, .. }) => assert_eq!(field, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
    }
    // The floor itself starts, and says what it printed.
    let policy = SandboxConfig {
        memory_limit: Some(oci_sandbox::MIN_MEMORY_LIMIT),
        pids_limit: Some(oci_sandbox::MIN_PIDS_LIMIT + 4),
        ..SandboxConfig::default()
    };
    let config =
        oci_sandbox::NamespaceContainer::build_config(&policy, "/bin/echo", vec!["fine".into()]);
    let out = t
        .sandbox
        .spawn(&config)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "fine\n", "{}", out.stderr_str());
    t.assert_nothing_left(&[], None).await;
}

/// Two runtimes (two processes, in effect) on one state root: each lists its own
/// containers; `list_all` shows both, with their owners (before: `list` returned the other's).
async fn list_shows_this_processs_own(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mine = t.start_sandbox(&SandboxConfig::default()).await;
    let other = t.start_sandbox(&SandboxConfig::default()).await;
    // `other` becomes another live process's: its bundle names PID 1 as its owner (what a
    // second process on the default state root writes for its own).
    let config = t.bundles_dir().join(other.id()).join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let stat = std::fs::read_to_string("/proc/1/stat").unwrap();
    let start = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_owned();
    spec["annotations"]["dev.oci-sandbox.owner"] = format!("1-{start}").into();
    std::fs::write(&config, serde_json::to_vec(&spec).unwrap()).unwrap();
    assert_eq!(t.sandbox.list().await.unwrap(), [mine.id().to_owned()]);
    let all = t.sandbox.list_all().await.unwrap();
    let entry = |id: &str| all.iter().find(|c| c.id == id).unwrap().clone();
    assert!(entry(mine.id()).owned_here);
    assert_eq!(entry(mine.id()).owner_pid, Some(std::process::id()));
    assert!(!entry(other.id()).owned_here);
    assert_eq!(entry(other.id()).owner_pid, Some(1));
    mine.close().await;
    other.close().await;
    assert!(t.sandbox.list().await.unwrap().is_empty());
}

on_every_runtime!(
    list_shows_this_processs_own,
    close_ends_what_still_runs,
    closing_under_a_command_keeps_its_output,
    bad_limits_and_paths_name_the_field,
);
