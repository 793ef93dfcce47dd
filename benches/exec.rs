//! Exec in a long-lived sandbox against a cold spawn of the same runtime, in the same run.
//!
//! Per runtime, alternated round by round: a cold `spawn` of `/bin/true` to its exit; an
//! `exec` of `/bin/true` in a started sandbox to its exit (through the in-container launcher);
//! the runtime's own `exec` CLI into the same sandbox (the alternative the launcher replaces);
//! and a pooled sandbox's first exec (`SandboxPool::get` + exec). Prints medians and ratios
//! to the cold spawn.
//!
//! A second group alternates an exec with the host's own spawn of `/bin/true` (tokio's
//! `Command`), with nothing else running: the exec's cost on its own, as a ratio to the
//! floor any process start pays on this machine. (Alternated with cold spawns, an exec also
//! pays for the teardown the spawn before it left running: its runtime's state dir and
//! cgroups are removed after its `wait()` returns.)
//!
//! `OSB_BENCH_RUNTIMES=runc,crun,runsc` picks the runtimes (default runc).

use criterion::{Criterion, criterion_group, criterion_main};

#[path = "support/raw_cli.rs"]
mod raw_cli;
use oci_sandbox::{ExecConfig, NamespaceContainer, OciRuntime, SandboxPool};
use raw_cli::{median, timed};

/// `<runtime> exec <id> /bin/true` through the CLI, with the same global flags as the library.
async fn cli_exec(kind: OciRuntime, root: &std::path::Path, id: &str) {
    let mut cmd = raw_cli::command(kind, root);
    cmd.args(["exec", id, "/bin/true"]);
    raw_cli::run_quietly(cmd).await;
}

fn exec_vs_cold_spawn(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(100);
    let rt = raw_cli::tokio_runtime();
    for kind in raw_cli::runtimes() {
        rt.block_on(async {
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            let cold = raw_cli::quiet_true();
            let sandbox = runtime.start(&cold).await.unwrap();
            let mut exec = ExecConfig::new("/bin/true", vec![]);
            exec.stdin = oci_sandbox::Stdio::Null;
            exec.stdout = oci_sandbox::Stdio::Null;
            exec.stderr = oci_sandbox::Stdio::Null;
            let pool = SandboxPool::new(&runtime, &cold, 2).await.unwrap();
            let root = runtime.state_root().to_path_buf();
            let (mut cold_ms, mut exec_ms, mut cli_ms, mut pooled_ms) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..rounds {
                let cold_run = timed(async {
                    let status = runtime.spawn(&cold).await.unwrap().wait().await.unwrap();
                    assert!(status.success());
                });
                let exec_run = timed(async {
                    let status = sandbox.exec(&exec).await.unwrap().wait().await.unwrap();
                    assert!(status.success());
                });
                let cli_run = timed(cli_exec(kind, &root, sandbox.id()));
                let pooled_run = async {
                    // Let the pool refill first: a warm pool is what this measures.
                    while pool.ready() < 2 {
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                    timed(async {
                        let s = pool.get().await.unwrap();
                        let status = s.exec(&exec).await.unwrap().wait().await.unwrap();
                        assert!(status.success());
                    })
                    .await
                };
                if i % 2 == 0 {
                    cold_ms.push(cold_run.await);
                    exec_ms.push(exec_run.await);
                    cli_ms.push(cli_run.await);
                    pooled_ms.push(pooled_run.await);
                } else {
                    pooled_ms.push(pooled_run.await);
                    cli_ms.push(cli_run.await);
                    exec_ms.push(exec_run.await);
                    cold_ms.push(cold_run.await);
                }
            }
            pool.close().await;
            sandbox.close().await;
            runtime.close().await;
            let c = median(&mut cold_ms);
            for (what, v) in [
                ("sandbox exec (launcher)", &mut exec_ms),
                ("runtime exec CLI", &mut cli_ms),
                ("pooled first exec", &mut pooled_ms),
            ] {
                let m = median(v);
                println!(
                    "exec {kind} {what}: /bin/true to exit, {rounds} rounds: cold spawn {c:.2} ms, {what} {m:.2} ms, ratio {:.3}",
                    m / c
                );
            }
        });
    }
}

/// `/bin/true` spawned on the host with null stdio, to its exit: the floor.
async fn host_true() {
    let status = tokio::process::Command::new("/bin/true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

fn exec_vs_host_spawn(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(300);
    let rt = raw_cli::tokio_runtime();
    for kind in raw_cli::runtimes() {
        rt.block_on(async {
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            let sandbox = runtime.start(&raw_cli::quiet_true()).await.unwrap();
            let mut exec = ExecConfig::new("/bin/true", vec![]);
            exec.stdin = oci_sandbox::Stdio::Null;
            exec.stdout = oci_sandbox::Stdio::Null;
            exec.stderr = oci_sandbox::Stdio::Null;
            let (mut host_ms, mut exec_ms) = (Vec::new(), Vec::new());
            for i in 0..rounds {
                let exec_run = timed(async {
                    let status = sandbox.exec(&exec).await.unwrap().wait().await.unwrap();
                    assert!(status.success());
                });
                if i % 2 == 0 {
                    host_ms.push(timed(host_true()).await);
                    exec_ms.push(exec_run.await);
                } else {
                    exec_ms.push(exec_run.await);
                    host_ms.push(timed(host_true()).await);
                }
            }
            sandbox.close().await;
            runtime.close().await;
            let (h, e) = (median(&mut host_ms), median(&mut exec_ms));
            println!(
                "exec {kind} alone: /bin/true to exit, {rounds} rounds: host spawn {h:.3} ms, sandbox exec {e:.3} ms, ratio {:.3}",
                e / h
            );
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = exec_vs_cold_spawn, exec_vs_host_spawn
}
criterion_main!(benches);
