//! Faults of the machine, not of the caller: a read-only or full state root, a capture dir
//! that cannot be written, a container init that dies on its own. Each ends in a clear typed
//! error (or status) and leaves nothing behind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::TestSandbox;
use oci_sandbox::{NamespaceContainer, OciRuntime, OutputMode, SandboxConfig, SandboxError};

/// A tmpfs mounted at a fresh temp dir with `options`, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(options: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("osb-fault-")
            .tempdir_in("/tmp")
            .unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount -o {options} (the tests run as root)"
        );
        Tmpfs(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test]
async fn a_read_only_state_root_is_an_io_error() {
    let ro = Tmpfs::mount("ro,size=1m");
    let err = NamespaceContainer::builder()
        .state_dir(ro.path().join("state"))
        .build()
        .await
        .unwrap_err();
    match &err {
        SandboxError::Io { path, source, .. } => {
            assert!(path.starts_with(ro.path()), "{err}");
            assert_eq!(source.raw_os_error(), Some(libc::EROFS), "{err}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(ro.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_full_state_root_is_an_io_error_at_spawn_and_leaves_no_bundle() {
    // Room for the shared rootfs and the launcher binary (under 1 MiB), no more.
    let small = Tmpfs::mount("size=2m");
    let sandbox = NamespaceContainer::builder()
        .state_dir(small.path())
        .build()
        .await
        .unwrap();
    // Fill the disk, from a process of its own: a file this process opened would be inherited
    // by whatever the tests running next to this one fork meanwhile, and its space would stay
    // taken after the removal below until that child's exec closed it.
    let filler = small.path().join("filler");
    let filled = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=4", "status=none"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!filled.success(), "4 MiB fit in a 2 MiB tmpfs");
    let config = NamespaceContainer::build_config(&SandboxConfig::default(), "true", vec![]);
    let err = sandbox.spawn(&config).await.unwrap_err();
    match &err {
        SandboxError::Io { source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}")
        }
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_dir(small.path().join("runc/bundles"))
            .unwrap()
            .count(),
        0
    );
    // Room again: the same sandbox works.
    std::fs::remove_file(&filler).unwrap();
    let out = sandbox.spawn(&config).await.unwrap().wait().await.unwrap();
    assert!(out.success());
    sandbox.close().await;
    assert!(sandbox.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unwritable_capture_dir_is_an_io_error_and_leaves_nothing() {
    let ro = Tmpfs::mount("ro,size=1m");
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let sandbox = NamespaceContainer::builder()
        .state_dir(t.state.path())
        .capture_dir(ro.path())
        .build()
        .await
        .unwrap();
    let err = sandbox
        .spawn_captured(&t.config("echo", &["x"]), OutputMode::Separate)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SandboxError::Io { path, .. } if path.starts_with(ro.path())),
        "{err}"
    );
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// The host pid of a container's init, from its cgroup.
fn init_pid(id: &str) -> i32 {
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/oci-sandbox/{id}/cgroup.procs"))
            .unwrap();
    procs.lines().next().unwrap().trim().parse().unwrap()
}

async fn running(t: &TestSandbox, id: &str) {
    for _ in 0..200 {
        if t.sandbox.list().await.unwrap().iter().any(|l| l == id)
            && common::cgroup_exists(id)
            && std::fs::read_to_string(format!("/sys/fs/cgroup/pids/oci-sandbox/{id}/cgroup.procs"))
                .is_ok_and(|p| !p.trim().is_empty())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never ran");
}

async fn an_init_killed_from_outside_is_reported_and_leaves_nothing(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = "100.3131";
    // Piped...
    let mut p = t
        .sandbox
        .spawn(&t.config("sleep", &[marker]))
        .await
        .unwrap();
    let id = p.id().to_owned();
    running(&t, &id).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init_pid(&id)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), p.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    // ...and captured.
    let c = t
        .sandbox
        .spawn_captured(&t.config("sleep", &[marker]), OutputMode::Separate)
        .await
        .unwrap();
    let id2 = c.id().to_owned();
    running(&t, &id2).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init_pid(&id2)),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), c.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal(), Some(9), "{status}");
    drop(c);
    t.assert_nothing_left(&[&id, &id2], Some(marker)).await;
}

mod runc {
    #[tokio::test]
    async fn an_init_killed_from_outside_is_reported_and_leaves_nothing() {
        super::an_init_killed_from_outside_is_reported_and_leaves_nothing(
            oci_sandbox::OciRuntime::Runc,
        )
        .await
    }
}

mod crun {
    #[tokio::test]
    async fn an_init_killed_from_outside_is_reported_and_leaves_nothing() {
        super::an_init_killed_from_outside_is_reported_and_leaves_nothing(
            oci_sandbox::OciRuntime::Crun,
        )
        .await
    }
}
