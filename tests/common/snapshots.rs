//! Helpers of the snapshot tests (tests/snapshots.rs, tests/escape_snapshots.rs; included by
//! them with `#[path]`): an image fixture in a temp dir, the policy and start of a sandbox
//! that may be snapshotted, the walk of a saved snapshot and the check of an empty store.

use super::TestSandbox;
use super::images::ImageFixture;
use oci_sandbox::{Image, NamespaceContainer, SandboxConfig};

/// An image of the fixtures (`build`: `images::busybox_layout`, `images::python_layout`) in a
/// temp dir, removed with it.
pub fn fixture(build: fn(&std::path::Path) -> ImageFixture) -> (tempfile::TempDir, ImageFixture) {
    let dir = tempfile::Builder::new()
        .prefix("osb-snap-img-")
        .tempdir()
        .unwrap();
    let f = build(&dir.path().join("image"));
    (dir, f)
}

/// The default policy on `f`'s image, with a writable root and snapshots.
pub fn snapshot_policy(f: &ImageFixture) -> SandboxConfig {
    SandboxConfig {
        image: Some(Image::OciLayout {
            path: f.layout.clone(),
            reference: f.tag.clone(),
        }),
        writable_root: true,
        snapshots: true,
        ..SandboxConfig::default()
    }
}

/// A long-lived sandbox under [`snapshot_policy`].
pub async fn start(t: &TestSandbox, f: &ImageFixture) -> oci_sandbox::Sandbox {
    let config = NamespaceContainer::build_config(&snapshot_policy(f), "true", vec![]);
    t.sandbox.start(&config).await.expect("sandbox start")
}

/// Every path under `dir`, links not followed.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// No snapshot is left in the store once every handle is gone (their removal runs on the
/// blocking pool: give it a moment).
pub async fn assert_store_empty(t: &TestSandbox) {
    let store = t.sandbox.state_root().parent().unwrap().join("snapshots");
    let left = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&store)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    for _ in 0..100 {
        if left().is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("snapshots left in {}: {:?}", store.display(), left());
}

/// Closes `sandboxes` and drops them (a sandbox's handle keeps the snapshot it runs on: the
/// last of them removes it; the caller drops its own snapshots first), then checks that
/// nothing of them is left: no container, bundle, cgroup or process (nor one mentioning
/// `marker`), and no snapshot in the store.
pub async fn close_and_check(
    t: &TestSandbox,
    sandboxes: Vec<oci_sandbox::Sandbox>,
    marker: Option<&str>,
) {
    let ids: Vec<String> = sandboxes.iter().map(|s| s.id().to_owned()).collect();
    for sandbox in &sandboxes {
        sandbox.close().await;
    }
    drop(sandboxes);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    t.assert_nothing_left(&ids, marker).await;
    assert_store_empty(t).await;
}
