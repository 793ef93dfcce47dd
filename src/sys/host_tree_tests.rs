use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

fn no_container_dirs(_: u64, _: u64) -> Option<PathBuf> {
    None
}

/// A closure that names `dir` container-writable.
fn writable(dir: &Path) -> impl Fn(u64, u64) -> Option<PathBuf> + use<> {
    let meta = std::fs::metadata(dir).unwrap();
    let (dev, ino, path) = (meta.dev(), meta.ino(), dir.to_path_buf());
    move |d, i| ((d, i) == (dev, ino)).then(|| path.clone())
}

fn open(path: &Path) -> OwnedFd {
    open_dir_blocking(path, false, &no_container_dirs).unwrap()
}

fn pack_to_vec(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    pack_blocking(open(path), &mut out).unwrap();
    out
}

/// An archive with raw entries `(path, kind, link target)` (written as a hostile sandbox
/// could: `set_path` itself refuses `..`).
fn archive_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut out);
        for (path, kind, target) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(0o4755);
            let body: &[u8] = if *kind == tar::EntryType::Regular {
                b"evil"
            } else {
                b""
            };
            header.set_size(body.len() as u64);
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if !target.is_empty() {
                header.set_link_name(target).unwrap();
            }
            header.set_cksum();
            builder.append(&header, body).unwrap();
        }
        builder.finish().unwrap();
    }
    out
}

#[test]
fn a_tree_goes_through_pack_and_unpack_as_it_is() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    std::fs::create_dir_all(s.join("a/b")).unwrap();
    std::fs::write(s.join("a/b/file"), b"content").unwrap();
    std::fs::write(s.join("exec"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(s.join("exec"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", s.join("link")).unwrap();
    std::fs::create_dir(s.join("locked")).unwrap();
    std::fs::write(s.join("locked/inside"), b"x").unwrap();
    std::fs::set_permissions(s.join("locked"), std::fs::Permissions::from_mode(0o500)).unwrap();
    nix::unistd::mkfifo(&s.join("fifo"), Mode::S_IRWXU).unwrap();

    let archive = pack_to_vec(s);
    let dst = tempfile::tempdir().unwrap();
    let d = dst.path();
    unpack_blocking(&archive[..], open(d), u64::MAX).unwrap();
    assert_eq!(std::fs::read(d.join("a/b/file")).unwrap(), b"content");
    assert_eq!(
        std::fs::symlink_metadata(d.join("exec")).unwrap().mode() & 0o7777,
        0o755,
        "set-id bits dropped"
    );
    assert_eq!(
        std::fs::read_link(d.join("link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert_eq!(std::fs::read(d.join("locked/inside")).unwrap(), b"x");
    assert_eq!(
        std::fs::metadata(d.join("locked")).unwrap().mode() & 0o777,
        0o500
    );
    assert!(!d.join("fifo").exists(), "FIFOs are left out");
    std::fs::set_permissions(s.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(d.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();
}

#[test]
fn a_hostile_archive_cannot_write_outside_the_target() {
    let root = tempfile::tempdir().unwrap();
    let target = root.path().join("target");
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::create_dir(&target).unwrap();
    let regular = tar::EntryType::Regular;
    let outside_str = outside.to_str().unwrap();
    let escapes = [
        archive_with(&[("../outside/escaped", regular, "")]),
        archive_with(&[("/tmp/escaped-abs", regular, "")]),
        archive_with(&[
            ("link", tar::EntryType::Symlink, outside_str),
            ("link/escaped", regular, ""),
        ]),
        archive_with(&[
            ("link", tar::EntryType::Symlink, outside_str),
            ("link", tar::EntryType::Directory, ""),
            ("link/escaped", regular, ""),
        ]),
        archive_with(&[("hard", tar::EntryType::Link, "../outside/x")]),
    ];
    for hostile in escapes {
        let r = unpack_blocking(&hostile[..], open(&target), u64::MAX);
        assert!(r.is_err(), "an escaping archive was accepted");
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "an entry landed outside the target"
        );
    }
    // A file written at a planted link replaces the link, never writes through it.
    std::fs::write(outside.join("victim"), b"safe").unwrap();
    let victim = outside.join("victim");
    let planted = archive_with(&[
        ("f", tar::EntryType::Symlink, victim.to_str().unwrap()),
        ("f", regular, ""),
    ]);
    unpack_blocking(&planted[..], open(&target), u64::MAX).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"safe");
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"evil");
}

#[test]
fn the_size_budget_counts_apparent_sizes() {
    let src = tempfile::tempdir().unwrap();
    let big = File::create(src.path().join("sparse")).unwrap();
    big.set_len(8 << 20).unwrap();
    let archive = pack_to_vec(src.path());
    let dst = tempfile::tempdir().unwrap();
    let err = unpack_blocking(&archive[..], open(dst.path()), 1 << 20).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge);
    let dst = tempfile::tempdir().unwrap();
    unpack_blocking(&archive[..], open(dst.path()), 16 << 20).unwrap();
    let meta = std::fs::metadata(dst.path().join("sparse")).unwrap();
    assert_eq!(meta.len(), 8 << 20);
    assert!(meta.blocks() * 512 < 1 << 20, "zeros are left as holes");
}

#[test]
fn links_are_followed_only_outside_container_writable_dirs() {
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    let secret = root.path().join("secret");
    std::fs::create_dir_all(work.join("real")).unwrap();
    std::fs::create_dir(&secret).unwrap();
    std::os::unix::fs::symlink(&work, root.path().join("alias")).unwrap();
    std::os::unix::fs::symlink(&secret, work.join("planted")).unwrap();
    let container = writable(&work);
    // The caller's own link, above the container's directory: followed.
    open_dir_blocking(&root.path().join("alias/real"), false, &container).unwrap();
    // A link inside it, or `..` out of it: refused, even with create.
    for path in [
        work.join("planted"),
        root.path().join("alias/planted"),
        work.join("planted/new"),
        work.join("real/../../secret"),
    ] {
        for create in [false, true] {
            let err = open_dir_blocking(&path, create, &container).unwrap_err();
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{}",
                path.display()
            );
        }
    }
    assert!(!secret.join("new").exists());
    // Without a container there, the same link is the caller's: followed.
    open_dir_blocking(&work.join("planted"), false, &no_container_dirs).unwrap();
    // Missing directories are made with create, one name at a time.
    open_dir_blocking(&work.join("real/x/y"), true, &container).unwrap();
    assert!(work.join("real/x/y").is_dir());
    let err = open_dir_blocking(&work.join("nope"), false, &container).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

/// `renameat2(RENAME_EXCHANGE)` of `a` and `b` in `dir`, as fast as it goes until `stop`.
fn swapper(dir: PathBuf, a: &'static str, b: &'static str, stop: Arc<AtomicBool>) {
    let fd = nix::fcntl::open(&dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let _ = nix::fcntl::renameat2(&fd, a, &fd, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE);
    }
}

#[test]
fn packing_never_follows_a_link_swapped_in() {
    let root = tempfile::tempdir().unwrap();
    let secret_dir = root.path().join("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("shadow"), b"SECRET").unwrap();
    let src = root.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/shadow"), b"plain").unwrap();
    std::fs::write(src.join("f"), b"plain").unwrap();
    std::os::unix::fs::symlink(&secret_dir, src.join("l")).unwrap();
    std::os::unix::fs::symlink(secret_dir.join("shadow"), src.join("g")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swappers = [("d", "l"), ("f", "g")].map(|(a, b)| {
        let (src, stop) = (src.clone(), Arc::clone(&stop));
        std::thread::spawn(move || swapper(src, a, b, stop))
    });
    let started = std::time::Instant::now();
    let mut rounds = 0;
    while started.elapsed() < std::time::Duration::from_secs(2) {
        let archive = pack_to_vec(&src);
        assert!(
            !archive.windows(6).any(|w| w == b"SECRET"),
            "a packed archive holds the secret (round {rounds})"
        );
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for t in swappers {
        t.join().unwrap();
    }
    assert!(rounds > 50, "only {rounds} rounds");
}

#[test]
fn unpacking_never_writes_through_a_link_swapped_in() {
    let root = tempfile::tempdir().unwrap();
    let victim = root.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    let dst = root.path().join("dst");
    std::fs::create_dir_all(dst.join("sub")).unwrap();
    std::os::unix::fs::symlink(&victim, dst.join("l")).unwrap();
    // An archive of 300 files under sub/.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("sub")).unwrap();
    for i in 0..300 {
        std::fs::write(src.path().join(format!("sub/f{i}")), b"x").unwrap();
    }
    let archive = pack_to_vec(src.path());
    let stop = Arc::new(AtomicBool::new(false));
    let swap = {
        let (dst, stop) = (dst.clone(), Arc::clone(&stop));
        std::thread::spawn(move || swapper(dst, "sub", "l", stop))
    };
    let started = std::time::Instant::now();
    let mut rounds = 0;
    while started.elapsed() < std::time::Duration::from_secs(2) {
        let _ = unpack_blocking(&archive[..], open(&dst), u64::MAX);
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    swap.join().unwrap();
    let landed = std::fs::read_dir(&victim).unwrap().count();
    assert_eq!(
        landed, 0,
        "{landed} files landed through the link ({rounds} rounds)"
    );
}
