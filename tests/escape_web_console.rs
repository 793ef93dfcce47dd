//! Attacks on `examples/web_console`'s server, run as the real binary (its own runc sandbox)
//! and driven over raw HTTP, websockets and (for the page) headless Chromium.
//!
//! Each test asserts that a documented bound holds: another site's page cannot drive the
//! sandbox, `/assets` serves its three files only, bad input is refused without a panic or
//! growth, at most 32 commands run at once, a client that does not read is dropped, the
//! terminal's shell ends 30 s after its last client, and commands and their output are text in
//! the page, never HTML.
//!
//! Needs what `tests/web_console.rs` needs: the examples built (`cargo build --examples`) and
//! `make web-assets`.

mod common;
#[path = "common/web.rs"]
mod web;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::Locator;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use web::{Console, Driver};

/// One HTTP/1.1 exchange on a fresh connection: `head` (request line and headers, without the
/// final blank line; `Connection: close` is added) then `body`. Returns the status and the
/// whole answer.
async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    // The server may answer (and close) before the body is all sent.
    let _ = tcp.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    (status, answer)
}

/// `POST /api/commands` of `command` with `host` as the Host header and `origin`, if any.
async fn post_command(
    addr: SocketAddr,
    host: &str,
    origin: Option<&str>,
    command: &str,
) -> (u16, String) {
    let body = serde_json::json!({ "command": command }).to_string();
    let origin = origin
        .map(|o| format!("\r\nOrigin: {o}"))
        .unwrap_or_default();
    http(
        addr,
        &format!(
            "POST /api/commands HTTP/1.1\r\nHost: {host}{origin}\r\n\
             Content-Type: application/json\r\nContent-Length: {}",
            body.len()
        ),
        body.as_bytes(),
    )
    .await
}

/// The JSON body of an answer.
fn json_body(answer: &str) -> serde_json::Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// `GET /api/commands`, as the page does.
async fn commands(addr: SocketAddr) -> Vec<serde_json::Value> {
    let (status, answer) = http(
        addr,
        &format!("GET /api/commands HTTP/1.1\r\nHost: {addr}"),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    json_body(&answer).as_array().unwrap().clone()
}

/// Runs `command` (from the console's own origin) and waits for it to finish; its number.
async fn run_to_end(addr: SocketAddr, command: &str) -> u64 {
    let (status, answer) = post_command(addr, &addr.to_string(), None, command).await;
    assert_eq!(status, 200, "{answer}");
    let n = json_body(&answer)["n"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = commands(addr).await;
        // Old finished commands leave the list: look it up by its number.
        let state = list
            .iter()
            .find(|c| c["n"] == n)
            .map(|c| c["state"].clone());
        if state.is_none_or(|s| s == "finished") {
            return n;
        }
        assert!(Instant::now() < deadline, "command {n} never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A websocket handshake for `path` on the console at `addr`, sent with `host` as the Host
/// header (as a browser does for the page's host name) and `origin`, if any.
async fn ws_as(
    addr: SocketAddr,
    host: &str,
    path: &str,
    origin: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{host}{path}").into_client_request().unwrap();
    if let Some(o) = origin {
        request.headers_mut().insert("origin", o.parse().unwrap());
    }
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_tungstenite::client_async(request, tcp)
        .await
        .map(|(s, _)| s)
}

/// Whether a websocket handshake was refused with 403.
fn refused_403(
    what: &str,
    outcome: Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error>,
) {
    match outcome {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403, "{what}")
        }
        Err(e) => panic!("{what}: not a 403 but {e}"),
        Ok(_) => panic!("{what}: the websocket was accepted"),
    }
}

/// Reads binary frames of a terminal socket until their text contains `needle`; returns it.
async fn term_until(s: &mut WebSocketStream<TcpStream>, needle: &str) -> String {
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline.into(), s.next())
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 20 s; got {seen:?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Close(f))) => panic!("closed ({f:?}) before {needle:?}: {seen:?}"),
            Some(Ok(_)) => {}
            other => panic!("the terminal ended ({other:?}) before {needle:?}: {seen:?}"),
        }
        if seen.contains(needle) {
            return seen;
        }
    }
}

/// The first number after `prefix` in `text`.
fn number_after(text: &str, prefix: &str) -> u64 {
    let at = text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in {text:?}"));
    text[at + prefix.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?} in {text:?}"))
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// DNS rebinding: a page on `http://evil.example:<port>` whose name the attacker then points
/// at 127.0.0.1. The browser sends `Host: evil.example:<port>` and `Origin:
/// http://evil.example:<port>`: the same site as far as the browser knows, but another site
/// as far as the console is concerned. It must not get the terminal, run commands, or read
/// the commands and their logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebound_host_name_cannot_drive_the_console() {
    let console = Console::start().await;
    let addr = console.addr;
    let evil_host = format!("evil.example:{}", console.port());
    let evil_origin = format!("http://{evil_host}");
    // A command of the console's own page, for the logs socket and the list.
    run_to_end(addr, "echo private-output-$((6*7))").await;

    let term = ws_as(addr, &evil_host, "/ws/term", Some(&evil_origin)).await;
    if let Ok(mut s) = term {
        // Show what the page could do with it.
        s.send(Message::Binary(
            b"echo rebound-shell-$((6*7))\n".to_vec().into(),
        ))
        .await
        .unwrap();
        let seen = term_until(&mut s, "rebound-shell-42").await;
        panic!(
            "a page of {evil_origin} (DNS rebinding) got the terminal and ran a command in it:\n{seen}"
        );
    }
    refused_403("rebound /ws/term", term);

    let (status, answer) =
        post_command(addr, &evil_host, Some(&evil_origin), "echo rebound-post").await;
    assert_eq!(
        status, 403,
        "a page of {evil_origin} (DNS rebinding) ran a command:\n{answer}"
    );
    refused_403(
        "rebound /ws/logs/0",
        ws_as(addr, &evil_host, "/ws/logs/0", Some(&evil_origin)).await,
    );
    // Same-origin GETs carry no Origin: only the Host header tells the rebound page apart.
    let (status, answer) = http(
        addr,
        &format!("GET /api/commands HTTP/1.1\r\nHost: {evil_host}"),
        b"",
    )
    .await;
    assert_ne!(
        status, 200,
        "a page of {evil_origin} (DNS rebinding) read the command list:\n{answer}"
    );
    console.stop().await;
}

/// Origins a browser may send from another context: all refused on both websockets and on
/// POST, whatever the case, port, scheme or suffix; and a request without Host but with a
/// foreign Origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused_in_every_form() {
    let mut console = Console::start().await;
    let addr = console.addr;
    let own = addr.to_string();
    let port = console.port();
    let foreign = [
        "null".to_owned(),
        "http://evil.example".to_owned(),
        format!("http://evil.example:{port}"),
        format!("https://{own}"),
        format!("http://{own}.evil.example"),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("http://localhost:{port}"),
        format!("HTTP://{own}/"),
        format!("http://{own}/"),
        "file://".to_owned(),
    ];
    for origin in &foreign {
        for path in ["/ws/term", "/ws/logs/0"] {
            refused_403(
                &format!("{path} from Origin {origin:?}"),
                ws_as(addr, &own, path, Some(origin)).await,
            );
        }
        let (status, answer) = post_command(addr, &own, Some(origin), "echo cross").await;
        assert_eq!(status, 403, "POST from Origin {origin:?}: {answer}");
    }
    // HTTP/1.0 without a Host header, with another site's Origin.
    let body = br#"{"command":"echo no-host"}"#;
    let (status, answer) = http(
        addr,
        &format!(
            "POST /api/commands HTTP/1.0\r\nOrigin: http://evil.example\r\n\
             Content-Type: application/json\r\nContent-Length: {}",
            body.len()
        ),
        body,
    )
    .await;
    assert_ne!(status, 200, "{answer}");
    // Two Origin headers, the console's own first.
    let body = br#"{"command":"echo two-origins"}"#;
    let (status, answer) = http(
        addr,
        &format!(
            "POST /api/commands HTTP/1.1\r\nHost: {own}\r\nOrigin: http://evil.example\r\n\
             Origin: http://{own}\r\nContent-Type: application/json\r\nContent-Length: {}",
            body.len()
        ),
        body,
    )
    .await;
    assert_ne!(status, 200, "{answer}");
    assert!(
        commands(addr).await.is_empty(),
        "a refused request ran a command: {:?}",
        commands(addr).await
    );
    // The console's own origin still works.
    let (status, answer) =
        post_command(addr, &own, Some(&format!("http://{own}")), "echo own").await;
    assert_eq!(status, 200, "{answer}");
    console.assert_alive();
    console.stop().await;
}

/// `/assets/{file}` serves xterm.js, its CSS and its fit addon, and nothing else: no path
/// traversal, encoded or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_serve_their_three_files_only() {
    let mut console = Console::start().await;
    let addr = console.addr;
    for (file, status) in [("xterm.js", 200), ("xterm.css", 200), ("addon-fit.js", 200)] {
        let (got, answer) = http(
            addr,
            &format!("GET /assets/{file} HTTP/1.1\r\nHost: {addr}"),
            b"",
        )
        .await;
        assert_eq!(got, status, "{file}: {}", &answer[..answer.len().min(300)]);
    }
    for path in [
        "/assets/..%2F..%2FCargo.toml",
        "/assets/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        "/assets/%2e%2e%2f%2e%2e%2fCargo.toml",
        "/assets/../Cargo.toml",
        "/assets/../../../../../../etc/passwd",
        "/assets/xterm.js%2F..%2F..%2F..%2FCargo.toml",
        "/assets/xterm.js%00",
        "/assets/%2Fetc%2Fpasswd",
        "/assets/..",
        "/assets/.",
        "/assets/",
        "/assets//etc/passwd",
        "/assets/xterm.js/../../Cargo.toml",
        "/assets/..%5C..%5CCargo.toml",
        "/assets/XTERM.JS",
        "/assets/xterm.js.map",
        "/assets/index.html",
    ] {
        let (status, answer) =
            http(addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}"), b"").await;
        assert!(
            !answer.contains("[package]") && !answer.contains("root:x:0:0"),
            "{path} served a file outside the assets: {answer}"
        );
        assert_ne!(status, 200, "{path}: {}", &answer[..answer.len().min(300)]);
    }
    console.assert_alive();
    console.stop().await;
}

/// Bad requests: bodies far over any command (with a length, and chunked without end), bad
/// JSON, the wrong content type, a command over 4096 bytes, log numbers that are not numbers
/// or past the list. Each is refused, the server neither panics nor grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_without_panic_or_growth() {
    let mut console = Console::start().await;
    let addr = console.addr;
    let pid = console.pid();
    let before = rss_kib(pid);
    // 64 MiB announced and sent.
    let big = vec![b'a'; 64 << 20];
    let (status, _) = http(
        addr,
        &format!(
            "POST /api/commands HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}",
            big.len()
        ),
        &big,
    )
    .await;
    assert_eq!(status, 413, "a 64 MiB body was taken");
    // A chunked body that never ends: 64 MiB of chunks, no last chunk.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!(
            "POST /api/commands HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let chunk = format!("100000\r\n{}\r\n", "b".repeat(0x100000));
    for _ in 0..64 {
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "an endless chunked body: {}",
        &answer[..answer.len().min(300)]
    );
    for (body, content_type) in [
        (r#"{"command":"#.to_owned(), "application/json"),
        (r#"{"command":42}"#.to_owned(), "application/json"),
        (r#"{"cmd":"echo"}"#.to_owned(), "application/json"),
        ("[]".to_owned(), "application/json"),
        ("\u{0}\u{1}".to_owned(), "application/json"),
        (r#"{"command":"echo text-plain"}"#.to_owned(), "text/plain"),
        (
            r#"{"command":"echo form"}"#.to_owned(),
            "application/x-www-form-urlencoded",
        ),
        (r#"{"command":"   "}"#.to_owned(), "application/json"),
        (
            serde_json::json!({ "command": format!("echo {}", "x".repeat(4100)) }).to_string(),
            "application/json",
        ),
    ] {
        let (status, answer) = http(
            addr,
            &format!(
                "POST /api/commands HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
                 Content-Length: {}",
                body.len()
            ),
            body.as_bytes(),
        )
        .await;
        assert!(
            (400..500).contains(&status),
            "{content_type} {:?}: {answer}",
            &body[..body.len().min(60)]
        );
    }
    for n in [
        "-1",
        "abc",
        "0",
        "1",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999999999999999999",
        "%00",
        "0x0",
        "1.5",
    ] {
        let outcome = ws_as(addr, &addr.to_string(), &format!("/ws/logs/{n}"), None).await;
        match outcome {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(resp.status().is_client_error(), "/ws/logs/{n}: {resp:?}")
            }
            Err(e) => panic!("/ws/logs/{n}: {e}"),
            Ok(_) => panic!("/ws/logs/{n} opened with no command"),
        }
    }
    assert!(commands(addr).await.is_empty(), "a bad request ran");
    console.assert_alive();
    let after = rss_kib(pid);
    assert!(
        after < before + 48 * 1024,
        "the server grew from {before} KiB to {after} KiB on refused requests"
    );
    console.stop().await;
}

/// "32 commands at once": 80 POSTs arriving together must not start more than 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_cannot_run_more_than_32_commands() {
    let mut console = Console::start().await;
    let addr = console.addr;
    let mut posts = Vec::new();
    for i in 0..80 {
        posts.push(tokio::spawn(async move {
            post_command(
                addr,
                &addr.to_string(),
                None,
                &format!("exec sleep 3{i:02}"),
            )
            .await
        }));
    }
    let mut statuses = std::collections::BTreeMap::new();
    for p in posts {
        let (status, _) = p.await.unwrap();
        *statuses.entry(status).or_insert(0) += 1;
    }
    let list = commands(addr).await;
    let running = list.iter().filter(|c| c["state"] == "running").count();
    console.assert_alive();
    console.stop().await;
    assert!(
        running <= 32,
        "{running} commands run at once (answers {statuses:?}): the bound is 32"
    );
}

/// "A browser that does not read (a send waits over 5 s) is closed": 64 log sockets that never
/// read a long log must not hold the 64 websocket slots for ever, locking everyone out of the
/// terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_sockets_that_never_read_are_dropped() {
    let console = Console::start().await;
    let addr = console.addr;
    let n = run_to_end(addr, "head -c 16777216 /dev/zero").await;
    let mut stalled = Vec::new();
    for _ in 0..64 {
        // A small receive buffer, so that the server's sends to it block soon.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let (s, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/logs/{n}"), stream)
            .await
            .unwrap();
        stalled.push(s);
    }
    // Well past the 5 s send deadline.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let mut term = ws_as(addr, &addr.to_string(), "/ws/term", None)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), term.next()).await;
    let refused =
        matches!(&first, Ok(Some(Ok(Message::Close(Some(f))))) if u16::from(f.code) == 1013);
    drop(stalled);
    console.stop().await;
    assert!(
        !refused,
        "64 log sockets that have read nothing for 15 s still hold every slot: the terminal \
         was refused with {first:?}"
    );
}

/// "The terminal's shell ... ends 30 s after the last client left": the idle shell of a client
/// that left is gone when the next one comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_terminal_shell_ends_after_its_last_client() {
    let console = Console::start().await;
    let addr = console.addr;
    let own = addr.to_string();
    let mut first = ws_as(addr, &own, "/ws/term", None).await.unwrap();
    first
        .send(Message::Binary(b"echo pid-$((0))-$$\n".to_vec().into()))
        .await
        .unwrap();
    let seen = term_until(&mut first, "pid-0-").await;
    // The answer line, not the echo of the command line.
    let seen = term_until_number(&mut first, seen, "pid-0-").await;
    let old = number_after(&seen, "pid-0-");
    first.close(None).await.unwrap();
    drop(first);
    // The grace is 30 s.
    tokio::time::sleep(Duration::from_secs(36)).await;
    let mut second = ws_as(addr, &own, "/ws/term", None).await.unwrap();
    second
        .send(Message::Binary(
            format!(
                "echo verdict-$((1+1))-$$-$(kill -0 {old} 2>/dev/null && echo alive || echo gone)\n"
            )
            .into_bytes()
            .into(),
        ))
        .await
        .unwrap();
    let seen = term_until(&mut second, "verdict-2-").await;
    let seen = term_until_number(&mut second, seen, "verdict-2-").await;
    let new = number_after(&seen, "verdict-2-");
    let answer = &seen[seen.find("verdict-2-").unwrap()..];
    let alive = answer.lines().next().unwrap_or_default().contains("alive");
    drop(second);
    console.stop().await;
    assert_ne!(new, old, "the same shell after the grace: it never ended");
    assert!(
        !alive,
        "the shell of the first client (pid {old} in the sandbox) still runs 36 s after it \
         left, beside the new one ({new}): {answer:?}"
    );
}

/// Reads on until the text after `prefix` (in `seen` or what comes) starts with a number.
async fn term_until_number(
    s: &mut WebSocketStream<TcpStream>,
    mut seen: String,
    prefix: &str,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The command line's echo has `$` after the prefix; the answer a digit.
        if let Some(at) = seen
            .match_indices(prefix)
            .map(|(i, _)| i)
            .find(|&i| seen[i + prefix.len()..].starts_with(|c: char| c.is_ascii_digit()))
        {
            let tail = &seen[at..];
            if tail.contains('\n') {
                return tail.to_owned();
            }
        }
        let msg = tokio::time::timeout_at(deadline.into(), s.next())
            .await
            .unwrap_or_else(|_| panic!("no answer to {prefix:?}: {seen:?}"));
        match msg {
            Some(Ok(Message::Binary(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(_)) => {}
            other => panic!("the terminal ended ({other:?}): {seen:?}"),
        }
    }
}

/// The bytes of regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// Finished commands are kept, with their output, for as long as the server runs: a client
/// that runs command after command (32 at a time is the only bound) fills the host's disk.
/// 40 commands of 8 MiB each (320 MiB) must not leave more than the sandbox's own /tmp quota
/// (256 MiB) on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_commands_do_not_pile_up_on_the_host() {
    let tmp = tempfile::Builder::new()
        .prefix("osb-wc-captures-")
        .tempdir_in("/tmp")
        .unwrap();
    let mut console = Console::start_with(&[("TMPDIR", tmp.path())]).await;
    let addr = console.addr;
    for _ in 0..40 {
        run_to_end(addr, "head -c 8388608 /dev/zero").await;
    }
    let kept = tree_bytes(tmp.path());
    let listed = commands(addr).await.len();
    console.assert_alive();
    console.stop().await;
    assert!(
        kept <= 256 << 20,
        "the console keeps {} MiB of finished commands' output on the host ({listed} commands \
         listed), and grows with every command",
        kept >> 20
    );
}

/// The server stopped as a service manager stops it (SIGTERM) leaves no container behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_leaves_no_container_behind() {
    let mut console = Console::start().await;
    let (status, answer) = http(
        console.addr,
        &format!("GET /api/info HTTP/1.1\r\nHost: {}", console.addr),
        b"",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let id = json_body(&answer)["sandbox"].as_str().unwrap().to_owned();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(console.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(30), console.child.wait())
        .await
        .expect("the console ends on SIGTERM");
    let bundle = PathBuf::from("/run/oci-sandbox/runc/bundles").join(&id);
    let mut listed = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = std::process::Command::new("runc")
            .args(["--root", "/run/oci-sandbox/runc/state", "list"])
            .output()
            .expect("runc");
        listed = String::from_utf8_lossy(&out.stdout).into_owned();
        if !listed.contains(&id) && !bundle.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left_in_list = listed.contains(&id);
    let left_bundle = bundle.exists();
    let processes = common::processes_mentioning(&id);
    // The next start of the library sweeps a dead owner's leftovers: do it now.
    Console::start().await.stop().await;
    assert!(processes.is_empty(), "processes left: {processes:?}");
    assert!(
        !left_in_list && !left_bundle,
        "after SIGTERM the sandbox {id} is left: in runc's list: {left_in_list}, its bundle \
         {}: {left_bundle}\n{listed}",
        bundle.display()
    );
}

/// A command line and a command's output made of HTML: shown as text in the command list and
/// the log, never parsed (no element made, no script run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_their_output_are_text_in_the_page() {
    let console = Console::start().await;
    let addr = console.addr;
    // The command line itself is HTML; so is its output (written with printf's octal
    // escapes, so that the command line does not hold the output's markup).
    let command = "true '<img id=xss-cmd src=x onerror=\"document.title=`pwned-cmd`\">'; \
                   printf '\\074img id=xss-out src=x onerror=\"document.title=`pwned-out`\"\\076\\n\
                   \\074b id=xss-bold\\076bold\\074/b\\076\\n'";
    run_to_end(addr, command).await;
    let driver = Driver::start().await;
    let client = driver.browser(1100, 700).await;
    client.goto(&console.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (list, log) = loop {
        let list = web::text_of(&client, Locator::Id("commands")).await;
        let log = web::text_of(&client, Locator::Id("log")).await;
        if list.contains("finished") && log.contains("xss-bold") {
            break (list, log);
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the command: {list:?} / {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Give an injected image's onerror a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let injected = client
        .find_all(Locator::Css(
            "#xss-cmd, #xss-out, #xss-bold, #commands img, #log img, #log b",
        ))
        .await
        .unwrap()
        .len();
    let title = client.title().await.unwrap();
    client.close().await.unwrap();
    console.stop().await;
    assert_eq!(
        injected, 0,
        "HTML of a command made elements: {list} / {log}"
    );
    assert!(
        !title.contains("pwned"),
        "a command's HTML ran script: {title}"
    );
    assert!(
        list.contains("<img id=xss-cmd") && log.contains("<img id=xss-out"),
        "the markup is not shown as text: {list} / {log}"
    );
}
