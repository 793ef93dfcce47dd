//! The egress proxy attacked after its hardening (issue 37): a credential reflected by TRACE,
//! chunk framing that a strict upstream reads otherwise (a request hidden in chunk data), and
//! a chunked HTTP/1.0 request. (A head trickled a byte at a time, parsed afresh on every
//! read, is attacked in `src/net/proxy.rs`'s unit tests: through the forwarder the reads
//! batch, and the quadratic cost shows at the parsing level.) A failure's message starts with
//! BREAK.

mod common;

use common::TestSandbox;
use common::egress::{LOOPBACK, Recorder, drain, egress, py_bytes, python, raw};
use oci_sandbox::{EgressDecision, EgressPolicy, OciRuntime};

const SECRET: &str = "osb-secret-9c41";

/// Sends `request` to the forwarder from inside the sandbox and returns the whole answer.
async fn exchange(sandbox: &oci_sandbox::Sandbox, request: &[u8]) -> String {
    let program = format!(
        "import socket, sys\n\
         s = socket.create_connection(('127.0.0.1', 3128), timeout=20)\n\
         s.sendall({})\n\
         data = b''\n\
         while True:\n\
         \x20   c = s.recv(65536)\n\
         \x20   if not c:\n\
         \x20       break\n\
         \x20   data += c\n\
         sys.stdout.write(data.decode(errors='replace'))\n",
        py_bytes(request)
    );
    python(sandbox, &program).await
}

/// `TRACE http://api.test/` where the policy injects `Authorization` for api.test: the
/// upstream reflects the request it got, and the sandbox would read the credential in the
/// answer's body. Refused with 403 and an event; a GET still carries the credential, and a
/// TRACE to a host without one still goes.
async fn a_trace_never_reflects_an_injected_credential(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let up = Recorder::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("api.test")
        .allow_domain("plain.test")
        .resolve("api.test", &[LOOPBACK])
        .resolve("plain.test", &[LOOPBACK])
        .inject_header_ports(
            "api.test",
            &[p],
            "Authorization",
            format!("Bearer {SECRET}"),
        );
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let mut events = sandbox.egress_events();
    let mut leaked = Vec::new();
    let mut answers = Vec::new();
    for method in ["TRACE", "TRACK"] {
        let answer = exchange(
            &sandbox,
            format!("{method} http://api.test:{p}/ HTTP/1.1\r\nAuthorization: placeholder\r\n\r\n")
                .as_bytes(),
        )
        .await;
        if answer.contains(SECRET) {
            leaked.push(format!("{method}:\n{answer}"));
        }
        answers.push((method, answer));
    }
    assert!(
        leaked.is_empty(),
        "BREAK: the sandbox read its injected credential in a reflected TRACE:\n{}",
        leaked.join("\n")
    );
    for (method, answer) in &answers {
        assert!(
            answer.starts_with("HTTP/1.1 403 "),
            "{method} not refused: {answer}"
        );
    }
    let seen = drain(&mut events, 2).await;
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(
        seen.iter()
            .all(|e| matches!(&e.decision, EgressDecision::Denied { reason } if reason.contains("reflect"))),
        "{seen:#?}"
    );
    // Legit use goes on: a GET carries the credential, a TRACE without one is reflected.
    let get = exchange(
        &sandbox,
        format!("GET http://api.test:{p}/ HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(get.starts_with("HTTP/1.1 200 "), "{get}");
    let trace = exchange(
        &sandbox,
        format!("TRACE http://plain.test:{p}/ HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        trace.contains("TRACE / HTTP/1.1") && !trace.contains(SECRET),
        "{trace}"
    );
    let all = up.all();
    assert!(
        all.contains(&format!("Authorization: Bearer {SECRET}")),
        "the GET got its credential:\n{all}"
    );
    assert!(
        !up.connections()
            .iter()
            .any(|c| c.starts_with("TRACE") && c.contains("Host: api.test")),
        "a TRACE to api.test reached the upstream:\n{all}"
    );
    sandbox.close().await;
}

/// Chunk framing a strict upstream reads otherwise than a lenient proxy: the proxy took a bare
/// LF for a line's end, so a request hidden in what it took for a 69-byte chunk reached the
/// upstream, which (ending lines at CRLF only) reads it as the connection's next request. And
/// a chunked HTTP/1.0 request, whose chunks an HTTP/1.0 upstream takes for its next request.
/// None of the hidden request's bytes may reach the upstream.
async fn chunk_framing_tricks_never_reach_the_upstream(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let up = Recorder::start().await;
    let p = up.port;
    let policy = EgressPolicy::new()
        .allow_domain("api.test")
        .resolve("api.test", &[LOOPBACK]);
    let sandbox = t.start_sandbox(&egress(policy)).await;
    let hidden = "GET /admin HTTP/1.1\r\nHost: internal.test\r\n\r\n";
    let pad = "y".repeat(69 - 5 - hidden.len());
    let head = |path: &str, version: &str| {
        format!(
            "POST http://api.test:{p}/{path} HTTP/{version}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "term-ext",
            format!(
                "{}2;\nxx\r\n45\r\n0\r\n\r\n{hidden}{pad}\r\n0\r\n\r\n",
                head("ext", "1.1")
            )
            .into_bytes(),
        ),
        (
            "bare-lf",
            format!(
                "{}45\n0\r\n\r\n{hidden}{pad}\r\n0\r\n\r\n",
                head("lf", "1.1")
            )
            .into_bytes(),
        ),
        (
            "http-1.0",
            format!(
                "{}{:x}\r\n{hidden}\r\n0\r\n\r\n",
                head("one-oh", "1.0"),
                hidden.len()
            )
            .into_bytes(),
        ),
        (
            "legit",
            format!("{}5\r\nhello\r\n0\r\n\r\n", head("legit", "1.1")).into_bytes(),
        ),
    ];
    let got = raw(&sandbox, &cases).await;
    assert!(got["legit"].contains(" 200 "), "{got:?}");
    let all = up.all();
    assert!(
        !all.contains("internal.test"),
        "BREAK: a request hidden in chunk framing reached the upstream ({got:?}):\n{all}"
    );
    assert!(got["http-1.0"].contains(" 400 "), "{got:?}");
    assert!(all.contains("hello"), "{all}");
    sandbox.close().await;
}

on_every_runtime!(
    a_trace_never_reflects_an_injected_credential,
    chunk_framing_tricks_never_reach_the_upstream,
);
