//! A process using the library is SIGKILLed with containers running on every runtime: the
//! containers die with it within a second, and the next `NamespaceContainer` built on the same
//! state root removes everything it left on disk.
//!
//! This file has its own `main` (harness = false) so that it can re-run itself as the process
//! that crashes.

use std::process::Stdio;
use std::time::{Duration, Instant};

use oci_sandbox::{NamespaceContainer, OciRuntime, SandboxConfig};
use tokio::io::AsyncBufReadExt;

const MARKER: &str = "100.6161";

#[allow(dead_code)]
#[path = "common/images.rs"]
mod images;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--crash-child") {
        rt.block_on(crash_child(&args[pos + 1]));
        return;
    }
    // `cargo test -- <filter>` passes other flags: run the one test whatever they are.
    let started = Instant::now();
    rt.block_on(sweep_removes_what_a_killed_process_left());
    println!(
        "test sweep_removes_what_a_killed_process_left ... ok ({:?})",
        started.elapsed()
    );
    println!("1 passed, 0 failed");
}

fn builder(state: &std::path::Path) -> oci_sandbox::NamespaceContainerBuilder {
    NamespaceContainer::builder()
        .state_dir(state)
        .capture_dir(state.join("captures"))
}

/// The process that gets killed: on every runtime, spawns sleeping containers in every mode (a
/// piped one, one writing captured output, an interactive one, a long-lived sandbox running
/// an exec) and reports their ids.
async fn crash_child(state: &str) {
    let state = std::path::Path::new(state);
    std::fs::create_dir_all(state.join("captures")).unwrap();
    // A snapshot per runtime, held by this process when it dies.
    let busybox = images::busybox_layout(&state.join("busybox"));
    let snapshots = NamespaceContainer::build_config(
        &SandboxConfig {
            image: Some(oci_sandbox::Image::OciLayout {
                path: busybox.layout.clone(),
                reference: busybox.tag.clone(),
            }),
            writable_root: true,
            snapshots: true,
            ..SandboxConfig::default()
        },
        "true",
        vec![],
    );
    let config =
        NamespaceContainer::build_config(&SandboxConfig::default(), "sleep", vec![MARKER.into()]);
    let mut handles: Vec<Box<dyn std::any::Any>> = Vec::new();
    for kind in RUNTIMES {
        let sandbox = builder(state).runtime(kind).build().await.unwrap();
        let piped = sandbox.spawn(&config).await.unwrap();
        let captured = sandbox
            .spawn_captured(&config, oci_sandbox::OutputMode::Separate)
            .await
            .unwrap();
        let interactive = sandbox.spawn_interactive(&config).await.unwrap();
        let long_lived = sandbox.start(&config).await.unwrap();
        let exec = long_lived
            .exec(&oci_sandbox::ExecConfig::new("sleep", vec![MARKER.into()]))
            .await
            .unwrap();
        // Two warm containers, started ahead for spawns and never used.
        let warm = NamespaceContainer::build_config(&SandboxConfig::default(), "true", vec![]);
        sandbox.warm(&warm, 2).await.unwrap();
        let snapshotted = sandbox.start(&snapshots).await.unwrap();
        let snapshot = snapshotted
            .snapshot_with(oci_sandbox::SnapshotOptions::default().keep_running(false))
            .await
            .unwrap();
        for id in [piped.id(), captured.id(), interactive.id(), long_lived.id()] {
            println!("{kind} {id}");
        }
        handles.push(Box::new((
            piped,
            captured,
            interactive,
            long_lived,
            exec,
            sandbox,
            snapshot,
        )));
    }
    // Every container runs its sleep before this says so.
    // (gVisor's commands live in its Sentry: only runc's and crun's are host processes.)
    while count_processes(MARKER) < 8 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("ready");
    std::future::pending::<()>().await;
}

/// The runtimes the crashing process uses.
const RUNTIMES: [OciRuntime; 3] = [OciRuntime::Runc, OciRuntime::Crun, OciRuntime::Gvisor];

/// Unmounts the crun namespace the library keeps under a state dir (its bind and the dir
/// made a mount), so the temp dir can go: a state dir of the test's own, unlike the default
/// one, is not reused by the next run.
struct UnmountCrunNamespace(std::path::PathBuf);

impl Drop for UnmountCrunNamespace {
    fn drop(&mut self) {
        use nix::mount::{MntFlags, umount2};
        let ns = self.0.join("crun").join("ns");
        let _ = umount2(&ns.join("mnt"), MntFlags::MNT_DETACH);
        let _ = umount2(&ns, MntFlags::MNT_DETACH);
    }
}

async fn sweep_removes_what_a_killed_process_left() {
    let state = tempfile::Builder::new()
        .prefix("osb-crash-")
        .tempdir_in("/tmp")
        .unwrap();
    // Dropped before `state`: declared after it.
    let _unmount = UnmountCrunNamespace(state.path().to_owned());
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg("--crash-child")
        .arg(state.path())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ids = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "ready" {
                return;
            }
            ids.push(line);
        }
        panic!("the child ended before it was ready");
    });
    ready.await.expect("child ready within 30 s");
    assert_eq!(ids.len(), 4 * RUNTIMES.len(), "{ids:?}");
    let ids: Vec<String> = ids
        .iter()
        .map(|l| l.split_once(' ').unwrap().1.to_owned())
        .collect();

    let killed = Instant::now();
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // Every container died with its owner within a second, in every mode and on every
    // runtime: each launcher read the end of its control socket and killed everything.
    // (gVisor's sandbox and gofer processes name their bundle, under the state dir.)
    // (runc's warm containers run nothing but their launcher, which names neither: their
    // cgroups, named by their bundles, must empty.)
    let state_path = state.path().to_string_lossy().into_owned();
    let bundle_ids: Vec<String> = RUNTIMES
        .iter()
        .flat_map(|kind| {
            std::fs::read_dir(state.path().join(kind.to_string()).join("bundles"))
                .unwrap()
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    while count_processes(MARKER) + count_processes(&state_path) + cgroup_processes(&bundle_ids) > 0
    {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "container processes outlived their owner by a second: {:?} {:?} {}",
            processes_mentioning(MARKER),
            processes_mentioning(&state_path),
            cgroup_processes(&bundle_ids)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("containers gone {:?} after their owner", killed.elapsed());

    // What stays on disk: bundles, runtime state, capture dirs, cgroups.
    let captures = || {
        std::fs::read_dir(state.path().join("captures"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(captures(), 3, "the captured runs' dirs survived the crash");
    let bundles = |kind: OciRuntime| {
        std::fs::read_dir(state.path().join(kind.to_string()).join("bundles"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let snapshots = |kind: OciRuntime| {
        std::fs::read_dir(state.path().join(kind.to_string()).join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    for kind in RUNTIMES {
        // Four handles and two warm containers.
        assert_eq!(bundles(kind), 6, "{kind}'s bundles survived the crash");
        assert_eq!(snapshots(kind), 1, "{kind}'s snapshot survived the crash");
    }
    // The next process sweeps them, runtime by runtime.
    for kind in RUNTIMES {
        let sandbox = builder(state.path()).runtime(kind).build().await.unwrap();
        assert!(sandbox.list_all().await.unwrap().is_empty(), "{kind}");
        assert_eq!(bundles(kind), 0, "{kind}'s bundles are swept");
        assert_eq!(snapshots(kind), 0, "{kind}'s snapshots are swept");
        // A second sweep finds nothing more.
        assert!(sandbox.sweep().await.unwrap().is_empty(), "{kind}");
    }
    assert_eq!(captures(), 0, "capture dirs of the dead process are swept");
    for id in &ids {
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .unwrap()
            .filter_map(Result::ok)
        {
            let cg = h.path().join("oci-sandbox").join(id);
            assert!(!cg.exists(), "cgroup left: {}", cg.display());
        }
    }
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .map(|e| {
            std::fs::read_to_string(e.path().join("status"))
                .unwrap_or_default()
                .lines()
                .take(8)
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

fn count_processes(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}

/// Processes in the cgroups of containers `ids`, in every hierarchy.
fn cgroup_processes(ids: &[String]) -> usize {
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return 0;
    };
    let hierarchies: Vec<_> = hierarchies
        .filter_map(Result::ok)
        .map(|h| h.path())
        .collect();
    ids.iter()
        .flat_map(|id| {
            hierarchies
                .iter()
                .map(move |h| h.join("oci-sandbox").join(id))
        })
        .filter_map(|cg| std::fs::read_to_string(cg.join("cgroup.procs")).ok())
        .map(|procs| procs.lines().count())
        .sum()
}
