//! Metrics (issue 36): what a reading costs, as ratios against the existing per-call reading
//! (`Sandbox::usage`) measured in the same run.
//!
//! - `NamespaceContainer::metrics` over 10 sandboxes with a workdir of 200 files each (one
//!   scrape's gathering: cgroups, counters, the last disk figures, which are walked in the
//!   background, the stores' entries), against 10 `Sandbox::usage` calls in a row (the same
//!   cgroup files);
//! - formatting that reading in Prometheus' text (feature `prometheus`), in microseconds.

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use oci_sandbox::{ExecConfig, NamespaceContainer, SandboxConfig};
use raw_cli::{median, rounds, runtimes, unmount_crun_ns};

#[allow(dead_code)]
#[path = "support/raw_cli.rs"]
mod raw_cli;

const SANDBOXES: usize = 10;

fn metrics_bench(_c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    rt.block_on(async {
        for kind in runtimes() {
            let state = tempfile::Builder::new()
                .prefix("osb-metrics-bench-")
                .tempdir_in("/tmp")
                .unwrap();
            let runtime = NamespaceContainer::builder()
                .runtime(kind)
                .state_dir(state.path().join("state"))
                .data_dir(state.path().join("data"))
                .build()
                .await
                .unwrap();
            let mut sandboxes = Vec::new();
            for i in 0..SANDBOXES {
                let workdir = state.path().join(format!("work-{i}"));
                std::fs::create_dir(&workdir).unwrap();
                let sandbox = runtime
                    .create(&SandboxConfig {
                        workdir: Some(workdir),
                        ..SandboxConfig::default()
                    })
                    .await
                    .unwrap();
                let filled = sandbox
                    .exec(&ExecConfig::shell(
                        "for i in $(seq 200); do echo $i > /workspace/f$i; done",
                    ))
                    .await
                    .unwrap()
                    .wait()
                    .await
                    .unwrap();
                assert!(filled.success());
                sandboxes.push(sandbox);
            }
            let n = rounds(200);
            let (mut usage_all, mut all, mut text) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..n {
                let t = Instant::now();
                for s in &sandboxes {
                    assert!(s.usage().await.is_some());
                }
                usage_all.push(t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                let reading = runtime.metrics().await;
                all.push(t.elapsed().as_secs_f64() * 1e3);
                assert_eq!(reading.sandboxes.len(), SANDBOXES);
                let t = Instant::now();
                let body = reading.to_prometheus();
                text.push(t.elapsed().as_secs_f64() * 1e6);
                assert!(body.contains("oci_sandbox_memory_bytes"));
            }
            let (usage_all, all) = (median(&mut usage_all), median(&mut all));
            println!(
                "metrics/{kind}: runtime metrics of {SANDBOXES} {all:.3} ms vs {SANDBOXES} usage calls \
                 {usage_all:.3} ms: ratio {:.2}; prometheus text {:.0} us",
                all / usage_all,
                median(&mut text)
            );
            for s in sandboxes {
                s.close().await;
            }
            runtime.close().await;
            // crun's mount namespace is pinned under the state dir; mounted, it keeps the
            // temp dir from being removed.
            unmount_crun_ns(&state.path().join("state"));
        }
    });
}

criterion_group!(benches, metrics_bench);
criterion_main!(benches);
