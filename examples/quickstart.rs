//! Runs a few commands in a sandbox and prints output, exit status and spawn time for each.
//!
//! ```text
//! cargo run --example quickstart            # runc
//! cargo run --example quickstart -- crun    # or crun, runsc
//! ```

use std::time::{Duration, Instant};

use oci_sandbox::{NamespaceContainer, OciRuntime, SandboxConfig, SandboxError};

#[tokio::main]
async fn main() -> Result<(), SandboxError> {
    let kind = match std::env::args().nth(1).as_deref() {
        None | Some("runc") => OciRuntime::Runc,
        Some("crun") => OciRuntime::Crun,
        Some("runsc" | "gvisor") => OciRuntime::Gvisor,
        Some(other) => {
            eprintln!("unknown runtime {other:?}: use runc, crun or runsc");
            std::process::exit(2);
        }
    };
    let runtime = NamespaceContainer::with_runtime(kind).await?;
    println!(
        "{} ({})\n",
        runtime.version().await?,
        runtime.state_root().display()
    );

    let policy = SandboxConfig {
        timeout: Some(Duration::from_secs(2)),
        ..SandboxConfig::default()
    };
    let runs: [(&str, &[&str]); 5] = [
        ("echo", &["hello from the sandbox"]),
        (
            "python3",
            &[
                "-c",
                "import os, platform; print(6 * 7, platform.node(), os.getuid())",
            ],
        ),
        (
            "sh",
            &[
                "-c",
                "echo \"can I write /usr? $(touch /usr/x 2>&1)\"; cat /etc/shadow; exit 3",
            ],
        ),
        ("sleep", &["100"]),
        ("no-such-command", &[]),
    ];
    for (command, args) in runs {
        let config = NamespaceContainer::build_config(&policy, command, args);
        println!("$ {command} {}", args.join(" "));
        let started = Instant::now();
        let child = match runtime.spawn(&config).await {
            Ok(child) => child,
            Err(e) => {
                println!("  error: {e}\n");
                continue;
            }
        };
        let spawned = started.elapsed();
        match child.wait_with_output().await {
            Ok(out) => {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    println!("  stdout: {line}");
                }
                for line in String::from_utf8_lossy(&out.stderr).lines() {
                    println!("  stderr: {line}");
                }
                println!(
                    "  status: {}; spawn {:.1} ms, spawn to exit {:.1} ms\n",
                    out.status,
                    spawned.as_secs_f64() * 1e3,
                    started.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e) => println!("  error: {e}\n"),
        }
    }
    runtime.close().await;
    Ok(())
}
