//! Attacks from inside the sandbox: each must fail, and the same config must still run a
//! legitimate command. On runc, crun and runsc, with the default hardened policy.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{
    Bind, DEFAULT_USERNS_BASE, Network, OciRuntime, OutputMode, SandboxConfig, USERNS_SIZE,
};

/// What came out of one attempt.
struct Outcome {
    status: oci_sandbox::ExitStatus,
    stdout: String,
    stderr: String,
}

async fn attempt(t: &TestSandbox, policy: &SandboxConfig, args: &[&str]) -> Outcome {
    let out = t.output(policy, args).await;
    Outcome {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn sh(t: &TestSandbox, policy: &SandboxConfig, script: &str) -> Outcome {
    attempt(t, policy, &["sh", "-c", script]).await
}

/// Each line of a script's output: `<label> ok` when the attack worked, `<label> refused`
/// when it did not. Asserts none worked and every one ran.
fn assert_all_refused(out: &Outcome, labels: &[&str]) {
    for label in labels {
        assert!(
            out.stdout.contains(&format!("{label} refused")),
            "{label} did not report refused\nstdout: {}\nstderr: {}",
            out.stdout,
            out.stderr
        );
        assert!(
            !out.stdout.contains(&format!("{label} ok")),
            "{label} WORKED\nstdout: {}",
            out.stdout
        );
    }
}

/// A shell line that reports whether `cmd` succeeded.
fn try_sh(label: &str, cmd: &str) -> String {
    format!("if {cmd} >/dev/null 2>&1; then echo '{label} ok'; else echo '{label} refused'; fi\n")
}

/// A legitimate command in the same config: write, read back, run python.
async fn assert_still_works(t: &TestSandbox, policy: &SandboxConfig) {
    let out = sh(
        t,
        policy,
        "echo fine > \"$HOME/legit\" && cat \"$HOME/legit\" && python3 -c 'print(6*7)'",
    )
    .await;
    assert!(out.status.success(), "{} / {}", out.status, out.stderr);
    assert_eq!(out.stdout, "fine\n42\n");
}

/// Python that calls raw system calls (x86_64 numbers) and reports each as ok or refused.
fn syscalls_script(calls: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "import ctypes, os\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def sc(nr, *a):\n\
         \x20   return libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])\n",
    );
    for (label, call) in calls {
        s.push_str(&format!(
            "r = {call}\nprint('{label}', 'ok' if r >= 0 else 'refused', os.strerror(ctypes.get_errno()), flush=True)\n"
        ));
    }
    s
}

fn policy_with_workdir(dir: &tempfile::TempDir) -> SandboxConfig {
    SandboxConfig {
        workdir: Some(dir.path().to_path_buf()),
        ..SandboxConfig::default()
    }
}

async fn reading_etc_shadow_fails(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig::default();
    let out = sh(
        &t,
        &policy,
        &(try_sh("cat-shadow", "cat /etc/shadow") + &try_sh("cat-gshadow", "cat /etc/gshadow")),
    )
    .await;
    assert_all_refused(&out, &["cat-shadow", "cat-gshadow"]);
    assert!(!out.stdout.contains("root:"));
    assert_still_works(&t, &policy).await;
}

/// Files planted in the host's /root and /home, removed when dropped.
struct Planted(Vec<std::path::PathBuf>);

impl Drop for Planted {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

async fn host_root_and_home_files_are_invisible(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let name = format!("osb-canary-{}", std::process::id());
    let secret = format!("secret-{name}");
    let dirs = [
        std::path::Path::new("/root").join(&name),
        std::path::Path::new("/home").join(&name),
    ];
    let _planted = Planted(dirs.to_vec());
    for d in &dirs {
        std::fs::create_dir_all(d.join(".ssh")).unwrap();
        std::fs::write(d.join("secret"), &secret).unwrap();
        std::fs::write(d.join(".ssh/id_ed25519"), &secret).unwrap();
    }
    let policy = SandboxConfig::default();
    let mut script = String::new();
    for (i, d) in dirs.iter().enumerate() {
        script += &try_sh(&format!("read{i}"), &format!("cat {}/secret", d.display()));
        script += &try_sh(
            &format!("key{i}"),
            &format!("cat {}/.ssh/id_ed25519", d.display()),
        );
    }
    script += &try_sh("ls-root", "ls /root");
    script += &try_sh("ls-home", "ls /home");
    script += &try_sh("find", &format!("find / -name '{name}*' | grep -q ."));
    let out = sh(&t, &policy, &script).await;
    assert_all_refused(
        &out,
        &[
            "read0", "key0", "read1", "key1", "ls-root", "ls-home", "find",
        ],
    );
    assert!(!out.stdout.contains(&secret));
    assert_still_works(&t, &policy).await;
}

async fn writing_to_usr_root_and_outside_the_workdir_fails(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let work = tempfile::tempdir().unwrap();
    let policy = policy_with_workdir(&work);
    let name = format!("osb-escape-{}", std::process::id());
    let targets = [
        format!("/usr/{name}"),
        format!("/usr/bin/{name}"),
        format!("/{name}"),
        format!("/etc/{name}"),
        format!("/var/{name}"),
        format!("/workspace/../{name}"),
        format!("/proc/{name}"),
        format!("/sys/{name}"),
    ];
    let mut script = String::new();
    for (i, p) in targets.iter().enumerate() {
        script += &try_sh(&format!("write{i}"), &format!("touch {p}"));
    }
    script += &try_sh("append-passwd", "echo x:x:0:0::/:/bin/sh >> /etc/passwd");
    script += "echo inside > /workspace/allowed && echo wrote-workspace\n";
    let out = sh(&t, &policy, &script).await;
    let labels: Vec<String> = (0..targets.len()).map(|i| format!("write{i}")).collect();
    let mut labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    labels.push("append-passwd");
    assert_all_refused(&out, &labels);
    assert!(out.stdout.contains("wrote-workspace"), "{}", out.stderr);
    // The host saw the workdir write and nothing else.
    assert_eq!(
        std::fs::read_to_string(work.path().join("allowed")).unwrap(),
        "inside\n"
    );
    for p in [
        format!("/usr/{name}"),
        format!("/usr/bin/{name}"),
        format!("/{name}"),
    ] {
        assert!(
            !std::path::Path::new(&p).exists(),
            "{p} appeared on the host"
        );
    }
    assert_still_works(&t, &policy).await;
}

async fn mount_unshare_setns_and_namespace_clones_fail(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig::default();
    let script = try_sh("mount-tmpfs", "mount -t tmpfs none /tmp")
        + &try_sh("mount-proc", "mount -t proc proc /tmp")
        + &try_sh("remount-root-rw", "mount -o remount,rw /")
        + &try_sh("unshare-user", "unshare -U true")
        + &try_sh("unshare-user-root", "unshare -Ur true")
        + &try_sh("unshare-mount", "unshare -m true")
        + &try_sh("unshare-net", "unshare -n true")
        + &try_sh("unshare-pid", "unshare -pf true")
        + &try_sh("setns", "nsenter -t 1 -m -u -i -n -p true")
        + &try_sh("chroot", "chroot / true");
    let out = sh(&t, &policy, &script).await;
    assert_all_refused(
        &out,
        &[
            "mount-tmpfs",
            "mount-proc",
            "remount-root-rw",
            "unshare-user",
            "unshare-user-root",
            "unshare-mount",
            "unshare-net",
            "unshare-pid",
            "setns",
            "chroot",
        ],
    );
    // clone(2) with each namespace flag, straight to the kernel.
    let flags = [
        ("clone-newuser", 0x1000_0000u64),
        ("clone-newns", 0x0002_0000),
        ("clone-newnet", 0x4000_0000),
        ("clone-newpid", 0x2000_0000),
    ];
    let calls: Vec<(String, String)> = flags
        .iter()
        .map(|(label, flag)| {
            (
                label.to_string(),
                format!("sc(56, {flag} | 17, 0, 0, 0, 0)\nif r == 0: os._exit(0)\nif r > 0: os.waitpid(r, 0)"),
            )
        })
        .collect();
    // `r = <first line>` then the rest of the lines run as statements.
    let calls: Vec<(&str, &str)> = calls
        .iter()
        .map(|(l, c)| (l.as_str(), c.as_str()))
        .collect();
    let out = attempt(&t, &policy, &["python3", "-c", &syscalls_script(&calls)]).await;
    assert_all_refused(
        &out,
        &[
            "clone-newuser",
            "clone-newns",
            "clone-newnet",
            "clone-newpid",
        ],
    );
    assert_still_works(&t, &policy).await;
}

/// A host process to attack, killed when dropped.
struct HostVictim(std::process::Child);

impl HostVictim {
    fn start() -> Self {
        HostVictim(
            std::process::Command::new("sleep")
                .arg("300")
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for HostVictim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn host_processes_cannot_be_seen_killed_or_traced(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mut victim = HostVictim::start();
    let pid = victim.pid();
    let policy = SandboxConfig::default();
    let script = try_sh("kill", &format!("kill -9 {pid}"))
        + &try_sh("see", &format!("test -e /proc/{pid}/cmdline"))
        + &try_sh(
            "see-sleep",
            "cat /proc/[0-9]*/cmdline | tr '\\0' ' ' | grep -q 'sleep[ ]300'",
        )
        + &try_sh("many-pids", "test $(ls -d /proc/[0-9]* | wc -l) -gt 10");
    let out = sh(&t, &policy, &script).await;
    assert_all_refused(&out, &["kill", "see", "see-sleep", "many-pids"]);
    let calls = [
        ("ptrace-attach", format!("sc(101, 16, {pid}, 0, 0)")),
        ("ptrace-seize", format!("sc(101, 0x4206, {pid}, 0, 0)")),
        ("ptrace-traceme", "sc(101, 0, 0, 0, 0)".to_owned()),
        ("process-vm-readv", format!("sc(310, {pid}, 0, 0, 0, 0, 0)")),
    ];
    let calls: Vec<(&str, &str)> = calls.iter().map(|(l, c)| (*l, c.as_str())).collect();
    let out = attempt(&t, &policy, &["python3", "-c", &syscalls_script(&calls)]).await;
    assert_all_refused(
        &out,
        &[
            "ptrace-attach",
            "ptrace-seize",
            "ptrace-traceme",
            "process-vm-readv",
        ],
    );
    assert!(victim.alive(), "the host process was killed");
    assert_still_works(&t, &policy).await;
}

/// A TCP server on the host's loopback that counts connections.
async fn loopback_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"hello from the host\n").await;
        }
    });
    (port, count)
}

fn connect_script(port: u16) -> String {
    format!(
        "import socket\n\
         try:\n\
         \x20   s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n\
         \x20   print('connect ok', s.recv(100))\n\
         except OSError as e:\n\
         \x20   print('connect refused', e)\n"
    )
}

async fn network_none_cannot_reach_the_host_loopback_and_host_can(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (port, count) = loopback_server().await;
    let none = SandboxConfig::default();
    let out = attempt(&t, &none, &["python3", "-c", &connect_script(port)]).await;
    assert_all_refused(&out, &["connect"]);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_still_works(&t, &none).await;

    let host = SandboxConfig {
        network: Network::Host,
        ..SandboxConfig::default()
    };
    let out = attempt(&t, &host, &["python3", "-c", &connect_script(port)]).await;
    assert!(
        out.stdout.contains("connect ok") && out.stdout.contains("hello from the host"),
        "{} / {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

async fn raw_and_packet_sockets_are_refused(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    for network in [Network::None, Network::Host] {
        let policy = SandboxConfig {
            network,
            ..SandboxConfig::default()
        };
        let script = "import socket\n\
            for label, args in [('raw-icmp', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),\n\
            \x20                   ('raw-tcp', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)),\n\
            \x20                   ('packet', (socket.AF_PACKET, socket.SOCK_RAW, 0))]:\n\
            \x20   try:\n\
            \x20       socket.socket(*args).close()\n\
            \x20       print(label, 'ok')\n\
            \x20   except OSError as e:\n\
            \x20       print(label, 'refused', e)\n";
        let out = attempt(&t, &policy, &["python3", "-c", script]).await;
        assert_all_refused(&out, &["raw-icmp", "raw-tcp", "packet"]);
        assert_still_works(&t, &policy).await;
    }
}

async fn proc_and_sys_writes_fail(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig::default();
    // 'h' only prints the SysRq help, were the write to get through.
    let script = try_sh("sysrq", "sh -c 'echo h > /proc/sysrq-trigger'")
        + &try_sh("drop-caches", "sh -c 'echo 1 > /proc/sys/vm/drop_caches'")
        + &try_sh(
            "core-pattern",
            "sh -c 'echo x > /proc/sys/kernel/core_pattern'",
        )
        + &try_sh("sys-kernel", "sh -c 'echo 1 > /sys/kernel/profiling'")
        + &try_sh("kcore", "head -c1 /proc/kcore")
        + &try_sh("kmsg", "head -c1 /proc/kmsg");
    let out = sh(&t, &policy, &script).await;
    assert_all_refused(
        &out,
        &[
            "sysrq",
            "drop-caches",
            "core-pattern",
            "sys-kernel",
            "kcore",
            "kmsg",
        ],
    );
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    assert_ne!(core_pattern.trim(), "x");
    assert_still_works(&t, &policy).await;
}

async fn mknod_fails(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let work = tempfile::tempdir().unwrap();
    let policy = policy_with_workdir(&work);
    let script = try_sh("mknod-mem", "mknod /workspace/mem c 1 1")
        + &try_sh("mknod-disk", "mknod /tmp/sda b 8 0")
        + &try_sh("use-made-disk", "head -c1 /tmp/sda")
        + &try_sh("read-host-disk", "head -c1 /dev/sda")
        + &try_sh("read-dev-mem", "head -c1 /dev/mem");
    let out = sh(&t, &policy, &script).await;
    let mut refused = vec![
        "mknod-mem",
        "use-made-disk",
        "read-host-disk",
        "read-dev-mem",
    ];
    if kind != OciRuntime::Gvisor {
        // gVisor makes the node in its own memory-backed /tmp; it leads nowhere (above).
        refused.push("mknod-disk");
    }
    assert_all_refused(&out, &refused);
    assert!(!work.path().join("mem").exists());
    assert_still_works(&t, &policy).await;
}

async fn modules_keyring_bpf_and_kernel_calls_fail(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig::default();
    let calls = [
        ("init-module", "sc(175, 0, 0, 0)"),
        (
            "finit-module",
            "sc(313, os.open('/dev/null', os.O_RDONLY), 0, 0)",
        ),
        ("delete-module", "sc(176, 0, 0)"),
        ("kexec-load", "sc(246, 0, 0, 0, 0)"),
        // KEYCTL_JOIN_SESSION_KEYRING(NULL): works unprivileged without the profile.
        ("keyctl", "sc(250, 1, 0)"),
        ("add-key", "sc(248, 0, 0, 0, 0, 0)"),
        ("request-key", "sc(249, 0, 0, 0, 0)"),
        ("bpf", "sc(321, 0, 0, 0)"),
        ("perf-event-open", "sc(298, 0, 0, -1, -1, 0)"),
        ("userfaultfd", "sc(323, 0)"),
        ("open-by-handle-at", "sc(304, 0, 0, 0)"),
        // Wrong magic numbers: EINVAL if the call got through, so harmless either way.
        ("reboot", "sc(169, 0, 0, 0, 0)"),
        ("swapon", "sc(167, 0, 0)"),
        ("syslog", "sc(103, 3, 0, 0)"),
        ("acct", "sc(163, 0)"),
        ("settimeofday", "sc(164, 0, 0)"),
    ];
    let out = attempt(&t, &policy, &["python3", "-c", &syscalls_script(&calls)]).await;
    let labels: Vec<&str> = calls.iter().map(|(l, _)| *l).collect();
    assert_all_refused(&out, &labels);
    if kind != OciRuntime::Gvisor {
        // On the host kernel the profile answers: EPERM, not the ENOSYS/EINVAL/EFAULT that
        // the calls' own checks would give.
        for line in out.stdout.lines() {
            assert!(line.contains("Operation not permitted"), "{line}");
        }
    }
    assert_still_works(&t, &policy).await;
}

async fn a_fork_bomb_is_contained_and_the_host_stays_responsive(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        pids_limit: Some(64),
        timeout: Some(Duration::from_secs(6)),
        ..SandboxConfig::default()
    };
    // Every process forks forever, shrugging off failed forks (a shell would give up).
    let config = t.config_with(
        &policy,
        "python3",
        &[
            "-c",
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        ],
    );
    let mut bomb = t.sandbox.spawn(&config).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The pids cgroup holds it at its limit (gVisor: the limit plus the Sentry's allowance, 512).
    let pids = std::path::Path::new("/sys/fs/cgroup/pids/oci-sandbox")
        .join(bomb.id())
        .join("pids.current");
    match std::fs::read_to_string(&pids) {
        Ok(current) => {
            let current: u32 = current.trim().parse().unwrap();
            let allowed = if kind == OciRuntime::Gvisor {
                64 + 512
            } else {
                64
            };
            assert!(current <= allowed, "{current} pids in the bomb's cgroup");
        }
        // gVisor's Sentry gives up when it cannot make the host threads it needs: the whole
        // sandbox ends, which contains the bomb as well.
        Err(_) if kind == OciRuntime::Gvisor => {
            assert!(bomb.try_wait().unwrap().is_some(), "no cgroup, yet running");
        }
        Err(e) => panic!("{}: {e}", pids.display()),
    }
    // While it runs, the host forks and execs at normal speed.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let status = tokio::process::Command::new("true").status().await.unwrap();
        assert!(status.success());
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a host fork+exec took {slowest:?} during the bomb"
    );
    let status = tokio::time::timeout(Duration::from_secs(20), bomb.wait())
        .await
        .expect("the bomb outlived its timeout")
        .unwrap();
    if kind == OciRuntime::Gvisor {
        assert!(status.timed_out() || !status.success(), "{status}");
    } else {
        assert!(status.timed_out(), "{status}");
    }
    let policy = SandboxConfig {
        pids_limit: Some(64),
        ..SandboxConfig::default()
    };
    assert_still_works(&t, &policy).await;
    t.assert_nothing_left(&[bomb.id()], None).await;
}

async fn a_memory_hog_is_oom_killed_and_reported(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        memory_limit: Some(96 * 1024 * 1024),
        ..SandboxConfig::default()
    };
    let out = attempt(
        &t,
        &policy,
        &[
            "python3",
            "-c",
            "x = bytearray(1024 * 1024 * 1024)\nprint('hog ok', flush=True)",
        ],
    )
    .await;
    assert!(!out.stdout.contains("hog ok"), "{}", out.stdout);
    assert!(out.status.oom_killed(), "{} / {}", out.status, out.stderr);
    assert!(!out.status.success());
    assert_still_works(&t, &policy).await;
}

async fn a_cpu_hog_gets_its_quota_only(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    // A tenth of a core, for a sandbox whose command spins for 1.5 s of wall-clock time. The
    // check is what the sandbox's cgroup charged it for its whole life (on gVisor the Sentry
    // that runs the guest included): the quota caps it whatever else loads the machine, where
    // a comparison with an unlimited run (as this test once made) fails when the machine is
    // so loaded that the unlimited run itself gets little more than a tenth of a core.
    let tenth = SandboxConfig {
        cpu_millicores: Some(100),
        ..SandboxConfig::default()
    };
    let spin =
        "import time\nt = time.time()\nn = 0\nwhile time.time() - t < 1.5:\n    n += 1\nprint(n)";
    let born = std::time::Instant::now();
    let config = oci_sandbox::NamespaceContainer::build_config(&tenth, "true", vec![]);
    let sandbox = t.sandbox.start(&config).await.unwrap();
    let out = sandbox
        .exec(&oci_sandbox::ExecConfig::new("python3", ["-c", spin]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.status);
    let turns: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(turns > 0);
    let used = sandbox
        .usage()
        .await
        .expect("cgroup usage")
        .cpu
        .expect("CPU time");
    let lived = born.elapsed();
    sandbox.close().await;
    // A tenth of its life, plus a period's burst and rounding.
    let allowed = lived.mul_f64(0.1) + std::time::Duration::from_millis(150);
    assert!(
        used <= allowed,
        "a 100 millicore sandbox used {used:?} of CPU in {lived:?} (allowed {allowed:?})"
    );
    assert_still_works(&t, &tenth).await;
}

async fn a_yes_flood_is_capped(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        output_limit: Some(1024 * 1024),
        ..SandboxConfig::default()
    };
    let capture = t
        .sandbox
        .spawn_captured(&t.config_with(&policy, "yes", &[]), OutputMode::Separate)
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), capture.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.output_limit_exceeded(), "{status}");
    assert_eq!(
        capture.output.read_stdout().await.unwrap().len(),
        1024 * 1024
    );
    assert_still_works(&t, &policy).await;
}

const CANARY: &str = "OSB_ESCAPE_CANARY_SECRET";

async fn host_environment_secrets_do_not_leak(kind: OciRuntime) {
    static SET: std::sync::Once = std::sync::Once::new();
    // SAFETY: set once, before this test reads it; the other tests of this binary do not read
    // the environment concurrently from C code (they only spawn runtimes).
    SET.call_once(|| unsafe { std::env::set_var(CANARY, "hunter2-canary") });
    assert_eq!(std::env::var(CANARY).unwrap(), "hunter2-canary");
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig::default();
    let out = sh(
        &t,
        &policy,
        "env; cat /proc/1/environ /proc/self/environ | tr '\\0' '\\n'",
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!out.stdout.contains("hunter2-canary"), "{}", out.stdout);
    assert!(!out.stdout.contains(CANARY));
    assert!(out.stdout.contains("PATH="));
    assert_still_works(&t, &policy).await;
}

/// As root: the container's root is an unprivileged host uid, seccomp is on, and the
/// workdir stays writable (runc and crun; gVisor's Sentry is the unprivileged layer there).
async fn container_root_is_not_host_root(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let work = tempfile::tempdir().unwrap();
    let policy = policy_with_workdir(&work);
    let out = sh(
        &t,
        &policy,
        "id -u; cat /proc/self/uid_map; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; \
         echo made > /workspace/made; sleep 2 & echo sleeper=$!; wait",
    )
    .await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.starts_with("0\n"), "{}", out.stdout);
    let made = work.path().join("made");
    assert_eq!(std::fs::read_to_string(&made).unwrap(), "made\n");
    if kind == OciRuntime::Gvisor {
        return;
    }
    let map: Vec<u64> = out
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    // Each container maps to a range of its own, at or above the default base.
    let base = map[1];
    assert_eq!(map[0], 0);
    assert_eq!(map[2], u64::from(USERNS_SIZE));
    assert!(base >= u64::from(DEFAULT_USERNS_BASE), "{map:?}");
    assert_eq!(
        (base - u64::from(DEFAULT_USERNS_BASE)) % u64::from(USERNS_SIZE),
        0
    );
    assert!(out.stdout.contains("Seccomp:\t2"), "{}", out.stdout);
    assert!(
        out.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        out.stdout
    );
    // On the host, what the container's root wrote belongs to the unprivileged range.
    assert_eq!(u64::from(std::fs::metadata(&made).unwrap().uid()), base);
    // And a host path the range does not own stays out of reach even when bound read-only.
    let private = tempfile::tempdir().unwrap();
    std::fs::write(private.path().join("f"), "host-only").unwrap();
    std::fs::set_permissions(
        private.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let ro = SandboxConfig {
        readonly_binds: vec![Bind::new(private.path(), "/private")],
        ..SandboxConfig::default()
    };
    let out = sh(&t, &ro, &try_sh("read-private", "cat /private/f")).await;
    assert_all_refused(&out, &["read-private"]);
    assert_still_works(&t, &policy).await;
}

on_every_runtime!(
    reading_etc_shadow_fails,
    host_root_and_home_files_are_invisible,
    writing_to_usr_root_and_outside_the_workdir_fails,
    mount_unshare_setns_and_namespace_clones_fail,
    host_processes_cannot_be_seen_killed_or_traced,
    network_none_cannot_reach_the_host_loopback_and_host_can,
    raw_and_packet_sockets_are_refused,
    proc_and_sys_writes_fail,
    mknod_fails,
    modules_keyring_bpf_and_kernel_calls_fail,
    a_fork_bomb_is_contained_and_the_host_stays_responsive,
    a_memory_hog_is_oom_killed_and_reported,
    a_yes_flood_is_capped,
    a_cpu_hog_gets_its_quota_only,
    host_environment_secrets_do_not_leak,
    container_root_is_not_host_root,
);

// The same attacks from warm containers ([`NamespaceContainer::warm`]): each spawn of these
// takes a container started ahead for its spec.
on_every_runtime_warm!(
    reading_etc_shadow_fails,
    host_root_and_home_files_are_invisible,
    writing_to_usr_root_and_outside_the_workdir_fails,
    mount_unshare_setns_and_namespace_clones_fail,
    host_processes_cannot_be_seen_killed_or_traced,
    network_none_cannot_reach_the_host_loopback_and_host_can,
    raw_and_packet_sockets_are_refused,
    proc_and_sys_writes_fail,
    mknod_fails,
    modules_keyring_bpf_and_kernel_calls_fail,
    a_memory_hog_is_oom_killed_and_reported,
    container_root_is_not_host_root,
);
