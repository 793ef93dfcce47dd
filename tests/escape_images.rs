//! Attacks through an image's layers: each hostile layer is written with Python's `tarfile`
//! and added to a real umoci-built image with `umoci raw add-layer`, then used by the
//! library. A layer may not write outside its directory in the store, create device nodes,
//! or reach host files through links; a failed unpack leaves nothing in the store.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestSandbox;
use common::images::{self, image_kind};
use oci_sandbox::{Image, ImageErrorKind, OciRuntime, SandboxConfig};

/// Writes a layer tar at `out` with Python's tarfile: `entries` is Python code that adds
/// members to the open archive `t` (helpers `reg(name, data)`, `link(name, target)`,
/// `hard(name, target)`, `dev(name)`).
fn hostile_tar(out: &Path, entries: &str) {
    let script = format!(
        r#"
import io, tarfile
t = tarfile.open({out:?}, "w")
def reg(name, data):
    i = tarfile.TarInfo(name); i.size = len(data); t.addfile(i, io.BytesIO(data))
def link(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.SYMTYPE; i.linkname = target; t.addfile(i)
def hard(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.LNKTYPE; i.linkname = target; t.addfile(i)
def dev(name):
    i = tarfile.TarInfo(name); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 1; i.mode = 0o666; t.addfile(i)
{entries}
t.close()
"#,
        out = out.to_str().unwrap()
    );
    images::run(Command::new("python3").arg("-c").arg(script));
}

/// The busybox image with one more layer holding `entries`, tagged `tag`.
fn image_with_layer(dir: &Path, tag: &str, entries: &str) -> Image {
    let f = images::busybox_layout(&dir.join(tag));
    let tar = dir.join(format!("{tag}.tar"));
    hostile_tar(&tar, entries);
    images::run(
        Command::new("umoci")
            .args(["raw", "add-layer"])
            .arg(format!("--image={}:{}", f.layout.display(), f.tag))
            .arg(&tar),
    );
    Image::OciLayout {
        path: f.layout.clone(),
        reference: f.tag.clone(),
    }
}

fn marker(name: &str) -> PathBuf {
    PathBuf::from(format!(
        "/tmp/osb-escape-image-{name}-{}",
        std::process::id()
    ))
}

fn store_is_clean(t: &TestSandbox) {
    let tmp = t.state.path().join("images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "a failed unpack left files in the store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_cannot_climb_out_with_dot_dot() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let dir = tempfile::Builder::new()
        .prefix("osb-img-")
        .tempdir()
        .unwrap();
    let target = marker("dotdot");
    let depth = "../".repeat(12);
    let image = image_with_layer(
        dir.path(),
        "dotdot",
        &format!(
            "reg({:?}, b'owned')",
            format!("{depth}{}", target.display())
        ),
    );
    let err = t.sandbox.pull(&image).await.unwrap_err();
    assert_eq!(image_kind(err), ImageErrorKind::UnsafeLayer);
    assert!(!target.exists(), "the layer wrote {}", target.display());
    store_is_clean(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_cannot_write_through_a_link_to_host_files() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let dir = tempfile::Builder::new()
        .prefix("osb-img-")
        .tempdir()
        .unwrap();
    let target = marker("through-link");
    let parent = target.parent().unwrap().to_str().unwrap().to_owned();
    let name = target.file_name().unwrap().to_str().unwrap().to_owned();
    // An absolute link to the host's /tmp, then a file under it; and the same with a
    // relative link that climbs.
    for (tag, entries) in [
        (
            "abslink",
            format!("link('hostdir', {parent:?})\nreg('hostdir/{name}', b'owned')"),
        ),
        (
            "rellink",
            format!("link('up', '../../../../../../..{parent}')\nreg('up/{name}', b'owned')"),
        ),
    ] {
        let image = image_with_layer(dir.path(), tag, &entries);
        let err = t.sandbox.pull(&image).await.unwrap_err();
        assert_eq!(image_kind(err), ImageErrorKind::UnsafeLayer, "{tag}");
        assert!(
            !target.exists(),
            "{tag}: the layer wrote {}",
            target.display()
        );
        store_is_clean(&t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_resolve_inside_the_container_and_devices_are_left_out() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let dir = tempfile::Builder::new()
        .prefix("osb-img-")
        .tempdir()
        .unwrap();
    // A hard link to a host file by an absolute name is refused outright.
    let image = image_with_layer(dir.path(), "abshard", "hard('data/hard', '/etc/shadow')");
    let err = t.sandbox.pull(&image).await.unwrap_err();
    assert_eq!(image_kind(err), ImageErrorKind::UnsafeLayer);
    store_is_clean(&t);
    // A link aimed at a host secret, a hard link to a lower layer's file, a device node.
    let image = image_with_layer(
        dir.path(),
        "links",
        "link('etc/host-shadow', '/etc/shadow')\nhard('data/hard', 'data/original')\ndev('etc/mem')",
    );
    let policy = SandboxConfig {
        image: Some(image),
        ..SandboxConfig::default()
    };
    let out = t
        .output(
            &policy,
            &[
                "sh",
                "-c",
                "cat /etc/host-shadow 2>&1; cat /data/hard; ls /etc/mem 2>&1; true",
            ],
        )
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // The image has no /etc/shadow: the link leads nowhere in the container's root.
    assert!(text.contains("No such file"), "{text}");
    assert!(
        !text.contains("root:"),
        "the host's /etc/shadow leaked: {text}"
    );
    assert!(text.contains("original"), "{text}");
    assert!(
        text.lines().last().unwrap().contains("No such file"),
        "a device node was made: {text}"
    );
    // And in the store itself, no device but the whiteouts' 0/0.
    let layers = t.state.path().join("images/layers");
    let found = Command::new("find")
        .arg(&layers)
        .args([
            "(", "-type", "c", "-o", "-type", "b", ")", "-printf", "%p %D\n",
        ])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&found.stdout).lines() {
        let path = line.split(' ').next().unwrap();
        let meta = std::fs::symlink_metadata(path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.rdev(), 0, "a device node in the store: {line}");
    }
    // The store is not reachable by other host users (setuid files of images live there).
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(t.state.path().join("images"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the image store is open to others: {mode:o}"
    );
}
