//! OCI images as the root filesystem, on every runtime: images built by umoci and skopeo,
//! read from a layout, a `docker save` archive and a real registry on loopback.

mod common;

use common::TestSandbox;
use common::images::{self, ImageFixture, image_kind};
use oci_sandbox::{Image, ImageErrorKind, NamespaceContainer, OciRuntime, SandboxConfig};

/// The busybox image of the fixtures, built in a temp dir (removed with it).
fn busybox() -> (tempfile::TempDir, ImageFixture) {
    let dir = tempfile::Builder::new()
        .prefix("osb-img-")
        .tempdir()
        .unwrap();
    let f = images::busybox_layout(dir.path());
    (dir, f)
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
    let (_dir, f) = busybox();
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
    let (_dir, f) = busybox();
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
    let (dir, f) = busybox();
    let missing_tag = policy_for(layout_image(&f, "no-such-tag"));
    let err = t
        .sandbox
        .spawn(&t.config_with(&missing_tag, "true", &[]))
        .await
        .unwrap_err();
    assert_eq!(image_kind(err), ImageErrorKind::NotFound);
    let not_archive = dir.path().join("not-an-archive.tar");
    std::fs::write(&not_archive, b"this is not a tar").unwrap();
    let err = t
        .sandbox
        .pull(&Image::DockerArchive(not_archive))
        .await
        .unwrap_err();
    assert_eq!(image_kind(err), ImageErrorKind::InvalidFormat);
    // A corrupt layer: its blob no longer hashes to its digest.
    let blob = images::blob_path(&f.layout, &f.layer_digests[1]);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = t.sandbox.pull(&layout_image(&f, &f.tag)).await.unwrap_err();
    assert_eq!(image_kind(err), ImageErrorKind::DigestMismatch);
    // Nothing half-made in the store.
    let tmp = t.state.path().join("images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "temp files left"
    );
    assert!(t.sandbox.list().await.unwrap().is_empty());
}

async fn registry_pulls_with_auth_and_progress(kind: OciRuntime) {
    use futures::StreamExt;
    use oci_sandbox::{ProgressStage, RegistryAuth, RegistryImage};
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let registry = images::Registry::start(Some(("agent", "s3cret"))).await;
    let push = {
        let (layout, tag, registry_ref) = (f.layout.clone(), f.tag.clone(), &registry);
        move || {
            registry_ref.push(&layout, &tag, "tools/busybox:1");
            registry_ref.push_docker_format(&layout, &tag, "tools/busybox:docker");
        }
    };
    push();
    let basic = RegistryAuth::Basic {
        username: "agent".into(),
        password: "s3cret".into(),
    };
    // Anonymous: refused.
    let anonymous = Image::Registry(RegistryImage::new(registry.reference("tools/busybox:1")));
    assert_eq!(
        image_kind(t.sandbox.pull(&anonymous).await.unwrap_err()),
        ImageErrorKind::Unauthorized
    );
    // With credentials, with progress for each layer, both media-type flavours.
    let image = Image::Registry(
        RegistryImage::new(registry.reference("tools/busybox:1")).auth(basic.clone()),
    );
    let mut pull = t.sandbox.pull_with_progress(&image);
    let mut ready = Vec::new();
    while let Some(event) = pull.next().await {
        if event.stage == ProgressStage::Ready {
            ready.push(event.index);
        }
    }
    let pulled = pull.finish().await.unwrap();
    assert_eq!(ready, [0, 1]);
    assert_eq!(pulled.layers, f.layer_digests);
    let (ok, out, err) = sh(&t, &policy_for(image), "cat /etc/motd; echo $GREETING").await;
    assert!(ok, "{out} {err}");
    assert_eq!(out, "layer two\nhello-from-image\n");
    let docker = Image::Registry(
        RegistryImage::new(registry.reference("tools/busybox:docker")).auth(basic.clone()),
    );
    let (ok, out, err) = sh(&t, &policy_for(docker), "cat /etc/motd").await;
    assert!(ok, "{out} {err}");
    // A digest the registry does not have, and a missing tag.
    let wrong = format!(
        "{}@sha256:{}",
        registry.reference("tools/busybox"),
        "0".repeat(64)
    );
    for reference in [wrong, registry.reference("tools/busybox:nope")] {
        let image = Image::Registry(RegistryImage::new(reference).auth(basic.clone()));
        assert_eq!(
            image_kind(t.sandbox.pull(&image).await.unwrap_err()),
            ImageErrorKind::NotFound
        );
    }
}

async fn archives_and_shared_layers(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (dir, f) = busybox();
    let archive = dir.path().join("busybox.tar");
    images::docker_archive(&f.layout, &f.tag, &archive);
    let policy = policy_for(Image::DockerArchive(archive));
    let (ok, out, err) = sh(&t, &policy, "cat /etc/motd; ls /opaque").await;
    assert!(ok, "{out} {err}");
    assert_eq!(out, "layer two\nnew.txt\n");
    // The spawn's teardown (which drops its hold on the archive's image) has finished.
    t.sandbox.close().await;
    // A hundred sandboxes from one image (eight starting at a time): one unpacked copy of
    // each layer, and next to nothing per sandbox on disk.
    let layout = policy_for(layout_image(&f, &f.tag));
    let configs: Vec<_> = (0..SHARED_SANDBOXES)
        .map(|_| NamespaceContainer::build_config(&layout, "true", vec![]))
        .collect();
    let sandboxes: Vec<_> = {
        use futures::stream::{StreamExt, TryStreamExt};
        futures::stream::iter(configs.iter().map(|c| t.sandbox.start(c)))
            .buffer_unordered(8)
            .try_collect()
            .await
            .unwrap()
    };
    let layers = t.state.path().join("images/layers");
    let dirs = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        // Layer dirs (`<hex>`), not their users' dirs (`<hex>.users`).
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().contains('.'))
        .count();
    // The archive's layers are named by their uncompressed digests, the layout's by their
    // compressed ones: two copies of two layers, shared by all.
    assert_eq!(dirs, 4, "one store copy per layer digest");
    let mut layout_bytes = 0;
    for digest in &f.layer_digests {
        layout_bytes += disk_use(&layers.join(digest.trim_start_matches("sha256:")));
    }
    let bundles = disk_use(&t.bundles_dir());
    eprintln!(
        "{kind}: {SHARED_SANDBOXES} sandboxes of one image: its layers {} KiB on disk, once; \
         all the bundles {} KiB ({} KiB each)",
        layout_bytes / 1024,
        bundles / 1024,
        bundles / 1024 / SHARED_SANDBOXES as u64
    );
    // A bundle holds its spec, a dozen empty mount points (a 4 KiB block each on ext4) and
    // a hard link to the launcher: never a copy of the image (busybox alone is over 1 MiB).
    assert!(
        bundles < SHARED_SANDBOXES as u64 * 128 * 1024,
        "{bundles} bytes of bundles for {SHARED_SANDBOXES} sandboxes"
    );
    assert!(layout_bytes > 1024 * 1024, "{layout_bytes}");
    // The archive's image is used by no live sandbox: prune removes its layers and keeps
    // the layout's, which the twenty hold.
    let mut removed = t.sandbox.prune_images().await.unwrap();
    removed.sort();
    let mut archive_layers: Vec<String> = f.config()["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    archive_layers.sort();
    assert_eq!(removed, archive_layers);
    for s in sandboxes {
        s.close().await;
    }
    t.sandbox.close().await;
    let mut removed = t.sandbox.prune_images().await.unwrap();
    removed.sort();
    let mut layout_layers = f.layer_digests.clone();
    layout_layers.sort();
    assert_eq!(removed, layout_layers);
    drop(configs);
}

async fn zstd_layers_unpack(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (dir, f) = busybox();
    let zstd = dir.path().join("zstd-layout");
    images::zstd_layout(&f.layout, &f.tag, &zstd);
    let z = images::image_fixture(&zstd, &f.tag);
    let types: Vec<String> = z.manifest()["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        types.iter().all(|t| t.ends_with("+zstd")),
        "skopeo wrote {types:?}"
    );
    let policy = policy_for(layout_image(&z, &z.tag));
    let (ok, out, err) = sh(&t, &policy, "cat /etc/motd; ls /opaque; cat /data/hardlink").await;
    assert!(ok, "{out} {err}");
    assert_eq!(out, "layer two\nnew.txt\noriginal\n");
}

/// How many sandboxes of one image the sharing test starts.
const SHARED_SANDBOXES: usize = 100;

/// The disk space a tree takes (allocated blocks, each inode once).
fn disk_use(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fn walk(path: &std::path::Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        let mut total = if seen.insert((meta.dev(), meta.ino())) {
            meta.blocks() * 512
        } else {
            0
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                total += walk(&entry.path(), seen);
            }
        }
        total
    }
    walk(path, &mut std::collections::HashSet::new())
}

async fn every_mode_runs_in_an_image(kind: OciRuntime) {
    use tokio::io::AsyncWriteExt;
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let policy = policy_for(layout_image(&f, &f.tag));
    // Captured to files.
    let config =
        NamespaceContainer::build_config(&policy, "sh", ["-c", "cat /etc/motd; echo e >&2"]);
    let c = t
        .sandbox
        .spawn_captured(&config, oci_sandbox::OutputMode::Separate)
        .await
        .unwrap();
    assert!(c.wait().await.unwrap().success());
    assert_eq!(c.output.read_stdout().await.unwrap(), b"layer two\n");
    assert_eq!(c.output.read_stderr().await.unwrap(), b"e\n");
    let id = c.id().to_owned();
    drop(c);
    // A terminal.
    let mut pty = t
        .sandbox
        .spawn_interactive(&NamespaceContainer::build_config(
            &policy,
            "sh",
            Vec::<String>::new(),
        ))
        .await
        .unwrap();
    pty.write_all(b"echo $GREETING-$((6*7))\n").await.unwrap();
    common::read_until(&mut pty, "hello-from-image-42").await;
    pty.write_all(b"exit 4\n").await.unwrap();
    assert_eq!(pty.wait().await.unwrap().code(), Some(4));
    let pty_id = pty.id().to_owned();
    drop(pty);
    // A long-lived sandbox's execs default to the image's env and directory.
    let sandbox = t
        .sandbox
        .start(&NamespaceContainer::build_config(
            &policy,
            "true",
            Vec::<String>::new(),
        ))
        .await
        .unwrap();
    assert_eq!(
        common::sh_in(&sandbox, "echo $GREETING; pwd").await,
        "hello-from-image\n/data\n"
    );
    sandbox.close().await;
    t.assert_nothing_left(&[&id, &pty_id], None).await;
}

on_every_runtime!(
    every_mode_runs_in_an_image,
    registry_pulls_with_auth_and_progress,
    archives_and_shared_layers,
    the_image_is_the_root_with_its_config,
    writes_stay_in_their_container,
    bad_images_are_typed_errors_and_leave_nothing,
    zstd_layers_unpack,
);
