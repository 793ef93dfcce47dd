//! The image fixtures of `tests/common/images.rs` build what they promise: checked with the
//! layout's own JSON, the layers' tar entries, `umoci unpack` (which applies whiteouts),
//! `chroot` into the unpacked rootfs, `skopeo inspect` and plain HTTP against the registry.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::images::{
    self, BUSYBOX_APP_TAG, BUSYBOX_APPLETS, BUSYBOX_TAG, DOCKER_MANIFEST, LayerEntry, OCI_MANIFEST,
    PYTHON_TAG, Registry,
};

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("osb-img-")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

fn entry<'a>(entries: &'a [LayerEntry], path: &str) -> &'a LayerEntry {
    entries
        .iter()
        .find(|e| e.path.trim_end_matches('/') == path)
        .unwrap_or_else(|| panic!("no {path} in {entries:#?}"))
}

/// Unpacks `tag` with umoci into `dir/NAME` and returns its rootfs.
fn unpack(dir: &Path, layout: &Path, tag: &str, name: &str) -> std::path::PathBuf {
    let bundle = dir.join(name);
    images::run(
        Command::new("umoci")
            .arg("unpack")
            .arg(format!("--image={}:{tag}", layout.display()))
            .arg(&bundle),
    );
    bundle.join("rootfs")
}

/// Runs `args` in a chroot of `rootfs` with an empty environment; returns stdout.
fn chroot(rootfs: &Path, userspec: Option<&str>, args: &[&str]) -> String {
    let mut command = Command::new("/usr/sbin/chroot");
    command.env_clear();
    if let Some(spec) = userspec {
        command.arg(format!("--userspec={spec}"));
    }
    let out = images::run(command.arg(rootfs).args(args));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn busybox_layout_index_names_both_tags_over_the_same_two_layers() {
    let dir = temp_dir();
    let image = images::busybox_layout(dir.path());
    assert_eq!(image.layout, dir.path().join("layout"));
    assert_eq!(image.tag, BUSYBOX_TAG);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.layout.join("index.json")).unwrap()).unwrap();
    let tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(tags.len(), 2, "{index}");
    assert!(
        tags.contains(&BUSYBOX_TAG) && tags.contains(&BUSYBOX_APP_TAG),
        "{index}"
    );

    // umoci 0.4.7 leaves out the manifest's optional mediaType: the index's descriptor has it.
    for descriptor in index["manifests"].as_array().unwrap() {
        assert_eq!(descriptor["mediaType"], OCI_MANIFEST, "{index}");
    }
    let manifest = image.manifest();
    assert!(manifest.get("mediaType").is_none(), "{manifest}");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(image.layer_digests.len(), 2, "{manifest}");
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
    for digest in &image.layer_digests {
        assert!(images::blob_path(&image.layout, digest).is_file());
    }
    let app = images::image_fixture(&image.layout, BUSYBOX_APP_TAG);
    assert_ne!(app.manifest_digest, image.manifest_digest);
    assert_eq!(app.layer_digests, image.layer_digests);
    // Nothing but the layout is left in the caller's dir.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["layout"]);
}

#[test]
fn busybox_first_layer_has_links_hard_links_and_owners() {
    let dir = temp_dir();
    let image = images::busybox_layout(dir.path());
    let entries = image.layer_entries(0);
    assert_eq!(entry(&entries, "bin/busybox").kind, tar::EntryType::Regular);
    for applet in BUSYBOX_APPLETS {
        let link = entry(&entries, &format!("bin/{applet}"));
        assert_eq!(link.kind, tar::EntryType::Symlink, "{link:?}");
        assert_eq!(link.link.as_deref(), Some("busybox"));
    }
    // One of the pair is archived as a hard link to the other.
    let pair = [
        entry(&entries, "data/original"),
        entry(&entries, "data/hardlink"),
    ];
    let hard: Vec<_> = pair
        .iter()
        .filter(|e| e.kind == tar::EntryType::Link)
        .collect();
    assert_eq!(hard.len(), 1, "{pair:#?}");
    let other = pair.iter().find(|e| e.kind == tar::EntryType::Regular);
    assert_eq!(hard[0].link.as_deref(), other.map(|e| e.path.as_str()));
    let home = entry(&entries, "home/app");
    assert_eq!(
        (home.kind, home.uid, home.gid, home.mode & 0o7777),
        (tar::EntryType::Directory, 1000, 1000, 0o700)
    );
    let secret = entry(&entries, "home/app/secret");
    assert_eq!((secret.uid, secret.gid), (1000, 1000));
    for path in ["etc/gone", "opaque/old.txt", "etc/passwd", "etc/group"] {
        assert_eq!(entry(&entries, path).kind, tar::EntryType::Regular);
    }
}

#[test]
fn busybox_second_layer_has_a_whiteout_and_an_opaque_dir() {
    let dir = temp_dir();
    let image = images::busybox_layout(dir.path());
    let entries = image.layer_entries(1);
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "etc/",
            "etc/.wh.gone",
            "etc/motd",
            "opaque/",
            "opaque/.wh..wh..opq",
            "opaque/new.txt"
        ]
    );
    assert!(entries.iter().all(|e| (e.uid, e.gid) == (0, 0)));
    // The same, listed by GNU tar straight from the compressed blob.
    let listed = images::run(
        Command::new("tar")
            .arg("-tzf")
            .arg(images::blob_path(&image.layout, &image.layer_digests[1])),
    );
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.lines().any(|l| l == "opaque/.wh..wh..opq"),
        "{listed}"
    );
    assert!(listed.lines().any(|l| l == "etc/.wh.gone"), "{listed}");
}

#[test]
fn busybox_configs_differ_only_by_user_and_working_dir() {
    let dir = temp_dir();
    let image = images::busybox_layout(dir.path());
    let config = image.config();
    let c = &config["config"];
    assert_eq!(
        c["Env"],
        serde_json::json!(["GREETING=hello-from-image", "PATH=/bin"]),
        "{config}"
    );
    assert_eq!(c["WorkingDir"], "/data");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(c["Cmd"], serde_json::json!(["echo entry-$GREETING"]));
    assert!(c.get("User").is_none_or(|u| u == ""), "{config}");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

    let app = images::image_fixture(&image.layout, BUSYBOX_APP_TAG).config();
    let a = &app["config"];
    assert_eq!(a["User"], "app");
    assert_eq!(a["WorkingDir"], "/home/app");
    for key in ["Env", "Entrypoint", "Cmd"] {
        assert_eq!(a[key], c[key], "{key}");
    }
    assert_eq!(app["rootfs"], config["rootfs"]);
}

#[test]
fn umoci_unpack_applies_the_busybox_layers_and_the_image_runs() {
    let dir = temp_dir();
    let image = images::busybox_layout(dir.path());
    let rootfs = unpack(dir.path(), &image.layout, BUSYBOX_TAG, "bundle");
    assert!(!rootfs.join("etc/gone").exists(), "the whiteout hides it");
    let opaque: Vec<_> = std::fs::read_dir(rootfs.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(opaque, ["new.txt"], "the opaque dir hides old.txt");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "layer two\n"
    );
    let original = std::fs::metadata(rootfs.join("data/original")).unwrap();
    let hardlink = std::fs::metadata(rootfs.join("data/hardlink")).unwrap();
    assert_eq!(original.ino(), hardlink.ino());
    assert_eq!(original.nlink(), 2);
    let home = std::fs::metadata(rootfs.join("home/app")).unwrap();
    assert_eq!((home.uid(), home.mode() & 0o7777), (1000, 0o700));

    let sh = |user, script| chroot(&rootfs, user, &["/bin/sh", "-c", script]);
    assert_eq!(sh(None, "cat /data/hardlink"), "original\n");
    assert_eq!(sh(Some("1000:1000"), "cat /home/app/secret"), "secret\n");
    assert_eq!(sh(Some("1000:1000"), "id -un"), "app\n");
}

#[test]
fn docker_archive_is_an_image_skopeo_reads() {
    let dir = temp_dir();
    let image = images::busybox_layout(dir.path());
    let archive = dir.path().join("busybox.tar");
    images::docker_archive(&image.layout, BUSYBOX_TAG, &archive);
    let out = images::run(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", archive.display())),
    );
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        inspected["Layers"].as_array().unwrap().len(),
        2,
        "{inspected}"
    );
    assert!(
        inspected["Env"]
            .as_array()
            .unwrap()
            .contains(&"GREETING=hello-from-image".into()),
        "{inspected}"
    );
    let listed = images::run(Command::new("tar").arg("-tf").arg(&archive));
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.lines().any(|l| l == "manifest.json"), "{listed}");
}

#[tokio::test]
async fn registry_serves_pushes_in_oci_and_docker_formats() {
    let dir = temp_dir();
    let image = images::busybox_layout(dir.path());
    let registry = Registry::start(None).await;
    assert_eq!(registry.get("/v2/", None, None).await.unwrap().status, 200);

    registry.push(&image.layout, BUSYBOX_TAG, "test/busybox:oci");
    let oci = registry.inspect_raw("test/busybox:oci");
    // As in the layout: no mediaType in the manifest, the Content-Type header names it.
    assert!(oci.get("mediaType").is_none(), "{oci}");
    let response = registry
        .get("/v2/test/busybox/manifests/oci", None, Some(OCI_MANIFEST))
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        response.header("docker-content-digest"),
        Some(image.manifest_digest.as_str()),
        "pushed unchanged"
    );
    assert_eq!(
        oci["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let layers: Vec<&str> = oci["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers, image.layer_digests);

    registry.push_docker_format(&image.layout, BUSYBOX_TAG, "test/busybox:docker");
    let docker = registry.inspect_raw("test/busybox:docker");
    assert_eq!(docker["mediaType"], DOCKER_MANIFEST, "{docker}");
    assert_eq!(
        docker["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for layer in docker["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    // The registry serves the manifest with its media type when asked for it.
    let response = registry
        .get(
            "/v2/test/busybox/manifests/docker",
            None,
            Some(DOCKER_MANIFEST),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(DOCKER_MANIFEST));
}

#[tokio::test]
async fn auth_registry_refuses_anonymous_pulls() {
    let dir = temp_dir();
    let image = images::busybox_layout(dir.path());
    let registry = Registry::start(Some(("alice", "s3cret"))).await;
    registry.push(&image.layout, BUSYBOX_TAG, "private/busybox:v1");

    let path = "/v2/private/busybox/manifests/v1";
    let anonymous = registry.get(path, None, Some(OCI_MANIFEST)).await.unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"osb-test\"")
    );
    let wrong = registry.get(path, Some(("alice", "nope")), Some(OCI_MANIFEST));
    assert_eq!(wrong.await.unwrap().status, 401);
    let ok = registry
        .get(path, Some(("alice", "s3cret")), Some(OCI_MANIFEST))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-type"), Some(OCI_MANIFEST));
    let manifest: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 2);
    assert_eq!(registry.inspect_raw("private/busybox:v1"), manifest);

    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!(
            "docker://{}",
            registry.reference("private/busybox:v1")
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "anonymous skopeo inspect succeeded");
    assert!(stderr.contains("authentication required"), "{stderr}");
}

#[tokio::test]
async fn dropping_the_registry_kills_it_and_removes_its_dir() {
    let registry = Registry::start(None).await;
    let (pid, dir, addr) = (
        registry.pid(),
        registry.dir().to_owned(),
        registry.addr.clone(),
    );
    assert!(dir.join("config.yml").is_file());
    drop(registry);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "not reaped");
    assert!(!dir.exists());
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}

#[test]
fn python_layout_runs_python_alone() {
    let dir = temp_dir();
    let image = images::python_layout(dir.path());
    assert_eq!(image.tag, PYTHON_TAG);
    assert_eq!(image.layer_digests.len(), 1);
    let rootfs = unpack(dir.path(), &image.layout, PYTHON_TAG, "bundle");
    assert!(
        !rootfs.join("bin").exists(),
        "nothing but python is in the image"
    );
    let out = chroot(&rootfs, None, &["/usr/bin/python3", "-c", "print(1+1)"]);
    assert_eq!(out, "2\n");
    let out = chroot(
        &rootfs,
        Some("1000:1000"),
        &[
            "/usr/bin/python3",
            "-c",
            "import json, os; print(json.dumps(os.getuid()))",
        ],
    );
    assert_eq!(out, "1000\n");
}
