//! Images (issue 18): the first use of an image (a registry pull on loopback and the unpack
//! into the store), and a cached image's cold spawn against the host-`/usr` cold spawn of the
//! same command, paired round by round.
//!
//! The image for the first use is the tests' Python image (the host's python3 and its
//! standard library: 13 MB of gzip, about 60 MB unpacked), pushed to a `docker-registry` on
//! 127.0.0.1; each round pulls it into a fresh state dir. The spawn pair runs `true`: the
//! host's `/usr/bin/true`, and busybox's in the tests' busybox image.

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use oci_sandbox::{Image, NamespaceContainer, OciRuntime, RegistryImage, SandboxConfig, Stdio};
use raw_cli::{median, rounds, runtimes, timed, unmount_crun_ns};

#[allow(dead_code)]
#[path = "../tests/common/images.rs"]
mod images;
#[allow(dead_code)]
#[path = "support/raw_cli.rs"]
mod raw_cli;

fn quiet(policy: &SandboxConfig) -> oci_sandbox::ContainerConfig {
    let mut c = NamespaceContainer::build_config(policy, "true", vec![]);
    c.stdin = Stdio::Null;
    c.stdout = Stdio::Null;
    c.stderr = Stdio::Null;
    c
}

async fn runtime_in(kind: OciRuntime, state: &std::path::Path) -> NamespaceContainer {
    NamespaceContainer::builder()
        .runtime(kind)
        .state_dir(state)
        .build()
        .await
        .unwrap()
}

fn images_bench(_c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    rt.block_on(async {
        let dir = tempfile::Builder::new()
            .prefix("osb-img-bench-")
            .tempdir_in("/tmp")
            .unwrap();
        let python = images::python_layout(&dir.path().join("python"));
        let busybox = images::busybox_layout(&dir.path().join("busybox"));
        let registry = images::Registry::start(None).await;
        registry.push(&python.layout, &python.tag, "bench/python:1");
        let pulled_image = Image::Registry(RegistryImage::new(registry.reference("bench/python:1")));

        // First use: a fresh store each round (runc's; the store is the runtime's alike).
        let mut first = Vec::new();
        let mut unpacked = 0;
        for _ in 0..rounds(5) {
            let state = tempfile::Builder::new()
                .prefix("osb-img-bench-state-")
                .tempdir_in("/tmp")
                .unwrap();
            let runtime = runtime_in(OciRuntime::Runc, state.path()).await;
            let t = Instant::now();
            let pulled = runtime.pull(&pulled_image).await.unwrap();
            first.push(t.elapsed().as_secs_f64() * 1e3);
            unpacked = pulled.unpacked_bytes;
            runtime.close().await;
        }
        println!(
            "images first use (loopback registry pull + unpack, {:.1} MB unpacked): {:.0} ms median of {}",
            unpacked as f64 / 1e6,
            median(&mut first),
            first.len()
        );

        // A cached image's cold spawn against the host-/usr one, paired.
        let host = quiet(&SandboxConfig::default());
        let imaged = quiet(&SandboxConfig {
            image: Some(Image::OciLayout {
                path: busybox.layout.clone(),
                reference: busybox.tag.clone(),
            }),
            ..SandboxConfig::default()
        });
        for kind in runtimes() {
            let state = tempfile::Builder::new()
                .prefix("osb-img-bench-state-")
                .tempdir_in("/tmp")
                .unwrap();
            let runtime = runtime_in(kind, state.path()).await;
            runtime.pull(imaged.image.as_ref().unwrap()).await.unwrap();
            let run = |config: &oci_sandbox::ContainerConfig| {
                let (runtime, config) = (runtime.clone(), config.clone());
                async move {
                    let status = runtime.spawn(&config).await.unwrap().wait().await.unwrap();
                    assert!(status.success());
                }
            };
            // Warm both paths once.
            run(&host).await;
            run(&imaged).await;
            let (mut h, mut i) = (Vec::new(), Vec::new());
            for round in 0..rounds(100) {
                if round % 2 == 0 {
                    h.push(timed(run(&host)).await);
                    i.push(timed(run(&imaged)).await);
                } else {
                    i.push(timed(run(&imaged)).await);
                    h.push(timed(run(&host)).await);
                }
            }
            let (hm, im) = (median(&mut h), median(&mut i));
            println!(
                "images cold spawn {kind}: cached image {im:.2} ms, host /usr {hm:.2} ms, ratio {:.3} ({} rounds)",
                im / hm,
                h.len()
            );
            runtime.close().await;
            unmount_crun_ns(state.path());
        }
        drop(registry);
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = images_bench
}
criterion_main!(benches);
