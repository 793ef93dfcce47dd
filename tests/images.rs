//! OCI images as the root filesystem, on every runtime: images built by umoci and skopeo,
//! read from a layout, a `docker save` archive and a real registry on loopback.

mod common;

use common::TestSandbox;
use common::images::{self, ImageFixture};
use oci_sandbox::{
    ExecConfig, Image, ImageErrorKind, NamespaceContainer, OciRuntime, SandboxConfig, SandboxError,
};

/// The busybox image of the fixtures, built in `dir`.
fn busybox(dir: &std::path::Path) -> ImageFixture {
    images::busybox_layout(dir)
}

fn layout_image(f: &ImageFixture, tag: &str) -> Image {
    Image::OciLayout {
        path: f.layout.clone(),
        reference: tag.to_owned(),
    }
}

fn policy_for(image: Image) -> SandboxConfig {
    SandboxConfig {
        image: Some(image),
        ..SandboxConfig::default()
    }
}

/// Runs `script` with `sh -c` in a spawn under `policy`; returns (success, stdout, stderr).
async fn sh(t: &TestSandbox, policy: &SandboxConfig, script: &str) -> (bool, String, String) {
    let out = t.output(policy, &["sh", "-c", script]).await;
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn the_image_is_the_root_with_its_config(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let dir = tempfile::Builder::new()
        .prefix("osb-img-")
        .tempdir()
        .unwrap();
    let f = busybox(dir.path());
    let policy = policy_for(layout_image(&f, &f.tag));
    let (ok, out, err) = sh(
        &t,
        &policy,
        "cat /etc/motd; ls /etc/gone 2>&1; ls /opaque; echo $GREETING; pwd; id -u; \
         cat /data/hardlink; stat -c %h /data/original; stat -c %u:%g /home/app; \
         test -e /usr/bin/python3 && echo host-usr || echo no-host-usr",
    )
    .await;
    assert!(ok, "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "layer two", "{out}");
    assert!(
        lines[1].contains("No such file"),
        "the whiteout hides /etc/gone: {out}"
    );
    assert_eq!(lines[2], "new.txt", "the opaque dir hides old.txt: {out}");
    assert_eq!(lines[3], "hello-from-image", "{out}");
    assert_eq!(lines[4], "/data", "WorkingDir: {out}");
    assert_eq!(lines[5], "0", "{out}");
    assert_eq!(lines[6], "original", "{out}");
    assert_eq!(lines[7], "2", "a hard link: {out}");
    assert_eq!(lines[8], "1000:1000", "owners as the image has them: {out}");
    assert_eq!(lines[9], "no-host-usr", "{out}");

    // The image's User, its home as WorkingDir, and Entrypoint + Cmd with no command.
    let app = policy_for(layout_image(&f, images::BUSYBOX_APP_TAG));
    let (ok, out, err) = sh(&t, &app, "id -u; id -g; pwd; cat secret").await;
    assert!(ok, "{out} {err}");
    assert_eq!(
        out.lines().take(3).collect::<Vec<_>>(),
        ["1000", "1000", "/home/app"]
    );
    let entry = NamespaceContainer::build_config(&policy, "", Vec::<String>::new());
    let out = t
        .sandbox
        .spawn(&entry)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "entry-hello-from-image\n"
    );
}

async fn writes_stay_in_their_container(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let dir = tempfile::Builder::new()
        .prefix("osb-img-")
        .tempdir()
        .unwrap();
    let f = busybox(dir.path());
    let mut policy = policy_for(layout_image(&f, &f.tag));
    // Read-only by default.
    let (ok, _, err) = sh(&t, &policy, "echo x > /data/new").await;
    assert!(!ok && err.contains("Read-only"), "{err}");
    policy.writable_root = true;
    let (ok, out, err) = sh(
        &t,
        &policy,
        "echo changed > /data/original; rm /etc/motd; mkdir /newdir; cat /data/hardlink; \
         ls /etc/motd 2>&1; true",
    )
    .await;
    assert!(ok, "{out} {err}");
    assert!(out.contains("No such file"), "{out}");
    // The next container sees the image as it was.
    let (ok, out, err) = sh(
        &t,
        &policy,
        "cat /data/original /etc/motd; ls -d /newdir 2>&1; true",
    )
    .await;
    assert!(ok, "{out} {err}");
    assert!(out.starts_with("original\nlayer two\n"), "{out}");
    assert!(out.contains("No such file"), "/newdir is gone: {out}");
    // A long-lived sandbox keeps its writes across execs.
    let sandbox = t
        .sandbox
        .start(&NamespaceContainer::build_config(&policy, "true", vec![]))
        .await
        .unwrap();
    common::sh_in(&sandbox, "echo kept > /data/mine").await;
    assert_eq!(common::sh_in(&sandbox, "cat /data/mine").await, "kept\n");
    sandbox.close().await;
}

async fn bad_images_are_typed_errors_and_leave_nothing(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let dir = tempfile::Builder::new()
        .prefix("osb-img-")
        .tempdir()
        .unwrap();
    let f = busybox(dir.path());
    let kind_of = |e: SandboxError| match e {
        SandboxError::Image { kind, .. } => kind,
        other => panic!("expected an image error, got {other:?}"),
    };
    let missing_tag = policy_for(layout_image(&f, "no-such-tag"));
    let err = t
        .sandbox
        .spawn(&t.config_with(&missing_tag, "true", &[]))
        .await
        .unwrap_err();
    assert_eq!(kind_of(err), ImageErrorKind::NotFound);
    let not_archive = dir.path().join("not-an-archive.tar");
    std::fs::write(&not_archive, b"this is not a tar").unwrap();
    let err = t
        .sandbox
        .pull(&Image::DockerArchive(not_archive))
        .await
        .unwrap_err();
    assert_eq!(kind_of(err), ImageErrorKind::InvalidFormat);
    // A corrupt layer: its blob no longer hashes to its digest.
    let blob = images::blob_path(&f.layout, &f.layer_digests[1]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = t.sandbox.pull(&layout_image(&f, &f.tag)).await.unwrap_err();
    assert_eq!(kind_of(err), ImageErrorKind::DigestMismatch);
    // Nothing half-made in the store.
    let tmp = t.state.path().join("images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp files left"
    );
    assert!(t.sandbox.list().await.unwrap().is_empty());
    let _ = ExecConfig::shell("true");
}

on_every_runtime!(
    the_image_is_the_root_with_its_config,
    writes_stay_in_their_container,
    bad_images_are_typed_errors_and_leave_nothing,
);
