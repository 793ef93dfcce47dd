//! `spawn`: output, exit codes, stdin, env, workdir, timeout, kill, and concurrency on real runc.

mod common;

use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{OciRuntime, SandboxConfig, Signal, Stdio};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn echo_output_and_success(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let out = t
        .sandbox
        .spawn(&t.config("echo", &["hello", "world"]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    assert_eq!(out.stdout, b"hello world\n");
    assert!(out.stderr.is_empty());
    t.assert_nothing_left(&[], None).await;
}

async fn exit_code_and_stderr_are_reported(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let out = t
        .sandbox
        .spawn(&t.sh("echo oops >&2; exit 7"))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert!(!out.status.success());
    assert_eq!(out.stderr, b"oops\n");
}

async fn exit_code_one_from_the_command_is_not_a_runtime_error(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let out = t
        .sandbox
        .spawn(&t.config("false", &[]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

async fn stdin_round_trips_through_cat(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mut p = t.sandbox.spawn(&t.config("cat", &[])).await.unwrap();
    let mut stdin = p.stdin.take().unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            stdin.write_all(&data).await.unwrap();
            // Dropping stdin closes it: cat sees end of file.
        })
    };
    let mut got = Vec::new();
    p.stdout
        .take()
        .unwrap()
        .read_to_end(&mut got)
        .await
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got, data);
    assert!(p.wait().await.unwrap().success());
}

async fn env_is_set_and_the_host_env_is_not_inherited(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        env: vec![("GREETING".into(), "hi there".into())],
        ..Default::default()
    };
    let out = t
        .sandbox
        .spawn(&t.config_with(&policy, "env", &[]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let env = String::from_utf8(out.stdout).unwrap();
    let mut keys: Vec<&str> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    keys.sort();
    // Exactly what the policy gives: nothing of the test process's own environment.
    assert_eq!(keys, ["GREETING", "HOME", "LANG", "PATH"], "{env}");
    assert!(env.contains("GREETING=hi there\n"), "{env}");
    assert!(env.contains("PATH=/usr/local/sbin:"), "{env}");
}

async fn workdir_is_writable_and_usr_is_read_only(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let work = tempfile::tempdir().unwrap();
    let policy = SandboxConfig {
        workdir: Some(work.path().to_owned()),
        ..Default::default()
    };
    let script = "pwd; echo data > out.txt && echo wrote; touch /usr/evil 2>/dev/null && echo BAD; touch /evil 2>/dev/null && echo BAD2; echo tmp > /tmp/x && cat /tmp/x";
    let out = t
        .sandbox
        .spawn(&t.config_with(&policy, "sh", &["-c", script]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        "/workspace\nwrote\ntmp\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(work.path().join("out.txt")).unwrap(),
        "data\n"
    );
    assert!(!std::path::Path::new("/usr/evil").exists());
}

async fn python_runs_with_the_default_policy(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let out = t
        .sandbox
        .spawn(&t.config(
            "python3",
            &["-c", "import sys; print(6*7, sys.version_info[0])"],
        ))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(
        out.stdout,
        b"42 3\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn timeout_kills_a_long_sleep_and_says_so(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        timeout: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let marker = "100.4242";
    let started = Instant::now();
    let mut p = t
        .sandbox
        .spawn(&t.config_with(&policy, "sleep", &[marker]))
        .await
        .unwrap();
    let id = p.id().to_owned();
    let status = p.wait().await.unwrap();
    let took = started.elapsed();
    assert!(status.timed_out(), "{status}");
    assert_eq!(status.code(), None);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    t.assert_nothing_left(&[&id], Some(marker)).await;
}

/// A timeout too far out to be an instant (a caller's way of saying "no limit") is no limit:
/// the command runs to its end, nothing panics.
async fn a_timeout_of_duration_max_means_no_limit(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        timeout: Some(Duration::MAX),
        ..Default::default()
    };
    let out = t
        .sandbox
        .spawn(&t.config_with(&policy, "sh", &["-c", "sleep 0.2; echo done"]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(out.stdout, b"done\n");
    let sandbox = t
        .sandbox
        .start(&t.config_with(&policy, "true", &[]))
        .await
        .unwrap();
    let mut exec = oci_sandbox::ExecConfig::new("true", vec![]);
    exec.timeout = Some(Duration::MAX);
    let status = sandbox.exec(&exec).await.unwrap().wait().await.unwrap();
    assert!(status.success(), "{status}");
    sandbox.close().await;
}

async fn kill_ends_the_process(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = "100.4343";
    let mut p = t
        .sandbox
        .spawn(&t.config("sleep", &[marker]))
        .await
        .unwrap();
    let id = p.id().to_owned();
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.kill().await.unwrap();
    let status = p.wait().await.unwrap();
    assert_eq!(status.signal(), Some(libc_sigkill()));
    assert!(!status.timed_out());
    t.assert_nothing_left(&[&id], Some(marker)).await;
}

async fn signal_reaches_the_process(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    // A shell as PID 1 ignores TERM unless it traps it.
    let mut p = t
        .sandbox
        .spawn(&t.sh("trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done"))
        .await
        .unwrap();
    let mut stdout = p.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    stdout.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ready\n");
    p.signal(Signal::SIGTERM).await.unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).await.unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(p.wait().await.unwrap().code(), Some(3));
}

async fn wait_is_idempotent(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mut p = t.sandbox.spawn(&t.sh("exit 5")).await.unwrap();
    assert_eq!(p.wait().await.unwrap().code(), Some(5));
    assert_eq!(p.wait().await.unwrap().code(), Some(5));
    assert_eq!(p.try_wait().unwrap().unwrap().code(), Some(5));
}

async fn null_and_inherited_stdio_give_no_pipes(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mut c = t.config("true", &[]);
    c.stdin = Stdio::Null;
    c.stdout = Stdio::Null;
    c.stderr = Stdio::Inherit;
    let mut p = t.sandbox.spawn(&c).await.unwrap();
    assert!(p.stdin.is_none() && p.stdout.is_none() && p.stderr.is_none());
    assert!(p.wait().await.unwrap().success());
}

async fn twenty_concurrent_spawns_all_succeed(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let runs = (0..20).map(|i| {
        let sandbox = t.sandbox.clone();
        let config = t.sh(&format!("echo {i}"));
        async move { sandbox.spawn(&config).await?.wait_with_output().await }
    });
    let results = futures::future::join_all(runs).await;
    for (i, r) in results.into_iter().enumerate() {
        let out = r.unwrap();
        assert!(out.status.success(), "{i}: {out:?}");
        assert_eq!(out.stdout, format!("{i}\n").into_bytes());
    }
    t.assert_nothing_left(&[], None).await;
}

fn libc_sigkill() -> i32 {
    Signal::SIGKILL as i32
}

on_every_runtime!(
    a_timeout_of_duration_max_means_no_limit,
    env_is_set_and_the_host_env_is_not_inherited,
    echo_output_and_success,
    exit_code_and_stderr_are_reported,
    exit_code_one_from_the_command_is_not_a_runtime_error,
    stdin_round_trips_through_cat,
    workdir_is_writable_and_usr_is_read_only,
    python_runs_with_the_default_policy,
    timeout_kills_a_long_sleep_and_says_so,
    kill_ends_the_process,
    signal_reaches_the_process,
    wait_is_idempotent,
    null_and_inherited_stdio_give_no_pipes,
    twenty_concurrent_spawns_all_succeed,
);
