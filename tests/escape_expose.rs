//! Exposed ports ([`Sandbox::expose`]) under load that any local user can make: clients that
//! connect and leave while a server in the sandbox holds every slot, and idle clients up to
//! ten times the limit. The host's fds and memory and the sandbox's memory and pids must stay
//! bounded, the sandbox must live, and the rest of the process must go on working. The
//! figures are printed as the table of docs/NETWORK.md ("Exposed ports: measured"). A
//! failure's message starts with BREAK.

mod common;
#[path = "common/snapshots.rs"]
#[allow(dead_code)]
mod snapshot_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestSandbox;
use common::images;
use oci_sandbox::{ExecConfig, Job, OciRuntime, OutputMode, Sandbox, SandboxConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tests of this file run one at a time: they count the process's fds and memory, which
/// a test running beside them (3000 clients) would change.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Connections to one sandbox's exposed ports at once (the documented limit).
const LIMIT: usize = 128;

/// A server that accepts every connection and holds it, never reading or closing.
const HOLDING_SERVER: &str = "import socket\n\
s = socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('127.0.0.1', 8000))\n\
s.listen(4096)\n\
held = []\n\
while True: held.append(s.accept())\n";

/// Open fds of this process.
fn host_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident memory of this process, in MiB.
fn host_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Starts `server` (Python) in `sandbox` on port 8000 and exposes it, once it listens.
async fn serve(sandbox: &Sandbox, server: &[&str]) -> (Job, SocketAddr) {
    let args: Vec<String> = server.iter().map(|a| (*a).to_owned()).collect();
    let job = sandbox
        .spawn_job(
            &ExecConfig::new("/usr/bin/python3", args),
            OutputMode::Combined,
        )
        .await
        .unwrap();
    let addr = sandbox.expose(8000).await.unwrap();
    // Listening once a connection gets through to it (a refused one is closed at once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let probe = "import socket; socket.create_connection(('127.0.0.1', 8000)).close()";
        let ok = sandbox
            .exec(&ExecConfig::new("/usr/bin/python3", &["-c", probe][..]))
            .await
            .unwrap()
            .wait()
            .await
            .unwrap()
            .success();
        if ok {
            return (job, addr);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `n` connections to `addr` at once; those the kernel takes within a second.
async fn connect_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let tries =
        (0..n).map(|_| tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)));
    futures::future::join_all(tries)
        .await
        .into_iter()
        .filter_map(|r| r.ok().and_then(Result::ok))
        .collect()
}

/// A GET of `/` through `addr`: the status line.
async fn get(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("BREAK: the exposed server no longer answers")
        .unwrap();
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// A server in the sandbox holds every slot; then clients connect and leave at once, three
/// thousand of them. Before, each got a task and two fds that waited for a slot until the
/// sandbox closed (3000 clients: 531 -> 3531 host fds), and past `RLIMIT_NOFILE` every other
/// sandbox of the process failed.
async fn leaving_clients_hold_no_host_fds(kind: OciRuntime) {
    let _alone = ALONE.lock().await;
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let other = t.start_sandbox(&SandboxConfig::default()).await;
    let (_job, addr) = serve(&sandbox, &["-c", HOLDING_SERVER]).await;
    let before = host_fds();
    let held = connect_many(addr, LIMIT).await;
    assert_eq!(held.len(), LIMIT);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let holding = host_fds();
    // In batches the kernel's backlog (1024) takes: each connects, then leaves.
    let mut left = 0;
    for _ in 0..3 {
        left += connect_many(addr, 1000).await.len();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = host_fds();
    assert!(
        after <= holding + 8,
        "BREAK: {left} clients that left took the host from {holding} to {after} fds"
    );
    // Two fds per held connection in the library (the client's, the relay's), besides the
    // test's own client sockets.
    assert!(
        holding - before <= LIMIT * 3 + 8,
        "BREAK: {} host fds for {LIMIT} connections",
        holding - before
    );
    // The rest of the process goes on.
    assert_eq!(common::sh_in(&other, "echo fine").await, "fine\n");
    drop(held);
    sandbox.close().await;
    other.close().await;
}

/// A stock `python3 -m http.server` and idle clients from none to ten times the limit: the
/// sandbox lives (before: at 104 idle clients gVisor's was SIGKILLed, 287 MB and 754 pids at
/// 96: a forked helper per connection is an address space with a host stub under gVisor),
/// its memory and pids stay bounded, the host's fds and memory too, and once the idle
/// clients go it serves again.
async fn idle_clients_up_to_ten_times_the_limit(kind: OciRuntime) {
    let _alone = ALONE.lock().await;
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let (_job, addr) = serve(&sandbox, &["-m", "http.server", "8000"]).await;
    assert!(get(addr).await.contains("200"));
    let (fds0, rss0) = (host_fds(), host_rss_mib());
    let mut held: Vec<TcpStream> = Vec::new();
    println!(
        "| runtime | idle clients | held open | host fds (library) | host RSS MiB | sandbox MiB | sandbox pids |"
    );
    for target in [0, 32, 64, LIMIT, 2 * LIMIT, 5 * LIMIT, 10 * LIMIT] {
        let more = target - held.len().min(target);
        held.extend(connect_many(addr, more).await);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let usage = sandbox.usage().await;
        let usage = usage.unwrap_or_else(|| {
            panic!("BREAK: the sandbox died with {target} idle clients on {kind}")
        });
        let library_fds = host_fds().saturating_sub(fds0 + held.len());
        let (mem, pids) = (
            usage.memory_bytes.unwrap_or(0) >> 20,
            usage.pids.unwrap_or(0),
        );
        println!(
            "| {kind} | {target} | {} | {library_fds} | {} | {mem} | {pids} |",
            held.len(),
            host_rss_mib()
        );
        assert!(
            library_fds <= 2 * LIMIT + 16,
            "BREAK: {library_fds} host fds for {target} idle clients"
        );
        assert!(
            mem <= 160,
            "BREAK: the sandbox uses {mem} MiB for {target} idle clients"
        );
        // The server's thread and the helper's relay thread per connection, at most.
        assert!(
            pids <= 2 * LIMIT as u64 + 120,
            "BREAK: the sandbox runs {pids} pids for {target} idle clients"
        );
    }
    assert!(
        host_rss_mib() <= rss0 + 64,
        "BREAK: the host's memory grew from {rss0} to {} MiB",
        host_rss_mib()
    );
    drop(held);
    // The backlog's clients are accepted as slots free up, and end at once (gone).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::time::timeout(Duration::from_secs(5), get(addr))
            .await
            .is_ok_and(|status| status.contains("200"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "BREAK: the exposed server did not serve again after its idle clients left"
        );
    }
    sandbox.close().await;
}

/// An exposed port goes on across a snapshot and a restore (its helper goes with the old
/// container and the next connection starts one in the new), and an idle one does not make
/// the snapshot busy.
async fn an_exposed_port_goes_on_across_a_restore(kind: OciRuntime) {
    let _alone = ALONE.lock().await;
    let t = TestSandbox::new(kind).await;
    let (_dir, image) = snapshot_support::fixture(images::python_layout);
    let sandbox = snapshot_support::start(&t, &image).await;
    let (job, addr) = serve(&sandbox, &["-m", "http.server", "8000"]).await;
    assert!(get(addr).await.contains("200"));
    job.kill().await.ok();
    drop(job);
    let snapshot = sandbox.snapshot().await.unwrap();
    sandbox.restore(&snapshot).await.unwrap();
    let (_job, _) = serve(&sandbox, &["-m", "http.server", "8000"]).await;
    assert!(
        get(addr).await.contains("200"),
        "the old address serves the new container"
    );
    sandbox.close().await;
}

on_every_runtime!(
    leaving_clients_hold_no_host_fds,
    idle_clients_up_to_ten_times_the_limit,
    an_exposed_port_goes_on_across_a_restore,
);
