//! Helpers of the egress tests: a plain HTTP upstream that answers every request and records
//! its head, a policy's config, and the draining of a sandbox's decisions.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use oci_sandbox::{EgressEvent, EgressEvents, EgressPolicy, Network, SandboxConfig};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP server that answers every request with `hello from upstream <path>` and records
/// each request head it got (on 127.0.0.1, or any address with `start_on`).
pub struct Upstream {
    pub port: u16,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0").await
    }

    pub async fn start_on(addr: &str) -> Upstream {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.is_empty() {
                        return;
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
                    recorded.lock().unwrap().push(head);
                    let body = format!("hello from upstream {path}\n");
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Upstream { port, heads, task }
    }

    /// The request heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

/// The host's loopback, where the tests' upstreams listen.
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The default policy with `policy` as its network.
pub fn egress(policy: EgressPolicy) -> SandboxConfig {
    SandboxConfig {
        network: Network::Egress(policy),
        ..SandboxConfig::default()
    }
}

/// The events that arrive within two seconds of the last one (at most `max`).
pub async fn drain(events: &mut EgressEvents, max: usize) -> Vec<EgressEvent> {
    let mut got = Vec::new();
    while got.len() < max {
        match tokio::time::timeout(Duration::from_secs(2), events.next()).await {
            Ok(Some(e)) => got.push(e),
            _ => break,
        }
    }
    got
}
