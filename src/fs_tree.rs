//! Removing a directory tree that a container may have shaped: no recursion, a bounded number
//! of open descriptors, no symlink followed and no path longer than one name built.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, fchmod, fstat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How every directory of the tree is opened: never through a symlink.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// One directory on the way from the top of the tree down to the current one.
struct Level {
    /// Its name in its parent.
    name: CString,
    /// Its `(st_dev, st_ino)`, which its parent must still have when the walk comes back up.
    id: (u64, u64),
    /// Its subdirectories still to remove, once its other entries are gone.
    subdirs: Option<Vec<CString>>,
}

/// Removes `path` and, if it is a directory, everything below it, like
/// `std::fs::remove_dir_all` but safe on a tree that a hostile process made or still holds.
/// Blocking.
///
/// - No recursion: the walk keeps the names and `(st_dev, st_ino)` of the directories from
///   the top down to the current one in memory, so a tree of any depth needs a fixed amount
///   of stack and at most three open descriptors.
/// - Directories are opened with `O_NOFOLLOW` relative to their parent's descriptor, and the
///   walk goes back up through `..`, checking that the parent is the directory it came from:
///   if a directory was moved meanwhile, the removal stops with an error rather than delete
///   elsewhere. No full path is ever built, so depth is not limited by `PATH_MAX`.
/// - Symlinks (the top one included), sockets, fifos and devices are unlinked, never
///   followed. The components of `path` above its last one are resolved as usual.
/// - A directory in the tree without all of its owner's permissions is made `0o700` first
///   (without root's override, removing its entries takes them); the parent of `path` is
///   never changed.
/// - It stays on one file system, like `rm --one-file-system`: a mount point in the tree (or
///   at `path`) stops it with an error before anything of the mounted file system is removed.
/// - A missing `path` (or parent) is success. Concurrent additions to the tree can make it
///   fail with `ENOTEMPTY`.
pub(crate) fn remove_tree_blocking(path: &Path) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no final name to remove"))?;
    let name = CString::new(name.as_bytes())?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let top_parent = match nix::fcntl::open(parent, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty())
    {
        Err(Errno::ENOENT) => return Ok(()),
        opened => opened?,
    };
    let Some(mut dir) = open_subdir(&top_parent, &name)? else {
        return Ok(());
    };
    let mut stack = vec![Level::new(name, &dir, file_id(&top_parent)?.0)?];
    loop {
        let level = stack
            .last_mut()
            .expect("the walk ends when the stack empties");
        if level.subdirs.is_none() {
            level.subdirs = Some(remove_non_dirs(&mut dir)?);
        }
        let dev = level.id.0;
        if let Some(child) = level.subdirs.as_mut().and_then(Vec::pop) {
            if let Some(sub) = open_subdir(&dir, &child)? {
                stack.push(Level::new(child, &sub, dev)?);
                dir = sub;
            }
            continue;
        }
        // `dir` is empty now: go up and remove it.
        let done = stack.pop().expect("the walk ends when the stack empties");
        let Some(up) = stack.last() else {
            drop(dir);
            return unlink(&top_parent, &done.name, UnlinkatFlags::RemoveDir);
        };
        let parent = Dir::openat(&dir, "..", DIR_FLAGS, Mode::empty())?;
        if file_id(&parent)? != up.id {
            return Err(io::Error::other(
                "a directory was moved while its tree was being removed",
            ));
        }
        drop(dir);
        unlink(&parent, &done.name, UnlinkatFlags::RemoveDir)?;
        dir = parent;
    }
}

impl Level {
    /// The level of directory `dir`, named `name` in its parent, which it makes `0o700` if
    /// it has fewer of its owner's permissions (which, without root's override, removing its
    /// entries takes). An error if `dir` is not on its parent's file system, `dev`.
    fn new(name: CString, dir: &Dir, dev: u64) -> io::Result<Level> {
        let st = fstat(dir)?;
        if st.st_dev != dev {
            return Err(io::Error::new(
                io::ErrorKind::CrossesDevices,
                "a file system is mounted in the tree",
            ));
        }
        if st.st_mode & 0o700 != 0o700 {
            // Not our directory, or root's override: then the permissions were not needed.
            let _ = fchmod(dir, Mode::S_IRWXU);
        }
        Ok(Level {
            name,
            id: (st.st_dev, st.st_ino),
            subdirs: None,
        })
    }
}

/// `(st_dev, st_ino)` of an open file.
fn file_id(fd: impl std::os::fd::AsFd) -> io::Result<(u64, u64)> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Unlinks every entry of `dir` but its subdirectories, whose names it returns.
fn remove_non_dirs(dir: &mut Dir) -> io::Result<Vec<CString>> {
    let mut entries = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            entries.push((name.to_owned(), entry.file_type()));
        }
    }
    let mut subdirs = Vec::new();
    for (name, kind) in entries {
        if kind == Some(Type::Directory) {
            subdirs.push(name);
            continue;
        }
        // An unknown type is tried as a file first: unlinking a directory fails with EISDIR.
        match unlink(dir, &name, UnlinkatFlags::NoRemoveDir) {
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => subdirs.push(name),
            unlinked => unlinked?,
        }
    }
    Ok(subdirs)
}

/// Opens subdirectory `name` of `parent` without following a symlink. `None` when it is gone,
/// or was not a directory, which it then unlinks.
fn open_subdir(parent: &impl std::os::fd::AsFd, name: &CString) -> io::Result<Option<Dir>> {
    let open = || Dir::openat(parent, name.as_c_str(), DIR_FLAGS, Mode::empty());
    let opened = match open() {
        // Without root's override, a directory may need its owner's permissions back.
        Err(Errno::EACCES) => make_accessible(parent, name).and_then(|()| open()),
        opened => opened,
    };
    match opened {
        Ok(dir) => Ok(Some(dir)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            unlink(parent, name, UnlinkatFlags::NoRemoveDir)?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes directory `name` of `parent` `0o700`, through an `O_PATH` descriptor so that a
/// symlink swapped in meanwhile is not followed.
fn make_accessible(parent: &impl std::os::fd::AsFd, name: &CString) -> nix::Result<()> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(parent, name.as_c_str(), flags, Mode::empty())?;
    // chmod(2) on the descriptor's /proc link reaches the very directory it was opened on.
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        link.as_str(),
        Mode::S_IRWXU,
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
}

/// Unlinks `name` from `dir`. A missing entry is success.
fn unlink(dir: &impl std::os::fd::AsFd, name: &CString, flags: UnlinkatFlags) -> io::Result<()> {
    ignore_missing(unlinkat(dir, name.as_c_str(), flags))
}

/// Success for `ENOENT`: someone else removed it first.
fn ignore_missing(result: nix::Result<()>) -> io::Result<()> {
    match result {
        Err(Errno::ENOENT) => Ok(()),
        other => other.map_err(Into::into),
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn a_missing_path_is_success() {
        let tmp = tempfile::tempdir().unwrap();
        remove_tree_blocking(&tmp.path().join("missing")).unwrap();
        remove_tree_blocking(&tmp.path().join("missing/below")).unwrap();
    }
}
