//! Unit tests of the parent module (kept apart: the module stays short).

use super::*;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

/// Makes a chain of `depth` directories named `name` under `top`, with a file in the
/// deepest, without ever building its path.
fn make_deep(top: &Path, name: &str, depth: usize) {
    let mut fd: OwnedFd = nix::fcntl::open(top, DIR_FLAGS, Mode::empty()).unwrap();
    for _ in 0..depth {
        nix::sys::stat::mkdirat(&fd, name, Mode::S_IRWXU).unwrap();
        fd = nix::fcntl::openat(&fd, name, DIR_FLAGS, Mode::empty()).unwrap();
    }
    let flags = OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    nix::fcntl::openat(fd.as_fd(), "file", flags, Mode::S_IRUSR).unwrap();
}

#[test]
fn removes_a_tree_deeper_than_any_stack_or_path() {
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("deep");
    std::fs::create_dir(&top).unwrap();
    // 20,000 levels of 30-byte names: a path of 600 KB, far beyond PATH_MAX.
    make_deep(&top, &"d".repeat(30), 20_000);
    let remover = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || remove_tree_blocking(&top))
        .unwrap();
    remover.join().unwrap().unwrap();
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn does_not_follow_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"x").unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("a/to-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("keep"), tree.join("a/b/to-file")).unwrap();
    std::os::unix::fs::symlink("../../..", tree.join("a/b/up")).unwrap();
    remove_tree_blocking(&tree).unwrap();
    assert!(!tree.exists());
    // A path that is itself a symlink: only the link goes.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    remove_tree_blocking(&link).unwrap();
    assert!(link.symlink_metadata().is_err());
    assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"x");
}

/// Makes a tree of files and directories without permissions and removes it, as the
/// calling thread's user.
fn make_and_remove_unreadable_tree(dir: &Path) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("closed/inner")).unwrap();
    std::fs::create_dir_all(tree.join("read-only/inner")).unwrap();
    std::fs::write(tree.join("closed/inner/f"), b"x").unwrap();
    std::fs::write(tree.join("read-only/f"), b"x").unwrap();
    let set = |p: &str, mode| {
        std::fs::set_permissions(tree.join(p), std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set("closed/inner/f", 0);
    set("closed/inner", 0);
    set("closed", 0);
    set("read-only/f", 0);
    set("read-only", 0o500);
    remove_tree_blocking(&tree).unwrap();
    assert!(tree.symlink_metadata().is_err());
    // A file path is simply unlinked.
    std::fs::write(dir.join("file"), b"x").unwrap();
    remove_tree_blocking(&dir.join("file")).unwrap();
    assert!(!dir.join("file").exists());
}

#[test]
fn removes_entries_without_permissions() {
    let tmp = tempfile::tempdir().unwrap();
    if !nix::unistd::geteuid().is_root() {
        make_and_remove_unreadable_tree(tmp.path());
        return;
    }
    // Root's override would hide the permission fixes: do it as nobody, on a thread of
    // its own (the raw syscalls change this thread's credentials only).
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = tmp.path().to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: plain syscalls without pointers; they affect the calling thread only.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534), 0);
        }
        make_and_remove_unreadable_tree(&dir);
    })
    .join()
    .unwrap();
}

#[test]
fn stops_at_a_mount_point() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("a/mnt")).unwrap();
    // In a mount namespace of this thread's own, which ends with the thread.
    std::thread::spawn(move || {
        use nix::mount::{MsFlags, mount};
        // SAFETY: no pointers; it affects the calling thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0);
        let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
        mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
        let mnt = tree.join("a/mnt");
        mount(
            Some("none"),
            &mnt,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        std::fs::write(mnt.join("keep"), b"x").unwrap();
        let err = remove_tree_blocking(&tree).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::CrossesDevices);
        assert!(mnt.join("keep").exists());
        let err = remove_tree_blocking(&mnt).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::CrossesDevices);
        assert!(mnt.join("keep").exists());
    })
    .join()
    .unwrap();
}

/// The ids the chown tests hand trees to, other than their creator's: only root can.
fn new_owner() -> Option<(u32, u32)> {
    nix::unistd::geteuid()
        .is_root()
        .then_some((123_456, 234_567))
}

/// `(uid, gid)` of `path` itself, not followed.
fn owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = path.symlink_metadata().unwrap();
    (meta.uid(), meta.gid())
}

#[test]
fn chowns_a_tree_deeper_than_any_stack_or_path() {
    // Without root, handing the tree to its creator still walks all of it.
    let ids = new_owner().unwrap_or((
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    ));
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("deep");
    std::fs::create_dir(&top).unwrap();
    let name = "d".repeat(30);
    make_deep(&top, &name, 20_000);
    let chowner = {
        let top = top.clone();
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || chown_tree_blocking(&top, ids.0, ids.1))
            .unwrap()
    };
    chowner.join().unwrap().unwrap();
    let mut fd: OwnedFd = nix::fcntl::open(&top, DIR_FLAGS, Mode::empty()).unwrap();
    for _ in 0..20_000 {
        let st = fstat(&fd).unwrap();
        assert_eq!((st.st_uid, st.st_gid), ids);
        fd = nix::fcntl::openat(&fd, name.as_str(), DIR_FLAGS, Mode::empty()).unwrap();
    }
    let st = nix::sys::stat::fstatat(&fd, "file", AtFlags::AT_SYMLINK_NOFOLLOW).unwrap();
    assert_eq!((st.st_uid, st.st_gid), ids);
    drop(fd);
    remove_tree_blocking(&top).unwrap();
}

#[test]
fn chown_does_not_follow_symlinks() {
    let Some(ids) = new_owner() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"x").unwrap();
    let before = (owner(&outside), owner(&outside.join("keep")));
    assert_ne!(before.0, ids);
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b")).unwrap();
    let links = ["a/to-dir", "a/b/to-file", "a/b/up", "a/b/dangling"];
    std::os::unix::fs::symlink(&outside, tree.join(links[0])).unwrap();
    std::os::unix::fs::symlink(outside.join("keep"), tree.join(links[1])).unwrap();
    std::os::unix::fs::symlink("../../..", tree.join(links[2])).unwrap();
    std::os::unix::fs::symlink("nowhere", tree.join(links[3])).unwrap();
    chown_tree_blocking(&tree, ids.0, ids.1).unwrap();
    for p in ["", "a", "a/b"].into_iter().chain(links) {
        assert_eq!(owner(&tree.join(p)), ids, "{p}");
    }
    assert_eq!(owner(tmp.path()), before.0);
    // A path that is itself a symlink: only the link changes.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    chown_tree_blocking(&link, ids.0, ids.1).unwrap();
    assert_eq!(owner(&link), ids);
    assert_eq!((owner(&outside), owner(&outside.join("keep"))), before);
}

#[test]
fn chowns_files_dirs_and_fifos() {
    let Some(ids) = new_owner() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("dir/sub")).unwrap();
    std::fs::create_dir_all(tree.join("owned/inner")).unwrap();
    std::fs::write(tree.join("file"), b"x").unwrap();
    std::fs::write(tree.join("dir/sub/file"), b"x").unwrap();
    std::fs::write(tree.join("owned/file"), b"x").unwrap();
    nix::unistd::mkfifo(&tree.join("fifo"), Mode::S_IRUSR).unwrap();
    nix::unistd::mkfifo(&tree.join("dir/sub/fifo"), Mode::empty()).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(tree.join("dir/socket")).unwrap();
    std::fs::set_permissions(tree.join("dir/sub"), std::fs::Permissions::from_mode(0o000)).unwrap();
    // A directory already handed over is still walked into.
    std::os::unix::fs::lchown(tree.join("owned"), Some(ids.0), Some(ids.1)).unwrap();
    chown_tree_blocking(&tree, ids.0, ids.1).unwrap();
    for p in [
        "",
        "file",
        "fifo",
        "dir",
        "dir/socket",
        "dir/sub",
        "dir/sub/file",
        "dir/sub/fifo",
        "owned",
        "owned/inner",
        "owned/file",
    ] {
        assert_eq!(owner(&tree.join(p)), ids, "{p}");
    }
    // A file path is simply handed over; a missing one is an error.
    std::fs::write(tmp.path().join("alone"), b"x").unwrap();
    chown_tree_blocking(&tmp.path().join("alone"), ids.0, ids.1).unwrap();
    assert_eq!(owner(&tmp.path().join("alone")), ids);
    let err = chown_tree_blocking(&tmp.path().join("missing"), ids.0, ids.1).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
}

#[test]
fn chown_skips_mount_points() {
    let Some(ids) = new_owner() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("a/mnt")).unwrap();
    std::fs::create_dir_all(tree.join("a/bound-dir")).unwrap();
    std::fs::write(tree.join("a/file"), b"x").unwrap();
    std::fs::write(tree.join("a/bound-file"), b"x").unwrap();
    // Bind mounts from the same file system, which only their mount ids tell apart.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"x").unwrap();
    // In a mount namespace of this thread's own, which ends with the thread.
    std::thread::spawn(move || {
        use nix::mount::{MsFlags, mount};
        // SAFETY: no pointers; it affects the calling thread only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0);
        let private = MsFlags::MS_REC | MsFlags::MS_PRIVATE;
        mount(None::<&str>, "/", None::<&str>, private, None::<&str>).unwrap();
        let none = None::<&str>;
        let mnt = tree.join("a/mnt");
        mount(Some("none"), &mnt, Some("tmpfs"), MsFlags::empty(), none).unwrap();
        std::fs::write(mnt.join("keep"), b"x").unwrap();
        let bound_dir = tree.join("a/bound-dir");
        mount(Some(&outside), &bound_dir, none, MsFlags::MS_BIND, none).unwrap();
        let bound_file = tree.join("a/bound-file");
        let keep = outside.join("keep");
        mount(Some(&keep), &bound_file, none, MsFlags::MS_BIND, none).unwrap();
        let untouched = [&mnt, &mnt.join("keep"), &outside, &keep];
        let before = untouched.map(|p| owner(p));
        assert!(before.iter().all(|&o| o != ids));
        chown_tree_blocking(&tree, ids.0, ids.1).unwrap();
        for p in ["", "a", "a/file"] {
            assert_eq!(owner(&tree.join(p)), ids, "{p}");
        }
        assert_eq!(untouched.map(|p| owner(p)), before);
        // At the top, a mount point is the mount the walk stays on.
        chown_tree_blocking(&mnt, ids.0, ids.1).unwrap();
        assert_eq!([owner(&mnt), owner(&mnt.join("keep"))], [ids, ids]);
    })
    .join()
    .unwrap();
}

#[test]
fn a_missing_path_is_success() {
    let tmp = tempfile::tempdir().unwrap();
    remove_tree_blocking(&tmp.path().join("missing")).unwrap();
    remove_tree_blocking(&tmp.path().join("missing/below")).unwrap();
}
