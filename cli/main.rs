//! `oci-sandbox`: the library as a command (`cargo install oci-sandbox --features cli`).
//!
//! ```text
//! oci-sandbox run [--runtime runc|crun|runsc] [--image REF] [--memory 512M] [--cpus 1]
//!                 [--allow-domain D]... [--timeout 30s] [-t] -- CMD ARGS...
//! oci-sandbox mcp [--config FILE] [--http 127.0.0.1:PORT] [policy flags]
//! oci-sandbox ls | rm NAME... | prune
//! ```

mod jsonrpc;
mod mcp;
mod policy;
mod run;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use policy::PolicyArgs;

#[derive(Debug, Parser)]
#[command(
    name = "oci-sandbox",
    version,
    about = "Run commands, code and agents' tools in Linux sandboxes (runc, crun, gVisor)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs one command in a sandbox of its own and removes it, like `docker run --rm`:
    /// stdio passed through, the command's exit status as this one's.
    Run {
        #[command(flatten)]
        policy: PolicyArgs,
        /// Keep stdin open (the default; accepted for docker's habit).
        #[arg(short = 'i', long)]
        interactive: bool,
        /// A pseudo-terminal for the command (with -i: an interactive shell).
        #[arg(short = 't', long)]
        tty: bool,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// An MCP server: tools to run code and commands and to read and write files, each
    /// session in a sandbox of its own. Over stdio unless --http is given.
    Mcp {
        #[command(flatten)]
        policy: PolicyArgs,
        /// A TOML file of the same settings (flags win).
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Serve streamable HTTP on this address (`127.0.0.1:8080`; port 0: any) at /mcp.
        #[arg(long)]
        http: Option<String>,
    },
    /// Lists what the library keeps: named sandboxes (hibernated ones with their
    /// hibernation), volumes, image layers, snapshots, and the runtime's containers.
    Ls {
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Removes named sandboxes (by name) and volumes (`volume:NAME`).
    Rm {
        #[command(flatten)]
        policy: PolicyArgs,
        /// What to remove.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Removes image layers no sandbox uses, and what dead processes left: containers,
    /// snapshots, downloads.
    Prune {
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let code = match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("oci-sandbox: {e}");
            125
        }
    };
    // tokio's stdin thread may still be blocked in read(2): leave without waiting for it.
    std::process::exit(code);
}

async fn dispatch(command: Command) -> Result<i32, String> {
    match command {
        Command::Run {
            policy,
            tty,
            command,
            ..
        } => run::run(policy, tty, command).await,
        Command::Mcp {
            policy,
            config,
            http,
        } => {
            let policy = match config {
                Some(file) => policy.over(PolicyArgs::from_file(&file)?),
                None => policy,
            };
            let mut sandbox_config = policy.sandbox_config()?;
            sandbox_config.idle_lifetime = Some(policy.idle()?);
            let shared = Arc::new(mcp::Shared {
                runtime: policy.container().await?,
                config: sandbox_config,
            });
            let served = match http {
                Some(addr) => mcp::serve_http(Arc::clone(&shared), &addr).await,
                None => mcp::serve_stdio(Arc::clone(&shared)).await,
            };
            shared.runtime.close().await;
            served.map(|()| 0)
        }
        Command::Ls { policy } => {
            let runtime = policy.container().await?;
            for s in runtime.sandboxes().await.map_err(|e| e.to_string())? {
                println!(
                    "sandbox\t{}\t{}\t{}\t{} bytes",
                    s.name, s.runtime, s.state, s.disk_bytes
                );
            }
            for v in runtime.volumes().await.map_err(|e| e.to_string())? {
                let limit = v.size_limit.map_or("-".to_owned(), |l| l.to_string());
                println!(
                    "volume\t{}\t{} bytes used\tlimit {limit}",
                    v.name, v.used_bytes
                );
            }
            for layer in runtime.image_layers().await.map_err(|e| e.to_string())? {
                println!("image-layer\t{}\t{} bytes", layer.digest, layer.disk_bytes);
            }
            let kept = runtime.metrics().await;
            if kept.snapshots > 0 {
                println!(
                    "snapshots\t{}\t{} bytes",
                    kept.snapshots, kept.snapshot_bytes
                );
            }
            for c in runtime.list().await.map_err(|e| e.to_string())? {
                println!("container\t{c}");
            }
            runtime.close().await;
            Ok(0)
        }
        Command::Rm { policy, names } => {
            let runtime = policy.container().await?;
            let mut code = 0;
            for name in names {
                let removed = match name.strip_prefix("volume:") {
                    Some(volume) => runtime.remove_volume(volume).await,
                    None => runtime.remove_sandbox(&name).await,
                };
                if let Err(e) = removed {
                    eprintln!("oci-sandbox: {name}: {e}");
                    code = 1;
                }
            }
            runtime.close().await;
            Ok(code)
        }
        Command::Prune { policy } => {
            let runtime = policy.container().await?;
            let images = runtime.prune_images().await.map_err(|e| e.to_string())?;
            let swept = runtime.sweep().await.map_err(|e| e.to_string())?;
            println!(
                "removed {} image layers, {} leftover containers",
                images.len(),
                swept.len()
            );
            runtime.close().await;
            Ok(0)
        }
    }
}
