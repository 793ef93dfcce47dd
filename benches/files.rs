//! The file API of a long-lived sandbox (issue 17's figures), per runtime, in one run:
//! - a 1 KiB `write_file` + `read_file` round trip, alternated with an exec of `/bin/true`
//!   in the same sandbox (the cost of a process start, for scale);
//! - 100 MiB streamed in (`create`) and out (`open`), in MiB/s (an absolute figure: the
//!   issue's target is one);
//! - `upload_dir` of a tree of 1000 small files.
//!
//! `OSB_BENCH_RUNTIMES=runc,crun,runsc` picks the runtimes (default runc).

use criterion::{Criterion, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/raw_cli.rs"]
#[allow(dead_code)] // each bench uses part of it
mod raw_cli;
use oci_sandbox::{ExecConfig, NamespaceContainer, SandboxConfig, Stdio};
use raw_cli::{median, timed};

fn file_api(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(200);
    let rt = raw_cli::tokio_runtime();
    let tree = tempfile::tempdir().unwrap();
    for i in 0..1000 {
        let dir = tree.path().join(format!("d{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    for kind in raw_cli::runtimes() {
        rt.block_on(async {
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            let policy = SandboxConfig {
                tmp_size: 512 << 20,
                memory_limit: Some(1 << 30),
                ..SandboxConfig::default()
            };
            let config = NamespaceContainer::build_config(&policy, "true", vec![]);
            let sandbox = runtime.start(&config).await.unwrap();
            let kib = vec![7u8; 1024];
            let mut exec = ExecConfig::new("/bin/true", vec![]);
            exec.stdin = Stdio::Null;
            exec.stdout = Stdio::Null;
            exec.stderr = Stdio::Null;
            let (mut trip_ms, mut exec_ms) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                trip_ms.push(
                    timed(async {
                        sandbox.write_file("/tmp/kib", &kib).await.unwrap();
                        assert_eq!(sandbox.read_file("/tmp/kib").await.unwrap().len(), 1024);
                    })
                    .await,
                );
                exec_ms.push(
                    timed(async {
                        assert!(sandbox.exec(&exec).await.unwrap().wait().await.unwrap().success());
                    })
                    .await,
                );
            }
            let (trip, ex) = (median(&mut trip_ms), median(&mut exec_ms));
            println!(
                "files {kind} 1 KiB write+read round trip: {trip:.3} ms ({rounds} rounds), an exec of /bin/true {ex:.3} ms, ratio {:.2}",
                trip / ex
            );

            let big = vec![0x5au8; 100 << 20];
            let streams = raw_cli::rounds(5).min(5);
            let (mut in_ms, mut out_ms) = (Vec::new(), Vec::new());
            for _ in 0..streams {
                in_ms.push(
                    timed(async {
                        let mut w = sandbox.create("/tmp/big").await.unwrap();
                        w.write_all(&big).await.unwrap();
                        w.finish().await.unwrap();
                    })
                    .await,
                );
                out_ms.push(
                    timed(async {
                        let mut r = sandbox.open("/tmp/big").await.unwrap();
                        let mut buf = vec![0u8; 1 << 20];
                        let mut total = 0;
                        loop {
                            let n = r.read(&mut buf).await.unwrap();
                            if n == 0 {
                                break;
                            }
                            total += n;
                        }
                        assert_eq!(total, big.len());
                    })
                    .await,
                );
            }
            let rate = |ms: f64| 100.0 / (ms / 1e3);
            println!(
                "files {kind} 100 MiB streamed: in {:.0} MiB/s, out {:.0} MiB/s ({streams} rounds, medians)",
                rate(median(&mut in_ms)),
                rate(median(&mut out_ms))
            );
            sandbox.remove("/tmp/big").await.unwrap();

            let uploads = raw_cli::rounds(10).min(10);
            let mut up_ms = Vec::new();
            for i in 0..uploads {
                let to = format!("/tmp/tree{i}");
                up_ms.push(timed(async { sandbox.upload_dir(tree.path(), &to).await.unwrap() }).await);
            }
            println!(
                "files {kind} upload_dir of 1000 small files: {:.1} ms ({uploads} rounds, median)",
                median(&mut up_ms)
            );
            sandbox.close().await;
            runtime.close().await;
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = file_api
}
criterion_main!(benches);
