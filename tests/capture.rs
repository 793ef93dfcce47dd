//! `spawn_captured`: output to files, read whole or tailed as streams.

mod common;

use std::time::Duration;

use common::TestSandbox;
use futures::StreamExt;
use oci_sandbox::{OciRuntime, OutputMode, SandboxConfig, SandboxError};

const INTERLEAVED: &str = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf tail";

async fn collect(stream: impl futures::Stream<Item = std::io::Result<bytes::Bytes>>) -> Vec<u8> {
    let mut out = Vec::new();
    futures::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn separate_mode_keeps_stdout_and_stderr_apart(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let c = t
        .sandbox
        .spawn_captured(&t.sh(INTERLEAVED), OutputMode::Separate)
        .await
        .unwrap();
    assert!(c.wait().await.unwrap().success());
    assert_eq!(c.output.mode(), OutputMode::Separate);
    assert_eq!(c.output.read_stdout().await.unwrap(), b"out1\nout2\ntail");
    assert_eq!(c.output.read_stderr().await.unwrap(), b"err1\nerr2\n");
    assert_eq!(collect(c.output.stdout_stream()).await, b"out1\nout2\ntail");
    assert_eq!(collect(c.output.stderr_stream()).await, b"err1\nerr2\n");
    let id = c.id().to_owned();
    drop(c);
    t.assert_nothing_left(&[&id], None).await;
}

async fn combined_mode_keeps_the_interleaving(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let c = t
        .sandbox
        .spawn_captured(&t.sh(INTERLEAVED), OutputMode::Combined)
        .await
        .unwrap();
    assert!(c.wait().await.unwrap().success());
    let want = b"out1\nerr1\nout2\nerr2\ntail";
    assert_eq!(c.output.read_stdout().await.unwrap(), want);
    assert!(c.output.read_stderr().await.unwrap().is_empty());
    assert!(c.output.stderr_path().is_none());
    assert_eq!(collect(c.output.stdout_stream()).await, want);
    assert!(collect(c.output.stderr_stream()).await.is_empty());
}

async fn binary_output_round_trips(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let script = "python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 4)'";
    let c = t
        .sandbox
        .spawn_captured(&t.sh(script), OutputMode::Separate)
        .await
        .unwrap();
    let want: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    assert_eq!(collect(c.output.stdout_stream()).await, want);
    assert_eq!(c.output.read_stdout().await.unwrap(), want);
    assert!(c.wait().await.unwrap().success());
}

async fn a_stream_sees_lines_while_the_process_runs(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let c = t
        .sandbox
        .spawn_captured(
            &t.sh("echo first; sleep 1; echo second"),
            OutputMode::Combined,
        )
        .await
        .unwrap();
    let mut s = Box::pin(c.output.stdout_stream());
    let first = tokio::time::timeout(Duration::from_millis(900), s.next())
        .await
        .expect("first line before the sleep ends");
    assert_eq!(&first.unwrap().unwrap()[..], b"first\n");
    assert!(
        c.try_wait().unwrap().is_none(),
        "the process is still running"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = s.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"second\n");
    assert!(c.wait().await.unwrap().success());
}

async fn three_concurrent_streams_and_a_late_one_agree_byte_for_byte(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let script =
        "for i in $(seq 1 2000); do echo line $i; [ $((i % 500)) = 0 ] && sleep 0.05; done";
    let c = t
        .sandbox
        .spawn_captured(&t.sh(script), OutputMode::Separate)
        .await
        .unwrap();
    let streams: Vec<_> = (0..3)
        .map(|_| tokio::spawn(collect(c.output.stdout_stream())))
        .collect();
    let mut results = Vec::new();
    for s in streams {
        results.push(s.await.unwrap());
    }
    assert!(c.wait().await.unwrap().success());
    let late = collect(c.output.stdout_stream()).await;
    let want: String = (1..=2000).map(|i| format!("line {i}\n")).collect();
    for r in results.iter().chain(std::iter::once(&late)) {
        assert_eq!(r, want.as_bytes());
    }
}

async fn fifty_megabytes_stream_in_bounded_chunks(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let size: u64 = 50 * 1024 * 1024;
    let c = t
        .sandbox
        .spawn_captured(
            &t.sh(&format!("head -c {size} /dev/zero | tr '\\0' 'x'")),
            OutputMode::Separate,
        )
        .await
        .unwrap();
    let mut s = Box::pin(c.output.stdout_stream());
    let (mut total, mut largest) = (0u64, 0usize);
    while let Some(chunk) = s.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|&b| b == b'x'));
        largest = largest.max(chunk.len());
        total += chunk.len() as u64;
        // Each chunk is dropped here: the stream never holds the whole output.
    }
    assert_eq!(total, size);
    assert!(largest <= 1024 * 1024, "largest chunk {largest}");
    assert!(c.wait().await.unwrap().success());
}

async fn the_output_limit_stops_a_yes_flood(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let limit = 1024 * 1024;
    let policy = SandboxConfig {
        output_limit: Some(limit),
        ..Default::default()
    };
    let c = t
        .sandbox
        .spawn_captured(
            &t.config_with(&policy, "yes", &["osb-flood-8181"]),
            OutputMode::Combined,
        )
        .await
        .unwrap();
    let streamed = collect(c.output.stdout_stream()).await;
    let status = tokio::time::timeout(Duration::from_secs(10), c.wait())
        .await
        .expect("flood stopped")
        .unwrap();
    assert!(status.output_limit_exceeded(), "{status}");
    assert!(c.output.truncated());
    assert_eq!(
        std::fs::metadata(c.output.stdout_path()).unwrap().len(),
        limit
    );
    assert_eq!(streamed.len() as u64, limit);
    let line = b"osb-flood-8181\n";
    assert!(streamed.chunks(line.len()).all(|p| line.starts_with(p)));
    let id = c.id().to_owned();
    drop(c);
    drop(streamed);
    t.assert_nothing_left(&[&id], Some("osb-flood-8181")).await;
}

async fn dropping_the_capture_keeps_the_files_until_the_streams_end(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let c = t
        .sandbox
        .spawn_captured(&t.sh("echo kept; sleep 100.7171"), OutputMode::Separate)
        .await
        .unwrap();
    let dir = c.output.dir().to_owned();
    let mut s = Box::pin(c.output.stdout_stream());
    assert_eq!(&s.next().await.unwrap().unwrap()[..], b"kept\n");
    drop(c); // kills the process; the stream still holds the files
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(dir.exists(), "files kept while a stream lives");
    assert_eq!(std::fs::read(dir.join("stdout")).unwrap(), b"kept\n");
    assert!(
        s.next().await.is_none(),
        "the stream ends once the killed process is gone"
    );
    drop(s);
    assert!(!dir.exists(), "files removed with the last stream");
    t.assert_nothing_left(&[], Some("100.7171")).await;
}

async fn a_runtime_failure_is_an_error_from_spawn_captured_and_leaves_nothing(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    // The library cannot see into /tmp, so runc itself fails to exec this; its message is
    // in the error, and no capture (whose files it would have polluted) is handed out.
    let err = t
        .sandbox
        .spawn_captured(&t.config("/tmp/missing-binary", &[]), OutputMode::Separate)
        .await
        .unwrap_err();
    match &err {
        SandboxError::CommandNotFound {
            message: Some(m), ..
        } => assert!(m.contains("/tmp/missing-binary"), "{m}"),
        other => panic!("expected CommandNotFound with the runtime's message, got {other:?}"),
    }
    t.assert_nothing_left(&[], None).await;
}

async fn a_cancelled_spawn_captured_leaves_nothing_behind(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let config = t.config("sleep", &["100.7272"]);
    for budget_us in [0u64, 10, 100, 300, 1000, 3000] {
        let _ = tokio::time::timeout(
            Duration::from_micros(budget_us),
            t.sandbox.spawn_captured(&config, OutputMode::Separate),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    t.assert_nothing_left(&[], Some("100.7272")).await;
}

async fn exit_codes_and_signals_are_exact_for_detached_containers(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let c = t
        .sandbox
        .spawn_captured(&t.sh("exit 7"), OutputMode::Separate)
        .await
        .unwrap();
    assert_eq!(c.wait().await.unwrap().code(), Some(7));
    let c = t
        .sandbox
        .spawn_captured(&t.sh("exit 137"), OutputMode::Separate)
        .await
        .unwrap();
    let status = c.wait().await.unwrap();
    // The launcher reports the command's wait status, on every runtime (gVisor included):
    // exit(137) is an exit code, not a signal.
    assert_eq!(status.code(), Some(137), "{status}");
    let c = t
        .sandbox
        .spawn_captured(&t.sh("kill -SEGV $$; sleep 1"), OutputMode::Separate)
        .await
        .unwrap();
    let status = c.wait().await.unwrap();
    // PID 1 of a pid namespace ignores signals without a handler, even SEGV from itself.
    assert!(
        status.code() == Some(0) || status.signal().is_some(),
        "{status}"
    );
}

async fn timeout_and_kill_end_a_captured_process(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        timeout: Some(Duration::from_millis(400)),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let c = t
        .sandbox
        .spawn_captured(
            &t.config_with(&policy, "sleep", &["100.9191"]),
            OutputMode::Separate,
        )
        .await
        .unwrap();
    let status = c.wait().await.unwrap();
    assert!(status.timed_out(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(c);
    let c = t
        .sandbox
        .spawn_captured(&t.config("sleep", &["100.9191"]), OutputMode::Separate)
        .await
        .unwrap();
    c.kill().await.unwrap();
    assert_eq!(c.wait().await.unwrap().signal(), Some(9));
    let id = c.id().to_owned();
    drop(c);
    t.assert_nothing_left(&[&id], Some("100.9191")).await;
}

async fn instantly_exiting_commands_always_get_their_status(kind: OciRuntime) {
    // crun double-forks: its init can exit before it is re-parented to us. Many rounds of a
    // command that exits at once catch that race.
    let t = TestSandbox::new(kind).await;
    let rounds = if kind == OciRuntime::Gvisor { 10 } else { 60 };
    for i in 0..rounds {
        let c = t
            .sandbox
            .spawn_captured(&t.sh(&format!("exit {}", i % 5)), OutputMode::Combined)
            .await
            .unwrap();
        assert_eq!(c.wait().await.unwrap().code(), Some(i % 5), "round {i}");
    }
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    instantly_exiting_commands_always_get_their_status,
    separate_mode_keeps_stdout_and_stderr_apart,
    combined_mode_keeps_the_interleaving,
    binary_output_round_trips,
    a_stream_sees_lines_while_the_process_runs,
    three_concurrent_streams_and_a_late_one_agree_byte_for_byte,
    fifty_megabytes_stream_in_bounded_chunks,
    the_output_limit_stops_a_yes_flood,
    dropping_the_capture_keeps_the_files_until_the_streams_end,
    a_runtime_failure_is_an_error_from_spawn_captured_and_leaves_nothing,
    a_cancelled_spawn_captured_leaves_nothing_behind,
    exit_codes_and_signals_are_exact_for_detached_containers,
    timeout_and_kill_end_a_captured_process,
);
