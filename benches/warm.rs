//! Warm spawns ([`NamespaceContainer::warm`]) against the raw runtime CLI and cold spawns, in
//! the same run.
//!
//! - `warm_vs_raw`: per runtime, rounds rotate a raw `<runtime> run` of the library's own spec
//!   for `/bin/true`, a cold `spawn` and a warm `spawn` (a pool of 2, full at each round's
//!   start: between measurements the pool's refill is awaited, so that no refill runs under
//!   another measurement). Medians and ratios to the raw run.
//! - `burst`: 50 spawns at once, cold, and against a pool of 8 (each spawn's own time from
//!   the burst's start to its exit): p50, p99 and failures, alternated.
//! - `whole_process`: a whole process (this bench binary run again) that builds its runtime,
//!   warms a pool of 2 and does 20 spawns one after another, then closes, against a process
//!   running 20 raw `<runtime> run`s: their wall times, alternated.
//! - `construction`: a process's `NamespaceContainer` build and its first spawn, against a raw
//!   run.
//!
//! `OSB_BENCH_RUNTIMES=runc,crun,runsc` picks the runtimes (default runc).

use criterion::{Criterion, criterion_group};
use oci_sandbox::{ContainerConfig, NamespaceContainer};

#[path = "support/raw_cli.rs"]
mod raw_cli;
use raw_cli::{RawBundle, median, timed};

async fn spawn_true(runtime: &NamespaceContainer, config: &ContainerConfig) {
    let status = runtime.spawn(config).await.unwrap().wait().await.unwrap();
    assert!(status.success(), "{status}");
}

fn hits(runtime: &NamespaceContainer) -> u64 {
    runtime.warm_pools().iter().map(|p| p.hits).sum()
}

fn warm_vs_raw(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(60);
    let rt = raw_cli::tokio_runtime();
    for kind in raw_cli::runtimes() {
        rt.block_on(async {
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            let config = raw_cli::quiet_true();
            let raw = RawBundle::new(&runtime, &config);
            let (mut raw_ms, mut cold_ms, mut warm_ms) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..rounds {
                // Cold spawns first, with no pool, then the pool for the warm one.
                let cold = timed(spawn_true(&runtime, &config));
                let raw_run = timed(raw.run_once());
                match i % 3 {
                    0 => {
                        raw_ms.push(raw_run.await);
                        cold_ms.push(cold.await);
                    }
                    _ => {
                        cold_ms.push(cold.await);
                        raw_ms.push(raw_run.await);
                    }
                }
                runtime.warm(&config, 1).await.unwrap();
                let before = hits(&runtime);
                warm_ms.push(timed(spawn_true(&runtime, &config)).await);
                assert_eq!(hits(&runtime), before + 1, "not served warm");
                // The pool ends (its refill, if started, is dropped) before the next cold
                // and raw runs.
                runtime.warm(&config, 0).await.unwrap();
                runtime.close().await;
            }
            let (r, c, w) = (median(&mut raw_ms), median(&mut cold_ms), median(&mut warm_ms));
            println!(
                "warm {kind}: /bin/true spawn->exit, {rounds} rounds: raw CLI run {r:.2} ms, cold spawn {c:.2} ms (ratio {:.3}), warm spawn {w:.3} ms (ratio {:.3})",
                c / r,
                w / r
            );
        });
    }
}

/// p50 and p99 of `v` (sorts it).
fn p50_p99(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// 50 spawns at once; each one's time from the burst's start to its exit, and failures.
async fn burst(runtime: &NamespaceContainer, config: &ContainerConfig) -> (Vec<f64>, usize) {
    let start = std::time::Instant::now();
    let runs = (0..50).map(|_| async {
        let ok = match runtime.spawn(config).await {
            Ok(mut p) => p.wait().await.map(|s| s.success()).unwrap_or(false),
            Err(_) => false,
        };
        (start.elapsed().as_secs_f64() * 1e3, ok)
    });
    let done = futures::future::join_all(runs).await;
    let failures = done.iter().filter(|(_, ok)| !ok).count();
    (done.into_iter().map(|(ms, _)| ms).collect(), failures)
}

fn burst_against_a_pool(_c: &mut Criterion) {
    let rounds = if raw_cli::quick() { 1 } else { 3 };
    let rt = raw_cli::tokio_runtime();
    for kind in raw_cli::runtimes() {
        rt.block_on(async {
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            let config = raw_cli::quiet_true();
            let (mut cold_ms, mut warm_ms, mut failures) = (Vec::new(), Vec::new(), 0);
            for i in 0..rounds * 2 {
                if i % 2 == 0 {
                    let (ms, failed) = burst(&runtime, &config).await;
                    cold_ms.extend(ms);
                    failures += failed;
                } else {
                    runtime.warm(&config, 8).await.unwrap();
                    let (ms, failed) = burst(&runtime, &config).await;
                    warm_ms.extend(ms);
                    failures += failed;
                    runtime.warm(&config, 0).await.unwrap();
                }
                runtime.close().await;
            }
            let ((c50, c99), (w50, w99)) = (p50_p99(&mut cold_ms), p50_p99(&mut warm_ms));
            println!(
                "burst {kind}: 50 spawns at once, {rounds} bursts each: cold p50 {c50:.1} ms p99 {c99:.1} ms; against a pool of 8 p50 {w50:.1} ms p99 {w99:.1} ms (p99 ratio {:.3}); {failures} failures",
                w99 / c99
            );
        });
    }
}

/// The pool of the process `whole_process` measures: every container it holds at the end is
/// one started for nothing (2 cost less than 4 or 8, measured, and miss as rarely).
const WHOLE_PROCESS_POOL: usize = 2;

/// The process `whole_process` measures: `--warm-child <runtime> <spawns>` builds a runtime,
/// warms a pool, spawns `/bin/true` that many times one after another, closes.
fn warm_child(kind: &str, spawns: usize) {
    let kind = raw_cli::runtime_named(kind).expect("a runtime's name");
    let rt = raw_cli::tokio_runtime();
    rt.block_on(async {
        let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
        let config = raw_cli::quiet_true();
        // Set at once, not awaited: the spawns start at once, taking what is ready (or
        // waiting for a container already starting).
        let warming = tokio::spawn(runtime.warm(&config, WHOLE_PROCESS_POOL));
        for _ in 0..spawns {
            spawn_true(&runtime, &config).await;
        }
        warming.await.unwrap().unwrap();
        let stats = runtime.warm_pools();
        eprintln!(
            "warm child: {:?}",
            stats.first().map(|s| (s.hits, s.misses))
        );
        runtime.close().await;
    });
}

/// The baseline process: `--raw-child <runtime> <runs> <bundle> <root>` runs the raw CLI
/// that many times on a bundle the parent made.
fn raw_child(kind: &str, runs: usize, bundle: &str, root: &str) {
    let kind = raw_cli::runtime_named(kind).expect("a runtime's name");
    let rt = raw_cli::tokio_runtime();
    rt.block_on(async {
        for i in 0..runs {
            let id = format!("warm-raw-{}-{i}", std::process::id());
            let mut cmd = raw_cli::command(kind, std::path::Path::new(root));
            cmd.args(["run", "--bundle", bundle, &id]);
            raw_cli::run_quietly(cmd).await;
        }
    });
}

fn whole_process(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(10);
    let spawns = if raw_cli::quick() { 4 } else { 20 };
    let me = std::env::current_exe().unwrap();
    let rt = raw_cli::tokio_runtime();
    for kind in raw_cli::runtimes() {
        let name = kind.binary_name();
        let raw = rt.block_on(async {
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            RawBundle::new(&runtime, &raw_cli::quiet_true())
        });
        let (bundle, root) = (raw.dir.path().to_owned(), raw.root.clone());
        let run = |flag: &str| {
            let t = std::time::Instant::now();
            let mut cmd = std::process::Command::new(&me);
            cmd.args([flag, name, &spawns.to_string()]);
            if flag != "--warm-child" {
                cmd.arg(&bundle).arg(&root);
            }
            let status = cmd.stdout(std::process::Stdio::null()).status().unwrap();
            assert!(status.success());
            t.elapsed().as_secs_f64() * 1e3
        };
        let (mut warm_ms, mut raw_ms) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            if i % 2 == 0 {
                warm_ms.push(run("--warm-child"));
                raw_ms.push(run("--raw-child"));
            } else {
                raw_ms.push(run("--raw-child"));
                warm_ms.push(run("--warm-child"));
            }
        }
        let (w, r) = (median(&mut warm_ms), median(&mut raw_ms));
        println!(
            "whole process {kind}: {spawns} spawns of a warmed config (pool of {WHOLE_PROCESS_POOL}), {rounds} rounds: {w:.1} ms, against {spawns} raw CLI runs {r:.1} ms: ratio {:.3}",
            w / r
        );
    }
}

/// A process's first spawn: building the `NamespaceContainer` (its sweeps; gVisor's probe),
/// then the spawn, against a raw run, in one process (the probe runs once per process: the
/// first build here pays it, later ones do not).
fn construction(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(20);
    let rt = raw_cli::tokio_runtime();
    for kind in raw_cli::runtimes() {
        rt.block_on(async {
            let first = std::time::Instant::now();
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            let first_build = first.elapsed().as_secs_f64() * 1e3;
            let config = raw_cli::quiet_true();
            let raw = RawBundle::new(&runtime, &config);
            runtime.close().await;
            drop(runtime);
            let (mut build_ms, mut spawn_ms, mut raw_ms) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                let t = std::time::Instant::now();
                let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
                build_ms.push(t.elapsed().as_secs_f64() * 1e3);
                spawn_ms.push(timed(spawn_true(&runtime, &config)).await);
                runtime.close().await;
                raw_ms.push(timed(raw.run_once()).await);
            }
            let (b, s, r) = (median(&mut build_ms), median(&mut spawn_ms), median(&mut raw_ms));
            println!(
                "construction {kind}: first build in the process {first_build:.1} ms; later builds {b:.2} ms, then the first spawn {s:.2} ms; raw CLI run {r:.2} ms; build + first spawn ÷ raw {:.3}",
                (b + s) / r
            );
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = warm_vs_raw, burst_against_a_pool, whole_process, construction
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--warm-child") {
        warm_child(&args[pos + 1], args[pos + 2].parse().unwrap());
        return;
    }
    if let Some(pos) = args.iter().position(|a| a == "--raw-child") {
        raw_child(
            &args[pos + 1],
            args[pos + 2].parse().unwrap(),
            &args[pos + 3],
            &args[pos + 4],
        );
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
