//! The library used by an ordinary user: rootless runc and runsc.
//!
//! Run as root (as `make test` does), each test runs itself again as the unprivileged user
//! `osb-rootless` (created if missing) from a copy of this binary that the user can read, and
//! fails if that run fails. Run as an ordinary user, the tests run directly.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::TestSandbox;
use common::ordinary_user::{as_ordinary_user, as_ordinary_user_with};
use oci_sandbox::{
    NamespaceContainer, OciRuntime, OutputMode, SandboxConfig, SandboxError, UnenforcedLimits,
};
use tokio::io::AsyncWriteExt;

/// Runs a shell script to its end and returns its status and stdout.
async fn run_sh(
    t: &TestSandbox,
    policy: &SandboxConfig,
    script: &str,
) -> (oci_sandbox::ExitStatus, String) {
    let out = t.output(policy, &["sh", "-c", script]).await;
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn the_three_modes_run_and_the_container_root_is_the_user(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    assert!(t.sandbox.is_rootless());
    let uid = nix::unistd::geteuid().as_raw();
    let work = tempfile::tempdir().unwrap();
    let policy = SandboxConfig {
        workdir: Some(work.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let (status, out) = run_sh(
        &t,
        &policy,
        "id -u; cat /proc/self/uid_map; echo hi > /workspace/f; cat /workspace/f",
    )
    .await;
    assert!(status.success(), "{status}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    assert_eq!(lines.last(), Some(&"hi"));
    if kind == OciRuntime::Runc {
        let map: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(map, ["0", &uid.to_string(), "1"]);
    }
    assert_eq!(
        std::fs::read_to_string(work.path().join("f")).unwrap(),
        "hi\n"
    );

    let capture = t
        .sandbox
        .spawn_captured(
            &t.config_with(&policy, "sh", &["-c", "echo out; echo err >&2; exit 3"]),
            OutputMode::Separate,
        )
        .await
        .unwrap();
    assert_eq!(capture.wait().await.unwrap().code(), Some(3));
    assert_eq!(&capture.output.read_stdout().await.unwrap()[..], b"out\n");
    assert_eq!(&capture.output.read_stderr().await.unwrap()[..], b"err\n");

    let mut pty = t
        .sandbox
        .spawn_interactive(&t.config_with(&policy, "sh", &[]))
        .await
        .unwrap();
    pty.write_all(b"echo $((6*7)); exit 4\n").await.unwrap();
    common::read_until(&mut pty, "42").await;
    assert_eq!(pty.wait().await.unwrap().code(), Some(4));
    drop((capture, pty));
    t.assert_nothing_left(&[], None).await;
}

async fn attacks_fail_rootless_too(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let policy = SandboxConfig::default();
    let mut script = String::new();
    for (label, cmd) in [
        ("shadow", "cat /etc/shadow".to_owned()),
        ("write-usr", "touch /usr/osb-rootless-x".to_owned()),
        ("write-root", "touch /osb-rootless-x".to_owned()),
        ("unshare-user", "unshare -Ur true".to_owned()),
        ("mount", "mount -t tmpfs none /tmp".to_owned()),
        (
            "loopback",
            format!(
                "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)\""
            ),
        ),
    ] {
        script += &format!(
            "if {cmd} >/dev/null 2>&1; then echo '{label} ok'; else echo '{label} refused'; fi\n"
        );
    }
    let (status, out) = run_sh(&t, &policy, &script).await;
    assert!(status.success(), "{status}");
    for label in [
        "shadow",
        "write-usr",
        "write-root",
        "unshare-user",
        "mount",
        "loopback",
    ] {
        assert!(out.contains(&format!("{label} refused")), "{label}: {out}");
    }
    // The timeout is the library's own: it holds rootless.
    let sleeper = SandboxConfig {
        timeout: Some(Duration::from_millis(500)),
        ..SandboxConfig::default()
    };
    let status = t
        .sandbox
        .spawn(&t.config_with(&sleeper, "sleep", &["100"]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(status.timed_out(), "{status}");
    t.assert_nothing_left(&[], None).await;
}

async fn unenforceable_limits_are_refused_when_asked(kind: OciRuntime) {
    let state = tempfile::tempdir().unwrap();
    let sandbox = NamespaceContainer::builder()
        .runtime(kind)
        .state_dir(state.path())
        .unenforced_limits(UnenforcedLimits::Refuse)
        .build()
        .await
        .unwrap();
    let config = NamespaceContainer::build_config(&SandboxConfig::default(), "true", vec![]);
    match sandbox.spawn(&config).await {
        Err(SandboxError::InvalidConfig { field, reason }) => {
            assert_eq!(field, "limits");
            assert!(reason.contains("memory") && reason.contains("pids") && reason.contains("cpu"));
        }
        Err(e) => panic!("expected InvalidConfig on limits, got {e:?}"),
        Ok(_) => panic!("the spawn pretended to enforce cgroup limits"),
    }
    let no_limits = SandboxConfig {
        memory_limit: None,
        pids_limit: None,
        cpu_millicores: None,
        ..SandboxConfig::default()
    };
    let config = NamespaceContainer::build_config(&no_limits, "true", vec![]);
    let status = sandbox.spawn(&config).await.unwrap().wait().await.unwrap();
    assert!(status.success(), "{status}");
    sandbox.close().await;
}

/// Where the root run leaves the busybox image for the re-run.
const IMAGE_ENV: &str = "OSB_ROOTLESS_IMAGE_LAYOUT";

/// As root, the fixtures' busybox image (built with owners, which needs root) in a temp dir
/// every user may read.
fn busybox_for_everyone() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("osb-rootless-img-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = common::images::busybox_layout(dir.path());
    common::images::run(
        std::process::Command::new("chmod")
            .arg("-R")
            .arg("a+rX")
            .arg(&f.layout),
    );
    (dir, f.layout)
}

async fn images_run_rootless(kind: OciRuntime) {
    let layout = PathBuf::from(std::env::var_os(IMAGE_ENV).expect("the root run sets the layout"));
    let t = TestSandbox::new(kind).await;
    assert!(t.sandbox.is_rootless());
    let image = |tag: &str| oci_sandbox::Image::OciLayout {
        path: layout.clone(),
        reference: tag.to_owned(),
    };
    let policy = SandboxConfig {
        image: Some(image(common::images::BUSYBOX_TAG)),
        ..SandboxConfig::default()
    };
    // The layers, their whiteout and opaque dir, the config, and owners: the caller owns the
    // store, and it is the container's root.
    let (status, out) = run_sh(
        &t,
        &policy,
        "cat /etc/motd; ls /opaque; test -e /etc/gone || echo gone-is-gone; \
         echo $GREETING; pwd; id -u; stat -c %u /home/app; \
         [ /data/original -ef /data/hardlink ] && echo linked; \
         touch /new 2>/dev/null || echo read-only",
    )
    .await;
    assert!(status.success(), "{status}: {out}");
    assert_eq!(
        out,
        "layer two\nnew.txt\ngone-is-gone\nhello-from-image\n/data\n0\n0\nlinked\nread-only\n"
    );
    // A writable root: a sandbox keeps its writes, the next container does not see them.
    let writable = SandboxConfig {
        writable_root: true,
        ..policy.clone()
    };
    let sandbox = t.start_sandbox(&writable).await;
    assert_eq!(
        common::sh_in(
            &sandbox,
            "echo kept > /etc/motd; rm /bin/true; cat /etc/motd"
        )
        .await,
        "kept\n"
    );
    assert_eq!(common::sh_in(&sandbox, "cat /etc/motd").await, "kept\n");
    sandbox.close().await;
    let (status, out) = run_sh(&t, &policy, "cat /etc/motd; test -e /bin/true && echo t").await;
    assert!(status.success(), "{status}");
    assert_eq!(out, "layer two\nt\n");
    // A rootless runc container maps one id: an image whose user is another is refused.
    if kind == OciRuntime::Runc {
        let app = SandboxConfig {
            image: Some(image(common::images::BUSYBOX_APP_TAG)),
            ..SandboxConfig::default()
        };
        let config = NamespaceContainer::build_config(&app, "id", vec![]);
        match t.sandbox.spawn(&config).await {
            Err(SandboxError::InvalidConfig { field, reason }) => {
                assert_eq!(field, "uid");
                assert!(reason.contains("rootless"), "{reason}");
            }
            Err(e) => panic!("expected InvalidConfig on uid, got {e:?}"),
            Ok(_) => panic!("a rootless container ran as an unmapped user"),
        }
    }
    // Snapshots: the writable layer (the caller's own files) taken and forked.
    let snapshots = SandboxConfig {
        snapshots: true,
        ..writable.clone()
    };
    if kind == OciRuntime::Gvisor {
        // runsc restores nothing rootless: refused at the start, not after a checkpoint.
        let config = NamespaceContainer::build_config(&snapshots, "true", vec![]);
        match t.sandbox.start(&config).await {
            Err(SandboxError::InvalidConfig { field, .. }) => assert_eq!(field, "snapshots"),
            Err(e) => panic!("expected InvalidConfig on snapshots, got {e:?}"),
            Ok(_) => panic!("a rootless gVisor sandbox with snapshots started"),
        }
        t.assert_nothing_left(&[], None).await;
        let removed = t.sandbox.prune_images().await.unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        return;
    }
    let parent = t.start_sandbox(&snapshots).await;
    common::sh_in(&parent, "echo snap > /etc/motd; echo t > /tmp/t").await;
    let snap = parent.snapshot().await.expect("a rootless snapshot");
    let fork = t.sandbox.start_from(&snap).await.expect("a rootless fork");
    common::sh_in(&parent, "echo parent > /etc/motd").await;
    assert_eq!(
        common::sh_in(&fork, "cat /etc/motd /tmp/t").await,
        "snap\nt\n"
    );
    parent.restore(&snap).await.expect("a rootless restore");
    assert_eq!(common::sh_in(&parent, "cat /etc/motd").await, "snap\n");
    parent.close().await;
    fork.close().await;
    drop((parent, fork, snap));
    t.assert_nothing_left(&[], None).await;
    // The store is the caller's, and prune can remove all it unpacked.
    let removed = t.sandbox.prune_images().await.unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    let layers = t.state.path().join("images/layers");
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 0);
}

fn images_rootless_test(name: &str, kind: OciRuntime) {
    let root_prepared = nix::unistd::geteuid().is_root().then(busybox_for_everyone);
    let env: Vec<(&str, &std::path::Path)> = root_prepared
        .as_ref()
        .map(|(_, layout)| vec![(IMAGE_ENV, layout.as_path())])
        .unwrap_or_default();
    as_ordinary_user_with(name, &env, || images_run_rootless(kind));
}

#[test]
fn runc_images_run_rootless() {
    images_rootless_test("runc_images_run_rootless", OciRuntime::Runc);
}

#[test]
fn runsc_images_run_rootless() {
    images_rootless_test("runsc_images_run_rootless", OciRuntime::Gvisor);
}

#[test]
fn runc_the_three_modes_run_and_the_container_root_is_the_user() {
    as_ordinary_user(
        "runc_the_three_modes_run_and_the_container_root_is_the_user",
        || the_three_modes_run_and_the_container_root_is_the_user(OciRuntime::Runc),
    );
}

#[test]
fn runsc_the_three_modes_run_and_the_container_root_is_the_user() {
    as_ordinary_user(
        "runsc_the_three_modes_run_and_the_container_root_is_the_user",
        || the_three_modes_run_and_the_container_root_is_the_user(OciRuntime::Gvisor),
    );
}

#[test]
fn runc_attacks_fail_rootless_too() {
    as_ordinary_user("runc_attacks_fail_rootless_too", || {
        attacks_fail_rootless_too(OciRuntime::Runc)
    });
}

#[test]
fn runsc_attacks_fail_rootless_too() {
    as_ordinary_user("runsc_attacks_fail_rootless_too", || {
        attacks_fail_rootless_too(OciRuntime::Gvisor)
    });
}

#[test]
fn runc_unenforceable_limits_are_refused_when_asked() {
    as_ordinary_user("runc_unenforceable_limits_are_refused_when_asked", || {
        unenforceable_limits_are_refused_when_asked(OciRuntime::Runc)
    });
}

#[test]
fn runsc_unenforceable_limits_are_refused_when_asked() {
    as_ordinary_user("runsc_unenforceable_limits_are_refused_when_asked", || {
        unenforceable_limits_are_refused_when_asked(OciRuntime::Gvisor)
    });
}

#[test]
fn crun_says_it_needs_root() {
    as_ordinary_user("crun_says_it_needs_root", || async {
        let state = tempfile::tempdir().unwrap();
        match NamespaceContainer::builder()
            .runtime(OciRuntime::Crun)
            .state_dir(state.path())
            .build()
            .await
        {
            Err(SandboxError::InvalidConfig { field, reason }) => {
                assert_eq!(field, "runtime");
                assert!(reason.contains("root"), "{reason}");
            }
            other => panic!("expected InvalidConfig on runtime, got {other:?}"),
        }
    });
}
