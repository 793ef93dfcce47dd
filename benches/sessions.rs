//! Durable sandboxes (issue 32), as ratios against baselines measured in the same run.
//!
//! - resume: a hibernated named sandbox to its first exec's end, against a cold `start` of
//!   the same config plus the same exec (runc, crun), paired round by round; on runsc
//!   against a raw `runsc restore` of a raw container of the library's own spec, paired.
//! - pause and resume (the freeze) of a running sandbox, in milliseconds, and whether a
//!   paused sandbox's cgroup CPU time grows.
//! - a hibernated sandbox's cost in this process: the resident memory of 200 hibernated
//!   handles, per handle; no process left for them.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use oci_sandbox::{ExecConfig, NamespaceContainer, OciRuntime, SandboxConfig};
use raw_cli::{median, rounds, runtimes, unmount_crun_ns};

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

fn named(name: &str) -> SandboxConfig {
    SandboxConfig {
        name: Some(name.to_owned()),
        ..SandboxConfig::default()
    }
}

fn sessions_bench(_c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    rt.block_on(async {
        for kind in runtimes() {
            let state = tempfile::Builder::new()
                .prefix("osb-sessions-bench-")
                .tempdir_in("/tmp")
                .unwrap();
            let runtime = NamespaceContainer::builder()
                .runtime(kind)
                .state_dir(state.path())
                .data_dir(state.path().join("data"))
                .build()
                .await
                .unwrap();
            resume(&runtime, state.path(), false).await;
            if kind == OciRuntime::Gvisor {
                resume(&runtime, state.path(), true).await;
            }
            pause(&runtime).await;
            if kind == OciRuntime::Runc {
                hibernated_cost(&runtime).await;
            }
            runtime.close().await;
            unmount_crun_ns(state.path());
        }
    });
}

/// A hibernated sandbox to its first exec's end against a cold start plus that exec
/// (runc, crun) or a raw `runsc restore` (runsc).
async fn resume(runtime: &NamespaceContainer, state: &std::path::Path, process: bool) {
    let kind = runtime.runtime();
    let sandbox = runtime.create(&named("bench")).await.unwrap();
    sh(&sandbox, "echo state > /workspace/s").await;
    if process {
        // A process to keep: gVisor's hibernation is then a checkpoint.
        sandbox
            .exec_background(&ExecConfig::shell("while :; do sleep 1; done"))
            .await
            .unwrap();
    }
    let cold_config =
        NamespaceContainer::build_config(&SandboxConfig::default(), "", Vec::<String>::new());
    let raw = (kind == OciRuntime::Gvisor).then(|| RawGvisor::new(runtime, state, process));
    // Warm up both sides (first runs fill caches).
    sandbox.hibernate().await.unwrap();
    sh(&sandbox, "true").await;
    let warm = runtime.start(&cold_config).await.unwrap();
    warm.close().await;
    let (mut lib, mut base) = (Vec::new(), Vec::new());
    for round in 0..rounds(20) {
        sandbox.hibernate().await.unwrap();
        let one_lib = async {
            let t = Instant::now();
            sh(&sandbox, "cat /workspace/s > /dev/null").await;
            ms(t)
        };
        let one_base = async {
            match &raw {
                Some(raw) => raw.restore(round).await,
                None => {
                    let t = Instant::now();
                    let cold = runtime.start(&cold_config).await.unwrap();
                    sh(&cold, "cat /etc/passwd > /dev/null").await;
                    let took = ms(t);
                    cold.close().await;
                    took
                }
            }
        };
        if round % 2 == 0 {
            lib.push(one_lib.await);
            base.push(one_base.await);
        } else {
            base.push(one_base.await);
            lib.push(one_lib.await);
        }
    }
    let (l, b) = (median(&mut lib), median(&mut base));
    let what = match kind {
        OciRuntime::Gvisor => "raw runsc restore",
        _ => "cold start + exec",
    };
    let kept = if process {
        "with a process kept (a checkpoint)"
    } else {
        "without processes to keep"
    };
    println!(
        "sessions {kind}: resume of a hibernated sandbox {kept} to its first exec's end {l:.2} ms, \
         {what} {b:.2} ms, ratio {:.3} ({} rounds)",
        l / b,
        lib.len()
    );
    sandbox.close().await;
    runtime.remove_sandbox("bench").await.unwrap();
}

/// The freeze and thaw of a running sandbox with a spinning process, and its CPU while
/// frozen.
async fn pause(runtime: &NamespaceContainer) {
    let kind = runtime.runtime();
    let sandbox = runtime.start(&raw_cli::quiet_true()).await.unwrap();
    sandbox
        .exec_background(&ExecConfig::shell("while :; do :; done"))
        .await
        .unwrap();
    let (mut paused, mut resumed, mut grew) = (Vec::new(), Vec::new(), 0);
    let n = rounds(40);
    for _ in 0..n {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        sandbox.pause().await.unwrap();
        paused.push(ms(t));
        let before = sandbox.usage().await.and_then(|u| u.cpu);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if sandbox.usage().await.and_then(|u| u.cpu) != before {
            grew += 1;
        }
        let t = Instant::now();
        sandbox.resume().await.unwrap();
        resumed.push(ms(t));
    }
    println!(
        "sessions {kind}: pause {:.2} ms, resume {:.2} ms (medians of {n}, a spinning process \
         inside); CPU time grew while paused in {grew} of {n}",
        median(&mut paused),
        median(&mut resumed),
    );
    sandbox.close().await;
}

/// What 200 hibernated handles cost this process, per handle, and that they hold no process.
async fn hibernated_cost(runtime: &NamespaceContainer) {
    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
    let n = if raw_cli::quick() { 50 } else { 200 };
    let make = async |n: usize| {
        let mut sandboxes = Vec::new();
        for i in 0..n {
            let s = runtime.create(&named(&format!("h{i}"))).await.unwrap();
            sh(&s, "echo x > x").await;
            s.hibernate().await.unwrap();
            sandboxes.push(s);
        }
        sandboxes
    };
    // A first round grows the allocator's arenas and the runtime's caches; its handles go.
    let first = make(n).await;
    for s in first {
        let name = s.name().unwrap().to_owned();
        drop(s);
        runtime.remove_sandbox(&name).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let without = rss_kib();
    let sandboxes = make(n).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with = rss_kib();
    let children = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        std::process::id(),
        std::process::id()
    ))
    .unwrap_or_default();
    let listed = runtime.list().await.unwrap().len();
    let names: Vec<String> = sandboxes
        .iter()
        .map(|s| s.name().unwrap().to_owned())
        .collect();
    drop(sandboxes);
    println!(
        "sessions runc: {n} hibernated handles hold {} KiB of this process's memory ({:.1} KiB \
         each), {listed} containers, {} child processes",
        with.saturating_sub(without),
        with.saturating_sub(without) as f64 / n as f64,
        children.split_whitespace().count()
    );
    for name in names {
        runtime.remove_sandbox(&name).await.unwrap();
    }
}

/// The raw side on runsc: a raw container of the library's own spec (a shell that waits)
/// and its flags, checkpointed once; each round restores it.
struct RawGvisor {
    root: std::path::PathBuf,
    bundle: tempfile::TempDir,
    image: std::path::PathBuf,
}

impl RawGvisor {
    fn new(runtime: &NamespaceContainer, state: &std::path::Path, n: bool) -> Self {
        let mut c = NamespaceContainer::build_config(
            &SandboxConfig::default(),
            "sh",
            vec!["-c".into(), "while :; do sleep 1; done".into()],
        );
        c.stdin = oci_sandbox::Stdio::Null;
        c.stdout = oci_sandbox::Stdio::Null;
        c.stderr = oci_sandbox::Stdio::Null;
        // The same sandbox: /tmp and /workspace bound from host directories, as a named
        // sandbox's are.
        c.mounts
            .retain(|m| m.destination != std::path::Path::new("/tmp"));
        for (sub, dest) in [("raw-tmp", "/tmp"), ("raw-workspace", "/workspace")] {
            let dir = state.join(sub);
            std::fs::create_dir_all(&dir).unwrap();
            c.mounts.push(oci_sandbox::Mount {
                destination: dest.into(),
                kind: oci_sandbox::MountKind::Bind {
                    source: dir,
                    writable: true,
                },
            });
        }
        let bundle = tempfile::Builder::new()
            .prefix("osb-sessions-bench-raw-")
            .tempdir_in("/tmp")
            .unwrap();
        let spec = runtime.render_spec(&c).unwrap();
        std::fs::write(
            bundle.path().join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let root = state.join(format!("raw-root-{n}"));
        std::fs::create_dir_all(&root).unwrap();
        let image = state.join(format!("raw-image-{n}"));
        let raw = RawGvisor {
            root,
            bundle,
            image,
        };
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                raw.run(
                    &["run", "--detach", "--bundle"],
                    Some(raw.bundle.path()),
                    "raw",
                )
                .await;
                raw.run(&["checkpoint", "--image-path"], Some(&raw.image), "raw")
                    .await;
                raw.run(&["delete", "--force"], None, "raw").await;
            })
        });
        raw
    }

    /// `runsc` with the library's flags for a named sandbox: its root's writes in memory
    /// (`--overlay2=root:memory`, which a checkpoint saves), as the library runs it.
    fn command(&self) -> tokio::process::Command {
        let mut cmd = raw_cli::command(OciRuntime::Gvisor, &self.root);
        cmd.arg("--overlay2=root:memory");
        cmd
    }

    async fn run(&self, args: &[&str], path: Option<&std::path::Path>, id: &str) {
        let mut cmd = self.command();
        cmd.args(args);
        if let Some(p) = path {
            cmd.arg(p);
        }
        cmd.arg(id);
        raw_cli::run_quietly(cmd).await;
    }

    async fn restore(&self, round: usize) -> f64 {
        let id = format!("raw-{round}");
        let mut cmd = self.command();
        cmd.args(["restore", "--detach", "--bundle"])
            .arg(self.bundle.path())
            .arg("--image-path")
            .arg(&self.image)
            .arg(&id);
        let t = Instant::now();
        raw_cli::run_quietly(cmd).await;
        let took = ms(t);
        self.run(&["kill"], None, &id).await;
        self.run(&["delete", "--force"], None, &id).await;
        took
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = sessions_bench
}
criterion_main!(benches);
