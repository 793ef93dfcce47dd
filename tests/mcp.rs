//! The `oci-sandbox` binary (feature `cli`): `run` (exit codes, stdin, Ctrl-C, a PTY,
//! `--image`, `--allow-domain`) and `mcp`, driven by the official Python MCP SDK (PyPI's
//! `mcp`, in target/mcp-venv: `make mcp-venv`) over stdio and streamable HTTP: every tool,
//! images, state per session and isolation between sessions, sessions' sandboxes gone when
//! they close (seen in the runtime's own list), JSON-RPC errors for what is malformed; `ls`,
//! `rm` and `prune` on what the library keeps.

mod common;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_sandbox::{NamespaceContainer, OciRuntime, SandboxConfig, VolumeOptions};

/// The binary, built once per test process.
fn cli() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bin", "oci-sandbox"])
            .args(["--features", common::BUILD_FEATURES])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo");
        assert!(
            status.success(),
            "cargo build --features {} --bin oci-sandbox failed",
            common::BUILD_FEATURES
        );
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debug/oci-sandbox");
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// The virtualenv's Python with the MCP SDK (made by `make mcp-venv` if missing).
fn python() -> PathBuf {
    static MADE: std::sync::Once = std::sync::Once::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    MADE.call_once(|| {
        let status = Command::new("make")
            .args(["--quiet", "mcp-venv"])
            .current_dir(root)
            .status()
            .expect("running make mcp-venv");
        assert!(
            status.success(),
            "make mcp-venv failed: the MCP tests need PyPI's mcp"
        );
    });
    root.join("target/mcp-venv/bin/python")
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp/client.py")
}

/// A state dir and a data dir of the test's own, reachable by every container's id range.
fn dirs() -> (tempfile::TempDir, Vec<String>) {
    let dir = tempfile::Builder::new()
        .prefix("osb-cli-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let args = vec![
        "--state-dir".to_owned(),
        dir.path().join("state").display().to_string(),
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
    ];
    (dir, args)
}

/// The runtime's own view of the containers of a state dir (`runc list`).
async fn containers(state: &Path) -> usize {
    let runtime = NamespaceContainer::builder()
        .runtime(OciRuntime::Runc)
        .state_dir(state)
        .data_dir(state.parent().unwrap().join("data"))
        .build()
        .await
        .unwrap();
    let n = runtime.list_all().await.unwrap().len();
    runtime.close().await;
    n
}

/// The checks a client run printed, by name.
fn checks(stdout: &str) -> std::collections::HashMap<String, serde_json::Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("check")?.as_str()?.to_owned(), v)))
        .collect()
}

/// What every session must see of the tools.
fn assert_every_tool(c: &std::collections::HashMap<String, serde_json::Value>) {
    let get = |k: &str| c.get(k).unwrap_or_else(|| panic!("no check {k}: {c:?}"));
    let text = |k: &str| get(k)["text"].as_str().unwrap_or_default().to_owned();
    let names: Vec<&str> = get("tools")["names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "list_files",
            "read_file",
            "reset",
            "run_code",
            "run_command",
            "write_file"
        ]
    );
    assert_eq!(text("get"), "result:\n42");
    assert_eq!(get("plot")["images"], serde_json::json!(["image/png"]));
    assert_eq!(get("plot")["png_header"][0], "89504e470d0a1a0a");
    assert_eq!(text("shell"), "stdout:\n/tmp\n");
    assert!(
        text("command").starts_with("exit code: 3\nstdout:\nhi\n"),
        "{}",
        text("command")
    );
    assert_eq!(get("command")["error"], true);
    assert!(
        text("slow").starts_with("timed out after 1s"),
        "{}",
        text("slow")
    );
    assert_eq!(text("read"), "hello");
    assert!(
        text("list").contains("note.txt\tFile\t5"),
        "{}",
        text("list")
    );
    assert_eq!(get("missing")["error"], true);
    // Bad arguments are errors the session survives.
    assert!(get("bad_args")["error"] == true || get("bad_args")["ok"] == false);
    assert_eq!(get("bad_language")["ok"], false);
    assert_eq!(get("unknown_tool")["ok"], false);
    assert_eq!(text("after_errors"), "result:\n41");
    assert!(
        text("after_reset").contains("NameError"),
        "{}",
        text("after_reset")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_stdio_with_the_python_sdk() {
    let (dir, args) = dirs();
    let out = Command::new(python())
        .arg(client_script())
        .arg("stdio")
        .arg(cli())
        .arg("mcp")
        .args(&args)
        .output()
        .expect("the Python client ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = checks(&stdout);
    assert_every_tool(&c);
    let startup = c["startup"]["ms"].as_f64().unwrap();
    eprintln!("oci-sandbox mcp: spawn to first tool result {startup:.0} ms (debug build)");
    assert!(startup < 10_000.0, "{startup} ms");
    // The server ended with its client: no container left.
    assert_eq!(containers(&dir.path().join("state")).await, 0);
}

/// Raw JSON-RPC over stdio: a line that is not JSON gets a parse error, an unknown method
/// its error, and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_stdio_messages_get_json_rpc_errors() {
    let (_dir, args) = dirs();
    let mut server = Command::new(cli())
        .arg("mcp")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = server.stdin.take().unwrap();
    let mut lines = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    let mut next =
        || serde_json::from_str::<serde_json::Value>(&lines.next().unwrap().unwrap()).unwrap();
    writeln!(stdin, "{{not json").unwrap();
    assert_eq!(next()["error"]["code"], -32700);
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":1,"method":"initialize","params":{{"protocolVersion":"2025-06-18","capabilities":{{}},"clientInfo":{{"name":"raw","version":"1"}}}}}}"#).unwrap();
    assert_eq!(next()["result"]["serverInfo"]["name"], "oci-sandbox");
    writeln!(
        stdin,
        r#"{{"jsonrpc":"2.0","method":"notifications/initialized"}}"#
    )
    .unwrap();
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":2,"method":"no/such"}}"#).unwrap();
    assert_eq!(next()["error"]["code"], -32601);
    writeln!(stdin, r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"name":"run_command","arguments":{{"command":"echo raw"}}}}}}"#).unwrap();
    let answer = next();
    assert!(
        answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("raw"),
        "{answer}"
    );
    drop(stdin);
    assert!(server.wait().unwrap().success());
}

/// Streamable HTTP: two concurrent sessions, isolated; their sandboxes gone once they
/// close; garbage gets a JSON-RPC parse error; SIGINT stops the server cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_sessions_are_isolated_and_cleaned_up() {
    let (dir, args) = dirs();
    let state = dir.path().join("state");
    let mut server = Command::new(cli())
        .arg("mcp")
        .args(&args)
        .args(["--http", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server_err = std::io::BufReader::new(server.stderr.take().unwrap()).lines();
    let url = loop {
        let line = server_err.next().expect("the server's address").unwrap();
        if let Some(url) = line.strip_prefix("oci-sandbox mcp: listening on ") {
            break url.to_owned();
        }
    };
    let mut client = Command::new(python())
        .arg(client_script())
        .args(["http", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_client = client.stdin.take().unwrap();
    let mut from_client = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    while let Some(Ok(line)) = from_client.next() {
        match line.as_str() {
            "PAUSE two sessions open" => {
                assert_eq!(containers(&state).await, 2, "one sandbox per session");
                writeln!(to_client).unwrap();
            }
            "PAUSE sessions closed" => {
                let deadline = Instant::now() + Duration::from_secs(15);
                while containers(&state).await > 0 {
                    assert!(
                        Instant::now() < deadline,
                        "a closed session's sandbox is left"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                writeln!(to_client).unwrap();
            }
            _ => {
                seen.push_str(&line);
                seen.push('\n');
            }
        }
    }
    assert!(client.wait().unwrap().success(), "{seen}");
    let c = checks(&seen);
    assert_eq!(c["garbage"]["status"], 400);
    assert!(c["garbage"]["body"].as_str().unwrap().contains("-32700"));
    assert_eq!(c["a_get"]["text"], "result:\n'a'");
    assert!(c["b_get"]["text"].as_str().unwrap().contains("NameError"));
    assert_every_tool(&c);
    assert!(c.contains_key("done"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert!(server.wait().unwrap().success());
    assert_eq!(containers(&state).await, 0);
}

/// `oci-sandbox run`: exit codes, stdin, a PTY, Ctrl-C reaching the command.
#[test]
fn run_passes_status_stdin_and_signals_through() {
    let (_dir, args) = dirs();
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(cli());
        cmd.arg("run").args(&args).args(extra);
        cmd
    };
    let code = run(&["--", "sh", "-c", "exit 7"]).status().unwrap();
    assert_eq!(code.code(), Some(7));
    let mut cat = run(&["--", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cat.stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = cat.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "THROUGH STDIN\n");
    assert!(out.status.success());
    let killed = run(&["--", "sh", "-c", "kill -9 $$"]).status().unwrap();
    assert_eq!(killed.code(), Some(137));
    let timed = run(&["--timeout", "1s", "--", "sleep", "30"])
        .status()
        .unwrap();
    assert_eq!(timed.code(), Some(124));
    let tty = run(&["-t", "--", "tty"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&tty.stdout).contains("/dev/pts/"),
        "{tty:?}"
    );
    // Ctrl-C: SIGINT to the CLI reaches the command.
    let mut trapped = run(&[
        "--",
        "sh",
        "-c",
        "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.1; done",
    ])
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(trapped.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(trapped.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got-int");
    assert_eq!(trapped.wait().unwrap().code(), Some(5));
    // Bad input: an exit code of its own and a message, no crash.
    let bad = run(&["--memory", "lots", "--", "true"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("lots"));
}

/// `--image` and `--allow-domain`.
#[test]
fn run_with_an_image_and_an_egress_allowlist() {
    let (dir, args) = dirs();
    let image = common::images::busybox_layout(&{
        let d = dir.path().join("image");
        std::fs::create_dir(&d).unwrap();
        d
    });
    let out = Command::new(cli())
        .arg("run")
        .args(&args)
        .arg("--image")
        .arg(format!("oci:{}:{}", image.layout.display(), image.tag))
        .args(["--", "sh", "-c", "echo $GREETING; ls /bin/busybox"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-image\n/bin/busybox\n"
    );
    // An allowed domain goes through the proxy; another is refused by it (403).
    let script = "import os, urllib.request\n\
        print(bool(os.environ.get('HTTP_PROXY')))\n\
        try:\n    urllib.request.urlopen('http://denied.example/', timeout=10)\n\
        except urllib.error.HTTPError as e:\n    print(e.code)";
    let out = Command::new(cli())
        .arg("run")
        .args(&args)
        .args([
            "--allow-domain",
            "allowed.example",
            "--",
            "python3",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True\n403\n");
}

/// `ls` lists a named sandbox, a volume and an image's layers; `rm` removes the first two
/// (and says which name it does not know, exiting 1); `prune` removes the layers no sandbox
/// uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_rm_and_prune_show_and_remove_what_is_kept() {
    let (dir, args) = dirs();
    let cli_output = |verb: &str, extra: &[&str]| {
        let out = Command::new(cli())
            .arg(verb)
            .args(&args)
            .args(extra)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let image_dir = dir.path().join("image");
    std::fs::create_dir(&image_dir).unwrap();
    let image = common::images::busybox_layout(&image_dir);
    let reference = format!("oci:{}:{}", image.layout.display(), image.tag);
    let (code, _, err) = cli_output("run", &["--image", &reference, "--", "true"]);
    assert_eq!(code, Some(0), "{err}");
    // A named sandbox and a volume, made by the library on the same dirs.
    let runtime = NamespaceContainer::builder()
        .runtime(OciRuntime::Runc)
        .state_dir(dir.path().join("state"))
        .data_dir(dir.path().join("data"))
        .build()
        .await
        .unwrap();
    runtime
        .create_volume("cli-volume", &VolumeOptions::default())
        .await
        .unwrap();
    let named = runtime
        .create(&SandboxConfig {
            name: Some("cli-named".into()),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
    named.close().await;
    runtime.close().await;
    drop(runtime);

    let (code, listed, err) = cli_output("ls", &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(listed.contains("sandbox\tcli-named\trunc"), "{listed}");
    assert!(listed.contains("volume\tcli-volume\t"), "{listed}");
    assert!(listed.contains("image-layer\tsha256:"), "{listed}");

    let (code, _, err) = cli_output("rm", &["cli-named", "volume:cli-volume", "no-such"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("no-such") && !err.contains("cli-named"),
        "{err}"
    );
    let (_, listed, _) = cli_output("ls", &[]);
    assert!(
        !listed.contains("cli-named") && !listed.contains("cli-volume"),
        "{listed}"
    );

    let (code, pruned, err) = cli_output("prune", &[]);
    assert_eq!(code, Some(0), "{err}");
    let removed: usize = pruned
        .strip_prefix("removed ")
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{pruned}"));
    assert!(removed >= 1, "{pruned}");
    let (_, listed, _) = cli_output("ls", &[]);
    assert!(!listed.contains("image-layer"), "{listed}");
}
