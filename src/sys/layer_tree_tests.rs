//! Unit tests of the parent module (they need root: trusted attributes, devices, owners).

use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

/// A version 2 `security.capability` value granting `CAP_NET_RAW`, effective.
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn cpath(p: &Path) -> CString {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn lset(p: &Path, name: &CStr, value: &[u8]) {
    let p = cpath(p);
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
}

/// The names of `p`'s extended attributes, links not followed.
fn lnames(p: &Path) -> Vec<String> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: a NUL-terminated path and a buffer of the length given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "{}", io::Error::last_os_error());
    buf.truncate(n as usize);
    buf.split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mknod(p: &Path, kind: SFlag, dev: u64) {
    nix::sys::stat::mknod(p, kind, Mode::from_bits_truncate(0o644), dev).unwrap();
}

/// A layer as a sandbox could leave it, under `top/layer`, and a set-id file outside it
/// (`top/outside`) that links in it point to. Owners are `base + 5`.
fn hostile_layer(top: &Path, base: u32) -> PathBuf {
    let layer = top.join("layer");
    let outside = top.join("outside");
    std::fs::write(&outside, b"host").unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o4755)).unwrap();
    for d in ["gdir/sub", "opaque"] {
        std::fs::create_dir_all(layer.join(d)).unwrap();
    }
    let file = |rel: &str, m: u32| {
        let p = layer.join(rel);
        std::fs::write(&p, rel).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
        p
    };
    file("suid", 0o4755);
    file("sgid", 0o2755);
    file("sgid-nox", 0o2644);
    let cap = file("cap", 0o755);
    lset(&cap, c"security.capability", &CAP_NET_RAW);
    lset(&cap, c"trusted.mine", b"x");
    lset(&cap, c"user.kept", b"x");
    std::fs::set_permissions(layer.join("gdir"), std::fs::Permissions::from_mode(0o2775)).unwrap();
    std::fs::set_permissions(
        layer.join("gdir/sub"),
        std::fs::Permissions::from_mode(0o2755),
    )
    .unwrap();
    lset(&layer.join("opaque"), c"trusted.overlay.opaque", b"y");
    lset(&layer.join("opaque"), c"trusted.other", b"y");
    mknod(&layer.join("whiteout"), SFlag::S_IFCHR, 0);
    std::os::unix::fs::symlink(&outside, layer.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../outside", layer.join("rel-link")).unwrap();
    for p in all(&layer) {
        std::os::unix::fs::lchown(&p, Some(base + 5), Some(base + 5)).unwrap();
    }
    // Owned by the host's root, as overlayfs makes them.
    std::os::unix::fs::lchown(layer.join("whiteout"), Some(0), Some(0)).unwrap();
    // chown cleared them: set again, as a copy-up keeps them.
    for (rel, m) in [
        ("suid", 0o4755),
        ("sgid", 0o2755),
        ("sgid-nox", 0o2644),
        ("gdir", 0o2775),
        ("gdir/sub", 0o2755),
    ] {
        std::fs::set_permissions(layer.join(rel), std::fs::Permissions::from_mode(m)).unwrap();
    }
    lset(&cap, c"security.capability", &CAP_NET_RAW);
    layer
}

/// Every path under `dir` (and `dir`), links not followed.
fn all(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out
}

/// Nothing under `layer` has set-id bits or privileged attributes.
fn assert_clean(layer: &Path) {
    for p in all(layer) {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if !meta.file_type().is_symlink() {
            assert_eq!(mode(&p) & 0o6000, 0, "{} keeps set-id bits", p.display());
        }
        for name in lnames(&p) {
            assert!(
                !is_privileged_xattr(&CString::new(name.clone()).unwrap()),
                "{} keeps {name}",
                p.display()
            );
        }
    }
}

#[test]
fn a_taken_layer_is_cleaned_and_shifted_by_fd() {
    let tmp = tempfile::tempdir().unwrap();
    let base = 100_000;
    let layer = hostile_layer(tmp.path(), base);
    mknod(&layer.join("null"), SFlag::S_IFCHR, libc::makedev(1, 3));
    // A directory without its owner's read and search permission (which, rootless, the walk
    // takes for a moment) holding a set-id file.
    let locked = layer.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("suid"), b"x").unwrap();
    for (p, m) in [(locked.join("suid"), 0o4755), (locked.clone(), 0o2300)] {
        std::os::unix::fs::lchown(&p, Some(base + 5), Some(base + 5)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    clean_layer_blocking(&layer, Some(base)).unwrap();
    assert_eq!(mode(&locked), 0o300);
    assert_eq!(mode(&locked.join("suid")), 0o755);
    assert_clean(&layer);
    assert_eq!(mode(&layer.join("suid")), 0o755);
    assert_eq!(mode(&layer.join("sgid-nox")), 0o644);
    assert_eq!(mode(&layer.join("gdir")), 0o775);
    for p in all(&layer) {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let want = if p.ends_with("whiteout") { 0 } else { 5 };
        assert_eq!((meta.uid(), meta.gid()), (want, want), "{}", p.display());
    }
    // The markers overlayfs needs stay; the device that is no whiteout is gone.
    assert_eq!(lnames(&layer.join("opaque")), ["trusted.overlay.opaque"]);
    assert_eq!(lnames(&layer.join("cap")), ["user.kept"]);
    let whiteout = std::fs::symlink_metadata(layer.join("whiteout")).unwrap();
    assert_eq!(whiteout.rdev(), 0);
    assert!(!layer.join("null").exists());
    // The links' target outside was not touched.
    assert_eq!(mode(&tmp.path().join("outside")), 0o4755);
    assert_eq!(
        std::fs::metadata(tmp.path().join("outside")).unwrap().uid(),
        0
    );
    check_layer_blocking(&layer).unwrap();
}

#[test]
fn a_loaded_layer_with_what_no_layer_holds_is_refused_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tmp.path().join("layer");
    std::fs::create_dir(&layer).unwrap();
    std::fs::create_dir(layer.join("d")).unwrap();
    std::fs::write(layer.join("d/f"), b"12345").unwrap();
    lset(&layer.join("d"), c"trusted.overlay.opaque", b"y");
    mknod(&layer.join("d/whiteout"), SFlag::S_IFCHR, 0);
    nix::unistd::mkfifo(&layer.join("fifo"), Mode::S_IRWXU).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", layer.join("link")).unwrap();
    let size = check_layer_blocking(&layer).unwrap();
    assert_eq!(
        size,
        TreeSize {
            entries: 5,
            bytes: 5
        }
    );

    let refuse = |plant: &dyn Fn(&Path), undo: &dyn Fn(&Path)| {
        plant(&layer);
        let err = check_layer_blocking(&layer).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        undo(&layer);
        check_layer_blocking(&layer).unwrap();
    };
    let set_mode = |rel: &'static str, m: u32| {
        move |l: &Path| {
            std::fs::set_permissions(l.join(rel), std::fs::Permissions::from_mode(m)).unwrap()
        }
    };
    refuse(&set_mode("d/f", 0o4755), &set_mode("d/f", 0o644));
    refuse(&set_mode("d/f", 0o2644), &set_mode("d/f", 0o644));
    refuse(&set_mode("d", 0o2755), &set_mode("d", 0o755));
    refuse(
        &|l| mknod(&l.join("d/null"), SFlag::S_IFCHR, libc::makedev(1, 3)),
        &|l| std::fs::remove_file(l.join("d/null")).unwrap(),
    );
    refuse(
        &|l| mknod(&l.join("disk"), SFlag::S_IFBLK, libc::makedev(7, 0)),
        &|l| std::fs::remove_file(l.join("disk")).unwrap(),
    );
    refuse(
        &|l| lset(&l.join("d/f"), c"security.capability", &CAP_NET_RAW),
        &|l| {
            let (p, n) = (cpath(&l.join("d/f")), c"security.capability");
            // SAFETY: NUL-terminated strings.
            assert_eq!(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) }, 0);
        },
    );
    refuse(&|l| lset(&l.join("d"), c"trusted.evil", b"1"), &|l| {
        let (p, n) = (cpath(&l.join("d")), c"trusted.evil");
        // SAFETY: NUL-terminated strings.
        assert_eq!(unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) }, 0);
    });
    // A mount point in it.
    std::fs::create_dir(layer.join("mnt")).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &layer.join("mnt"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
    let err = check_layer_blocking(&layer).unwrap_err();
    nix::mount::umount(&layer.join("mnt")).unwrap();
    assert_eq!(err.kind(), io::ErrorKind::CrossesDevices, "{err}");
}

/// Saves `layer` as `name` in `to` and returns its path.
fn copy(layer: &Path, to: &Path, name: &str) -> io::Result<PathBuf> {
    let dir = Dir::open(to, DIR_FLAGS, Mode::empty()).unwrap();
    let name_c = CString::new(name).unwrap();
    copy_layer_blocking(layer, &dir, &name_c).map(|()| to.join(name))
}

/// A save links clean files, copies set-id or capable ones without what they must not keep
/// (their source untouched), keeps whiteouts, overlay markers and links as they are, and
/// refuses a device; the same across file systems (all copied).
#[test]
fn a_saved_layer_holds_nothing_privileged_and_leaves_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = hostile_layer(tmp.path(), 0);
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let mut dests = vec![(tmp.path().to_path_buf(), true)];
    if let Some(shm) = &shm {
        dests.push((shm.path().to_path_buf(), false));
    }
    for (to, same_fs) in dests {
        let saved = copy(&layer, &to, "saved").unwrap();
        assert_clean(&saved);
        check_layer_blocking(&saved).unwrap();
        // The source keeps what it had: nothing was changed through a link.
        assert_eq!(mode(&layer.join("suid")), 0o4755);
        assert_eq!(mode(&layer.join("gdir")), 0o2775);
        assert!(lnames(&layer.join("cap")).contains(&"security.capability".to_owned()));
        assert_eq!(mode(&saved.join("suid")), 0o755);
        assert_eq!(mode(&saved.join("gdir/sub")), 0o755);
        assert_eq!(std::fs::read(saved.join("sgid")).unwrap(), b"sgid");
        assert_eq!(lnames(&saved.join("opaque")), ["trusted.overlay.opaque"]);
        assert_eq!(lnames(&saved.join("cap")), ["user.kept"]);
        let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
        let linked = ino(&saved.join("sgid-nox")) == ino(&layer.join("sgid-nox"));
        assert!(!linked, "a set-id file was linked");
        let out = std::fs::read_dir(&saved).unwrap().count();
        assert_eq!(out, std::fs::read_dir(&layer).unwrap().count());
        assert_eq!(
            std::fs::read_link(saved.join("abs-link")).unwrap(),
            tmp.path().join("outside")
        );
        assert_eq!(
            std::fs::symlink_metadata(saved.join("whiteout"))
                .unwrap()
                .rdev(),
            0
        );
        // A plain file: linked on the same file system, copied across.
        std::fs::write(layer.join("plain"), b"p").unwrap();
        let again = copy(&layer, &to, "again").unwrap();
        assert_eq!(
            ino(&again.join("plain")) == ino(&layer.join("plain")),
            same_fs
        );
        std::fs::remove_file(layer.join("plain")).unwrap();
        let (before, after) = (
            check_layer_blocking(&saved).unwrap(),
            check_layer_blocking(&again).unwrap(),
        );
        assert_eq!(
            (before.entries + 1, before.bytes + 1),
            (after.entries, after.bytes)
        );
        // A device that is no whiteout is refused.
        mknod(&layer.join("null"), SFlag::S_IFCHR, libc::makedev(1, 3));
        let err = copy(&layer, &to, "refused").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        std::fs::remove_file(layer.join("null")).unwrap();
    }
}
