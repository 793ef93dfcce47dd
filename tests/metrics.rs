//! `Sandbox::metrics` on every runtime: the figures of a sandbox's cgroups and the library's
//! counters over time, a CPU burner's share rising, limits as configured, the stream's end
//! with the sandbox, and bad input.

mod common;

use std::time::Duration;

use common::TestSandbox;
use futures::StreamExt;
use oci_sandbox::{ExecConfig, OciRuntime, SandboxConfig, SandboxError, SandboxState};

fn limited() -> SandboxConfig {
    SandboxConfig {
        memory_limit: Some(256 << 20),
        pids_limit: Some(200),
        cpu_millicores: Some(500),
        ..SandboxConfig::default()
    }
}

/// The first reading has the sandbox's limits; a CPU burner's share of its half core rises
/// near 1; commands started and running are counted; the stream ends with the sandbox.
async fn figures_follow_the_sandbox(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&limited()).await;
    let mut figures = Box::pin(sandbox.metrics(Duration::from_millis(250)).unwrap());
    let first = figures.next().await.expect("a first reading");
    assert_eq!(first.state, SandboxState::Running);
    assert!(first.cpu.is_some(), "{first:?}");
    assert!(first.memory_bytes.is_some_and(|m| m > 0), "{first:?}");
    assert_eq!(first.memory_limit_bytes, Some(256 << 20), "{first:?}");
    assert_eq!(first.cpu_limit_cores, Some(0.5), "{first:?}");
    assert_eq!(first.cpu_share, None);
    let burner = sandbox
        .exec(&ExecConfig::shell("while :; do :; done"))
        .await
        .unwrap();
    let mut busiest = 0.0f64;
    for _ in 0..8 {
        let m = figures.next().await.expect("a reading");
        assert_eq!(m.execs_running, 1, "{m:?}");
        assert!(m.execs_started >= 1);
        busiest = busiest.max(m.cpu_share.unwrap_or(0.0));
    }
    assert!(
        busiest > 0.6,
        "a spinning loop used {busiest} of its half core"
    );
    drop(burner);
    sandbox.close().await;
    let end = tokio::time::timeout(Duration::from_secs(5), figures.next()).await;
    assert!(matches!(end, Ok(None)), "the stream goes on after close");
    t.assert_nothing_left(&[], None).await;
}

/// Paused, the state says so and the CPU time stands still.
async fn a_paused_sandbox_reads_paused(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let _spinner = sandbox
        .exec(&ExecConfig::shell("while :; do :; done"))
        .await
        .unwrap();
    sandbox.pause().await.unwrap();
    let mut figures = Box::pin(sandbox.metrics(Duration::from_millis(200)).unwrap());
    let a = figures.next().await.unwrap();
    let b = figures.next().await.unwrap();
    assert_eq!(
        (a.state, b.state),
        (SandboxState::Paused, SandboxState::Paused)
    );
    assert_eq!(a.cpu, b.cpu, "a frozen sandbox's CPU time grew");
    sandbox.resume().await.unwrap();
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A zero interval and a closed sandbox are typed errors.
async fn bad_input_is_refused(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let err = sandbox.metrics(Duration::ZERO).err().expect("refused");
    assert!(matches!(err, SandboxError::InvalidConfig { .. }), "{err}");
    sandbox.close().await;
    let err = sandbox
        .metrics(Duration::from_secs(1))
        .err()
        .expect("refused");
    assert!(matches!(err, SandboxError::SandboxClosed { .. }), "{err}");
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    figures_follow_the_sandbox,
    a_paused_sandbox_reads_paused,
    bad_input_is_refused,
);
