//! Spawn→exit of `/bin/true`: the library against its baselines, measured in the same run.
//!
//! Baselines: `tokio::process::Command` of `/bin/true` on the host (the floor of any spawn),
//! and the runtime's own CLI running a bundle prepared once with the same spec the library
//! writes (`<runtime> run`). The ratio library / raw CLI is the library's overhead.
//!
//! `make bench` runs this; `OSB_BENCH_RUNTIMES=runc,crun` picks the runtimes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use raw_cli::runtimes;

#[path = "support/raw_cli.rs"]
mod raw_cli;
use oci_sandbox::{NamespaceContainer, OciRuntime, SandboxConfig, Stdio as SbStdio};

/// A bundle holding the library's own spec for `/bin/true`, for the raw CLI baseline.
struct RawBundle {
    dir: tempfile::TempDir,
    root: PathBuf,
    kind: OciRuntime,
}

impl RawBundle {
    fn new(sandbox: &NamespaceContainer, config: &oci_sandbox::ContainerConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("osb-bench-")
            .tempdir_in("/tmp")
            .unwrap();
        let spec = sandbox.render_spec(config).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        RawBundle {
            dir,
            root,
            kind: sandbox.runtime(),
        }
    }

    async fn run_once(&self, id: &str) {
        let status = raw_cli::command(self.kind, &self.root)
            .args(["run", "--bundle"])
            .arg(self.dir.path())
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    fn bundle(&self) -> &Path {
        self.dir.path()
    }
}

fn spawn_true(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
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
        let mut config =
            NamespaceContainer::build_config(&SandboxConfig::default(), "/bin/true", vec![]);
        config.stdin = SbStdio::Null;
        config.stdout = SbStdio::Null;
        config.stderr = SbStdio::Null;
        let raw = RawBundle::new(&sandbox, &config);
        let seq = AtomicU64::new(0);
        group.bench_function(format!("{kind}/raw_cli_run"), |b| {
            b.to_async(&rt).iter(|| {
                let id = format!(
                    "bench-{}-{}",
                    std::process::id(),
                    seq.fetch_add(1, Ordering::Relaxed)
                );
                let raw = &raw;
                async move { raw.run_once(&id).await }
            })
        });
        group.bench_function(format!("{kind}/library_spawn"), |b| {
            b.to_async(&rt).iter(|| async {
                let status = sandbox.spawn(&config).await.unwrap().wait().await.unwrap();
                assert!(status.success());
            })
        });
        let _ = raw.bundle();
        rt.block_on(sandbox.close());
    }
    group.finish();
}

/// Raw CLI and library alternated run by run, so that drift on a shared machine hits both
/// alike; prints the medians and their ratio (the figure criterion's sequential groups blur).
fn paired_ratio(_c: &mut Criterion) {
    let quick = raw_cli::quick();
    let rounds = if quick { 5 } else { 200 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for kind in runtimes() {
        rt.block_on(async {
            let sandbox = NamespaceContainer::with_runtime(kind).await.unwrap();
            let mut config = NamespaceContainer::build_config(&SandboxConfig::default(), "/bin/true", vec![]);
            config.stdin = SbStdio::Null;
            config.stdout = SbStdio::Null;
            config.stderr = SbStdio::Null;
            let raw = RawBundle::new(&sandbox, &config);
            let (mut raw_ms, mut lib_ms) = (Vec::new(), Vec::new());
            for i in 0..rounds {
                // Alternate which goes first, so that neither always follows the other.
                let raw_first = i % 2 == 0;
                let raw_run = async {
                    let t = std::time::Instant::now();
                    raw.run_once(&format!("paired-{}-{i}", std::process::id())).await;
                    t.elapsed().as_secs_f64() * 1e3
                };
                let lib_run = async {
                    let t = std::time::Instant::now();
                    let status = sandbox.spawn(&config).await.unwrap().wait().await.unwrap();
                    assert!(status.success());
                    t.elapsed().as_secs_f64() * 1e3
                };
                if raw_first {
                    raw_ms.push(raw_run.await);
                    lib_ms.push(lib_run.await);
                } else {
                    lib_ms.push(lib_run.await);
                    raw_ms.push(raw_run.await);
                }
            }
            sandbox.close().await;
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (r, l) = (median(&mut raw_ms), median(&mut lib_ms));
            println!(
                "paired spawn->exit of /bin/true, {kind}, {rounds} rounds: raw CLI {r:.2} ms, library {l:.2} ms, ratio {:.3}",
                l / r
            );
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = spawn_true, paired_ratio
}
criterion_main!(benches);
