//! Helpers shared by the integration tests: a sandbox on a private state root, and checks that
//! nothing was left behind. These run real runtimes; a missing runtime fails the test.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_sandbox::{ContainerConfig, NamespaceContainer, OciRuntime, SandboxConfig};

pub mod egress;
pub mod images;
pub mod ordinary_user;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Reads `reader` (a PTY) until `needle` appears and returns everything read; fails after
/// 10 s or at end of stream.
pub async fn read_until(reader: &mut (impl tokio::io::AsyncRead + Unpin), needle: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), reader.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} within 10 s; got {:?}",
                    String::from_utf8_lossy(&seen)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "EOF before {needle:?}; got {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&seen).contains(needle) {
            return String::from_utf8_lossy(&seen).into_owned();
        }
    }
}

/// The crate features `make test` builds everything with (tests, examples, the binary): one
/// build of the library serves them all, and a helper that builds an example or the binary
/// with the same features finds it built.
pub const BUILD_FEATURES: &str = "cli,prometheus";

/// An example binary next to the test binaries, built first (`cargo build --example` with
/// [`BUILD_FEATURES`], once per test process: a no-op when `make test` has built them), so
/// that a plain `cargo test` works too.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    {
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if !built.iter().any(|b| b == name) {
            let status = std::process::Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--example", name])
                .args(["--features", BUILD_FEATURES])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running cargo to build an example");
            assert!(
                status.success(),
                "cargo build --example {name} --features {BUILD_FEATURES} failed"
            );
            built.push(name.to_owned());
        }
    }
    let deps = std::env::current_exe().unwrap();
    let path = deps
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} missing: build the examples first (`cargo build --examples`, as `make test` does)",
        path.display()
    );
    path
}

/// A runtime on a state root of its own, removed at the end of the test.
pub struct TestSandbox {
    pub sandbox: NamespaceContainer,
    pub state: tempfile::TempDir,
}

impl Drop for TestSandbox {
    /// crun's persistent mount namespace is bound under the state dir: unmount it, or every
    /// test leaves two mounts behind (and a long mount table slows every runc call).
    fn drop(&mut self) {
        // On a multi-threaded runtime the teardown of handles the test dropped runs on other
        // workers while this drop removes the state dir, and a runtime call of theirs would
        // create the dir again: wait for them. (On a current-thread runtime they cannot run
        // any more; their shutdown cleanup sees the state root gone.)
        if let Ok(rt) = tokio::runtime::Handle::try_current()
            && rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            let sandbox = &self.sandbox;
            tokio::task::block_in_place(|| {
                rt.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(10), sandbox.close()).await;
                })
            });
        }
        // Volumes with a size limit stay mounted in the host's namespace until removed.
        if let Ok(volumes) = std::fs::read_dir(self.state.path().join("data/volumes")) {
            for v in volumes.flatten() {
                let _ =
                    nix::mount::umount2(&v.path().join("mnt"), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let ns = self.state.path().join("crun/ns");
        for m in [ns.join("mnt"), ns] {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl TestSandbox {
    pub async fn new(kind: OciRuntime) -> Self {
        let state = tempfile::Builder::new()
            .prefix("osb-test-")
            .tempdir_in("/tmp")
            .expect("temp state dir");
        std::fs::create_dir(state.path().join("captures")).unwrap();
        let sandbox = NamespaceContainer::builder()
            .runtime(kind)
            .state_dir(state.path())
            .capture_dir(state.path().join("captures"))
            .data_dir(state.path().join("data"))
            .build()
            .await
            .unwrap_or_else(|e| {
                panic!("{kind} must be installed for the tests (make test installs it): {e}")
            });
        TestSandbox { sandbox, state }
    }

    pub fn config(&self, command: &str, args: &[&str]) -> ContainerConfig {
        self.config_with(&SandboxConfig::default(), command, args)
    }

    pub fn config_with(
        &self,
        policy: &SandboxConfig,
        command: &str,
        args: &[&str],
    ) -> ContainerConfig {
        NamespaceContainer::build_config(
            policy,
            command,
            args.iter().map(|s| s.to_string()).collect::<Vec<String>>(),
        )
    }

    /// Spawns `args` under `policy` and waits for its output; in a test run by
    /// [`on_every_runtime_warm!`], in a warm container of the same spec.
    pub async fn output(&self, policy: &SandboxConfig, args: &[&str]) -> oci_sandbox::Output {
        let config = self.config_with(policy, args[0], &args[1..]);
        if WARM_SPAWNS.try_with(|_| ()).is_err() {
            return self
                .sandbox
                .spawn(&config)
                .await
                .unwrap()
                .wait_with_output()
                .await
                .unwrap();
        }
        // A pool of the spec under another command: the spawn brings its own.
        let template = self.config_with(policy, "true", &[]);
        self.sandbox.warm(&template, 1).await.expect("a warm pool");
        let hits = || -> u64 { self.sandbox.warm_pools().iter().map(|p| p.hits).sum() };
        let before = hits();
        let child = self.sandbox.spawn(&config).await.unwrap();
        assert_eq!(hits(), before + 1, "the spawn was not served warm");
        self.sandbox.warm(&template, 0).await.unwrap();
        child.wait_with_output().await.unwrap()
    }

    /// A long-lived sandbox under `policy` (its init's command is `true`).
    pub async fn start_sandbox(&self, policy: &SandboxConfig) -> oci_sandbox::Sandbox {
        let config = NamespaceContainer::build_config(policy, "true", vec![]);
        self.sandbox.start(&config).await.expect("sandbox start")
    }

    pub fn sh(&self, script: &str) -> ContainerConfig {
        self.config("sh", &["-c", script])
    }

    pub fn bundles_dir(&self) -> PathBuf {
        self.sandbox.state_root().parent().unwrap().join("bundles")
    }

    /// Waits for background cleanup, then asserts that the runtime lists no container in our
    /// root, no bundle remains, no cgroup of `ids` remains, and no process mentions our state
    /// root or `marker`.
    pub async fn assert_nothing_left(&self, ids: &[&str], marker: Option<&str>) {
        self.sandbox.close().await;
        let listed = self.sandbox.list_all().await.expect("runtime list");
        assert!(
            listed.is_empty(),
            "containers left in the state root: {listed:?}"
        );
        let bundles: Vec<_> = std::fs::read_dir(self.bundles_dir())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(bundles.is_empty(), "bundles left: {bundles:?}");
        let captures: Vec<_> = std::fs::read_dir(self.state.path().join("captures"))
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(captures.is_empty(), "capture dirs left: {captures:?}");
        let root = self.state.path().to_string_lossy().into_owned();
        // Processes die asynchronously after SIGKILL: give them a moment.
        let mut left = Vec::new();
        for _ in 0..100 {
            left = processes_mentioning(&root);
            if let Some(m) = marker {
                left.extend(processes_mentioning(m));
            }
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(left.is_empty(), "processes left: {left:?}");
        // The library awaits every process it spawns (runtime CLIs, the user-namespace
        // helper) to its end, whatever happens to the handles, and reaps nothing else: no
        // zombie child may last. One of a concurrent test may be waiting for tokio to reap it
        // for a moment; nothing here prompts a reap (no close(), no spawn).
        // (`cat` and `ws_logs` are children of the tests themselves.)
        let mut zombies = Vec::new();
        for _ in 0..100 {
            zombies = zombie_children()
                .into_iter()
                .filter(|(_, comm)| !matches!(comm.as_str(), "cat" | "ws_logs"))
                .collect();
            if zombies.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(zombies.is_empty(), "zombie children: {zombies:?}");
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let cgroups = our_cgroups_left(&ids);
        let described: Vec<String> = cgroups
            .iter()
            .map(|c| {
                let read = |f: &str| {
                    std::fs::read_to_string(c.join(f))
                        .unwrap_or_default()
                        .replace('\n', " ")
                };
                format!(
                    "{} procs=[{}] events=[{}]",
                    c.display(),
                    read("cgroup.procs"),
                    read("cgroup.events")
                )
            })
            .collect();
        assert!(cgroups.is_empty(), "cgroups left: {described:?}");
    }
}

/// `(pid, cmdline)` of live processes (other than this one) whose command line contains `needle`.
/// A `sleep` command line unique to one test file (`base`) and runtime, so that a leftover check
/// looking for it sees neither the other runtimes' variants of the test running beside it nor
/// another test's processes.
pub fn sleep_marker(base: u32, kind: OciRuntime) -> String {
    let offset = match kind {
        OciRuntime::Runc => 1,
        OciRuntime::Crun => 2,
        _ => 3,
    };
    format!("sleep {}", base + offset)
}

pub fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            // Zombies have an empty cmdline, so anything here is alive.
            out.push((pid, cmd));
        }
    }
    out
}

/// `(pid, comm)` of this process's children that are zombies.
pub fn zombie_children() -> Vec<(i32, String)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str()) {
            out.push((pid, comm));
        }
    }
    out
}

/// Cgroup directories of the given container ids that still exist.
pub fn our_cgroups_left(ids: &[String]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for h in hs.filter_map(Result::ok) {
        for id in ids {
            let p = h.path().join("oci-sandbox").join(id);
            if p.exists() {
                out.push(p);
            }
        }
    }
    out
}

pub fn cgroup_exists(id: &str) -> bool {
    !our_cgroups_left(&[id.to_owned()]).is_empty()
}

pub fn path_exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

tokio::task_local! {
    /// Set in the tests [`on_every_runtime_warm!`] makes: [`TestSandbox::output`] spawns in
    /// warm containers there.
    pub static WARM_SPAWNS: ();
}

/// Instantiates tests written as `async fn name(kind: OciRuntime)` once more for every
/// runtime, as `warm::runc::name` and so on, with every [`TestSandbox::output`] served by a
/// warm container: the escape tests hold against warm containers too.
#[macro_export]
macro_rules! on_every_runtime_warm {
    ($($name:ident),* $(,)?) => {
        mod warm {
            mod runc {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        $crate::common::WARM_SPAWNS
                            .scope((), super::super::$name(oci_sandbox::OciRuntime::Runc))
                            .await
                    }
                )*
            }
            mod crun {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        $crate::common::WARM_SPAWNS
                            .scope((), super::super::$name(oci_sandbox::OciRuntime::Crun))
                            .await
                    }
                )*
            }
            mod runsc {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        $crate::common::WARM_SPAWNS
                            .scope((), super::super::$name(oci_sandbox::OciRuntime::Gvisor))
                            .await
                    }
                )*
            }
        }
    };
}

/// Instantiates behaviour tests, written once as `async fn name(kind: OciRuntime)`, for every
/// runtime: `runc::name`, `crun::name` and `runsc::name`.
#[macro_export]
macro_rules! on_every_runtime {
    ($($name:ident),* $(,)?) => {
        mod runc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(oci_sandbox::OciRuntime::Runc).await
                }
            )*
        }
        mod crun {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(oci_sandbox::OciRuntime::Crun).await
                }
            )*
        }
        mod runsc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(oci_sandbox::OciRuntime::Gvisor).await
                }
            )*
        }
    };
}

/// Runs a shell line in `sandbox`, asserts it succeeded, and returns its stdout.
pub async fn sh_in(sandbox: &oci_sandbox::Sandbox, script: &str) -> String {
    exec_in(sandbox, &oci_sandbox::ExecConfig::shell(script)).await
}

/// Runs `exec` in `sandbox`, asserts it succeeded, and returns its stdout.
pub async fn exec_in(sandbox: &oci_sandbox::Sandbox, exec: &oci_sandbox::ExecConfig) -> String {
    let out = sandbox
        .exec(exec)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{} {:?}: {} {}",
        exec.command,
        exec.args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
