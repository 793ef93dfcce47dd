//! Attacks on snapshots, from code inside the sandbox: what a snapshot takes from the sandbox
//! (its writable layer, on runc and crun) is read back by the host and becomes a layer of
//! other sandboxes; and on gVisor the launcher listens, between its detach and its attach,
//! on an address the sandbox's processes can reach.

mod common;
#[path = "common/snapshots.rs"]
mod snapshot_support;

use common::images;
use common::{TestSandbox, sh_in};
use oci_sandbox::{ExecConfig, NamespaceContainer, OciRuntime, SandboxError, SnapshotErrorKind};
use snapshot_support::{close_and_check, fixture, snapshot_policy, start, walk};

/// runc, crun: the layer a snapshot takes holds links to the host's files, hard links and
/// files of other users, planted by the sandbox (given `CAP_CHOWN`; set-id bits it cannot
/// set: the seccomp profile refuses them). The host's save follows no link, a fork sees
/// the links resolve inside its own root, and the owners are the container's ids (not the
/// parent's host ids, which would be nobody in a fork).
async fn a_planted_layer_stays_inside(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = fixture(images::busybox_layout);
    // The capabilities to make other users' files (all are dropped by default).
    let mut config = NamespaceContainer::build_config(&snapshot_policy(&f), "true", vec![]);
    config.security.capabilities = ["CAP_CHOWN", "CAP_FOWNER", "CAP_FSETID"]
        .map(String::from)
        .to_vec();
    let parent = t.sandbox.start(&config).await.expect("sandbox start");
    sh_in(
        &parent,
        "ln -s /etc/shadow /host-shadow; ln -s ../../../../../../etc/shadow /rel-shadow; \
         echo mine > /owned; chown 1000:1000 /owned; \
         echo data > /a; ln /a /b; mkdir -p /deep/x && echo d > /deep/x/f",
    )
    .await;
    let snap = parent.snapshot().await.expect("snapshot");
    // Saved elsewhere: links are links, nothing of the host's is read.
    let saved_parent = tempfile::Builder::new()
        .prefix("osb-esnap-saved-")
        .tempdir_in(t.state.path())
        .unwrap();
    let saved = saved_parent.path().join("s");
    snap.save(&saved).await.expect("save");
    let top = walk(&saved);

    let shadow = std::fs::read("/etc/shadow").unwrap_or_default();
    for path in &top {
        let meta = std::fs::symlink_metadata(path).unwrap();
        if meta.is_file() && !shadow.is_empty() {
            assert_ne!(
                std::fs::read(path).unwrap(),
                shadow,
                "{} is the host's shadow",
                path.display()
            );
        }
    }
    assert!(
        top.iter().any(|p| p.ends_with("host-shadow")
            && std::fs::symlink_metadata(p)
                .unwrap()
                .file_type()
                .is_symlink()),
        "the link was not saved as a link"
    );
    let fork = t.sandbox.start_from(&snap).await.expect("fork");
    let seen = sh_in(
        &fork,
        "cat /host-shadow 2>&1 | head -c 40; echo; cat /rel-shadow 2>&1 | head -c 40; echo; \
         stat -c '%u:%g %a' /owned; cat /b /deep/x/f",
    )
    .await;
    let lines: Vec<&str> = seen.lines().collect();
    for line in &lines[..2] {
        assert!(
            !line.contains("root:"),
            "the host's shadow was read: {seen}"
        );
    }
    assert_eq!(&lines[2..], ["1000:1000 644", "data", "d"], "{seen}");
    drop((snap, saved_parent));
    close_and_check(&t, vec![parent, fork], None).await;
}

/// gVisor: a process of the sandbox holds the address the launcher listens on for its
/// attach. The snapshot is refused (typed), and the sandbox goes on.
async fn a_squatted_attach_address_refuses_the_snapshot() {
    let t = TestSandbox::new(OciRuntime::Gvisor).await;
    let (_dir, f) = fixture(images::python_layout);
    let sandbox = start(&t, &f).await;
    let squat = python(
        "import socket, time\n\
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
s.bind(b'\\0oci-sandbox-attach')\n\
s.listen()\n\
open('/tmp/squatting', 'w').close()\n\
time.sleep(3600)",
    );
    sandbox.exec_background(&squat).await.unwrap();
    let exists = "import os; print(os.path.exists('/tmp/squatting'))";
    while py_in(&sandbox, exists).await != "True\n" {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let err = sandbox.snapshot().await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::Snapshot { kind: SnapshotErrorKind::Busy, reason } if reason.contains("attach")),
        "{err}"
    );
    assert_eq!(py_in(&sandbox, "print('alive')").await, "alive\n");
    close_and_check(&t, vec![sandbox], None).await;
}

/// gVisor: a process carried by the checkpoint races the host to the attach in every
/// restore, passing sockets of its own with guessed tokens. The launcher takes none of
/// them (the racer never hears "ready"), and the host's attach gets through.
async fn a_racing_attach_is_refused() {
    let t = TestSandbox::new(OciRuntime::Gvisor).await;
    let (_dir, f) = fixture(images::python_layout);
    let parent = start(&t, &f).await;
    let racer = python(
        "import socket, array, time\n\
while True:\n\
    try:\n\
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
        c.connect(b'\\0oci-sandbox-attach')\n\
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n\
        c.sendmsg([b'a'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [b.fileno()]))])\n\
        a.send(b'A' + b'0' * 32 + b'\\0')\n\
        a.settimeout(0.5)\n\
        try:\n\
            got = a.recv(64)\n\
        except socket.timeout:\n\
            got = b''\n\
        with open('/tmp/race', 'a') as log:\n\
            log.write('got %r\\n' % got)\n\
        for s in (a, b, c): s.close()\n\
    except OSError:\n\
        time.sleep(0.001)",
    );
    parent.exec_background(&racer).await.unwrap();
    let snap = parent.snapshot().await.expect("snapshot");
    let forks = [
        t.sandbox.start_from(&snap).await.expect("fork 1"),
        t.sandbox.start_from(&snap).await.expect("fork 2"),
    ];
    for sandbox in [&parent, &forks[0], &forks[1]] {
        let log = py_in(
            sandbox,
            "import os; print(open('/tmp/race').read() if os.path.exists('/tmp/race') else '')",
        )
        .await;
        assert!(!log.contains("ready"), "a racer attached: {log}");
        assert_eq!(py_in(sandbox, "print('served')").await, "served\n");
    }
    drop(snap);
    let [first, second] = forks;
    close_and_check(&t, vec![parent, first, second], None).await;
}

/// Runs a Python program in `sandbox` (the Python image has no shell) and returns its stdout.
async fn py_in(sandbox: &oci_sandbox::Sandbox, code: &str) -> String {
    common::exec_in(sandbox, &python(code)).await
}

fn python(code: &str) -> ExecConfig {
    ExecConfig::new("python3", vec!["-c".to_owned(), code.to_owned()])
}

mod runc {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_planted_layer_stays_inside() {
        super::a_planted_layer_stays_inside(oci_sandbox::OciRuntime::Runc).await
    }
}

mod crun {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_planted_layer_stays_inside() {
        super::a_planted_layer_stays_inside(oci_sandbox::OciRuntime::Crun).await
    }
}

mod runsc {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_squatted_attach_address_refuses_the_snapshot() {
        super::a_squatted_attach_address_refuses_the_snapshot().await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_racing_attach_is_refused() {
        super::a_racing_attach_is_refused().await
    }
}
