//! Cancellation is a normal path: dropped handles, cancelled futures and panics leave nothing.

mod common;

use std::time::Duration;

use common::TestSandbox;
use oci_sandbox::OciRuntime;

async fn dropping_a_running_handle_leaves_nothing_behind(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = "100.5151";
    let p = t
        .sandbox
        .spawn(&t.config("sleep", &[marker]))
        .await
        .unwrap();
    let id = p.id().to_owned();
    // Let the container come up, so that there is something to leak.
    for _ in 0..100 {
        if t.sandbox.list().await.unwrap().contains(&id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        t.sandbox.list().await.unwrap().contains(&id),
        "container never listed"
    );
    assert!(common::cgroup_exists(&id));
    drop(p);
    t.assert_nothing_left(&[&id], Some(marker)).await;
}

async fn dropping_a_handle_right_after_spawn_leaves_nothing_behind(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = "100.5252";
    let mut ids = Vec::new();
    for _ in 0..5 {
        let p = t
            .sandbox
            .spawn(&t.config("sleep", &[marker]))
            .await
            .unwrap();
        ids.push(p.id().to_owned());
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    t.assert_nothing_left(&ids, Some(marker)).await;
}

async fn a_cancelled_spawn_future_leaves_nothing_behind(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = "100.5353";
    let config = t.config("sleep", &[marker]);
    // Cancel at many points: before the first poll, during bundle writing, and after.
    for budget_us in [0u64, 1, 10, 50, 100, 200, 500, 1000, 3000] {
        let _ =
            tokio::time::timeout(Duration::from_micros(budget_us), t.sandbox.spawn(&config)).await;
    }
    // A spawn_blocking closure dropped mid-way still finishes and removes its bundle.
    tokio::time::sleep(Duration::from_millis(50)).await;
    t.assert_nothing_left(&[], Some(marker)).await;
}

async fn a_timeout_around_wait_then_drop_leaves_nothing_behind(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = "100.5454";
    let mut p = t
        .sandbox
        .spawn(&t.config("sleep", &[marker]))
        .await
        .unwrap();
    let id = p.id().to_owned();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), p.wait())
            .await
            .is_err()
    );
    // wait is cancel safe: the process is still there and can still be waited for.
    assert!(p.try_wait().unwrap().is_none());
    drop(p);
    t.assert_nothing_left(&[&id], Some(marker)).await;
}

async fn a_panic_in_the_task_holding_the_handle_leaves_nothing_behind(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = "100.5555";
    let sandbox = t.sandbox.clone();
    let config = t.config("sleep", &[marker]);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let p = sandbox.spawn(&config).await.unwrap();
        tx.send(p.id().to_owned()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        panic!("the task holding the handle panics");
    });
    let id = rx.await.unwrap();
    assert!(task.await.unwrap_err().is_panic());
    t.assert_nothing_left(&[&id], Some(marker)).await;
}

async fn an_aborted_task_leaves_nothing_behind(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = "100.5656";
    let sandbox = t.sandbox.clone();
    let config = t.config("sleep", &[marker]);
    let task = tokio::spawn(async move {
        let mut p = sandbox.spawn(&config).await.unwrap();
        p.wait().await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    t.assert_nothing_left(&[], Some(marker)).await;
}

async fn kill_racing_a_normal_exit_gives_one_status_and_leaves_nothing(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    for _ in 0..5 {
        let mut p = t.sandbox.spawn(&t.config("true", &[])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        p.start_kill();
        let status = p.wait().await.unwrap();
        assert!(status.success() || status.signal().is_some(), "{status}");
    }
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    dropping_a_running_handle_leaves_nothing_behind,
    dropping_a_handle_right_after_spawn_leaves_nothing_behind,
    a_cancelled_spawn_future_leaves_nothing_behind,
    a_timeout_around_wait_then_drop_leaves_nothing_behind,
    a_panic_in_the_task_holding_the_handle_leaves_nothing_behind,
    an_aborted_task_leaves_nothing_behind,
    kill_racing_a_normal_exit_gives_one_status_and_leaves_nothing,
);
