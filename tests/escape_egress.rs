//! The egress proxy attacked again (issue 37), on every runtime: a credential steered to the
//! sandbox's own exposed port, requests smuggled behind the first one (pipelining, conflicting
//! framing), authorities written oddly, refusals without events, and events that a sandbox
//! makes large while a subscriber never reads. A failure's message starts with BREAK.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestSandbox;
use common::egress::{LOOPBACK, Recorder, drain, egress, python, raw};
use oci_sandbox::{EgressDecision, EgressPolicy, ExecConfig, OciRuntime, OutputMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "osb-secret-7f3a";

/// The sandbox's own server behind `expose`, reached through the proxy under a rule for every
/// port, with a credential injected on that very port: refused (it lands on a listener of
/// this library's), the server never sees the request, the event says why.
async fn the_credential_never_reaches_an_exposed_port(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let base = EgressPolicy::new()
        .allow_domain("api.test")
        .resolve("api.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(base.clone())).await;
    let server = "import socket\n\
        s = socket.socket()\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('127.0.0.1', 8000))\n\
        s.listen(16)\n\
        while True:\n\
        \x20   c, _ = s.accept()\n\
        \x20   c.settimeout(2)\n\
        \x20   try: data = c.recv(65536)\n\
        \x20   except OSError: data = b''\n\
        \x20   open('/tmp/heard', 'ab').write(data)\n\
        \x20   c.sendall(b'HTTP/1.0 200 OK\\r\\n\\r\\nmine')\n\
        \x20   c.close()\n";
    let _server = sandbox
        .spawn_job(
            &ExecConfig::new("/usr/bin/python3", &["-c", server][..]),
            OutputMode::Combined,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exposed: SocketAddr = sandbox.expose(8000).await.unwrap();
    let port = exposed.port();
    // Reachable from the host, as exposing means.
    let mut direct = tokio::net::TcpStream::connect(exposed).await.unwrap();
    direct.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    direct.read_to_string(&mut answer).await.unwrap();
    assert!(answer.contains("mine"), "{answer}");
    sandbox
        .set_egress(base.inject_header_ports(
            "api.test",
            &[port],
            "Authorization",
            format!("Bearer {SECRET}"),
        ))
        .unwrap();
    let mut events = sandbox.egress_events();
    let got = raw(
        &sandbox,
        &[
            (
                "plain",
                format!("GET http://api.test:{port}/ HTTP/1.1\r\nHost: api.test\r\n\r\n")
                    .into_bytes(),
            ),
            (
                "mapped",
                format!("GET http://[::ffff:127.0.0.1]:{port}/ HTTP/1.1\r\n\r\n").into_bytes(),
            ),
            (
                "tunnel",
                format!("CONNECT api.test:{port} HTTP/1.1\r\n\r\n").into_bytes(),
            ),
        ],
    )
    .await;
    assert!(
        got.values().all(|line| !line.contains(" 200 ")),
        "BREAK: the proxy connected to the sandbox's own exposed port: {got:?}"
    );
    let heard = python(
        &sandbox,
        "import os\nprint(open('/tmp/heard','rb').read() if os.path.exists('/tmp/heard') else b'')",
    )
    .await;
    assert!(
        !heard.contains(SECRET) && !heard.contains("api.test"),
        "BREAK: the sandbox read its injected credential: {heard}"
    );
    let seen = drain(&mut events, 3).await;
    let named: Vec<_> = seen
        .iter()
        .filter(|e| matches!(&e.decision, EgressDecision::Failed { error, .. } if error.contains("exposed port")))
        .collect();
    assert_eq!(named.len(), 2, "{seen:#?}");
    sandbox.close().await;
}

/// Bytes after the first request never reach the upstream as a request: a pipelined one, one
/// behind a `Content-Length` body, one behind a chunked body; conflicting or unknown framing
/// is refused; the authority goes out normalised, a signed port is refused.
async fn nothing_is_smuggled_behind_a_request(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let up = Recorder::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("api.test")
        .resolve("api.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let smuggled = "GET /two HTTP/1.1\r\nHost: internal-admin.test\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "pipelined",
            format!("GET http://api.test:{p}/one HTTP/1.1\r\nHost: api.test\r\n\r\n{smuggled}"),
        ),
        (
            "length",
            format!(
                "POST http://api.test:{p}/len HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello{smuggled}"
            ),
        ),
        (
            "chunked",
            format!(
                "POST http://api.test:{p}/chunk HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "cl-te",
            format!(
                "POST http://api.test:{p}/clte HTTP/1.1\r\nContent-Length: 4\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "two-lengths",
            format!(
                "POST http://api.test:{p}/cl2 HTTP/1.1\r\nContent-Length: 3\r\n\
                 Content-Length: 40\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "te-gzip",
            format!(
                "POST http://api.test:{p}/gz HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "upper-dot",
            format!("GET http://API.TEST.:{p}/upper HTTP/1.1\r\n\r\n"),
        ),
        (
            "signed-port",
            format!("GET http://api.test:+{p}/signed HTTP/1.1\r\n\r\n"),
        ),
    ];
    let cases: Vec<(&str, Vec<u8>)> = cases
        .into_iter()
        .map(|(label, text)| (label, text.into_bytes()))
        .collect();
    let got = raw(&sandbox, &cases).await;
    for ok in ["pipelined", "length", "chunked", "upper-dot"] {
        assert!(got[ok].contains(" 200 "), "{ok}: {got:?}");
    }
    for refused in ["cl-te", "two-lengths", "te-gzip", "signed-port"] {
        assert!(got[refused].contains(" 400 "), "{refused}: {got:?}");
    }
    let all = up.all();
    assert!(
        !all.contains("internal-admin") && !all.contains("/two"),
        "BREAK: a request was smuggled to the upstream:\n{all}"
    );
    assert!(all.contains("hello"), "the bodies went through:\n{all}");
    assert!(
        all.contains(&format!("Host: api.test:{p}\r\n")) && !all.contains("API.TEST"),
        "the authority went out as written:\n{all}"
    );
    assert!(!all.contains("/signed") && !all.contains("/clte"), "{all}");
    sandbox.close().await;
}

/// Every refusal is an event (those answered 400 too), and events stay small whatever the
/// sandbox sends: 1100 denials with 60 KiB methods while a subscriber never reads.
async fn refusals_are_events_and_events_stay_small(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&egress(EgressPolicy::new())).await;
    let mut events = sandbox.egress_events();
    let _never_read = sandbox.egress_events();
    let too_many: String = (0..130).map(|i| format!("X-H{i}: v\r\n")).collect();
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("userinfo", b"GET http://u:p@api.test/ HTTP/1.1\r\n\r\n".to_vec()),
        (
            "two-hosts",
            b"GET http://api.test/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
        ),
        ("zone", b"GET http://[fe80::1%25eth0]/ HTTP/1.1\r\n\r\n".to_vec()),
        (
            "many-headers",
            format!("GET http://api.test/ HTTP/1.1\r\n{too_many}\r\n").into_bytes(),
        ),
        ("garbage", b"\x01\x02 not http\r\n\r\n".to_vec()),
        ("origin-form", b"GET /relative HTTP/1.1\r\n\r\n".to_vec()),
        (
            "cl-te",
            b"POST http://api.test/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
        ),
        ("signed-port", b"GET http://api.test:+80/ HTTP/1.1\r\n\r\n".to_vec()),
    ];
    let got = raw(&sandbox, &malformed).await;
    assert!(
        got.values().all(|l| l.contains(" 400 ")),
        "not all refused with 400: {got:?}"
    );
    let seen = drain(&mut events, 8).await;
    assert_eq!(
        seen.len(),
        8,
        "BREAK: requests answered 400 left no event: {seen:#?}"
    );
    assert!(seen.iter().all(|e| !e.decision.is_allowed()));
    // 1100 denials of 60 KiB methods, from one connection after another.
    let flood = "import socket\n\
        m = b'A' * 61440\n\
        for i in range(1100):\n\
        \x20   s = socket.create_connection(('127.0.0.1', 3128))\n\
        \x20   s.sendall(m + b' http://denied.test/ HTTP/1.1\\r\\n\\r\\n')\n\
        \x20   s.recv(100)\n\
        \x20   s.close()\n\
        print('done')\n";
    let reader = tokio::spawn(async move {
        let mut longest = 0;
        let mut n = 0;
        while n < 1100 {
            match tokio::time::timeout(
                Duration::from_secs(30),
                futures::StreamExt::next(&mut events),
            )
            .await
            {
                Ok(Some(e)) => {
                    longest = longest.max(e.method.len());
                    n += 1;
                }
                _ => break,
            }
        }
        (n, longest)
    });
    assert_eq!(python(&sandbox, flood).await.trim(), "done");
    let (n, longest) = reader.await.unwrap();
    assert!(n >= 1024, "only {n} events");
    assert!(
        longest <= oci_sandbox::EVENT_METHOD_MAX,
        "BREAK: an event's method of {longest} bytes"
    );
    sandbox.close().await;
}

on_every_runtime!(
    the_credential_never_reaches_an_exposed_port,
    nothing_is_smuggled_behind_a_request,
    refusals_are_events_and_events_stay_small,
);
