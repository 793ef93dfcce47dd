//! Snapshots and forks (issue 20), as ratios against baselines measured in the same run.
//!
//! - runc, crun: a snapshot of a sandbox that wrote 1000 small files and 50 MiB (the
//!   snapshot alone, and with the sandbox's restart on it), and a fork's start against a
//!   plain cold start of the same config, paired round by round.
//! - runsc: the library's snapshot (the launcher's detach, `runsc checkpoint`, the
//!   container's removal) against a raw `runsc checkpoint` of a raw container of the
//!   library's own spec (`--overlay2=root:memory`), and a fork (`runsc restore` and the
//!   launcher's attach) against a raw `runsc restore` of that checkpoint, paired.

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use oci_sandbox::{
    ExecConfig, Image, NamespaceContainer, OciRuntime, SandboxConfig, SnapshotOptions,
};
use raw_cli::{median, rounds, runtimes, unmount_crun_ns};

#[allow(dead_code)]
#[path = "../tests/common/images.rs"]
mod images;
#[allow(dead_code)]
#[path = "support/raw_cli.rs"]
mod raw_cli;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

async fn sh(sandbox: &oci_sandbox::Sandbox, script: &str) {
    let status = sandbox
        .exec(&ExecConfig::shell(script))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(status.success(), "{script}");
}

/// 1000 small files in 20 directories and one file of 50 MiB.
const WRITE: &str = "for d in $(seq 20); do mkdir -p /work/$d; \
    for f in $(seq 50); do echo file $d $f > /work/$d/$f; done; done; \
    dd if=/dev/zero of=/work/big bs=1M count=50 2>/dev/null";

fn snapshots_bench(_c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    rt.block_on(async {
        let dir = tempfile::Builder::new()
            .prefix("osb-snap-bench-")
            .tempdir_in("/tmp")
            .unwrap();
        let busybox = images::busybox_layout(&dir.path().join("busybox"));
        let policy = SandboxConfig {
            image: Some(Image::OciLayout {
                path: busybox.layout.clone(),
                reference: busybox.tag.clone(),
            }),
            writable_root: true,
            snapshots: true,
            ..SandboxConfig::default()
        };
        let config = NamespaceContainer::build_config(&policy, "true", vec![]);
        for kind in runtimes() {
            let state = tempfile::Builder::new()
                .prefix("osb-snap-bench-state-")
                .tempdir_in("/tmp")
                .unwrap();
            let runtime = NamespaceContainer::builder()
                .runtime(kind)
                .state_dir(state.path())
                .build()
                .await
                .unwrap();
            match kind {
                OciRuntime::Gvisor => gvisor(&runtime, &config, state.path()).await,
                _ => layers(&runtime, &config).await,
            }
            runtime.close().await;
            unmount_crun_ns(state.path());
        }
    });
}

/// runc, crun: the snapshot of a sandbox with 1000 files and 50 MiB written, and forks.
async fn layers(runtime: &NamespaceContainer, config: &oci_sandbox::ContainerConfig) {
    let kind = runtime.runtime();
    let (mut alone, mut restarted) = (Vec::new(), Vec::new());
    let mut last = None;
    for round in 0..rounds(20) {
        let sandbox = runtime.start(config).await.unwrap();
        sh(&sandbox, WRITE).await;
        let keep_running = round % 2 == 1;
        let t = Instant::now();
        let snap = sandbox
            .snapshot_with(SnapshotOptions::default().keep_running(keep_running))
            .await
            .unwrap();
        let took = ms(t);
        if keep_running {
            restarted.push(took);
        } else {
            alone.push(took);
        }
        sandbox.close().await;
        last = Some(snap);
    }
    let snap = last.unwrap();
    println!(
        "snapshots {kind}: snapshot of 1000 files + 50 MiB {:.2} ms (the sandbox closed), \
         {:.2} ms with its restart on the snapshot ({} rounds each)",
        median(&mut alone),
        median(&mut restarted),
        alone.len()
    );
    // A fork's start against a plain cold start of the same config, paired.
    let (mut fork, mut plain) = (Vec::new(), Vec::new());
    for round in 0..rounds(60) {
        let one = async |from: bool| {
            let t = Instant::now();
            let sandbox = match from {
                true => runtime.start_from(&snap).await.unwrap(),
                false => runtime.start(config).await.unwrap(),
            };
            let took = ms(t);
            sandbox.close().await;
            took
        };
        if round % 2 == 0 {
            fork.push(one(true).await);
            plain.push(one(false).await);
        } else {
            plain.push(one(false).await);
            fork.push(one(true).await);
        }
    }
    let (f, p) = (median(&mut fork), median(&mut plain));
    println!(
        "snapshots {kind}: fork start {f:.2} ms, plain cold start {p:.2} ms, ratio {:.3} ({} rounds)",
        f / p,
        fork.len()
    );
}

/// gVisor: the library's checkpoint and forks against the raw CLI's, paired.
async fn gvisor(
    runtime: &NamespaceContainer,
    config: &oci_sandbox::ContainerConfig,
    state: &std::path::Path,
) {
    // The raw side: a container of the library's own spec for a shell that waits.
    let raw_config = {
        let mut c = NamespaceContainer::build_config(
            &SandboxConfig::default(),
            "sh",
            vec!["-c".into(), "while :; do sleep 1; done".into()],
        );
        c.stdin = oci_sandbox::Stdio::Null;
        c.stdout = oci_sandbox::Stdio::Null;
        c.stderr = oci_sandbox::Stdio::Null;
        c
    };
    let bundle = tempfile::Builder::new()
        .prefix("osb-snap-bench-raw-")
        .tempdir_in("/tmp")
        .unwrap();
    let spec = runtime.render_spec(&raw_config).unwrap();
    std::fs::write(
        bundle.path().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let root = state.join("raw-root");
    std::fs::create_dir_all(&root).unwrap();
    let raw = |args: Vec<std::ffi::OsString>| {
        let mut cmd = raw_cli::command(OciRuntime::Gvisor, &root);
        cmd.arg("--overlay2=root:memory").args(args);
        raw_cli::run_quietly(cmd)
    };
    let os = |s: &str| std::ffi::OsString::from(s);
    let (mut lib_ck, mut raw_ck, mut lib_fork, mut raw_restore) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds(20) {
        let images = tempfile::Builder::new()
            .prefix("osb-snap-bench-ck-")
            .tempdir_in("/tmp")
            .unwrap();
        let image = images.path().join("raw");
        let lib = async {
            let sandbox = runtime.start(config).await.unwrap();
            sh(&sandbox, "echo state > /tmp/state").await;
            let t = Instant::now();
            let snap = sandbox
                .snapshot_with(SnapshotOptions::default().keep_running(false))
                .await
                .unwrap();
            let ck = ms(t);
            let mut forks = Vec::new();
            for _ in 0..2 {
                let t = Instant::now();
                let fork = runtime.start_from(&snap).await.unwrap();
                forks.push(ms(t));
                fork.close().await;
            }
            (ck, forks)
        };
        let raw_round = async {
            let id = format!("raw-{round}");
            raw(vec![
                os("run"),
                os("--detach"),
                os("--bundle"),
                bundle.path().into(),
                os(&id),
            ])
            .await;
            let t = Instant::now();
            raw(vec![
                os("checkpoint"),
                os("--image-path"),
                image.clone().into(),
                os(&id),
            ])
            .await;
            let ck = ms(t);
            raw(vec![os("delete"), os("--force"), os(&id)]).await;
            let mut restores = Vec::new();
            for k in 0..2 {
                let rid = format!("raw-{round}-{k}");
                let t = Instant::now();
                raw(vec![
                    os("restore"),
                    os("--detach"),
                    os("--bundle"),
                    bundle.path().into(),
                    os("--image-path"),
                    image.clone().into(),
                    os(&rid),
                ])
                .await;
                restores.push(ms(t));
                raw(vec![os("kill"), os(&rid), os("KILL")]).await;
                raw(vec![os("delete"), os("--force"), os(&rid)]).await;
            }
            (ck, restores)
        };
        let ((l_ck, l_forks), (r_ck, r_restores)) = if round % 2 == 0 {
            let l = lib.await;
            (l, raw_round.await)
        } else {
            let r = raw_round.await;
            (lib.await, r)
        };
        lib_ck.push(l_ck);
        raw_ck.push(r_ck);
        lib_fork.extend(l_forks);
        raw_restore.extend(r_restores);
    }
    let (lc, rc) = (median(&mut lib_ck), median(&mut raw_ck));
    let (lf, rr) = (median(&mut lib_fork), median(&mut raw_restore));
    println!(
        "snapshots runsc: checkpoint {lc:.1} ms, raw runsc checkpoint {rc:.1} ms, ratio {:.3}; \
         fork {lf:.1} ms, raw runsc restore {rr:.1} ms, ratio {:.3} ({} rounds, 2 forks each)",
        lc / rc,
        lf / rr,
        lib_ck.len()
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = snapshots_bench
}
criterion_main!(benches);
