//! Captured output: stream throughput against `cat` of the same file, and the latency from a
//! write in the container to the byte arriving on a stream, measured in the same run.

use std::process::Stdio;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use oci_sandbox::{NamespaceContainer, OutputMode, SandboxConfig};
use tokio::io::AsyncReadExt;

use raw_cli::quick;

#[path = "support/raw_cli.rs"]
#[allow(dead_code)] // each bench uses part of it
mod raw_cli;

fn throughput(c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    let size: u64 = if quick() { 1 << 20 } else { 100 << 20 };
    let sandbox = rt.block_on(NamespaceContainer::new()).unwrap();
    let policy = SandboxConfig {
        output_limit: None,
        ..Default::default()
    };
    let config = NamespaceContainer::build_config(
        &policy,
        "head",
        vec!["-c".into(), size.to_string(), "/dev/zero".into()],
    );
    let capture = rt.block_on(async {
        let c = sandbox
            .spawn_captured(&config, OutputMode::Separate)
            .await
            .unwrap();
        assert!(c.wait().await.unwrap().success());
        c
    });
    let path = capture.output.stdout_path().to_owned();
    let mut group = c.benchmark_group("capture_throughput");
    group.throughput(Throughput::Bytes(size));
    group.sample_size(10);
    group.bench_function("baseline/cat_piped", |b| {
        b.to_async(&rt).iter(|| async {
            let mut child = tokio::process::Command::new("cat")
                .arg(&path)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = child.stdout.take().unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                let n = out.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            child.wait().await.unwrap();
            assert_eq!(total, size);
        })
    });
    group.bench_function("library/stdout_stream", |b| {
        b.to_async(&rt).iter(|| async {
            let mut s = Box::pin(capture.output.stdout_stream());
            let mut total = 0u64;
            while let Some(chunk) = s.next().await {
                total += chunk.unwrap().len() as u64;
            }
            assert_eq!(total, size);
        })
    });
    group.finish();
    drop(capture);
    rt.block_on(sandbox.close());
}

/// Each line the container writes carries its CLOCK_MONOTONIC time (one clock for host and
/// container: no time namespace); the stream's reader subtracts it from its own.
fn write_to_stream_latency(_c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    let lines = raw_cli::rounds(500);
    rt.block_on(async {
        let sandbox = NamespaceContainer::new().await.unwrap();
        let script = format!(
            "import time, sys\nfor _ in range({lines}):\n    sys.stdout.write(f'{{time.clock_gettime_ns(time.CLOCK_MONOTONIC)}}\\n'); sys.stdout.flush(); time.sleep(0.004)\n"
        );
        let config = NamespaceContainer::build_config(&SandboxConfig::default(), "python3", vec!["-c".into(), script]);
        let c = sandbox.spawn_captured(&config, OutputMode::Separate).await.unwrap();
        let mut s = Box::pin(c.output.stdout_stream());
        let mut pending = Vec::new();
        let mut latencies = Vec::new();
        while let Some(chunk) = s.next().await {
            let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
            let now_ns = now.tv_sec() as i128 * 1_000_000_000 + now.tv_nsec() as i128;
            pending.extend_from_slice(&chunk.unwrap());
            while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=pos).collect();
                let sent: i128 = std::str::from_utf8(&line[..line.len() - 1]).unwrap().parse().unwrap();
                latencies.push(Duration::from_nanos((now_ns - sent) as u64));
            }
        }
        assert!(c.wait().await.unwrap().success());
        latencies.sort();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "write->stream latency over {} lines: median {:?}, p99 {:?}, max {:?}",
            latencies.len(),
            pct(0.5),
            pct(0.99),
            latencies.last().unwrap()
        );
        sandbox.close().await;
    });
}

criterion_group!(benches, throughput, write_to_stream_latency);
criterion_main!(benches);
