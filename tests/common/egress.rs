//! Helpers of the egress tests: a plain HTTP upstream that answers every request and records
//! its head, a policy's config, and the draining of a sandbox's decisions.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::BTreeMap;

use futures::StreamExt;
use oci_sandbox::{
    EgressEvent, EgressEvents, EgressPolicy, ExecConfig, Network, Sandbox, SandboxConfig,
};

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

/// Runs a Python program in a new exec of `sandbox`; returns its stdout and stderr.
pub async fn python(sandbox: &Sandbox, program: &str) -> String {
    with_interpreter(sandbox, "python3", program).await
}

/// Runs `<interpreter> -c <script>` in a new exec of `sandbox`; returns its stdout and stderr.
pub async fn with_interpreter(sandbox: &Sandbox, interpreter: &str, script: &str) -> String {
    let out = sandbox
        .exec(&ExecConfig::new(
            interpreter,
            vec!["-c".to_owned(), script.to_owned()],
        ))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    format!("{}{}", out.stdout_str(), out.stderr_str())
}

/// `bytes` as a Python expression, long runs of one byte written as a repetition (an
/// argument may not exceed 128 KiB).
pub fn py_bytes(bytes: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|b| **b == bytes[i]).count();
        if run >= 64 {
            parts.push(format!("bytes([{}])*{run}", bytes[i]));
            i += run;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i..].iter().take_while(|b| **b == bytes[i]).count() < 64 {
            i += 1;
        }
        let hex: String = bytes[start..i].iter().map(|b| format!("{b:02x}")).collect();
        parts.push(format!("bytes.fromhex('{hex}')"));
    }
    if parts.is_empty() {
        "b''".to_owned()
    } else {
        parts.join(" + ")
    }
}

/// Sends each raw request to the forwarder (`127.0.0.1:3128`) from inside the sandbox, one
/// connection each, and returns label -> the first line of the answer (`closed` when none).
pub async fn raw(sandbox: &Sandbox, cases: &[(&str, Vec<u8>)]) -> BTreeMap<String, String> {
    let mut program = String::from(
        "import socket\n\
         cases = [\n",
    );
    for (label, bytes) in cases {
        program.push_str(&format!("    ({label:?}, {}),\n", py_bytes(bytes)));
    }
    program.push_str(
        "]\n\
         for label, h in cases:\n\
         \x20   data = b''\n\
         \x20   try:\n\
         \x20       s = socket.create_connection(('127.0.0.1', 3128), timeout=20)\n\
         \x20       s.sendall(h)\n\
         \x20       while b'\\r\\n' not in data:\n\
         \x20           c = s.recv(4096)\n\
         \x20           if not c:\n\
         \x20               break\n\
         \x20           data += c\n\
         \x20       s.close()\n\
         \x20   except Exception as e:\n\
         \x20       data = ('error ' + type(e).__name__).encode()\n\
         \x20   line = data.split(b'\\r\\n')[0].decode(errors='replace') or 'closed'\n\
         \x20   print(label + ': ' + line, flush=True)\n",
    );
    let out = python(sandbox, &program).await;
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// An upstream that records every byte each connection sends (not only a first head, so that
/// a request smuggled behind another shows) and answers once the client has
/// been quiet for 300 ms: a `TRACE` with the request it got as the body (RFC 9110 9.3.8, as
/// Apache does by default), anything else with `ok`.
pub struct Recorder {
    pub port: u16,
    got: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let recorded = got.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut all = Vec::new();
                    let mut buf = [0u8; 8192];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await
                    {
                        if n == 0 {
                            break;
                        }
                        all.extend_from_slice(&buf[..n]);
                    }
                    let body = if all.starts_with(b"TRACE ") {
                        all.clone()
                    } else {
                        b"ok\n".to_vec()
                    };
                    recorded
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&all).into_owned());
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Recorder { port, got, task }
    }

    /// What each connection sent.
    pub fn connections(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// Everything each connection sent, connections apart.
    pub fn all(&self) -> String {
        self.got.lock().unwrap().join("\n----\n")
    }
}
