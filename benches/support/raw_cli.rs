//! The raw runtime CLI, as a user would call it on this machine: the baseline of the benches.

use oci_sandbox::{ContainerConfig, NamespaceContainer, OciRuntime, SandboxConfig, Stdio};

/// The library's persistent mount namespace for crun (default state dir).
const CRUN_NS: &str = "/run/oci-sandbox/crun/ns/mnt";

/// `<runtime> --root <root> [flags]`: crun in a mount namespace without the cgroup v2 mount
/// (it refuses hybrid cgroups otherwise; the library's own namespace is reused), entered with
/// `setns` in the child as the library does (the cheapest way: `nsenter` would add an exec,
/// 0.9 ms), runsc with its network and platform flags.
pub fn command(kind: OciRuntime, root: &std::path::Path) -> tokio::process::Command {
    let mut std_cmd = std::process::Command::new(kind.binary_name());
    static CRUN_NS_FD: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    if kind == OciRuntime::Crun
        && let Some(ns) = CRUN_NS_FD.get_or_init(|| std::fs::File::open(CRUN_NS).ok())
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: one system call in the child between fork and exec.
        unsafe {
            std_cmd.pre_exec(move || {
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.arg("--root").arg(root);
    if kind == OciRuntime::Gvisor {
        // The library's flags: the same spec needs them (seccomp inside).
        cmd.args(["--network=none", "--platform=ptrace", "--oci-seccomp"]);
    }
    cmd
}

/// The runtimes named in `OSB_BENCH_RUNTIMES` (default: runc).
pub fn runtimes() -> Vec<OciRuntime> {
    std::env::var("OSB_BENCH_RUNTIMES")
        .unwrap_or_else(|_| "runc".into())
        .split(',')
        .filter_map(|r| runtime_named(r.trim()))
        .collect()
}

/// The runtime of a name: `runc`, `crun`, `runsc` (or `gvisor`).
pub fn runtime_named(name: &str) -> Option<OciRuntime> {
    match name {
        "runc" => Some(OciRuntime::Runc),
        "crun" => Some(OciRuntime::Crun),
        "runsc" | "gvisor" => Some(OciRuntime::Gvisor),
        _ => None,
    }
}

/// A bundle holding the library's own spec for a config, for the raw CLI baseline: a user's
/// `<runtime> run` of what the library would run.
#[allow(dead_code)] // Not every bench runs the raw CLI.
pub struct RawBundle {
    pub dir: tempfile::TempDir,
    /// The runtime's state root for these runs.
    pub root: std::path::PathBuf,
    kind: OciRuntime,
    seq: std::sync::atomic::AtomicU64,
}

#[allow(dead_code)]
impl RawBundle {
    pub fn new(runtime: &NamespaceContainer, config: &ContainerConfig) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("osb-bench-")
            .tempdir_in("/tmp")
            .unwrap();
        let spec = runtime.render_spec(config).unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        RawBundle {
            dir,
            root,
            kind: runtime.runtime(),
            seq: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `<runtime> run` of the bundle, under an id of its own, to its end.
    pub async fn run_once(&self) {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("raw-bench-{}-{n}", std::process::id());
        let mut cmd = command(self.kind, &self.root);
        cmd.args(["run", "--bundle"]).arg(self.dir.path()).arg(id);
        run_quietly(cmd).await;
    }
}

/// Whether criterion runs in its test mode (`cargo bench -- --test`: each bench once).
pub fn quick() -> bool {
    std::env::args().any(|a| a == "--test")
}

/// Rounds of a hand-timed measurement: `full`, a fifth of it with `--quick`, 4 with `--test`.
pub fn rounds(full: usize) -> usize {
    if quick() {
        4
    } else if std::env::args().any(|a| a == "--quick") {
        (full / 5).max(4)
    } else {
        full
    }
}

/// The benches' runtime: two workers, like the machine's two cores.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `/bin/true` under the default policy, with every stream on /dev/null.
pub fn quiet_true() -> ContainerConfig {
    let mut config =
        NamespaceContainer::build_config(&SandboxConfig::default(), "/bin/true", vec![]);
    config.stdin = Stdio::Null;
    config.stdout = Stdio::Null;
    config.stderr = Stdio::Null;
    config
}

/// Runs a runtime command with null stdio and asserts it succeeded.
pub async fn run_quietly(mut cmd: tokio::process::Command) {
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// How long `f` takes, in milliseconds.
pub async fn timed(f: impl std::future::Future<Output = ()>) -> f64 {
    let t = std::time::Instant::now();
    f.await;
    t.elapsed().as_secs_f64() * 1e3
}

/// The median of `v` (sorts it).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Unmounts crun's namespace under a bench's own state dir (bound there by the library on
/// hybrid cgroups), so that removing the dir leaves no mount behind.
#[allow(dead_code)] // Not every bench keeps a state dir of its own.
pub fn unmount_crun_ns(state: &std::path::Path) {
    let ns = state.join("crun/ns");
    for m in [ns.join("mnt"), ns] {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}
