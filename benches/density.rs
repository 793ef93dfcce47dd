//! Density: long-lived sandboxes started 8 at a time, up to 1000 (`OSB_DENSITY` overrides; 16
//! with `--test`), per runtime: how many failed to start, an exec's median latency with one
//! sandbox and with all of them running (in the same run), and the library's own memory (this
//! process's RSS growth) per live sandbox.
//!
//! `OSB_BENCH_RUNTIMES=runc,crun` picks the runtimes (default runc).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/raw_cli.rs"]
#[allow(dead_code)] // each bench uses part of it
mod raw_cli;
use oci_sandbox::{ExecConfig, NamespaceContainer, Sandbox};
use raw_cli::{median, timed};

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Median latency of `/bin/true` execs in `sandboxes`, round robin.
async fn exec_latency(sandboxes: &[Sandbox], rounds: usize) -> f64 {
    let mut exec = ExecConfig::new("/bin/true", vec![]);
    exec.stdin = oci_sandbox::Stdio::Null;
    exec.stdout = oci_sandbox::Stdio::Null;
    exec.stderr = oci_sandbox::Stdio::Null;
    let mut ms = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let s = &sandboxes[i % sandboxes.len()];
        ms.push(
            timed(async {
                assert!(s.exec(&exec).await.unwrap().wait().await.unwrap().success());
            })
            .await,
        );
    }
    median(&mut ms)
}

fn density(_c: &mut Criterion) {
    let n: usize = std::env::var("OSB_DENSITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if raw_cli::quick() { 16 } else { 1000 });
    let rounds = raw_cli::rounds(200);
    let rt = raw_cli::tokio_runtime();
    for kind in raw_cli::runtimes() {
        rt.block_on(async {
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            let config = raw_cli::quiet_true();
            let first = vec![runtime.start(&config).await.unwrap()];
            let at_one = exec_latency(&first, rounds).await;
            let rss_before = rss_kib();
            let started = std::time::Instant::now();
            let permits = Arc::new(tokio::sync::Semaphore::new(8));
            let tasks: Vec<_> = (1..n)
                .map(|_| {
                    let (runtime, config, permits) =
                        (runtime.clone(), config.clone(), permits.clone());
                    tokio::spawn(async move {
                        let _permit = permits.acquire().await.unwrap();
                        runtime.start(&config).await
                    })
                })
                .collect();
            let mut sandboxes = first;
            let mut failures = Vec::new();
            for t in tasks {
                match t.await.unwrap() {
                    Ok(s) => sandboxes.push(s),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            let took = started.elapsed();
            let per_sandbox = (rss_kib().saturating_sub(rss_before)) as f64 / n as f64;
            let at_n = exec_latency(&sandboxes, rounds).await;
            println!(
                "density {kind}: {} of {n} sandboxes started 8 at a time in {:.1} s, {} failed{}; exec /bin/true median {at_one:.2} ms with 1, {at_n:.2} ms with {n} running (ratio {:.2}); library RSS {per_sandbox:.0} KiB per live sandbox",
                sandboxes.len(),
                took.as_secs_f64(),
                failures.len(),
                failures.first().map(|f| format!(" (first: {f})")).unwrap_or_default(),
                at_n / at_one
            );
            let closing = std::time::Instant::now();
            for s in &sandboxes {
                s.close().await;
            }
            runtime.close().await;
            println!(
                "density {kind}: closed {} sandboxes in {:.1} s",
                sandboxes.len(),
                closing.elapsed().as_secs_f64()
            );
            assert!(failures.is_empty(), "{failures:?}");
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = density
}
criterion_main!(benches);
