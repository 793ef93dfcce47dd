//! A named sandbox that outlives its process: run it twice and the second run finds what the
//! first one wrote.
//!
//! ```text
//! cargo run --example durable_session            # creates "notes", or connects to it
//! cargo run --example durable_session -- remove  # removes it
//! ```
//!
//! The tests also run it as the owner process they kill (`--runtime R --state S --data D
//! write NAME`): it connects (or creates), then writes `/workspace/f<i>` with an exec and
//! `/tmp/g<i>` with the file API, printing `wrote <i>` once both calls have completed, until
//! it is killed.

use oci_sandbox::{ExecConfig, NamespaceContainer, OciRuntime, SandboxConfig, SandboxError};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut builder = NamespaceContainer::builder();
    while args.first().is_some_and(|a| a.starts_with("--")) {
        let flag = args.remove(0);
        let value = args.remove(0);
        builder = match flag.as_str() {
            "--runtime" => builder.runtime(match value.as_str() {
                "crun" => OciRuntime::Crun,
                "runsc" => OciRuntime::Gvisor,
                _ => OciRuntime::Runc,
            }),
            "--state" => builder.state_dir(value),
            "--data" => builder.data_dir(value),
            other => return Err(format!("unknown flag {other}").into()),
        };
    }
    let runtime = builder.build().await?;
    let name = args.get(1).cloned().unwrap_or_else(|| "notes".to_owned());
    match args.first().map(String::as_str) {
        Some("remove") => {
            runtime.remove_sandbox(&name).await?;
            println!("removed {name}");
        }
        Some("write") => write_until_killed(&runtime, &name).await?,
        _ => {
            let sandbox = connect_or_create(&runtime, &name).await?;
            let runs = sandbox
                .exec(&ExecConfig::shell("echo run >> runs.txt; wc -l < runs.txt"))
                .await?
                .wait_with_output()
                .await?;
            println!(
                "sandbox {name} has been run {} time(s)",
                runs.stdout_str().trim()
            );
            for info in runtime.sandboxes().await? {
                println!(
                    "  {} {} {} bytes on disk",
                    info.name, info.state, info.disk_bytes
                );
            }
            sandbox.hibernate().await?;
            sandbox.close().await;
        }
    }
    runtime.close().await;
    Ok(())
}

async fn connect_or_create(
    runtime: &NamespaceContainer,
    name: &str,
) -> Result<oci_sandbox::Sandbox, SandboxError> {
    match runtime.connect(name).await {
        Err(SandboxError::Session {
            kind: oci_sandbox::SessionErrorKind::NotFound,
            ..
        }) => {
            let config = SandboxConfig {
                name: Some(name.to_owned()),
                ..SandboxConfig::default()
            };
            runtime.create(&config).await
        }
        other => other,
    }
}

async fn write_until_killed(
    runtime: &NamespaceContainer,
    name: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let sandbox = connect_or_create(runtime, name).await?;
    for i in 0.. {
        let status = sandbox
            .exec(&ExecConfig::shell(format!("echo {i} > /workspace/f{i}")))
            .await?
            .wait()
            .await?;
        assert!(status.success());
        sandbox
            .write_file(format!("/tmp/g{i}"), i.to_string())
            .await?;
        println!("wrote {i}");
    }
    Ok(())
}
