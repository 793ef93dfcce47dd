//! The web console example and a headless Chromium for the web tests (included with `#[path]`
//! by tests/web_console.rs and tests/escape_web_console.rs only: the other test binaries need
//! no browser driver).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

use crate::common;

/// The example, serving on a free port; killed (and its sandbox with it) on drop.
pub struct Console {
    pub child: tokio::process::Child,
    pub url: String,
    pub addr: SocketAddr,
}

impl Console {
    pub async fn start() -> Console {
        Console::start_with(&[]).await
    }

    pub async fn start_with(env: &[(&str, &Path)]) -> Console {
        let assets = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/web-assets");
        static FETCHING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let one_at_a_time = FETCHING.lock().unwrap_or_else(|e| e.into_inner());
        if !assets.join("xterm.js").exists() {
            // Fetched from the npm registry by the Makefile (make test does it first).
            let status = std::process::Command::new("make")
                .args(["--quiet", "web-assets"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running make web-assets");
            assert!(status.success(), "make web-assets failed (npm needed)");
        }
        assert!(
            assets.join("xterm.js").exists(),
            "{} has no xterm.js after make web-assets",
            assets.display()
        );
        drop(one_at_a_time);
        let mut child = tokio::process::Command::new(common::example_binary("web_console"))
            .env("PORT", "0")
            .env("WEB_ASSETS", &assets)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the console starts within 60 s")
            .unwrap()
            .expect("the console prints its URL");
        let url = line
            .strip_prefix("web console on ")
            .expect("the URL line")
            .to_owned();
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        Console { child, url, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("the console runs") as i32
    }

    /// Ends the server as Ctrl-C would, so that it closes its sandbox.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the console ends on SIGINT")
            .unwrap();
        assert!(status.success(), "{status}");
    }

    /// Panics if the server process has exited (a panic that took it down, say).
    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the console died: {:?}",
            self.child.try_wait()
        );
    }
}

/// chromedriver on a free port, killed on drop.
pub struct Driver {
    _child: tokio::process::Child,
    url: String,
}

impl Driver {
    pub async fn start() -> Driver {
        let port = common::free_port();
        let child = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) must be installed: make test does");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver { _child: child, url }
    }

    /// A headless Chromium session with a window of this size.
    pub async fn browser(&self, width: u32, height: u32) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}")],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

/// The text of the page's element `at` (which must be there).
pub async fn text_of(client: &Client, at: Locator<'_>) -> String {
    client.find(at).await.unwrap().text().await.unwrap()
}
