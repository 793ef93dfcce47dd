//! `spawn_interactive` → first byte of output, against the same runtime's raw console-socket
//! spawn (`run --detach --console-socket`, accept, receive the PTY by SCM_RIGHTS, read),
//! alternated run by run in the same process so that drift hits both alike.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use raw_cli::runtimes;

#[path = "support/raw_cli.rs"]
#[allow(dead_code)] // each bench uses part of it
mod raw_cli;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg};
use oci_sandbox::{NamespaceContainer, OciRuntime, SandboxConfig};
use tokio::io::AsyncReadExt;

/// The raw handshake, written out as a user of the runtime CLI would.
async fn raw_first_byte(
    kind: OciRuntime,
    root: &std::path::Path,
    bundle: &std::path::Path,
    id: &str,
) -> Duration {
    let sock = bundle.join(format!("{id}.sock"));
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let started = Instant::now();
    let pid_file = bundle.join(format!("{id}.pid"));
    let mut runtime = raw_cli::command(kind, root)
        .args(["run", "--detach", "--console-socket"])
        .arg(&sock)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("--bundle")
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let fd = loop {
        stream.readable().await.unwrap();
        let mut payload = [0u8; 64];
        let mut iov = [IoSliceMut::new(&mut payload)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        match recvmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Ok(msg) => {
                let fd = msg
                    .cmsgs()
                    .unwrap()
                    .find_map(|c| match c {
                        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                        _ => None,
                    })
                    .unwrap();
                // SAFETY: the kernel installed this fd for us.
                break unsafe { OwnedFd::from_raw_fd(fd) };
            }
            Err(nix::errno::Errno::EAGAIN) => continue,
            Err(e) => panic!("{e}"),
        }
    };
    let mut pty = tokio::fs::File::from_std(std::fs::File::from(fd));
    let mut byte = [0u8; 1];
    assert_eq!(pty.read(&mut byte).await.unwrap(), 1);
    let elapsed = started.elapsed();
    assert!(runtime.wait().await.unwrap().success());
    let _ = std::fs::remove_file(&pid_file);
    let _ = raw_cli::command(kind, root)
        .args(["delete", "--force", id])
        .status()
        .await;
    let _ = std::fs::remove_file(&sock);
    elapsed
}

fn first_byte(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(100);
    let rt = raw_cli::tokio_runtime();
    for kind in runtimes() {
        rt.block_on(async {
            let sandbox = NamespaceContainer::with_runtime(kind).await.unwrap();
            let config = NamespaceContainer::build_config(&SandboxConfig::default(), "echo", vec!["x".into()]);
            let mut spec = sandbox.render_spec(&config).unwrap();
            let mut process = spec.process().clone().unwrap();
            process.set_terminal(Some(true));
            spec.set_process(Some(process));
            let dir = tempfile::Builder::new().prefix("osb-bench-").tempdir_in("/tmp").unwrap();
            std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
            let root = dir.path().join("root");
            let (mut raw, mut lib) = (Vec::new(), Vec::new());
            for i in 0..rounds {
                // Alternate which goes first, so that neither always follows the other.
                let raw_first = i % 2 == 0;
                if raw_first {
                    raw.push(raw_first_byte(kind, &root, dir.path(), &format!("pty-{}-{i}", std::process::id())).await);
                }
                let started = Instant::now();
                let mut pty = sandbox.spawn_interactive(&config).await.unwrap();
                let mut byte = [0u8; 1];
                assert_eq!(pty.read(&mut byte).await.unwrap(), 1);
                lib.push(started.elapsed());
                pty.wait().await.unwrap();
                if !raw_first {
                    raw.push(raw_first_byte(kind, &root, dir.path(), &format!("pty-{}-{i}", std::process::id())).await);
                }
            }
            sandbox.close().await;
            raw.sort();
            lib.sort();
            let (r, l) = (raw[raw.len() / 2], lib[lib.len() / 2]);
            println!(
                "spawn -> first PTY byte, {kind}, {rounds} rounds: raw console-socket spawn {:.2} ms, library {:.2} ms, ratio {:.3}",
                r.as_secs_f64() * 1e3,
                l.as_secs_f64() * 1e3,
                l.as_secs_f64() / r.as_secs_f64()
            );
        });
    }
}

criterion_group!(benches, first_byte);
criterion_main!(benches);
