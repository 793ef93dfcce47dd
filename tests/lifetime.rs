//! A long-lived sandbox's lifetime options: its time to live and its idle lifetime.

mod common;

use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{ExecConfig, OciRuntime, Sandbox, SandboxConfig, SandboxError, SandboxExpiry};

/// Runs `script`; its status, or the error of a sandbox that has ended.
async fn run(sandbox: &Sandbox, script: &str) -> Result<oci_sandbox::ExitStatus, SandboxError> {
    sandbox.exec(&ExecConfig::shell(script)).await?.wait().await
}

/// Waits (at most `within`) for the sandbox to end by itself (without exec'ing, which would
/// count as activity), then checks that an exec is refused as expired.
async fn expiry(sandbox: &Sandbox, within: Duration) -> SandboxExpiry {
    let give_up = Instant::now() + within;
    while sandbox.ended().is_none() {
        assert!(Instant::now() < give_up, "the sandbox did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match run(sandbox, "true").await {
        Err(SandboxError::SandboxExpired { id, expiry }) => {
            assert_eq!(id, sandbox.id());
            expiry
        }
        other => panic!("expected SandboxExpired, got {other:?}"),
    }
}

async fn a_sandbox_ends_when_its_time_to_live_runs_out(t: &TestSandbox, sleep: &str) {
    let ttl = Duration::from_secs(2);
    let begun = Instant::now();
    let sandbox = t
        .start_sandbox(&SandboxConfig {
            ttl: Some(ttl),
            ..Default::default()
        })
        .await;
    // A command running at the end is killed with the sandbox.
    let mut long = sandbox.exec(&ExecConfig::shell(sleep)).await.unwrap();
    assert_eq!(
        expiry(&sandbox, Duration::from_secs(20)).await,
        SandboxExpiry::Ttl(ttl)
    );
    assert!(begun.elapsed() >= ttl);
    // Killed by the expiry, which the caller asked for: a status (SIGKILL), not an error.
    let status = tokio::time::timeout(Duration::from_secs(10), long.wait())
        .await
        .expect("a command outlived its sandbox's expiry")
        .expect("a command killed by its sandbox's expiry reports the kill");
    assert_eq!(status.signal(), Some(9), "{status}");
    drop(long);
}

async fn an_idle_sandbox_ends_and_a_busy_one_does_not(t: &TestSandbox) {
    let idle = Duration::from_millis(1500);
    let sandbox = t
        .start_sandbox(&SandboxConfig {
            idle_lifetime: Some(idle),
            ..Default::default()
        })
        .await;
    // Busy for twice the idle lifetime (by an exec, then by a job): the sandbox stays.
    assert!(run(&sandbox, "sleep 3").await.unwrap().success());
    assert!(run(&sandbox, "true").await.unwrap().success());
    // A background job counts as busy too.
    let job = sandbox
        .spawn_job(
            &ExecConfig::shell("sleep 3"),
            oci_sandbox::OutputMode::Combined,
        )
        .await
        .unwrap();
    assert!(job.wait().await.unwrap().success());
    let idle_from = Instant::now();
    assert_eq!(
        expiry(&sandbox, Duration::from_secs(20)).await,
        SandboxExpiry::Idle(idle)
    );
    assert!(idle_from.elapsed() >= idle - Duration::from_millis(200));
    drop(job);
}

/// Both at once (they mostly wait), then nothing of either may be left.
async fn lifetimes_end_sandboxes_with_everything_in_them(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sleep = common::sleep_marker(3020, kind);
    tokio::join!(
        a_sandbox_ends_when_its_time_to_live_runs_out(&t, &sleep),
        an_idle_sandbox_ends_and_a_busy_one_does_not(&t)
    );
    t.assert_nothing_left(&[], Some(&sleep)).await;
}

on_every_runtime!(lifetimes_end_sandboxes_with_everything_in_them);
