//! Drives `examples/ws_logs.rs` with real websocket clients: two clients, one joining late,
//! both receive the complete output in order and the exit status.

mod common;

use std::process::Stdio;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

async fn post_run(addr: &str, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /run HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let json = &resp[resp.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["id"].as_str().unwrap().to_owned()
}

async fn client(addr: String, id: String) -> (Vec<u8>, serde_json::Value) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/logs/{id}"))
        .await
        .unwrap();
    let mut output = Vec::new();
    while let Some(msg) = ws.next().await {
        match msg.unwrap() {
            Message::Binary(b) => output.extend_from_slice(&b),
            Message::Text(t) => return (output, serde_json::from_str(&t).unwrap()),
            Message::Close(_) => break,
            _ => {}
        }
    }
    panic!(
        "closed without a status; got {:?}",
        String::from_utf8_lossy(&output)
    );
}

#[tokio::test]
async fn two_clients_one_late_both_get_everything_in_order_and_the_status() {
    let mut server = tokio::process::Command::new(common::example_binary("ws_logs"))
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = first.strip_prefix("listening on ").unwrap().to_owned();

    let script = "for i in $(seq 1 30); do echo out $i; echo err $i >&2; sleep 0.02; done; exit 3";
    let body = serde_json::json!({ "cmd": ["sh", "-c", script] }).to_string();
    let id = post_run(&addr, &body).await;

    let early = tokio::spawn(client(addr.clone(), id.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = tokio::spawn(client(addr.clone(), id.clone()));
    let (early, late) = (early.await.unwrap(), late.await.unwrap());

    let want: String = (1..=30).map(|i| format!("out {i}\nerr {i}\n")).collect();
    for (output, status) in [&early, &late] {
        assert_eq!(String::from_utf8_lossy(output), want);
        assert_eq!(status["code"], 3, "{status}");
    }
    // A client after the end still gets everything.
    let (after, status) = client(addr.clone(), id).await;
    assert_eq!(String::from_utf8_lossy(&after), want);
    assert_eq!(status["code"], 3);

    // SIGINT lets the server drop its jobs and wait for their cleanup.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
