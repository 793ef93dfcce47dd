//! `examples/web_console` in a real browser: headless Chromium (Debian's `chromium`) driven
//! over WebDriver (Debian's `chromium-driver`) with fantoccini, and the server's bounds with a
//! websocket client. `make test` installs both and fetches xterm.js first (`make web-assets`).

mod common;
#[path = "common/web.rs"]
mod web;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use web::{Console, Driver};

/// Polls until the terminal's text contains `needle`; returns it.
async fn terminal_shows(client: &Client, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = web::text_of(client, Locator::Css(".xterm-rows")).await;
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the terminal never showed {needle:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn type_in_terminal(client: &Client, keys: &str) {
    client
        .find(Locator::Css(".xterm-helper-textarea"))
        .await
        .unwrap()
        .send_keys(keys)
        .await
        .unwrap();
}

/// The last `stty size` answer on the screen (rows, cols).
async fn stty_size(client: &Client, marker: &str) -> (u32, u32) {
    type_in_terminal(client, &format!("echo {marker} $(stty size)\n")).await;
    let want = format!("{marker} ");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = terminal_shows(client, marker).await;
        // The echo of the command line holds "$(stty"; the answer holds two numbers.
        let answer = text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(&want)?;
            let mut it = rest.split_whitespace().map(|n| n.parse::<u32>());
            match (it.next(), it.next()) {
                (Some(Ok(r)), Some(Ok(c))) => Some((r, c)),
                _ => None,
            }
        });
        if let Some(a) = answer {
            return a;
        }
        assert!(Instant::now() < deadline, "no stty answer:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `command` through the page's form.
async fn run_from_form(client: &Client, command: &str) {
    let input = client.find(Locator::Id("cmd")).await.unwrap();
    input.send_keys(command).await.unwrap();
    client
        .find(Locator::Id("go"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Waits until element `id`'s text satisfies `done`, polled every 200 ms; fails after
/// `within` with the last text.
async fn wait_for_text(client: &Client, id: &str, within: Duration, done: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        let text = web::text_of(client, Locator::Id(id)).await;
        if done(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "#{id} never as expected: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn log_text(client: &Client) -> String {
    web::text_of(client, Locator::Id("log")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let console = Console::start().await;
    let driver = Driver::start().await;
    let client = driver.browser(1100, 700).await;
    client.goto(&console.url).await.unwrap();
    client
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css(".xterm-rows"))
        .await
        .unwrap();
    // The terminal: a command and its answer.
    terminal_shows(&client, "$").await;
    type_in_terminal(&client, "echo $((6*7))\n").await;
    terminal_shows(&client, "42").await;
    // Ctrl-C interrupts the foreground command (a sleep that would otherwise hold the shell).
    type_in_terminal(&client, "sleep 100\n").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    type_in_terminal(&client, "\u{E009}c\u{E000}").await;
    type_in_terminal(&client, "echo after-ctrl-c-$((1+1))\n").await;
    terminal_shows(&client, "after-ctrl-c-2").await;
    // Resizing the window resizes the PTY.
    let before = stty_size(&client, "size-a").await;
    client.set_window_size(700, 450).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = before;
    while after == before {
        assert!(Instant::now() < deadline, "stty size stayed {before:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        after = stty_size(
            &client,
            &format!("size-{}", deadline.elapsed().as_millis() % 100000),
        )
        .await;
    }
    assert!(
        after.0 < before.0 && after.1 < before.1,
        "{before:?} -> {after:?}"
    );
    client.set_window_size(1100, 700).await.unwrap();
    // The runtime and limits are shown.
    let header = web::text_of(&client, Locator::Id("info")).await;
    assert!(
        header.contains("runtime: runc") && header.contains("pids: 256"),
        "{header}"
    );
    // A logging command: its lines appear while it runs.
    run_from_form(
        &client,
        "for i in 1 2 3 4 5 6; do echo line-$i; sleep 0.5; done",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = log_text(&client).await;
        let list = web::text_of(&client, Locator::Id("commands")).await;
        if log.contains("line-1") {
            assert!(
                !log.contains("line-6") && list.contains("running"),
                "the first line should show while the command runs: {log} / {list}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no live log: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_text(&client).await.contains("line-6") {
        assert!(Instant::now() < deadline, "the log never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A reload replays the log from the start, and the terminal's recent screen.
    client.refresh().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = log_text(&client).await;
        if (1..=6).all(|i| log.contains(&format!("line-{i}"))) {
            break;
        }
        assert!(Instant::now() < deadline, "the log was not replayed: {log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    terminal_shows(&client, "42").await;
    // The list says it finished, with its status.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = web::text_of(&client, Locator::Id("commands")).await;
        if list.contains("finished") {
            assert!(list.contains("exit"), "{list}");
            break;
        }
        assert!(Instant::now() < deadline, "never finished: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The live figures: a spinning command's CPU share shows within seconds, and goes.
    let within = Duration::from_secs(10);
    wait_for_text(&client, "fig-state", within, |t| t == "running").await;
    wait_for_text(&client, "fig-memory", within, |t| t.contains("MiB")).await;
    run_from_form(&client, "timeout 8 sh -c 'while :; do :; done'").await;
    let cpu_percent =
        |text: &str| -> Option<u32> { text.strip_prefix("cpu ")?.strip_suffix('%')?.parse().ok() };
    wait_for_text(&client, "fig-cpu", Duration::from_secs(20), |t| {
        cpu_percent(t).is_some_and(|p| p >= 50)
    })
    .await;
    wait_for_text(&client, "fig-cpu", Duration::from_secs(30), |t| {
        cpu_percent(t).is_some_and(|p| p < 10)
    })
    .await;
    if std::env::var_os("OSB_SCREENSHOT").is_some() {
        let png = client.screenshot().await.unwrap();
        std::fs::write(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/web-console.png"),
            png,
        )
        .unwrap();
    }
    client.close().await.unwrap();
    console.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_closes_bad_clients_cleanly() {
    let console = Console::start().await;
    let ws = console.url.replace("http://", "ws://");
    let term = format!("{ws}ws/term");
    // Another site's page (its Origin) cannot open the terminal, nor run a command.
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            term.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403)
        }
        other => panic!(
            "a cross-site websocket was accepted: {:?}",
            other.map(|_| ())
        ),
    }
    let addr = console
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = r#"{"command":"echo pwned"}"#;
    let post = format!(
        "POST /api/commands HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://evil.example\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::io::AsyncWriteExt::write_all(&mut tcp, post.as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer)
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Garbage text: closed with 1003.
    let (mut s, _) = tokio_tungstenite::connect_async(&term).await.unwrap();
    s.send(Message::Text("not json".into())).await.unwrap();
    assert_eq!(close_code(&mut s).await, Some(1003));
    // A frame over 64 KiB: closed with 1009.
    let (mut s, _) = tokio_tungstenite::connect_async(&term).await.unwrap();
    let _ = s.send(Message::Binary(vec![b'x'; 200 * 1024].into())).await;
    assert_eq!(close_code(&mut s).await, Some(1009));
    // A hundred at once: 64 served, the rest closed with 1013, and one shell for all.
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let (s, _) = tokio_tungstenite::connect_async(&term).await.unwrap();
        open.push(s);
    }
    for s in &mut open {
        if let Ok(Some(code)) =
            tokio::time::timeout(Duration::from_millis(100), close_code(s)).await
        {
            assert_eq!(code, 1013);
            refused += 1;
        }
    }
    assert_eq!(refused, 36, "64 of 100 served");
    drop(open);
    // A client that never reads while the shell floods: the server drops it rather than
    // buffer for it, and a reading client goes on.
    // (A small receive buffer, so that the server's sends to it block soon.)
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = console
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(&term, stream)
        .await
        .unwrap();
    let (talker, _) = tokio_tungstenite::connect_async(&term).await.unwrap();
    let (mut talk, mut listen) = talker.split();
    let reader = tokio::spawn(async move {
        let mut seen = String::new();
        while let Some(Ok(m)) = listen.next().await {
            if let Message::Binary(b) = m {
                seen.push_str(&String::from_utf8_lossy(&b));
                if seen.contains("flood-done-42") && seen.contains("after-flood-42") {
                    return true;
                }
                if seen.len() > 1 << 20 {
                    seen.drain(..seen.len() - 4096);
                }
            }
        }
        false
    });
    talk.send(Message::Binary(
        b"head -c 3000000 /dev/zero | tr '\\0' x; echo; echo flood-done-$((40+2))\n"
            .to_vec()
            .into(),
    ))
    .await
    .unwrap();
    // The slow one is cut off: reading what was sent before, it then finds the end.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(_)) = slow.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the slow client was never dropped");
    talk.send(Message::Binary(
        b"echo after-flood-$((6*7))\n".to_vec().into(),
    ))
    .await
    .unwrap();
    let ok = tokio::time::timeout(Duration::from_secs(60), reader).await;
    assert!(
        matches!(ok, Ok(Ok(true))),
        "the reading client lost the terminal"
    );
    console.stop().await;
}

/// Reads until the close frame; its code (None if the stream ended without one).
async fn close_code<S>(s: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(msg) = s.next().await {
        match msg {
            Ok(Message::Close(Some(frame))) => return Some(frame.code.into()),
            Ok(Message::Close(None)) => return None,
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
    None
}
