//! Running a test as an ordinary user (`osb-rootless`, created if missing): as root, the test
//! binary runs itself again as that user with only one test selected, and fails if that run
//! does (tests/rootless.rs, tests/escape_rootless_images.rs).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The ordinary user the tests run as.
pub const USER: &str = "osb-rootless";

/// Set in the environment of the re-run, so that it never tries to switch again.
pub const CHILD: &str = "OSB_ROOTLESS_CHILD";

/// Runs `body` as an ordinary user: here if this process is one, else in a copy of this test
/// binary run as [`USER`] with only `name` selected.
pub fn as_ordinary_user<F: std::future::Future<Output = ()>>(name: &str, body: impl FnOnce() -> F) {
    as_ordinary_user_with(name, &[], body)
}

/// [`as_ordinary_user`], with `env` added to the re-run's environment (paths root prepared).
pub fn as_ordinary_user_with<F: std::future::Future<Output = ()>>(
    name: &str,
    env: &[(&str, &std::path::Path)],
    body: impl FnOnce() -> F,
) {
    if !nix::unistd::geteuid().is_root() {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(body());
    }
    assert!(
        std::env::var_os(CHILD).is_none(),
        "the re-run as {USER} is still root"
    );
    let (_binary_dir, binary) = readable_copy_of_this_binary();
    let out = std::process::Command::new("runuser")
        .args(["-u", USER, "--"])
        .arg(binary)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env_clear()
        .env(CHILD, "1")
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", "/tmp")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .current_dir("/tmp")
        .output()
        .expect("runuser (util-linux) must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "as {USER}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

/// The user, created if missing (a system user without a login shell or home).
fn ensure_user() {
    let exists = std::process::Command::new("id")
        .arg(USER)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        let status = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status()
            .expect("useradd");
        // A concurrent test may have created it first.
        assert!(
            status.success()
                || std::process::Command::new("id")
                    .arg(USER)
                    .status()
                    .unwrap()
                    .success(),
            "useradd {USER} failed"
        );
    }
}

/// This test binary in a world-readable temp dir (the build dir may sit under a directory the
/// user cannot enter): hard-linked there (a copy across filesystems), gone with the dir.
pub fn readable_copy_of_this_binary() -> (tempfile::TempDir, PathBuf) {
    user_ready();
    let dir = tempfile::Builder::new()
        .prefix("osb-rootless-bin-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("rootless-tests");
    let exe = std::env::current_exe().unwrap();
    if std::fs::hard_link(&exe, &path).is_err() {
        std::fs::copy(&exe, &path).unwrap();
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

/// Makes sure the user exists (once per process).
pub fn user_ready() {
    static USER_READY: OnceLock<()> = OnceLock::new();
    USER_READY.get_or_init(ensure_user);
}
