//! `oci-sandbox mcp` (issue 34): from the server's spawn to its first tool result (a
//! `run_command` of `true`, raw JSON-RPC over stdio, the state dir warm), against the
//! library's own cold `start` plus that exec in this process, alternated round by round.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use oci_sandbox::{ExecConfig, NamespaceContainer, SandboxConfig};
use raw_cli::{median, rounds};

#[allow(dead_code)]
#[path = "support/raw_cli.rs"]
mod raw_cli;

fn first_result(bin: &str, state: &std::path::Path) -> f64 {
    let t = Instant::now();
    let mut server = Command::new(bin)
        .arg("mcp")
        .arg("--state-dir")
        .arg(state.join("state"))
        .arg("--data-dir")
        .arg(state.join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"bench","version":"1"}}}}}}"#).unwrap();
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"run_command","arguments":{{"command":"true"}}}}}}"#).unwrap();
    loop {
        let line = lines.next().unwrap().unwrap();
        if line.contains(r#""id":2"#) {
            assert!(line.contains("exit code: 0"), "{line}");
            break;
        }
    }
    let took = t.elapsed().as_secs_f64() * 1e3;
    drop(stdin);
    server.wait().unwrap();
    took
}

fn mcp_bench(_c: &mut Criterion) {
    let bin = env!("CARGO_BIN_EXE_oci-sandbox");
    let rt = raw_cli::tokio_runtime();
    let dir = tempfile::Builder::new()
        .prefix("osb-mcp-bench-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // Warm: the state dir's rootfs and the launcher are made once.
    first_result(bin, dir.path());
    let (mut server, mut library) = (Vec::new(), Vec::new());
    rt.block_on(async {
        let runtime = NamespaceContainer::builder()
            .state_dir(dir.path().join("state"))
            .data_dir(dir.path().join("data"))
            .build()
            .await
            .unwrap();
        let config =
            NamespaceContainer::build_config(&SandboxConfig::default(), "", Vec::<String>::new());
        for round in 0..rounds(20) {
            let lib = async {
                let t = Instant::now();
                let sandbox = runtime.start(&config).await.unwrap();
                sandbox
                    .exec(&ExecConfig::shell("true"))
                    .await
                    .unwrap()
                    .wait()
                    .await
                    .unwrap();
                let took = t.elapsed().as_secs_f64() * 1e3;
                sandbox.close().await;
                took
            };
            if round % 2 == 0 {
                server.push(tokio::task::block_in_place(|| {
                    first_result(bin, dir.path())
                }));
                library.push(lib.await);
            } else {
                library.push(lib.await);
                server.push(tokio::task::block_in_place(|| {
                    first_result(bin, dir.path())
                }));
            }
        }
        runtime.close().await;
    });
    let (s, l) = (median(&mut server), median(&mut library));
    println!(
        "mcp runc: oci-sandbox mcp spawn to its first tool result {s:.1} ms (p50 of {}), the \
         library's cold start + exec in-process {l:.1} ms, ratio {:.2}",
        server.len(),
        s / l
    );
    raw_cli::unmount_crun_ns(&dir.path().join("state"));
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = mcp_bench
}
criterion_main!(benches);
