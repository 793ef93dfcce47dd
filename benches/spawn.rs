//! Spawn→exit of `/bin/true`: the library against its baselines, measured in the same run.
//!
//! Baselines: `tokio::process::Command` of `/bin/true` on the host (the floor of any spawn),
//! and the runtime's own CLI running a bundle prepared once with the same spec the library
//! writes (`<runtime> run`). The ratio library / raw CLI is the library's overhead.
//!
//! `make bench` runs this; `OSB_BENCH_RUNTIMES=runc,crun` picks the runtimes.

use criterion::{Criterion, criterion_group, criterion_main};
use raw_cli::{RawBundle, median, runtimes, timed};

#[path = "support/raw_cli.rs"]
mod raw_cli;
use oci_sandbox::{NamespaceContainer, OutputMode};

fn spawn_true(c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    let mut group = c.benchmark_group("spawn_true");
    group.bench_function("host/tokio_process", |b| {
        b.to_async(&rt).iter(|| async {
            let status = tokio::process::Command::new("/bin/true")
                .status()
                .await
                .unwrap();
            assert!(status.success());
        })
    });
    for kind in runtimes() {
        let sandbox = rt.block_on(NamespaceContainer::with_runtime(kind)).unwrap();
        let config = raw_cli::quiet_true();
        let raw = RawBundle::new(&sandbox, &config);
        group.bench_function(format!("{kind}/raw_cli_run"), |b| {
            b.to_async(&rt).iter(|| raw.run_once())
        });
        group.bench_function(format!("{kind}/library_spawn"), |b| {
            b.to_async(&rt).iter(|| async {
                let status = sandbox.spawn(&config).await.unwrap().wait().await.unwrap();
                assert!(status.success());
            })
        });
        rt.block_on(sandbox.close());
    }
    group.finish();
}

/// Raw CLI and library alternated run by run (which goes first alternates too), so that drift
/// on a shared machine hits both alike; prints the medians and their ratios for `spawn` and
/// `spawn_captured` (the PTY mode is in benches/interactive.rs). Criterion's groups run one
/// after another and blur exactly this figure.
fn paired_ratio(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(200);
    let rt = raw_cli::tokio_runtime();
    for kind in runtimes() {
        rt.block_on(async {
            let sandbox = NamespaceContainer::with_runtime(kind).await.unwrap();
            let config = raw_cli::quiet_true();
            let raw = RawBundle::new(&sandbox, &config);
            let (mut raw_ms, mut spawn_ms, mut captured_ms) = (Vec::new(), Vec::new(), Vec::new());

            for i in 0..rounds {
                let raw_run = timed(raw.run_once());
                let spawn_run = timed(async {
                    let status = sandbox.spawn(&config).await.unwrap().wait().await.unwrap();
                    assert!(status.success());
                });
                let captured_run = timed(async {
                    let c = sandbox
                        .spawn_captured(&config, OutputMode::Separate)
                        .await
                        .unwrap();
                    assert!(c.wait().await.unwrap().success());
                });
                // Rotate the order, so that none always follows another.
                match i % 3 {
                    0 => {
                        raw_ms.push(raw_run.await);
                        spawn_ms.push(spawn_run.await);
                        captured_ms.push(captured_run.await);
                    }
                    1 => {
                        spawn_ms.push(spawn_run.await);
                        captured_ms.push(captured_run.await);
                        raw_ms.push(raw_run.await);
                    }
                    _ => {
                        captured_ms.push(captured_run.await);
                        raw_ms.push(raw_run.await);
                        spawn_ms.push(spawn_run.await);
                    }
                }
            }
            sandbox.close().await;
            let r = median(&mut raw_ms);
            for (mode, v) in [("spawn", &mut spawn_ms), ("spawn_captured", &mut captured_ms)] {
                let l = median(v);
                println!(
                    "paired {kind} {mode}: /bin/true spawn->exit, {rounds} rounds: raw CLI run {r:.2} ms, library {l:.2} ms, ratio {:.3}",
                    l / r
                );
            }
        });
    }
}

/// The cost of the hardening: the default config (seccomp profile, and a user namespace on
/// runc and crun) against the same config with both off, alternated spawn by spawn.
fn hardening_cost(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(200);
    let rt = raw_cli::tokio_runtime();
    for kind in runtimes() {
        rt.block_on(async {
            let sandbox = NamespaceContainer::with_runtime(kind).await.unwrap();
            let hardened = raw_cli::quiet_true();
            let mut bare = hardened.clone();
            bare.security.seccomp = false;
            bare.security.user_namespace = false;
            let (mut hard_ms, mut bare_ms) = (Vec::new(), Vec::new());
            for i in 0..rounds {
                let run = |config: &oci_sandbox::ContainerConfig| {
                    let config = config.clone();
                    let sandbox = &sandbox;
                    timed(async move {
                        let status = sandbox.spawn(&config).await.unwrap().wait().await.unwrap();
                        assert!(status.success());
                    })
                };
                if i % 2 == 0 {
                    hard_ms.push(run(&hardened).await);
                    bare_ms.push(run(&bare).await);
                } else {
                    bare_ms.push(run(&bare).await);
                    hard_ms.push(run(&hardened).await);
                }
            }
            sandbox.close().await;
            let (h, b) = (median(&mut hard_ms), median(&mut bare_ms));
            println!(
                "hardening {kind}: /bin/true spawn->exit, {rounds} rounds: without seccomp and userns {b:.2} ms, with {h:.2} ms, ratio {:.3}",
                h / b
            );
        });
    }
}

/// 1 to 50 concurrent spawns of `/bin/true`: total wall time and failures.
fn concurrency(_c: &mut Criterion) {
    let levels: &[usize] = if raw_cli::quick() {
        &[1, 4]
    } else {
        &[1, 2, 4, 8, 16, 50]
    };
    let rt = raw_cli::tokio_runtime();
    for kind in runtimes() {
        rt.block_on(async {
            let sandbox = NamespaceContainer::with_runtime(kind).await.unwrap();
            let config = raw_cli::quiet_true();
            for &n in levels {
                let t = std::time::Instant::now();
                let runs = (0..n).map(|_| async {
                    match sandbox.spawn(&config).await {
                        Ok(mut p) => p.wait().await.map(|s| s.success()).unwrap_or(false),
                        Err(_) => false,
                    }
                });
                let ok = futures::future::join_all(runs).await.into_iter().filter(|ok| *ok).count();
                let total = t.elapsed().as_secs_f64() * 1e3;
                println!(
                    "concurrency {kind}: {n:>2} at once: total {total:.1} ms, {:.1} ms per spawn, {} failures",
                    total / n as f64,
                    n - ok
                );
            }
            sandbox.close().await;
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = spawn_true, paired_ratio, hardening_cost, concurrency
}
criterion_main!(benches);
