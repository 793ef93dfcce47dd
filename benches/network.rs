//! Egress (issue 19): throughput through the proxy and the latency it adds per new connection,
//! against a direct connection from a `Network::Host` sandbox to the same upstream, measured
//! in the same run, alternating.
//!
//! The upstream is a server on the host's loopback (this process). The client is Python in
//! the sandbox, which times itself, so that the host's scheduling of the bench does not count:
//! throughput is one `GET` of a large body read into a 1 MiB buffer; latency is the median of
//! sequential connect + `GET` + read-to-end of a 20-byte body.

use criterion::{Criterion, criterion_group, criterion_main};
use oci_sandbox::{EgressPolicy, ExecConfig, NamespaceContainer, Network, Sandbox, SandboxConfig};
use raw_cli::{quick, runtimes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[allow(dead_code)]
#[path = "support/raw_cli.rs"]
mod raw_cli;

/// Serves `GET /big` (`big` bytes of zeros) and anything else as a 20-byte body.
async fn upstream(big: u64) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let is_big =
                    head.starts_with(b"GET /big") || head.windows(5).any(|w| w == b"/big ");
                let len = if is_big { big } else { 20 };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                if s.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 1 << 20];
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n as u64;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// The client: `python3 -c CLIENT mode target_host target_port via_proxy rounds`; prints one
/// number per round (MiB/s for `big`, ms for `small`).
const CLIENT: &str = r#"
import socket, sys, time
mode, host, port, proxy, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
path = "/big" if mode == "big" else "/small"
buf = bytearray(1 << 20)
view = memoryview(buf)
for _ in range(rounds):
    t = time.perf_counter()
    if proxy:
        s = socket.create_connection(("127.0.0.1", 3128))
        s.sendall(f"GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    else:
        s = socket.create_connection((host, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    total = 0
    while True:
        n = s.recv_into(view)
        if n == 0:
            break
        total += n
    s.close()
    took = time.perf_counter() - t
    print(total / took / (1 << 20) if mode == "big" else took * 1e3)
"#;

async fn client(
    sandbox: &Sandbox,
    mode: &str,
    host: &str,
    port: u16,
    proxy: bool,
    n: usize,
) -> Vec<f64> {
    let args: Vec<String> = [
        "-c",
        CLIENT,
        mode,
        host,
        &port.to_string(),
        if proxy { "1" } else { "0" },
        &n.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let out = sandbox
        .exec(&ExecConfig::new("python3", args))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    raw_cli::median(&mut v)
}

fn network_bench(_c: &mut Criterion) {
    let rt = raw_cli::tokio_runtime();
    rt.block_on(async {
        let big: u64 = if quick() { 16 << 20 } else { 512 << 20 };
        let port = upstream(big).await;
        let (pairs, latency_rounds) = if quick() { (1, 20) } else { (5, 300) };
        for kind in runtimes() {
            let state = tempfile::Builder::new()
                .prefix("osb-net-bench-")
                .tempdir_in("/tmp")
                .unwrap();
            let runtime = NamespaceContainer::builder()
                .runtime(kind)
                .state_dir(state.path())
                .build()
                .await
                .unwrap();
            let policy = EgressPolicy::new()
                .allow_domain("up.bench")
                .resolve("up.bench", &["127.0.0.1".parse().unwrap()]);
            let start = |network: Network| {
                let runtime = runtime.clone();
                async move {
                    let config = NamespaceContainer::build_config(
                        &SandboxConfig {
                            network,
                            memory_limit: None,
                            ..SandboxConfig::default()
                        },
                        "true",
                        vec![],
                    );
                    runtime.start(&config).await.unwrap()
                }
            };
            let proxied = start(Network::Egress(policy)).await;
            let direct = start(Network::Host).await;
            let (mut through, mut straight) = (Vec::new(), Vec::new());
            for _ in 0..pairs {
                through.extend(client(&proxied, "big", "up.bench", port, true, 1).await);
                straight.extend(client(&direct, "big", "127.0.0.1", port, false, 1).await);
            }
            let (t, s) = (median(through), median(straight));
            println!(
                "{kind} egress throughput ({} MiB from loopback): through the proxy {t:.0} MiB/s, \
                 direct on Network::Host {s:.0} MiB/s, ratio {:.2}",
                big >> 20,
                t / s
            );
            // Latency: alternate blocks of rounds so that drift hits both alike.
            let (mut through, mut straight) = (Vec::new(), Vec::new());
            for _ in 0..4 {
                through.extend(client(&proxied, "small", "up.bench", port, true, latency_rounds / 4).await);
                straight.extend(client(&direct, "small", "127.0.0.1", port, false, latency_rounds / 4).await);
            }
            let (n, t, s) = (through.len(), median(through), median(straight));
            println!(
                "{kind} egress new-connection latency (median of {n}): through the proxy {t:.3} ms, \
                 direct on Network::Host {s:.3} ms, added {:.3} ms",
                t - s
            );
            proxied.close().await;
            direct.close().await;
            runtime.close().await;
            raw_cli::unmount_crun_ns(state.path());
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = network_bench
}
criterion_main!(benches);
