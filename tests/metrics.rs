//! `Sandbox::metrics` on every runtime: the figures of a sandbox's cgroups and the library's
//! counters over time, a CPU burner's share rising, limits as configured, the stream's end
//! with the sandbox, and bad input.

mod common;
#[path = "metrics/prometheus.rs"]
mod prometheus;

use std::time::Duration;

use common::TestSandbox;
use common::egress::{LOOPBACK, Upstream, egress, python};
use futures::StreamExt;
use oci_sandbox::{
    EgressPolicy, ExecConfig, OciRuntime, SandboxConfig, SandboxError, SandboxMetrics, SandboxState,
};

fn limited() -> SandboxConfig {
    SandboxConfig {
        memory_limit: Some(256 << 20),
        pids_limit: Some(200),
        cpu_millicores: Some(500),
        ..SandboxConfig::default()
    }
}

/// The first reading has the sandbox's limits; a CPU burner's share of its half core rises
/// near 1; commands started and running are counted; the stream ends with the sandbox.
async fn figures_follow_the_sandbox(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&limited()).await;
    let mut figures = Box::pin(sandbox.metrics(Duration::from_millis(250)).unwrap());
    let first = figures.next().await.expect("a first reading");
    assert_eq!(first.state, SandboxState::Running);
    assert!(first.cpu.is_some(), "{first:?}");
    assert!(first.memory_bytes.is_some_and(|m| m > 0), "{first:?}");
    assert_eq!(first.memory_limit_bytes, Some(256 << 20), "{first:?}");
    assert_eq!(first.cpu_limit_cores, Some(0.5), "{first:?}");
    assert_eq!(first.cpu_share, None);
    let burner = sandbox
        .exec(&ExecConfig::shell("while :; do :; done"))
        .await
        .unwrap();
    let mut busiest = 0.0f64;
    for _ in 0..8 {
        let m = figures.next().await.expect("a reading");
        assert_eq!(m.execs_running, 1, "{m:?}");
        assert!(m.execs_started >= 1);
        busiest = busiest.max(m.cpu_share.unwrap_or(0.0));
    }
    assert!(
        busiest > 0.6,
        "a spinning loop used {busiest} of its half core"
    );
    drop(burner);
    sandbox.close().await;
    let end = tokio::time::timeout(Duration::from_secs(5), figures.next()).await;
    assert!(matches!(end, Ok(None)), "the stream goes on after close");
    t.assert_nothing_left(&[], None).await;
}

/// Paused, the state says so and the CPU time stands still.
async fn a_paused_sandbox_reads_paused(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let _spinner = sandbox
        .exec(&ExecConfig::shell("while :; do :; done"))
        .await
        .unwrap();
    sandbox.pause().await.unwrap();
    let mut figures = Box::pin(sandbox.metrics(Duration::from_millis(200)).unwrap());
    let a = figures.next().await.unwrap();
    let b = figures.next().await.unwrap();
    assert_eq!(
        (a.state, b.state),
        (SandboxState::Paused, SandboxState::Paused)
    );
    assert_eq!(a.cpu, b.cpu, "a frozen sandbox's CPU time grew");
    sandbox.resume().await.unwrap();
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A zero interval and a closed sandbox are typed errors.
async fn bad_input_is_refused(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    for interval in [Duration::ZERO, Duration::from_secs(86_401), Duration::MAX] {
        let err = sandbox.metrics(interval).err().expect("refused");
        assert!(matches!(err, SandboxError::InvalidConfig { .. }), "{err}");
    }
    sandbox.close().await;
    let err = sandbox
        .metrics(Duration::from_secs(1))
        .err()
        .expect("refused");
    assert!(matches!(err, SandboxError::SandboxClosed { .. }), "{err}");
    t.assert_nothing_left(&[], None).await;
}

/// The stream's first reading.
async fn one_reading(sandbox: &oci_sandbox::Sandbox) -> SandboxMetrics {
    let figures = sandbox.metrics(Duration::from_millis(50)).unwrap();
    Box::pin(figures).next().await.unwrap()
}

/// What the sandbox writes to its workdir counts as its disk; its egress proxy's
/// connections and bytes are counted by decision, and none stays open.
async fn disk_and_egress_are_counted(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let up = Upstream::start().await;
    let workdir = tempfile::Builder::new()
        .prefix("osb-test-metrics-")
        .tempdir()
        .unwrap();
    let policy = EgressPolicy::new()
        .allow_domain("api.test")
        .resolve("api.test", &[LOOPBACK]);
    let config = SandboxConfig {
        workdir: Some(workdir.path().to_path_buf()),
        ..egress(policy)
    };
    let sandbox = t.start_sandbox(&config).await;
    let before = one_reading(&sandbox).await;
    assert_eq!(before.egress.unwrap(), Default::default(), "{before:?}");
    common::sh_in(
        &sandbox,
        "head -c 4194304 /dev/urandom > /workspace/four-mib && sync",
    )
    .await;
    let port = up.port;
    let fetched = python(
        &sandbox,
        &format!(
            "import urllib.request\n\
             print(urllib.request.urlopen('http://api.test:{port}/counted').read().decode())\n\
             try:\n    urllib.request.urlopen('http://denied.test/')\n\
             except Exception as e:\n    print('refused', e)"
        ),
    )
    .await;
    assert!(
        fetched.contains("hello from upstream /counted"),
        "{fetched}"
    );
    assert!(fetched.contains("refused"), "{fetched}");
    // Disk is measured in the background, at most 2 s old while read.
    let mut figures = sandbox.metrics(Duration::from_millis(250)).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let m = figures.next().await.unwrap();
        if m.disk_bytes.unwrap() >= before.disk_bytes.unwrap() + (4 << 20) {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workdir's 4 MiB never showed: {m:?}"
        );
    };
    drop(figures);
    let e = after.egress.unwrap();
    assert_eq!(
        (e.allowed, e.denied, e.failed, e.open),
        (1, 1, 0, 0),
        "{e:?}"
    );
    let reply = "hello from upstream /counted\n".len() as u64;
    assert!(e.bytes_received > reply, "{e:?}");
    assert!(e.bytes_sent > 20, "{e:?}");
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// The attacker owns its workdir: thousands of files make its disk walks long, and the
/// directory holding its 4 MiB, renamed back and forth, makes the walks miss it. Readings stay
/// quick (the walk runs in the background) and the figure never falls below the 4 MiB: a walk
/// that missed something keeps the larger of its figure and the last.
async fn a_sandbox_cannot_stall_or_zero_its_disk_figure(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let workdir = tempfile::Builder::new()
        .prefix("osb-test-metrics-")
        .tempdir()
        .unwrap();
    let config = SandboxConfig {
        workdir: Some(workdir.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let sandbox = t.start_sandbox(&config).await;
    common::sh_in(
        &sandbox,
        "mkdir -p /workspace/d/e && head -c 4194304 /dev/urandom > /workspace/d/big && \
         cd /workspace/d/e && seq 3000 | xargs touch && sync",
    )
    .await;
    let first = one_reading(&sandbox).await;
    assert!(first.disk_bytes.unwrap() >= 4 << 20, "{first:?}");
    let _mover = sandbox
        .exec(&ExecConfig::shell(
            "while :; do mv /workspace/d /workspace/x; mv /workspace/x /workspace/d; done",
        ))
        .await
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut slowest = Duration::ZERO;
    while std::time::Instant::now() < until {
        let asked = std::time::Instant::now();
        let m = t.sandbox.metrics().await;
        slowest = slowest.max(asked.elapsed());
        let disk = m.sandboxes[0].metrics.disk_bytes;
        assert!(disk.is_some_and(|d| d >= 4 << 20), "disk read {disk:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "a reading took {slowest:?}"
    );
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// `NamespaceContainer::metrics`: every open sandbox (not a closed one, not a spawn's
/// container), spawns cold and warm, failures by kind, sandboxes started, teardowns.
async fn the_runtime_reads_its_sandboxes_and_counts(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let a = t.start_sandbox(&limited()).await;
    let b = t.start_sandbox(&SandboxConfig::default()).await;
    let m = t.sandbox.metrics().await;
    let mut ids: Vec<&str> = m.sandboxes.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    let mut both = vec![a.id(), b.id()];
    both.sort();
    assert_eq!(ids, both);
    let of_a = m.sandboxes.iter().find(|s| s.id == a.id()).unwrap();
    assert_eq!(of_a.metrics.memory_limit_bytes, Some(256 << 20));
    assert_eq!(
        (m.sandboxes_started, m.spawns_cold, m.spawns_warm),
        (2, 0, 0)
    );
    b.close().await;
    let cold = t.output(&SandboxConfig::default(), &["true"]).await;
    assert!(cold.status.success());
    let template = t.config("true", &[]);
    t.sandbox.warm(&template, 1).await.unwrap();
    let mut warm = t.sandbox.spawn(&template).await.unwrap();
    assert!(warm.wait().await.unwrap().success());
    let missing = t.sandbox.spawn(&t.config("/no/such/command", &[])).await;
    assert!(matches!(missing, Err(SandboxError::CommandNotFound { .. })));
    t.sandbox.warm(&template, 0).await.unwrap();
    let m = t.sandbox.metrics().await;
    assert_eq!(
        m.sandboxes
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        vec![a.id()],
        "a closed sandbox or a spawn's container is listed"
    );
    assert_eq!((m.spawns_cold, m.spawns_warm), (1, 1), "{m:?}");
    assert_eq!(m.failures.get("command_not_found"), Some(&1), "{m:?}");
    // b, the cold spawn's container and the warm one are gone by now.
    assert!(m.teardowns.count >= 3, "{:?}", m.teardowns);
    assert!(m.teardowns.sum > Duration::ZERO);
    a.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// The cgroup's own figures of container `id`, read here as the library does not: the v1
/// hierarchies if the container has them, else the unified one. (CPU time, memory.)
fn cgroup_figures(id: &str) -> (Duration, u64) {
    let read = |p: String| std::fs::read_to_string(p).ok();
    let v1 = format!("/sys/fs/cgroup/memory/oci-sandbox/{id}");
    if std::path::Path::new(&v1).exists() {
        let ns: u64 = read(format!(
            "/sys/fs/cgroup/cpuacct/oci-sandbox/{id}/cpuacct.usage"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
        let mem = read(format!("{v1}/memory.usage_in_bytes")).unwrap();
        return (Duration::from_nanos(ns), mem.trim().parse().unwrap());
    }
    let base = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|b| format!("{b}/oci-sandbox/{id}"))
        .find(|p| std::path::Path::new(p).join("cpu.stat").exists())
        .expect("a cgroup of the sandbox");
    let stat = read(format!("{base}/cpu.stat")).unwrap();
    let usec: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mem = read(format!("{base}/memory.current")).unwrap();
    (Duration::from_micros(usec), mem.trim().parse().unwrap())
}

/// Under load (a CPU burner and 96 MiB held by Python), each reading of the stream is within
/// 5% of the figures the cgroup's own files give right after it.
async fn figures_track_the_cgroup_within_five_percent(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&limited()).await;
    let _burner = sandbox
        .exec(&ExecConfig::shell("while :; do :; done"))
        .await
        .unwrap();
    let mut holder = sandbox
        .exec(&ExecConfig::new(
            "python3",
            [
                "-c",
                "import sys, time\nheld = bytearray(96 << 20)\nfor i in range(0, len(held), 4096): held[i] = 1\nprint('held', flush=True)\ntime.sleep(600)",
            ],
        ))
        .await
        .unwrap();
    let mut line = String::new();
    let mut out = tokio::io::BufReader::new(holder.stdout.take().unwrap());
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .expect("python holds its memory")
    .unwrap();
    assert_eq!(line.trim(), "held");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut figures = Box::pin(sandbox.metrics(Duration::from_millis(300)).unwrap());
    let mut worst = (0.0f64, 0.0f64);
    for _ in 0..6 {
        let m: SandboxMetrics = figures.next().await.unwrap();
        let (cpu, memory) = cgroup_figures(sandbox.id());
        let cpu_off = 1.0 - m.cpu.unwrap().as_secs_f64() / cpu.as_secs_f64();
        let memory_off = (m.memory_bytes.unwrap() as f64 / memory as f64 - 1.0).abs();
        assert!(
            (0.0..0.05).contains(&cpu_off),
            "CPU {:?} read, {cpu:?} in the cgroup",
            m.cpu
        );
        assert!(
            memory_off < 0.05,
            "memory {:?} read, {memory} in the cgroup",
            m.memory_bytes
        );
        assert!(memory > 96 << 20, "the cgroup holds {memory} bytes");
        worst = (worst.0.max(cpu_off), worst.1.max(memory_off));
    }
    eprintln!(
        "{kind}: worst gap CPU {:.3}%, memory {:.3}%",
        worst.0 * 100.0,
        worst.1 * 100.0
    );
    drop(holder);
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    figures_follow_the_sandbox,
    a_paused_sandbox_reads_paused,
    bad_input_is_refused,
    disk_and_egress_are_counted,
    the_runtime_reads_its_sandboxes_and_counts,
    a_sandbox_cannot_stall_or_zero_its_disk_figure,
    figures_track_the_cgroup_within_five_percent,
);
