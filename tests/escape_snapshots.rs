//! Attacks on snapshots, from code inside the sandbox: what a snapshot takes from the sandbox
//! (its writable layer, on runc and crun) is read back by the host and becomes a layer of
//! other sandboxes; and on gVisor the launcher listens, between its detach and its attach,
//! on an address the sandbox's processes can reach.

mod common;
#[path = "common/snapshots.rs"]
mod snapshot_support;

use common::images;
use common::{TestSandbox, sh_in};
use oci_sandbox::{
    ExecConfig, NamespaceContainer, OciRuntime, SandboxError, SnapshotErrorKind, SnapshotOptions,
};
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

/// runc, crun: the image holds a 4755 and a 2755 file and a 2775 directory. The sandbox
/// `touch`es the first (overlayfs copies it up with its mode), rewrites the second through
/// `mmap` (which keeps the bits) and makes a directory in the third (which inherits its
/// setgid bit); given `CAP_SETFCAP`, it sets a file capability. Neither the store's layer,
/// nor the saved directory, nor what a fork sees has a set-id bit or a capability: the
/// sandbox's content stays, its privileges do not.
async fn set_id_files_lose_their_bits(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = fixture(images::setid_layout);
    let mut config = NamespaceContainer::build_config(&snapshot_policy(&f), "true", vec![]);
    config.security.capabilities = vec!["CAP_SETFCAP".to_owned()];
    let parent = t.sandbox.start(&config).await.expect("sandbox start");
    let attack = py_in(&parent, ATTACK).await;
    let lines: Vec<&str> = attack.lines().collect();
    // The attack is real: the bits were there, and stayed through it.
    assert_eq!(lines[0], "0o4755 0o2755 0o2775", "{attack}");
    assert_eq!(lines[1], "capability set", "{attack}");
    assert_eq!(lines[2], "0o4755 0o2755 0o2755", "{attack}");
    assert_eq!(lines[3], "HACKED", "{attack}");
    let snap = parent.snapshot().await.expect("snapshot");
    let store = t.sandbox.state_root().parent().unwrap().join("snapshots");
    let in_store = assert_unprivileged(&store);
    for name in ["setid/suid", "setid/sgid", "setid/gdir/mine", "capable"] {
        assert!(
            in_store.iter().any(|p| p.ends_with(name)),
            "{name} is not in the snapshot's layer: {in_store:?}"
        );
    }
    let saved_parent = tempfile::Builder::new()
        .prefix("osb-esnap-setid-")
        .tempdir_in(t.state.path())
        .unwrap();
    let saved = saved_parent.path().join("s");
    snap.save(&saved).await.expect("save");
    let in_saved = assert_unprivileged(&saved);
    let sgid = in_saved.iter().find(|p| p.ends_with("setid/sgid")).unwrap();
    assert!(std::fs::read(sgid).unwrap().starts_with(b"HACKED"));

    let fork = t.sandbox.start_from(&snap).await.expect("fork");
    let seen_by = |sandbox| py_in(sandbox, SEEN);
    let want = "0o755 0o755 0o775 0o755\nFalse\nHACKED\n";
    assert_eq!(seen_by(&fork).await, want, "in the fork");
    assert_eq!(seen_by(&parent).await, want, "in the sandbox gone on");
    drop((snap, saved_parent));
    close_and_check(&t, vec![parent, fork], None).await;
}

/// What the sandbox of [`set_id_files_lose_their_bits`] does: the modes before, the
/// attack, whether the capability was set, the modes after, the rewritten content.
const ATTACK: &str = r#"import os, mmap
mode = lambda p: oct(os.stat(p).st_mode & 0o7777)
print(mode('/setid/suid'), mode('/setid/sgid'), mode('/setid/gdir'))
os.utime('/setid/suid')
with open('/setid/sgid', 'r+b') as f:
    m = mmap.mmap(f.fileno(), 0)
    m[:6] = b'HACKED'
    m.flush()
    m.close()
os.mkdir('/setid/gdir/mine')
with open('/capable', 'w') as f:
    f.write('x')
os.chmod('/capable', 0o755)
try:
    os.setxattr('/capable', 'security.capability', bytes([1, 0, 0, 2, 0, 0x20, 0, 0] + [0] * 12))
    print('capability set')
except OSError as e:
    print('capability refused', e.errno)
print(mode('/setid/suid'), mode('/setid/sgid'), mode('/setid/gdir/mine'))
print(open('/setid/sgid').read(6))
"#;

/// What a sandbox started from that snapshot sees of the attack's files.
const SEEN: &str = r#"import os
mode = lambda p: oct(os.stat(p).st_mode & 0o7777)
print(mode('/setid/suid'), mode('/setid/sgid'), mode('/setid/gdir'), mode('/setid/gdir/mine'))
print('security.capability' in os.listxattr('/capable'))
print(open('/setid/sgid').read(6))
"#;

/// Every entry under `dir` (returned), links not followed: none has a set-id bit or a
/// capability or `trusted.*` attribute (but overlayfs's own).
fn assert_unprivileged(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let all = walk(dir);
    for path in &all {
        let meta = std::fs::symlink_metadata(path).unwrap();
        if !meta.file_type().is_symlink() {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            assert_eq!(mode & 0o6000, 0, "{} has mode {mode:o}", path.display());
        }
        for name in xattr_names(path) {
            let privileged = name == "security.capability"
                || (name.starts_with("trusted.") && !name.starts_with("trusted.overlay."));
            assert!(!privileged, "{} has {name}", path.display());
        }
    }
    all
}

/// The names of `path`'s extended attributes, links not followed.
fn xattr_names(path: &std::path::Path) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: a NUL-terminated path and a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        n >= 0,
        "{}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    buf.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// runc, crun: a saved snapshot's directory, altered by hand to hold a setuid file, a
/// device node or a file capability (which no save writes), is refused by the load with a
/// typed error that names it, and the load changes nothing; the directory as saved loads.
async fn a_saved_snapshot_with_privileges_is_refused(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = fixture(images::busybox_layout);
    let parent = start(&t, &f).await;
    sh_in(&parent, "echo mine > /planted").await;
    let snap = parent
        .snapshot_with(SnapshotOptions::default().keep_running(false))
        .await
        .unwrap();
    let out = tempfile::Builder::new()
        .prefix("osb-esnap-load-")
        .tempdir_in(t.state.path())
        .unwrap();
    let saved = out.path().join("s");
    snap.save(&saved).await.expect("save");
    drop(snap);
    let planted = walk(&saved)
        .into_iter()
        .find(|p| p.ends_with("planted"))
        .expect("the sandbox's file is saved");
    let layer = planted.parent().unwrap().to_path_buf();
    let set_mode = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let refused = |what: &'static str| {
        let (t, saved) = (&t, &saved);
        async move {
            let err = t.sandbox.load_snapshot(saved).await.unwrap_err();
            assert!(
                matches!(&err, SandboxError::Snapshot { kind: SnapshotErrorKind::Corrupt, reason } if reason.contains(what)),
                "{err}"
            );
        }
    };
    set_mode(0o4755);
    refused("set-id").await;
    set_mode(0o2755);
    refused("set-id").await;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&planted).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o2755, "the load changed the file");
    }
    set_mode(0o644);
    let device = layer.join("null");
    nix::sys::stat::mknod(
        &device,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    refused("device").await;
    std::fs::remove_file(&device).unwrap();
    set_xattr(
        &planted,
        "security.capability",
        &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
    );
    refused("security.capability").await;
    remove_xattr(&planted, "security.capability");
    let loaded = t
        .sandbox
        .load_snapshot(&saved)
        .await
        .expect("load as saved");
    drop(loaded);
    drop(out);
    close_and_check(&t, vec![parent], None).await;
}

fn set_xattr(path: &std::path::Path, name: &str, value: &[u8]) {
    use std::os::unix::ffi::OsStrExt;
    let (p, n) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap(),
        std::ffi::CString::new(name).unwrap(),
    );
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

fn remove_xattr(path: &std::path::Path, name: &str) {
    use std::os::unix::ffi::OsStrExt;
    let (p, n) = (
        std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap(),
        std::ffi::CString::new(name).unwrap(),
    );
    // SAFETY: NUL-terminated strings.
    let rc = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
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
    // A raw string: a `\` line continuation would eat the indentation (the racer once never
    // ran, failing with an IndentationError).
    let racer = python(
        r#"import socket, array, time
open('/tmp/racing', 'w').close()
while True:
    try:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.connect(b'\0oci-sandbox-attach')
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        c.sendmsg([b'a'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', [b.fileno()]))])
        a.send(b'A' + b'0' * 32 + b'\0')
        a.settimeout(0.5)
        try:
            got = a.recv(64)
        except socket.timeout:
            got = b''
        with open('/tmp/race', 'a') as log:
            log.write('got %r\n' % got)
        for s in (a, b, c): s.close()
    except OSError:
        time.sleep(0.001)"#,
    );
    parent.exec_background(&racer).await.unwrap();
    let racing = "import os; print(os.path.exists('/tmp/racing'))";
    while py_in(&parent, racing).await != "True\n" {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let snap = parent.snapshot().await.expect("snapshot");
    let forks = [
        t.sandbox.start_from(&snap).await.expect("fork 1"),
        t.sandbox.start_from(&snap).await.expect("fork 2"),
    ];
    let mut tries = 0;
    for sandbox in [&parent, &forks[0], &forks[1]] {
        let log = py_in(
            sandbox,
            "import os; print(open('/tmp/race').read() if os.path.exists('/tmp/race') else '')",
        )
        .await;
        assert!(!log.contains("ready"), "a racer attached: {log}");
        tries += log.matches("got").count();
        assert_eq!(py_in(sandbox, "print('served')").await, "served\n");
    }
    // The racer did get through to the launcher while it waited for the attach.
    assert!(tries > 0, "the racer never reached the attach address");
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_id_files_lose_their_bits() {
        super::set_id_files_lose_their_bits(oci_sandbox::OciRuntime::Runc).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saved_snapshot_with_privileges_is_refused() {
        super::a_saved_snapshot_with_privileges_is_refused(oci_sandbox::OciRuntime::Runc).await
    }
}

mod crun {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_planted_layer_stays_inside() {
        super::a_planted_layer_stays_inside(oci_sandbox::OciRuntime::Crun).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn set_id_files_lose_their_bits() {
        super::set_id_files_lose_their_bits(oci_sandbox::OciRuntime::Crun).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_saved_snapshot_with_privileges_is_refused() {
        super::a_saved_snapshot_with_privileges_is_refused(oci_sandbox::OciRuntime::Crun).await
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
