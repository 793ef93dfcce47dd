//! Attacks through an image's layers on the rootless image path: the unpack as an ordinary
//! user (`Owners::Caller`: no chown, owner read and write added, `user.overlay.opaque`), the
//! overlay that the runtime's process mounts in a user namespace of its own, and the store's
//! prune.
//!
//! Each hostile layer is written with Python's `tarfile` (PAX format, for extended attributes)
//! and added to the fixtures' busybox image with `umoci raw add-layer`, as root (the fixture
//! needs root); the test then runs itself again as the ordinary user `osb-rootless` (as
//! `tests/rootless.rs` does), with the layout and a directory of that user's own files (its
//! "home": what a hostile image must neither delete, overwrite nor read) passed in the
//! environment.
//!
//! The same two link attacks on the unpack are also run as root (`root_*`): the code is
//! shared, and as root the host's files are everyone's.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestSandbox;
use common::images;
use common::ordinary_user::{USER, as_ordinary_user_with, user_ready};
use oci_sandbox::{Image, ImageErrorKind, OciRuntime, SandboxConfig, SandboxError};

/// The hostile images' layout, prepared by the root run.
const LAYOUT_ENV: &str = "OSB_ESCAPE_ROOTLESS_LAYOUT";
/// The ordinary user's own files, prepared by the root run.
const VICTIM_ENV: &str = "OSB_ESCAPE_ROOTLESS_VICTIM";

/// What the user's precious file holds.
const SECRET: &str = "precious-user-data-7f3a";

// ---------------------------------------------------------------------------------------------
// Running as the ordinary user (the pattern of tests/rootless.rs).

fn env_path(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(name).unwrap_or_else(|| {
        panic!(
            "{name} is unset: run this test as root (it prepares the images and re-runs as {USER})"
        )
    }))
}

// ---------------------------------------------------------------------------------------------
// Hostile images and the user's files (prepared as root).

/// Writes a layer tar at `out` with Python's tarfile (PAX): `entries` is Python code adding
/// members to `t` with the helpers `reg(name, data, mode, xattrs)`, `dirent(name, mode,
/// xattrs)`, `link(name, target)`, `hard(name, target)`, `dev(name)` and `fifo(name)`.
fn hostile_tar(out: &Path, entries: &str) {
    let script = format!(
        r#"
import io, tarfile
t = tarfile.open({out:?}, "w", format=tarfile.PAX_FORMAT)
def _x(i, xattrs):
    if xattrs:
        i.pax_headers = {{"SCHILY.xattr." + k: v for k, v in xattrs.items()}}
def reg(name, data, mode=0o644, xattrs=None):
    i = tarfile.TarInfo(name); i.size = len(data); i.mode = mode; _x(i, xattrs)
    t.addfile(i, io.BytesIO(data))
def dirent(name, mode=0o755, xattrs=None):
    i = tarfile.TarInfo(name); i.type = tarfile.DIRTYPE; i.mode = mode; _x(i, xattrs); t.addfile(i)
def link(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.SYMTYPE; i.linkname = target; t.addfile(i)
def hard(name, target):
    i = tarfile.TarInfo(name); i.type = tarfile.LNKTYPE; i.linkname = target; t.addfile(i)
def dev(name):
    i = tarfile.TarInfo(name); i.type = tarfile.CHRTYPE; i.devmajor = 1; i.devminor = 1; i.mode = 0o666; t.addfile(i)
def fifo(name):
    i = tarfile.TarInfo(name); i.type = tarfile.FIFOTYPE; i.mode = 0o666; t.addfile(i)
{entries}
t.close()
"#,
        out = out.to_str().unwrap()
    );
    images::run(Command::new("python3").arg("-c").arg(script));
}

/// As root: the fixtures' busybox image, and for each `(tag, layers)` an image of that tag
/// with the hostile `layers` (Python entries, lowest first) added over busybox; all readable
/// by every user. Returns the temp dir and the layout.
fn hostile_images(tags: &[(&str, Vec<String>)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("osb-escape-rl-img-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = images::busybox_layout(dir.path());
    for (tag, layers) in tags {
        for (i, entries) in layers.iter().enumerate() {
            let tar = dir.path().join(format!("{tag}-{i}.tar"));
            hostile_tar(&tar, entries);
            let mut add = Command::new("umoci");
            add.args(["raw", "add-layer"]);
            if i == 0 {
                add.arg(format!(
                    "--image={}:{}",
                    f.layout.display(),
                    images::BUSYBOX_TAG
                ))
                .arg(format!("--tag={tag}"));
            } else {
                add.arg(format!("--image={}:{tag}", f.layout.display()));
            }
            images::run(add.arg(&tar));
        }
    }
    images::run(Command::new("chmod").arg("-R").arg("a+rX").arg(&f.layout));
    (dir, f.layout)
}

/// As root: a directory of `owner`'s (mode 0700) holding `precious` (0600, [`SECRET`]) and
/// `keep/inner`, as a user's home holds its files.
fn victim_dir(owner: Option<(u32, u32)>) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("osb-escape-rl-home-")
        .tempdir_in("/tmp")
        .unwrap();
    fill_victim(dir.path());
    if let Some((uid, gid)) = owner {
        images::run(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(dir.path()),
        );
    }
    dir
}

/// (Re)creates the victim's files.
fn fill_victim(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(dir.join("precious"), format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(dir.join("precious"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(dir.join("keep")).unwrap();
    std::fs::write(dir.join("keep/inner"), b"inner\n").unwrap();
}

/// What is wrong with the victim's files, if anything.
fn victim_damage(dir: &Path) -> Option<String> {
    let precious = std::fs::read_to_string(dir.join("precious"));
    let inner = std::fs::read_to_string(dir.join("keep/inner"));
    let mut damage = Vec::new();
    match precious {
        Ok(s) if s == format!("{SECRET}\n") => {}
        other => damage.push(format!("precious: {other:?}")),
    }
    match inner {
        Ok(s) if s == "inner\n" => {}
        other => damage.push(format!("keep/inner: {other:?}")),
    }
    let mut attrs = vec![0u8; 4096];
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), attrs.as_mut_ptr().cast(), attrs.len()) };
    if n > 0 {
        let names = String::from_utf8_lossy(&attrs[..n as usize]).replace('\0', " ");
        if names.contains("overlay") {
            damage.push(format!("xattrs set on the user's dir: {names}"));
        }
    }
    (!damage.is_empty()).then(|| damage.join("; "))
}

fn user_ids() -> (u32, u32) {
    user_ready();
    let user = nix::unistd::User::from_name(USER)
        .unwrap()
        .expect("the user exists");
    (user.uid.as_raw(), user.gid.as_raw())
}

fn image(layout: &Path, tag: &str) -> Image {
    Image::OciLayout {
        path: layout.to_path_buf(),
        reference: tag.to_owned(),
    }
}

fn kind_of(e: SandboxError) -> Result<ImageErrorKind, String> {
    match e {
        SandboxError::Image { kind, .. } => Ok(kind),
        other => Err(format!("{other:?}")),
    }
}

/// Every regular file in the store holding [`SECRET`].
fn store_files_holding_secret(t: &TestSandbox) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), out);
            }
        } else if meta.is_file()
            && std::fs::read(p)
                .map(|d| String::from_utf8_lossy(&d).contains(SECRET))
                .unwrap_or(false)
        {
            out.push(p.to_path_buf());
        }
    }
    let mut out = Vec::new();
    walk(&t.state.path().join("images"), &mut out);
    out
}

fn store_tmp_is_clean(t: &TestSandbox) -> bool {
    std::fs::read_dir(t.state.path().join("images/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
        == 0
}

// ---------------------------------------------------------------------------------------------
// 1. A planted link, then an entry under it: the unpack must not remove (or mark) what the
//    link leads to on the host before it notices that the entry leads out.

fn delete_tags(victim: &Path) -> Vec<(&'static str, Vec<String>)> {
    let v = victim.to_str().unwrap();
    let up = "../".repeat(16);
    let rel = format!("{up}{}", v.trim_start_matches('/'));
    vec![
        // A file entry under the link: its name is cleared first (a file).
        (
            "del-file",
            vec![format!("link('a', {v:?})\nreg('a/precious', b'owned')")],
        ),
        // A file entry whose name is a directory of the user's: cleared with its tree.
        (
            "del-dir",
            vec![format!("link('b', {v:?})\nreg('b/keep', b'owned')")],
        ),
        // The same through a relative link that climbs out.
        (
            "del-rel",
            vec![format!("link('c', {rel:?})\nreg('c/precious', b'owned')")],
        ),
        // A symlink entry under the link.
        (
            "del-symlink",
            vec![format!("link('d', {v:?})\nlink('d/precious', '/nowhere')")],
        ),
        // A whiteout and an opaque marker under the link.
        (
            "del-whiteout",
            vec![format!("link('e', {v:?})\nreg('e/.wh.precious', b'')")],
        ),
        (
            "del-opaque",
            vec![format!("link('f', {v:?})\nreg('f/.wh..wh..opq', b'')")],
        ),
        // The link in a lower layer, the entry in the next one.
        (
            "del-across",
            vec![
                format!("link('g', {v:?})"),
                "reg('g/precious', b'owned')".to_owned(),
            ],
        ),
    ]
}

async fn unpack_deletes_nothing_through_a_planted_link(layout: PathBuf, victim: PathBuf) {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let mut breaches = Vec::new();
    for (tag, _) in delete_tags(&victim) {
        fill_victim(&victim);
        assert_eq!(
            victim_damage(&victim),
            None,
            "the victim's files are set up"
        );
        let pulled = t.sandbox.pull(&image(&layout, tag)).await;
        if let Some(damage) = victim_damage(&victim) {
            breaches.push(format!(
                "{tag}: the unpack damaged {} ({damage}); pull: {:?}",
                victim.display(),
                pulled.as_ref().map(|_| ()).map_err(|e| e.to_string())
            ));
        }
        match pulled {
            Err(e) => match kind_of(e) {
                Ok(ImageErrorKind::UnsafeLayer) => {}
                other => breaches.push(format!("{tag}: not refused as unsafe: {other:?}")),
            },
            Ok(_) => {
                // Only acceptable if the link stayed a link in the image and nothing leaked:
                // the files checked above are intact.
            }
        }
        if !store_tmp_is_clean(&t) {
            breaches.push(format!("{tag}: a failed unpack left files in the store"));
        }
    }
    fill_victim(&victim);
    assert!(
        breaches.is_empty(),
        "{} (rootless: {}):\n{}",
        victim.display(),
        t.sandbox.is_rootless(),
        breaches.join("\n")
    );
}

#[test]
fn rootless_unpack_deletes_nothing_through_a_planted_link() {
    let name = "rootless_unpack_deletes_nothing_through_a_planted_link";
    let prepared = nix::unistd::geteuid().is_root().then(|| {
        let victim = victim_dir(Some(user_ids()));
        let (dir, layout) = hostile_images(&delete_tags(victim.path()));
        (victim, dir, layout)
    });
    let env: Vec<(&str, &Path)> = prepared
        .as_ref()
        .map(|(v, _, l)| vec![(LAYOUT_ENV, l.as_path()), (VICTIM_ENV, v.path())])
        .unwrap_or_default();
    as_ordinary_user_with(name, &env, || async {
        unpack_deletes_nothing_through_a_planted_link(env_path(LAYOUT_ENV), env_path(VICTIM_ENV))
            .await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_unpack_deletes_nothing_through_a_planted_link() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test is the root variant: run it as root"
    );
    let victim = victim_dir(None);
    let (_dir, layout) = hostile_images(&delete_tags(victim.path()));
    unpack_deletes_nothing_through_a_planted_link(layout, victim.path().to_path_buf()).await;
}

// ---------------------------------------------------------------------------------------------
// 2. A lower layer's link to a host directory, then a hard link "to a file of a lower layer"
//    through it: the copy-up must not copy the host's file into the image.

fn steal_tags(victim: &Path, also_shadow: bool) -> Vec<(&'static str, Vec<String>)> {
    let v = victim.to_str().unwrap();
    let rel = format!("{}{}", "../".repeat(16), v.trim_start_matches('/'));
    let mut tags = vec![
        (
            "steal-abs",
            vec![
                format!("link('lnk', {v:?})"),
                "hard('stolen', 'lnk/precious')".to_owned(),
            ],
        ),
        (
            "steal-rel",
            vec![
                format!("link('lnk', {rel:?})"),
                "hard('stolen', 'lnk/precious')".to_owned(),
            ],
        ),
    ];
    if also_shadow {
        tags.push((
            "steal-shadow",
            vec![
                "link('hostetc', '/etc')".to_owned(),
                "hard('stolen', 'hostetc/shadow')".to_owned(),
            ],
        ));
    }
    tags
}

async fn hard_links_copy_no_host_file(layout: PathBuf, victim: PathBuf, also_shadow: bool) {
    let mut breaches = Vec::new();
    let mut rootless = None;
    for (tag, _) in steal_tags(&victim, also_shadow) {
        // A store of its own per image, so that what one leaves does not count for another.
        let t = TestSandbox::new(OciRuntime::Runc).await;
        rootless = Some(t.sandbox.is_rootless());
        let pulled = t.sandbox.pull(&image(&layout, tag)).await;
        match pulled {
            Err(e) => match kind_of(e) {
                Ok(ImageErrorKind::UnsafeLayer) => {}
                other => breaches.push(format!("{tag}: refused, but not as unsafe: {other:?}")),
            },
            Ok(_) => {
                let policy = SandboxConfig {
                    image: Some(image(&layout, tag)),
                    ..SandboxConfig::default()
                };
                let out = t
                    .output(&policy, &["sh", "-c", "cat /stolen 2>&1; true"])
                    .await;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains(SECRET) {
                    breaches.push(format!(
                        "{tag}: the container reads the user's file {}/precious as /stolen: {text:?}",
                        victim.display()
                    ));
                }
                if text.starts_with("root:") {
                    // The host's /etc/shadow: said, not shown.
                    breaches.push(format!(
                        "{tag}: the container reads the host's /etc/shadow as /stolen ({} lines, \
                         the first of user {:?})",
                        text.lines().count(),
                        text.split(':').next().unwrap_or_default()
                    ));
                }
            }
        }
        let copies = store_files_holding_secret(&t);
        if !copies.is_empty() {
            breaches.push(format!(
                "{tag}: the user's file was copied into the store: {copies:?}"
            ));
        }
    }
    assert!(
        breaches.is_empty(),
        "rootless: {rootless:?}:\n{}",
        breaches.join("\n")
    );
}

#[test]
fn rootless_hard_link_copies_no_host_file_through_a_lower_link() {
    let name = "rootless_hard_link_copies_no_host_file_through_a_lower_link";
    let prepared = nix::unistd::geteuid().is_root().then(|| {
        let victim = victim_dir(Some(user_ids()));
        let (dir, layout) = hostile_images(&steal_tags(victim.path(), false));
        (victim, dir, layout)
    });
    let env: Vec<(&str, &Path)> = prepared
        .as_ref()
        .map(|(v, _, l)| vec![(LAYOUT_ENV, l.as_path()), (VICTIM_ENV, v.path())])
        .unwrap_or_default();
    as_ordinary_user_with(name, &env, || async {
        hard_links_copy_no_host_file(env_path(LAYOUT_ENV), env_path(VICTIM_ENV), false).await
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_hard_link_copies_no_host_file_through_a_lower_link() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test is the root variant: run it as root"
    );
    let victim = victim_dir(None);
    let (_dir, layout) = hostile_images(&steal_tags(victim.path(), true));
    hard_links_copy_no_host_file(layout, victim.path().to_path_buf(), true).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Modes the user could not undo (directories and files without the owner's permissions,
//    declared before and after their contents), setuid and setgid files, sticky directories,
//    device nodes and fifos: the unpack succeeds, the container reads them, nothing is a
//    device but whiteouts, the store is closed to others, and prune removes it all.

const MODES_TAG: &str = "modes";

fn modes_layer() -> String {
    [
        "reg('locked/deep/f', b'deep', 0o000)",
        "dirent('locked/deep', 0o000)",
        "dirent('locked', 0o000)",
        "dirent('ro', 0o500)",
        "reg('ro/f', b'ro', 0o400)",
        "dirent('ro', 0o000)",
        "dirent('sticky', 0o1000)",
        "reg('sticky/f', b'sticky', 0o000)",
        "reg('suid', b'#!/bin/sh\\necho suid\\n', 0o4755)",
        "reg('sgid', b'#!/bin/sh\\necho sgid\\n', 0o2755)",
        "dirent('sgid-dir', 0o2000)",
        "reg('sgid-dir/f', b'x', 0o000)",
        "dev('devs/mem')",
        "fifo('devs/fifo')",
        "hard('locked-link', 'locked/deep/f')",
        "reg('wx/.wh..wh..opq', b'')",
        "dirent('wx', 0o000)",
    ]
    .join("\n")
}

async fn hostile_modes_unpack_and_prune(layout: PathBuf) {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    assert!(t.sandbox.is_rootless(), "the re-run is an ordinary user");
    let pulled = t.sandbox.pull(&image(&layout, MODES_TAG)).await;
    assert!(pulled.is_ok(), "{pulled:?}");
    let policy = SandboxConfig {
        image: Some(image(&layout, MODES_TAG)),
        ..SandboxConfig::default()
    };
    let out = t
        .output(
            &policy,
            &[
                "sh",
                "-c",
                "cat /locked/deep/f /ro/f /sticky/f /locked-link; echo; ls /devs 2>/dev/null; true",
            ],
        )
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}: {text}", out.status);
    assert!(text.contains("deeprostickydeep"), "{text}");
    assert!(
        !text.contains("mem") && !text.contains("fifo"),
        "a device or fifo: {text}"
    );
    // No device in the store but the whiteouts' 0/0; no fifo.
    let layers = t.state.path().join("images/layers");
    let found = Command::new("find")
        .arg(&layers)
        .args([
            "(", "-type", "c", "-o", "-type", "b", "-o", "-type", "p", ")", "-printf", "%p %y\n",
        ])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&found.stdout).lines() {
        let path = line.rsplit_once(' ').unwrap().0;
        let meta = std::fs::symlink_metadata(path).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(
            meta.file_type().is_char_device() && meta.rdev() == 0,
            "a device node or fifo in the store: {line}"
        );
    }
    // The store (which holds the images' setuid files, owned by the user) is closed to others.
    let mode = std::fs::metadata(t.state.path().join("images"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the store is open to others: {mode:o}");
    t.assert_nothing_left(&[], None).await;
    let removed = t.sandbox.prune_images().await.unwrap();
    assert_eq!(removed.len(), 3, "{removed:?}");
    let left: Vec<_> = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "prune left {left:?}");
    assert!(
        store_tmp_is_clean(&t),
        "prune left files in the store's tmp"
    );
}

#[test]
fn rootless_hostile_modes_unpack_and_prune() {
    let name = "rootless_hostile_modes_unpack_and_prune";
    let prepared = nix::unistd::geteuid()
        .is_root()
        .then(|| hostile_images(&[(MODES_TAG, vec![modes_layer()])]));
    let env: Vec<(&str, &Path)> = prepared
        .as_ref()
        .map(|(_, l)| vec![(LAYOUT_ENV, l.as_path())])
        .unwrap_or_default();
    as_ordinary_user_with(name, &env, || async {
        hostile_modes_unpack_and_prune(env_path(LAYOUT_ENV)).await
    });
}

// ---------------------------------------------------------------------------------------------
// 4. A layer's own overlay attributes (PAX `SCHILY.xattr.*`): a rootless overlay reads
//    `user.overlay.*`, so a layer that could set them would hide lower layers (opaque), fake
//    whiteouts or redirect lookups. None may reach the store.

const XATTR_TAG: &str = "xattrs";

fn xattr_layer() -> String {
    [
        "dirent('bin', 0o755, {'user.overlay.opaque': 'y'})",
        "dirent('etc', 0o755, {'user.overlay.opaque': 'y', 'trusted.overlay.opaque': 'y'})",
        "reg('etc/hostile-marker', b'marker', 0o644, {'user.overlay.whiteout': ''})",
        "dirent('data', 0o755, {'user.overlay.redirect': '/etc', 'user.overlay.opaque': 'x'})",
        "reg('bin/readlink', b'', 0o644, {'user.overlay.whiteout': '', 'user.overlay.metacopy': ''})",
        "dirent('opaque', 0o755, {'user.overlay.whiteouts': ''})",
    ]
    .join("\n")
}

fn overlay_xattrs(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and a buffer of the given length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .filter(|s| s.contains("overlay"))
        .collect()
}

async fn layer_xattrs_are_not_overlay_xattrs(layout: PathBuf) {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    assert!(t.sandbox.is_rootless(), "the re-run is an ordinary user");
    let pulled = t.sandbox.pull(&image(&layout, XATTR_TAG)).await;
    assert!(pulled.is_ok(), "{pulled:?}");
    // The hostile layer's dir in the store: none of its entries has an overlay attribute.
    let layers = t.state.path().join("images/layers");
    let hostile = std::fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("etc/hostile-marker").exists())
        .expect("the hostile layer is in the store");
    for rel in [
        "bin",
        "etc",
        "etc/hostile-marker",
        "data",
        "bin/readlink",
        "opaque",
    ] {
        let attrs = overlay_xattrs(&hostile.join(rel));
        assert!(
            attrs.is_empty(),
            "{rel} has the layer's overlay attributes: {attrs:?}"
        );
    }
    let policy = SandboxConfig {
        image: Some(image(&layout, XATTR_TAG)),
        ..SandboxConfig::default()
    };
    let out = t
        .output(
            &policy,
            &[
                "sh",
                "-c",
                "cat /etc/motd; cat /etc/hostile-marker; echo; ls /opaque; test -x /bin/cat && echo cat-ok; \
                 test -e /bin/readlink && echo readlink-present; pwd",
            ],
        )
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}: {text}", out.status);
    assert_eq!(
        text,
        "layer two\nmarker\nnew.txt\ncat-ok\nreadlink-present\n/data\n"
    );
    t.assert_nothing_left(&[], None).await;
}

#[test]
fn rootless_layer_xattrs_are_not_overlay_xattrs() {
    let name = "rootless_layer_xattrs_are_not_overlay_xattrs";
    let prepared = nix::unistd::geteuid()
        .is_root()
        .then(|| hostile_images(&[(XATTR_TAG, vec![xattr_layer()])]));
    let env: Vec<(&str, &Path)> = prepared
        .as_ref()
        .map(|(_, l)| vec![(LAYOUT_ENV, l.as_path())])
        .unwrap_or_default();
    as_ordinary_user_with(name, &env, || async {
        layer_xattrs_are_not_overlay_xattrs(env_path(LAYOUT_ENV)).await
    });
}

// ---------------------------------------------------------------------------------------------
// 5. The rootless container itself: the user's files are not reachable from it, whether by
//    their path, through /proc, or through the store's paths the overlay's options name; a
//    writable root writes nothing into the store.

async fn container_reaches_no_user_file(layout: PathBuf, victim: PathBuf) {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    assert!(t.sandbox.is_rootless(), "the re-run is an ordinary user");
    let v = victim.display().to_string();
    let state = t.state.path().display().to_string();
    let script = format!(
        r#"
cat {v}/precious 2>/dev/null
cat /proc/1/root{v}/precious 2>/dev/null
cat /proc/self/root{v}/precious 2>/dev/null
cat /proc/1/cwd{v}/precious 2>/dev/null
for d in $(cat /proc/self/mountinfo | tr ' ,:=' '\n\n\n\n' | grep '^/tmp/' | sort -u); do
  ls $d >/dev/null 2>&1 && echo "reached $d"
  cat $d/precious 2>/dev/null
done
ls {state} >/dev/null 2>&1 && echo "reached the state dir"
echo written > /etc/motd 2>/dev/null
rm -f /bin/true 2>/dev/null
echo done
"#
    );
    for writable_root in [false, true] {
        let policy = SandboxConfig {
            image: Some(image(&layout, images::BUSYBOX_TAG)),
            writable_root,
            ..SandboxConfig::default()
        };
        let out = t.output(&policy, &["sh", "-c", &script]).await;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("done"),
            "writable {writable_root}: {}: {text}",
            out.status
        );
        assert!(
            !text.contains(SECRET),
            "writable {writable_root}: the container read the user's file:\n{text}"
        );
        assert!(
            !text.contains("reached"),
            "writable {writable_root}: the container reached a host path:\n{text}"
        );
    }
    // The store's own files are unchanged.
    let motd: Vec<_> = Command::new("find")
        .arg(t.state.path().join("images/layers"))
        .args(["-path", "*/etc/motd"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap()
        .lines()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    assert!(
        !motd.is_empty() && motd.iter().all(|m| m != "written\n"),
        "the store's /etc/motd: {motd:?}"
    );
    assert_eq!(victim_damage(&victim), None);
    t.assert_nothing_left(&[], None).await;
}

#[test]
fn rootless_container_reaches_no_user_file() {
    let name = "rootless_container_reaches_no_user_file";
    let prepared = nix::unistd::geteuid().is_root().then(|| {
        let victim = victim_dir(Some(user_ids()));
        let (dir, layout) = hostile_images(&[]);
        (victim, dir, layout)
    });
    let env: Vec<(&str, &Path)> = prepared
        .as_ref()
        .map(|(v, _, l)| vec![(LAYOUT_ENV, l.as_path()), (VICTIM_ENV, v.path())])
        .unwrap_or_default();
    as_ordinary_user_with(name, &env, || async {
        container_reaches_no_user_file(env_path(LAYOUT_ENV), env_path(VICTIM_ENV)).await
    });
}
