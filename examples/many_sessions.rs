//! 1000 named sandboxes on one machine, at most 32 running (`max_running` and
//! `idle_hibernate`): random execs across all of them, then this process is killed and a new
//! one connects to 100 random names and checks every file each wrote. The figure of
//! BENCHMARKS.md (issue 32); run as root:
//!
//! ```text
//! cargo run --release --example many_sessions -- write 1000 5000   # then it kills itself
//! cargo run --release --example many_sessions -- check 100
//! ```
//! The data and state dirs are /tmp/osb-many/{state,data}; `clean` removes everything.

use std::time::{Duration, Instant};

use oci_sandbox::{ExecConfig, NamespaceContainer, SandboxConfig};

const BASE: &str = "/tmp/osb-many";

fn rss_mib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib = |key: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (kib("MemTotal:") - kib("MemAvailable:")) / 1024
}

fn pick(state: &mut u64, n: usize) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % n as u64) as usize
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = NamespaceContainer::builder()
        .state_dir(format!("{BASE}/state"))
        .data_dir(format!("{BASE}/data"))
        .max_running(32)
        .build()
        .await?;
    match args.first().map(String::as_str) {
        Some("write") => {
            let n: usize = args.get(1).map_or(1000, |a| a.parse().unwrap());
            let execs: usize = args.get(2).map_or(5000, |a| a.parse().unwrap());
            let begun = Instant::now();
            let mut sandboxes = Vec::new();
            let mem_before = rss_mib();
            for i in 0..n {
                let config = SandboxConfig {
                    name: Some(format!("s{i}")),
                    idle_hibernate: Some(Duration::from_secs(2)),
                    ..SandboxConfig::default()
                };
                sandboxes.push(runtime.create(&config).await?);
            }
            println!("created {n} in {:.1} s", begun.elapsed().as_secs_f64());
            let (mut failures, mut seed, mut peak) = (0, 0x9e3779b97f4a7c15u64, 0);
            let mut counts = vec![0u32; n];
            let begun = Instant::now();
            for k in 0..execs {
                let i = pick(&mut seed, n);
                let c = counts[i];
                let ran = async {
                    sandboxes[i]
                        .exec(&ExecConfig::shell(format!("echo {c} > /workspace/w{c}")))
                        .await?
                        .wait()
                        .await
                };
                match ran.await {
                    Ok(status) if status.success() => counts[i] += 1,
                    other => {
                        failures += 1;
                        eprintln!("exec {k} in s{i}: {other:?}");
                    }
                }
                if k % 250 == 0 {
                    let running = sandboxes
                        .iter()
                        .filter(|s| s.state() == oci_sandbox::SandboxState::Running)
                        .count();
                    peak = peak.max(running);
                    println!(
                        "{k} execs, {running} running, machine memory in use {} MiB (+{})",
                        rss_mib(),
                        rss_mib().saturating_sub(mem_before)
                    );
                }
            }
            println!(
                "{execs} execs over {n} sandboxes in {:.1} s: {failures} failures, at most {peak} running seen",
                begun.elapsed().as_secs_f64()
            );
            std::fs::write(
                format!("{BASE}/counts"),
                counts
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )?;
            // The owner dies without closing anything.
            nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL)?;
        }
        Some("check") => {
            let m: usize = args.get(1).map_or(100, |a| a.parse().unwrap());
            let counts: Vec<u32> = std::fs::read_to_string(format!("{BASE}/counts"))?
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            let (mut seed, mut missing) = (0x1234_5678_9abc_def1u64, 0);
            let begun = Instant::now();
            for _ in 0..m {
                let i = pick(&mut seed, counts.len());
                let sandbox = runtime.connect(&format!("s{i}")).await?;
                let out = sandbox
                    .exec(&ExecConfig::shell(format!(
                        "for c in $(seq 0 $(({} - 1))); do test \"$(cat /workspace/w$c)\" = $c || echo missing; done",
                        counts[i]
                    )))
                    .await?
                    .wait_with_output()
                    .await?;
                missing += out.stdout_str().lines().count();
                sandbox.close().await;
            }
            println!(
                "connected to {m} random sandboxes after the owner's SIGKILL in {:.1} s: {missing} files missing",
                begun.elapsed().as_secs_f64()
            );
        }
        _ => {
            for info in runtime.sandboxes().await? {
                runtime.remove_sandbox(&info.name).await?;
            }
            println!("removed");
        }
    }
    runtime.close().await;
    Ok(())
}
