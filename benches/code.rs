//! The code interpreter (issue 33), as ratios against baselines measured in the same run:
//! `run_code("1+1")` in a warm context against an exec of `/bin/true` in the same sandbox and
//! against a fresh `python3 -c` exec per call, alternated round by round; and how long a
//! 300 KiB PNG takes from the cell (its bytes ready) to the host.

use std::time::{Instant, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::StreamExt;
use oci_sandbox::{ExecConfig, ExecutionEvent, Language, NamespaceContainer};
use raw_cli::{median, rounds, runtimes, unmount_crun_ns};

#[allow(dead_code)]
#[path = "support/raw_cli.rs"]
mod raw_cli;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

async fn exec(sandbox: &oci_sandbox::Sandbox, command: &str, args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = sandbox
        .exec(&ExecConfig::new(command, args))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success());
}

fn code_bench(_c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    rt.block_on(async {
        for kind in runtimes() {
            let state = tempfile::Builder::new()
                .prefix("osb-code-bench-")
                .tempdir_in("/tmp")
                .unwrap();
            let runtime = NamespaceContainer::builder()
                .runtime(kind)
                .state_dir(state.path())
                .data_dir(state.path().join("data"))
                .build()
                .await
                .unwrap();
            let sandbox = runtime.start(&raw_cli::quiet_true()).await.unwrap();
            let py = sandbox.code_context(Language::Python).await.unwrap();
            py.run("1+1").await.unwrap();
            let (mut cell, mut truth, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds(200) {
                let one_cell = async {
                    let t = Instant::now();
                    let done = py.run("1+1").await.unwrap();
                    assert_eq!(done.text(), Some("2"));
                    ms(t)
                };
                let one_true = async {
                    let t = Instant::now();
                    exec(&sandbox, "/bin/true", &[]).await;
                    ms(t)
                };
                if round % 2 == 0 {
                    cell.push(one_cell.await);
                    truth.push(one_true.await);
                } else {
                    truth.push(one_true.await);
                    cell.push(one_cell.await);
                }
                if round % 10 == 0 {
                    let t = Instant::now();
                    exec(&sandbox, "python3", &["-c", "print(1+1)"]).await;
                    fresh.push(ms(t));
                }
            }
            let (c, tr, f) = (median(&mut cell), median(&mut truth), median(&mut fresh));
            println!(
                "code {kind}: run_code(\"1+1\") warm p50 {c:.3} ms, exec of /bin/true {tr:.3} ms \
                 (ratio {:.2}), a fresh python3 -c {f:.1} ms ({:.1}x slower than the cell) ({} rounds)",
                c / tr,
                f / c,
                cell.len()
            );
            png(&py, kind).await;
            py.close().await;
            sandbox.close().await;
            runtime.close().await;
            unmount_crun_ns(state.path());
        }
    });
}

/// A PNG of about 300 KiB, encoded in the cell, displayed: from the cell's clock reading
/// (bytes ready) to the host's receipt of the result.
async fn png(py: &oci_sandbox::CodeContext, kind: oci_sandbox::OciRuntime) {
    py.run(
        "import io, time, os\n\
         import matplotlib.pyplot as plt\n\
         import numpy as np\n\
         class Png:\n\
         \x20   def __init__(self, data): self.data = data\n\
         \x20   def _repr_png_(self): return self.data\n\
         def noise_png():\n\
         \x20   fig = plt.figure(figsize=(5, 3.6), dpi=100)\n\
         \x20   plt.imshow(np.random.default_rng(1).random((180, 250, 3)))\n\
         \x20   buf = io.BytesIO(); fig.savefig(buf, format='png'); plt.close(fig)\n\
         \x20   return buf.getvalue()",
    )
    .await
    .unwrap();
    let (mut lags, mut size) = (Vec::new(), 0);
    for _ in 0..rounds(30) {
        let mut run = py.run_streaming(
            "p = Png(noise_png())\nprint(repr(time.time()), len(p.data), flush=True)\ndisplay(p)",
        );
        let mut ready = None;
        while let Some(event) = run.next().await {
            match event {
                ExecutionEvent::Stdout(line) => {
                    let mut parts = line.split_whitespace();
                    let t: f64 = parts.next().unwrap().parse().unwrap();
                    size = parts.next().unwrap().parse::<usize>().unwrap();
                    ready = Some(t);
                }
                ExecutionEvent::Result(bundle) => {
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap()
                        .as_secs_f64();
                    assert!(bundle.png().is_some());
                    lags.push((now - ready.unwrap()) * 1e3);
                }
                _ => {}
            }
        }
        run.finish().await.unwrap();
    }
    println!(
        "code {kind}: a {} KiB PNG result arrives {:.2} ms (p50 of {}) after its bytes are ready in the cell",
        size / 1024,
        median(&mut lags),
        lags.len()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = code_bench
}
criterion_main!(benches);
