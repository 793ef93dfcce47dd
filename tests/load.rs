//! Load: 50 concurrent spawns, and 50 concurrent streams, with no failure.

mod common;

use common::TestSandbox;
use futures::StreamExt;
use oci_sandbox::{OciRuntime, OutputMode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_spawns_all_succeed() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let started = std::time::Instant::now();
    let runs = (0..50).map(|i| {
        let sandbox = t.sandbox.clone();
        let config = t.sh(&format!("echo {i}"));
        async move { sandbox.spawn(&config).await?.wait_with_output().await }
    });
    let results = futures::future::join_all(runs).await;
    let failures: Vec<_> = results.iter().enumerate().filter(|(i, r)| {
        !matches!(r, Ok(out) if out.status.success() && out.stdout == format!("{i}\n").as_bytes())
    }).map(|(i, r)| format!("{i}: {r:?}")).collect();
    assert!(failures.is_empty(), "{failures:?}");
    println!("50 concurrent spawns: {:?}", started.elapsed());
    t.assert_nothing_left(&[], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_streams_all_complete() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let runs = (0..50).map(|i| {
        let sandbox = t.sandbox.clone();
        let config = t.sh(&format!(
            "for j in 1 2 3 4 5; do echo {i}-$j; sleep 0.02; done"
        ));
        async move {
            let c = sandbox
                .spawn_captured(&config, OutputMode::Combined)
                .await
                .unwrap();
            let mut s = c.output.stdout_stream();
            let mut got = Vec::new();
            while let Some(chunk) = s.next().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            assert!(c.wait().await.unwrap().success());
            (i, got)
        }
    });
    for (i, got) in futures::future::join_all(runs).await {
        let want: String = (1..=5).map(|j| format!("{i}-{j}\n")).collect();
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }
    t.assert_nothing_left(&[], None).await;
}
