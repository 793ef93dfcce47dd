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

// ---------------------------------------------------------------------------------------
// Attacks on the unpack's resources (a forged archive written into tar's stdout). A failure
// message starting with BREAK is a successful attack.

/// A raw GNU header for `name` (up to 100 bytes), of type `kind`, claiming `size` bytes.
fn raw_header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> [u8; 512] {
    raw_link_header(name, kind, size, mode, "")
}

/// As [`raw_header`], with a link target.
fn raw_link_header(
    name: &[u8],
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    link: &str,
) -> [u8; 512] {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    if !link.is_empty() {
        header.set_link_name(link).unwrap();
    }
    header.set_cksum();
    *header.as_bytes()
}

/// A reader that counts what was taken from it.
struct Counted<R> {
    inner: R,
    taken: Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn a_huge_long_name_or_pax_header_is_not_read_into_memory() {
    // A GNU long name, a GNU long link target or a pax header of 64 MiB: the tar crate reads
    // each whole into a Vec before the unpack sees the entry (the download's stream is only
    // capped at 4 GiB, or the output limit: as much host memory).
    const HUGE: u64 = 64 << 20;
    for kind in [
        tar::EntryType::GNULongName,
        tar::EntryType::GNULongLink,
        tar::EntryType::XHeader,
    ] {
        let head = raw_header(b"././@LongLink", kind, HUGE, 0o644);
        let file = raw_header(b"f", tar::EntryType::Regular, 0, 0o644);
        let stream = io::Cursor::new(head)
            .chain(io::repeat(b'a').take(HUGE))
            .chain(io::Cursor::new(file))
            .chain(io::repeat(0).take(1024));
        let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Counted {
            inner: stream,
            taken: Arc::clone(&taken),
        };
        let dst = tempfile::tempdir().unwrap();
        let r = unpack_blocking(counted, open(dst.path()), u64::MAX);
        let taken = taken.load(Ordering::Relaxed);
        assert!(
            r.is_err() && taken < 32 << 20,
            "BREAK: a {HUGE}-byte {kind:?} entry was read whole ({taken} bytes taken; the \
             unpack said {r:?})"
        );
        assert_eq!(
            r.unwrap_err().kind(),
            io::ErrorKind::InvalidData,
            "{kind:?}"
        );
    }
}

/// How many directories are under `dir`, itself included.
fn count_dirs(dir: &Path) -> usize {
    let mut n = 1;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            n += count_dirs(&e.path());
        }
    }
    n
}

#[test]
fn directories_and_entries_count_against_the_size_budget() {
    // Each 512-byte header may name a file 48 directories deep, all of them made on the way
    // (about 200 KiB of directory blocks for 1 KiB of archive); or an archive may be
    // nothing but empty directories, files and links: none of it counted against the
    // budget, which was meant to bound what the download costs the host's disk.
    const BUDGET: u64 = 1 << 20;
    let deep: Vec<u8> = (0..100)
        .flat_map(|i| {
            let mut name = format!("d{i:02}");
            while name.len() < 96 {
                name.push_str("/a");
            }
            name.push_str("/f");
            raw_header(name.as_bytes(), tar::EntryType::Regular, 0, 0o644)
        })
        .chain([0u8; 1024])
        .collect();
    let flat: Vec<u8> = (0..1000)
        .flat_map(|i| {
            let kind = [
                tar::EntryType::Directory,
                tar::EntryType::Regular,
                tar::EntryType::Symlink,
            ][i % 3];
            let link = if kind == tar::EntryType::Symlink {
                "target"
            } else {
                ""
            };
            raw_link_header(format!("e{i}").as_bytes(), kind, 0, 0o755, link)
        })
        .chain([0u8; 1024])
        .collect();
    for (what, archive) in [("deep paths", deep), ("a thousand entries", flat)] {
        let dst = tempfile::tempdir().unwrap();
        let r = unpack_blocking(&archive[..], open(dst.path()), BUDGET);
        let made = std::fs::read_dir(dst.path()).unwrap().count();
        let dirs = count_dirs(dst.path()) - 1;
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::FileTooLarge),
            "BREAK ({what}): a {}-byte archive made {dirs} directories and {made} top \
             entries on the host within a {BUDGET}-byte budget ({r:?})",
            archive.len()
        );
    }
    // A tree of a few entries still fits a small budget.
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("a/b/c")).unwrap();
    std::fs::write(src.path().join("a/b/c/f"), b"x").unwrap();
    let dst = tempfile::tempdir().unwrap();
    unpack_blocking(&pack_to_vec(src.path())[..], open(dst.path()), BUDGET).unwrap();
    assert_eq!(std::fs::read(dst.path().join("a/b/c/f")).unwrap(), b"x");
}

/// An archive of one entry of type `kind` whose pax `path` (and `linkpath`) is `path`.
fn pax_archive(path: &[u8], kind: tar::EntryType, mode: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut out);
        let mut ext = vec![("path", path)];
        if kind == tar::EntryType::Symlink {
            ext.push(("linkpath", path));
        }
        builder.append_pax_extensions(ext).unwrap();
        builder
            .append(
                tar::Header::from_byte_slice(&raw_header(b"x", kind, 0, mode)),
                io::empty(),
            )
            .unwrap();
        builder.finish().unwrap();
    }
    out
}

#[test]
fn names_longer_than_path_max_are_refused() {
    // A 64 KiB name of 32 Ki components (or 16 MiB: 8 Mi): split into as many OsStrings, as
    // many directories made and walked again by every entry naming it, and kept whole in
    // memory until the end when its mode lacks its owner's bits. No host tool can name such
    // a path (PATH_MAX is 4096 bytes).
    let long: Vec<u8> = b"a/".repeat(32 << 10);
    for (kind, mode) in [
        (tar::EntryType::Directory, 0o500),
        (tar::EntryType::Regular, 0o644),
        (tar::EntryType::Symlink, 0o777),
    ] {
        let archive = pax_archive(&long, kind, mode);
        // Removed without recursion: `std::fs::remove_dir_all` (and so `TempDir`'s drop)
        // recurses once per level, and overflows the stack on such a tree.
        let dst = tempfile::tempdir().unwrap().keep();
        let started = std::time::Instant::now();
        let r = unpack_blocking(&archive[..], open(&dst), u64::MAX);
        let made = std::fs::read_dir(&dst).unwrap().count();
        crate::sys::fs_tree::remove_tree_blocking(&dst).unwrap();
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::InvalidData) && made == 0,
            "BREAK: a {}-byte {kind:?} name was unpacked ({r:?}, {made} entries made, {:?})",
            long.len(),
            started.elapsed()
        );
    }
    // A name up to PATH_MAX is fine.
    let fine: Vec<u8> = b"b/".repeat(1000);
    let dst = tempfile::tempdir().unwrap();
    let archive = pax_archive(&fine, tar::EntryType::Directory, 0o755);
    unpack_blocking(&archive[..], open(dst.path()), u64::MAX).unwrap();
    assert_eq!(count_dirs(dst.path()), 1001);
}

#[test]
fn a_relative_path_from_inside_a_container_writable_dir_follows_no_link() {
    // The caller's working directory is below a container's writable directory (a CLI run
    // in a project's `src/` with the project as the workdir): the walk starts inside it
    // without entering it, so a relative path must not follow the links the container
    // planted there either.
    let root = tempfile::tempdir().unwrap();
    let work = root.path().join("work");
    let secret = root.path().join("secret");
    std::fs::create_dir_all(work.join("src")).unwrap();
    std::fs::create_dir(&secret).unwrap();
    std::os::unix::fs::symlink(&secret, work.join("src/out")).unwrap();
    let container = writable(&work);
    let src = work.join("src");
    let results = std::thread::spawn(move || {
        // A working directory of this thread's own.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
        std::env::set_current_dir(&src).unwrap();
        ["out", "out/new", "../src/out", "."].map(|p| {
            (
                p,
                open_dir_blocking(Path::new(p), true, &container).map(|_| ()),
            )
        })
    })
    .join()
    .unwrap();
    for (path, r) in &results[..3] {
        assert!(
            matches!(r, Err(e) if e.kind() == io::ErrorKind::InvalidInput),
            "BREAK: {path}, relative to a directory inside the container's, went through \
             its link ({r:?})"
        );
    }
    results[3].1.as_ref().unwrap();
    assert!(
        !secret.join("new").exists(),
        "BREAK: made a directory through the link"
    );
}

#[test]
fn packing_leaves_out_a_socket_swapped_in_for_a_file() {
    // The listing and `fstatat` see a file, the open meets a socket (`ENXIO`): a sandbox
    // swapping one for the other made every upload of its directory fail, where a FIFO
    // swapped in the same way is left out.
    let src = tempfile::tempdir().unwrap();
    let s = src.path().to_path_buf();
    std::fs::write(s.join("f"), b"plain").unwrap();
    let _listener = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swap = {
        let (s, stop) = (s.clone(), Arc::clone(&stop));
        std::thread::spawn(move || swapper(s, "f", "sock", stop))
    };
    let started = std::time::Instant::now();
    let (mut rounds, mut failed) = (0, Vec::new());
    while started.elapsed() < std::time::Duration::from_secs(1) {
        let mut out = Vec::new();
        if let Err(e) = pack_blocking(open(&s), &mut out) {
            failed.push(e.to_string());
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    swap.join().unwrap();
    assert!(
        failed.is_empty(),
        "BREAK: {} of {rounds} packs failed on a socket swapped in: {:?}",
        failed.len(),
        failed.first()
    );
}

/// A GNU long name entry for `name`, then a header of `kind` (`name` must need no more).
fn long_name_entry(name: &[u8], kind: tar::EntryType, link: &str) -> Vec<u8> {
    let mut out = raw_header(
        b"././@LongLink",
        tar::EntryType::GNULongName,
        name.len() as u64,
        0o644,
    )
    .to_vec();
    out.extend_from_slice(name);
    out.resize(out.len().next_multiple_of(512), 0);
    out.extend_from_slice(&raw_link_header(b"short", kind, 0, 0o644, link));
    out
}

#[test]
fn hostile_archive_corner_cases_are_held() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"safe").unwrap();
    let victim = outside.join("victim");
    let v = victim.to_str().unwrap();
    let fresh = |name: &str| {
        let dst = root.path().join(name);
        std::fs::create_dir(&dst).unwrap();
        dst
    };
    let (link, hard, reg, dir) = (
        tar::EntryType::Symlink,
        tar::EntryType::Link,
        tar::EntryType::Regular,
        tar::EntryType::Directory,
    );

    // A hard link to a symlink, then a file written at the hard link's name: the symlink
    // is linked (not followed), then replaced; nothing is written through it.
    let dst = fresh("hardlink-to-symlink");
    let archive = archive_with(&[("s", link, v), ("h", hard, "s"), ("h", reg, "")]);
    unpack_blocking(&archive[..], open(&dst), u64::MAX).unwrap();
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"safe",
        "BREAK: written through"
    );
    assert_eq!(std::fs::read(dst.join("h")).unwrap(), b"evil");
    // ... and a path through that hard link (a symlink) is refused.
    let dst = fresh("through-hardlink");
    let archive = archive_with(&[("s", link, v), ("h", hard, "s"), ("h/x", reg, "")]);
    assert!(unpack_blocking(&archive[..], open(&dst), u64::MAX).is_err());

    // A hard link to a file the caller's directory already held, then a file at its name:
    // the caller's file is not written through the new link.
    let dst = fresh("hardlink-to-callers-file");
    std::fs::write(dst.join("data"), b"caller's").unwrap();
    let archive = archive_with(&[("h", hard, "data"), ("h", reg, "")]);
    unpack_blocking(&archive[..], open(&dst), u64::MAX).unwrap();
    assert_eq!(
        std::fs::read(dst.join("data")).unwrap(),
        b"caller's",
        "BREAK"
    );

    // A hard link whose target's parents do not exist: refused, nothing made for it.
    let dst = fresh("hardlink-missing");
    let archive = archive_with(&[("h", hard, "no/such/dir/f")]);
    assert!(unpack_blocking(&archive[..], open(&dst), u64::MAX).is_err());
    assert!(
        !dst.join("no").exists(),
        "BREAK: a link's target made directories"
    );

    // A directory, then a file (or a link) of the same name: refused, the directory stays.
    for kind in [reg, link, hard] {
        let dst = fresh(&format!("dir-then-{kind:?}"));
        let target = if kind == reg { "" } else { v };
        let archive = archive_with(&[("d", dir, ""), ("d/in", reg, ""), ("d", kind, target)]);
        let err = unpack_blocking(&archive[..], open(&dst), u64::MAX).unwrap_err();
        assert!(dst.join("d/in").is_file(), "{kind:?}: {err}");
    }

    // The top's own entry, with every mode bit: the caller's directory keeps its mode.
    let dst = fresh("top");
    let before = std::fs::metadata(&dst).unwrap().mode();
    let mut archive = Vec::new();
    {
        let mut builder = tar::Builder::new(&mut archive);
        for name in [".", "./", ""] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(dir);
            h.set_mode(0o7777);
            h.set_size(0);
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            builder.append(&h, io::empty()).unwrap();
        }
        builder.finish().unwrap();
    }
    unpack_blocking(&archive[..], open(&dst), u64::MAX).unwrap();
    assert_eq!(
        std::fs::metadata(&dst).unwrap().mode(),
        before,
        "BREAK: top's mode"
    );

    // Long names (GNU) climbing out or absolute, for the entry and for a link's target.
    let climbing = format!("{}../../outside/escaped", "a/".repeat(60));
    let absolute = format!("{}/{}", outside.display(), "b".repeat(120));
    for archive in [
        long_name_entry(climbing.as_bytes(), reg, ""),
        long_name_entry(absolute.as_bytes(), reg, ""),
        long_name_entry(climbing.as_bytes(), hard, "x"),
    ] {
        let mut archive = archive;
        archive.extend_from_slice(&[0; 1024]);
        let dst = fresh(&format!("long-{}", archive.len() ^ rand_suffix()));
        let r = unpack_blocking(&archive[..], open(&dst), u64::MAX);
        assert!(
            r.is_err(),
            "BREAK: a long name out of the directory was accepted"
        );
    }
    let mut archive = long_name_entry(b"x", tar::EntryType::Link, "");
    archive.truncate(archive.len() - 512);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongLink);
    h.set_size(climbing.len() as u64);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    archive.extend_from_slice(h.as_bytes());
    archive.extend_from_slice(climbing.as_bytes());
    archive.resize(archive.len().next_multiple_of(512), 0);
    archive.extend_from_slice(&raw_link_header(b"hl", hard, 0, 0o644, "y"));
    archive.extend_from_slice(&[0; 1024]);
    let dst = fresh("long-link");
    assert!(unpack_blocking(&archive[..], open(&dst), u64::MAX).is_err());
    let landed: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
    assert_eq!(
        landed.len(),
        1,
        "BREAK: an entry landed outside: {landed:?}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"safe");
}

/// A number to tell apart the directories of one test.
fn rand_suffix() -> usize {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn sparse_claims_are_bounded() {
    // A GNU sparse entry of one 512-byte block claiming 1 TiB (or 64 MiB): charged at
    // its apparent size before anything is written.
    let sparse = |real: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_size(512);
        h.as_old_mut().name[..6].copy_from_slice(b"sparse");
        let gnu = h.as_gnu_mut().unwrap();
        gnu.set_real_size(real);
        gnu.sparse[0].set_offset(real - 512);
        gnu.sparse[0].set_length(512);
        h.set_cksum();
        h
    };
    let archive_of = |h: &tar::Header| {
        let mut archive = h.as_bytes().to_vec();
        archive.extend_from_slice(&[b'x'; 512]);
        archive.extend_from_slice(&[0; 1024]);
        archive
    };
    let dst = tempfile::tempdir().unwrap();
    let archive = archive_of(&sparse(1 << 40));
    let err = unpack_blocking(&archive[..], open(dst.path()), 4 << 30).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::FileTooLarge, "BREAK: {err}");
    assert!(!dst.path().join("sparse").exists());
    // Within the budget, a hole on the host (as in the sandbox).
    let archive = archive_of(&sparse(64 << 20));
    unpack_blocking(&archive[..], open(dst.path()), 4 << 30).unwrap();
    let meta = std::fs::metadata(dst.path().join("sparse")).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        meta.blocks() * 512 < 1 << 20,
        "BREAK: {} blocks for a hole",
        meta.blocks()
    );

    // An endless sparse map (extension headers each saying another follows): stopped by
    // the header limit, not read to the end of the stream.
    let mut h = sparse(1 << 40);
    h.as_gnu_mut().unwrap().isextended[0] = 1;
    h.set_cksum();
    let mut ext = [0u8; 512];
    ext[504] = 1; // isextended
    let endless = io::Cursor::new(h.as_bytes().to_vec()).chain(Blocks(ext, 0));
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Counted {
        inner: endless,
        taken: Arc::clone(&taken),
    };
    let dst = tempfile::tempdir().unwrap();
    let r = unpack_blocking(counted, open(dst.path()), u64::MAX);
    let taken = taken.load(Ordering::Relaxed);
    assert!(
        r.is_err() && taken <= ENTRY_HEADERS_LIMIT + 1024,
        "BREAK: an endless sparse map took {taken} bytes ({r:?})"
    );
}

#[test]
fn names_that_are_not_utf8_travel_as_they_are() {
    let src = tempfile::tempdir().unwrap();
    let name = OsStr::from_bytes(b"caf\xe9-\xff\x01");
    std::fs::create_dir(src.path().join(name)).unwrap();
    std::fs::write(src.path().join(name).join(name), b"bytes").unwrap();
    std::os::unix::fs::symlink(OsStr::from_bytes(b"\xfe/target"), src.path().join("l")).unwrap();
    let dst = tempfile::tempdir().unwrap();
    unpack_blocking(&pack_to_vec(src.path())[..], open(dst.path()), u64::MAX).unwrap();
    assert_eq!(
        std::fs::read(dst.path().join(name).join(name)).unwrap(),
        b"bytes"
    );
    assert_eq!(
        std::fs::read_link(dst.path().join("l"))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"\xfe/target"
    );
}

/// Block `.0` over and over, without end (`.1`: where in it the next read starts).
struct Blocks([u8; 512], usize);

impl Read for Blocks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(512 - self.1);
        buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
        self.1 = (self.1 + n) % 512;
        Ok(n)
    }
}
