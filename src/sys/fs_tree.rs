//! Walking a directory tree that a container may have shaped, to remove it or to hand it over
//! to other ids: no recursion, a bounded number of open descriptors, no symlink followed and
//! no path longer than one name built.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::NixPath;
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, fchmod, fstat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, unlinkat};

/// How every directory of the tree is opened: never through a symlink.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// One directory on the way from the top of the tree down to the current one.
struct Level {
    /// Its name in its parent (empty for the top).
    name: CString,
    /// Its `(st_dev, st_ino)`, which its parent must still have when the walk comes back up.
    id: (u64, u64),
    /// Its subdirectories still to walk, once its other entries are handled.
    subdirs: Option<Vec<CString>>,
}

/// What a [`walk`] does to the tree, one directory at a time.
trait Visitor {
    /// What is done to the tree, for errors: "removed", "chowned".
    const DOING: &str;
    /// Called with each directory opened, `dir`, and its status, before any of its entries;
    /// `dev` is the walk's file system. Whether to walk into it.
    fn enter_dir(&mut self, dir: &Dir, st: &FileStat, dev: u64) -> io::Result<bool>;
    /// Handles every entry of `dir` but its subdirectories, whose names it returns.
    fn visit_entries(&mut self, dir: &mut Dir, dev: u64) -> io::Result<Vec<CString>>;
    /// Opens subdirectory `name` of `parent` with [`DIR_FLAGS`], and handles what it finds
    /// instead if that is not a directory. `None`: nothing to walk into.
    fn open_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<Option<Dir>>;
    /// Called once the tree of subdirectory `name` of `parent` has been walked (never for
    /// the top of the walk).
    fn leave_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<()>;
}

/// Walks the tree of directory `dir`, on file system `dev`, depth first, calling `visitor`
/// on each directory; it closes `dir` when done. Blocking.
///
/// No recursion: the walk keeps the names and `(st_dev, st_ino)` of the directories from the
/// top down to the current one in memory, so a tree of any depth needs a fixed amount of
/// stack and at most two open descriptors of its own. Subdirectories are opened relative to
/// their parent's descriptor (by the visitor, with [`DIR_FLAGS`]), and the walk goes back up
/// through `..`, checking that the parent is the directory it came from: if a directory was
/// moved meanwhile, the walk stops with an error rather than go on elsewhere. No full path
/// is ever built, so depth is not limited by `PATH_MAX`.
fn walk<V: Visitor>(mut dir: Dir, dev: u64, visitor: &mut V) -> io::Result<()> {
    let st = fstat(&dir)?;
    if !visitor.enter_dir(&dir, &st, dev)? {
        return Ok(());
    }
    let mut stack = vec![Level::new(CString::default(), &st)];
    loop {
        let level = stack
            .last_mut()
            .expect("the walk ends when the stack empties");
        if level.subdirs.is_none() {
            level.subdirs = Some(visitor.visit_entries(&mut dir, dev)?);
        }
        if let Some(child) = level.subdirs.as_mut().and_then(Vec::pop) {
            if let Some(sub) = visitor.open_subdir(&dir, &child)? {
                let st = fstat(&sub)?;
                if visitor.enter_dir(&sub, &st, dev)? {
                    stack.push(Level::new(child, &st));
                    dir = sub;
                }
            }
            continue;
        }
        // Every entry of `dir` is done: go up.
        let done = stack.pop().expect("the walk ends when the stack empties");
        let Some(up) = stack.last() else {
            return Ok(());
        };
        let parent = Dir::openat(&dir, "..", DIR_FLAGS, Mode::empty())?;
        if file_id(&parent)? != up.id {
            return Err(io::Error::other(format!(
                "a directory was moved while its tree was being {}",
                V::DOING
            )));
        }
        drop(dir);
        visitor.leave_subdir(&parent, &done.name)?;
        dir = parent;
    }
}

impl Level {
    /// The level of a directory named `name` in its parent, of status `st`.
    fn new(name: CString, st: &FileStat) -> Level {
        Level {
            name,
            id: (st.st_dev, st.st_ino),
            subdirs: None,
        }
    }
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
    let Some(dir) = open_subdir(&top_parent, &name)? else {
        return Ok(());
    };
    walk(dir, file_id(&top_parent)?.0, &mut Remove)?;
    // The tree below is gone (and its descriptor closed): remove its top.
    unlink(&top_parent, &name, UnlinkatFlags::RemoveDir)
}

/// The [`Visitor`] of [`remove_tree_blocking`].
struct Remove;

impl Visitor for Remove {
    const DOING: &str = "removed";

    /// An error if `dir` is not on the walk's file system, `dev`; makes it `0o700` if it has
    /// fewer of its owner's permissions (which, without root's override, removing its
    /// entries takes).
    fn enter_dir(&mut self, dir: &Dir, st: &FileStat, dev: u64) -> io::Result<bool> {
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
        Ok(true)
    }

    fn visit_entries(&mut self, dir: &mut Dir, _dev: u64) -> io::Result<Vec<CString>> {
        remove_non_dirs(dir)
    }

    fn open_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<Option<Dir>> {
        open_subdir(parent, name)
    }

    /// Removes the now empty directory.
    fn leave_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<()> {
        unlink(parent, name, UnlinkatFlags::RemoveDir)
    }
}

/// Hands `path` and, if it is a directory, everything below it to `uid` and `gid`, like
/// `chown -R -P` but safe on a tree that a hostile process made or still holds. Blocking.
///
/// - The walk is [`walk`]'s: no recursion, at most two open descriptors, directories opened
///   with `O_NOFOLLOW` relative to their parent's descriptor and left through `..` (checked:
///   a directory moved meanwhile stops it with an error), no full path built.
/// - Nothing is followed: a directory is changed through its open descriptor (`fchown`),
///   anything else, symlinks included (the top one too), through its parent's (`fchownat`
///   with `AT_SYMLINK_NOFOLLOW`). The components of `path` above its last one are resolved
///   as usual.
/// - What `uid` and `gid` already own is left alone (directories are still walked into).
/// - It stays on `path`'s mount: whatever is mounted in the tree (another file system, or a
///   bind mount of the same one, told apart by `statx`'s mount id from Linux 5.8 on) is
///   skipped, neither changed nor walked into.
/// - A missing `path` is an error; entries that vanish meanwhile are skipped.
pub(crate) fn chown_tree_blocking(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let dir = match Dir::open(path, DIR_FLAGS, Mode::empty()) {
        Ok(dir) => dir,
        // Not a directory, or a symlink: just the entry itself.
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            let chown = Chown {
                uid,
                gid,
                mount: None,
            };
            return match chown.entry(nix::fcntl::AT_FDCWD, path, None)? {
                false => Ok(()),
                true => Err(io::Error::other(
                    "a file was replaced by a directory while being chowned",
                )),
            };
        }
        Err(e) => return Err(e.into()),
    };
    let top = Status::of(&dir, c"", AtFlags::AT_EMPTY_PATH)?;
    let mut chown = Chown {
        uid,
        gid,
        mount: top.mount,
    };
    walk(dir, top.dev, &mut chown)
}

/// The [`Visitor`] of [`chown_tree_blocking`].
struct Chown {
    /// The owner the tree is handed to.
    uid: u32,
    gid: u32,
    /// The id of the mount the walk stays on, where the kernel tells it.
    mount: Option<u64>,
}

impl Chown {
    /// Hands entry `name` of `dir` over without following it, unless it is a directory
    /// (then it returns `true`, and does nothing), is already owned right, or is not on the
    /// walk's mount (on file system `dev`, when given).
    fn entry<P: ?Sized + NixPath>(
        &self,
        dir: impl std::os::fd::AsFd,
        name: &P,
        dev: Option<u64>,
    ) -> nix::Result<bool> {
        let st = Status::of(&dir, name, AtFlags::empty())?;
        if st.is_dir {
            return Ok(true);
        }
        if dev.is_none_or(|dev| self.on_walk_mount(&st, dev)) && !self.owns(&st) {
            fchownat(
                &dir,
                name,
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(self.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
        }
        Ok(false)
    }

    /// Whether what `st` describes is already the new owner's.
    fn owns(&self, st: &Status) -> bool {
        st.owner == (self.uid, self.gid)
    }

    /// Whether what `st` describes is on the walk's mount, on file system `dev`.
    fn on_walk_mount(&self, st: &Status, dev: u64) -> bool {
        st.dev == dev && (self.mount.is_none() || st.mount == self.mount)
    }
}

impl Visitor for Chown {
    const DOING: &str = "chowned";

    /// Skips `dir` if it is not on the walk's mount (on file system `dev`): a mount point.
    /// Hands it over otherwise, unless it already is.
    fn enter_dir(&mut self, dir: &Dir, _: &FileStat, dev: u64) -> io::Result<bool> {
        let st = Status::of(dir, c"", AtFlags::AT_EMPTY_PATH)?;
        if !self.on_walk_mount(&st, dev) {
            return Ok(false);
        }
        if !self.owns(&st) {
            fchown(
                dir,
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(self.gid)),
            )?;
        }
        Ok(true)
    }

    fn visit_entries(&mut self, dir: &mut Dir, dev: u64) -> io::Result<Vec<CString>> {
        let entries = list_entries(dir)?;
        let mut subdirs = Vec::new();
        for (name, kind) in entries {
            // Directories are handed over once opened; an unknown type is looked at first.
            let is_dir = match kind {
                Some(Type::Directory) => true,
                _ => match self.entry(&*dir, name.as_c_str(), Some(dev)) {
                    Ok(is_dir) => is_dir,
                    Err(Errno::ENOENT) => false,
                    Err(e) => return Err(e.into()),
                },
            };
            if is_dir {
                subdirs.push(name);
            }
        }
        Ok(subdirs)
    }

    fn open_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<Option<Dir>> {
        match Dir::openat(parent, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
            Ok(dir) => Ok(Some(dir)),
            Err(Errno::ENOENT) => Ok(None),
            // Replaced meanwhile by something else: handed over as such, if still there.
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                let dev = Status::of(parent, c"", AtFlags::AT_EMPTY_PATH)?.dev;
                match self.entry(parent, name.as_c_str(), Some(dev)) {
                    Ok(_) | Err(Errno::ENOENT) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn leave_subdir(&mut self, _: &Dir, _: &CString) -> io::Result<()> {
        Ok(())
    }
}

/// What [`Chown`] needs to know of a file, from `statx(2)`.
struct Status {
    is_dir: bool,
    /// `(uid, gid)`.
    owner: (u32, u32),
    /// Its file system, as `st_dev`.
    dev: u64,
    /// The id of its mount (`None` before Linux 5.8).
    mount: Option<u64>,
}

impl Status {
    /// The status of `name` in `dir`, or of `dir` itself with `AT_EMPTY_PATH` and an empty
    /// name; never through a final symlink.
    fn of<P: ?Sized + NixPath>(
        dir: impl std::os::fd::AsFd,
        name: &P,
        flags: AtFlags,
    ) -> nix::Result<Status> {
        let flags = (flags | AtFlags::AT_SYMLINK_NOFOLLOW).bits();
        let mask = libc::STATX_TYPE | libc::STATX_UID | libc::STATX_GID | libc::STATX_MNT_ID;
        let mut buf = std::mem::MaybeUninit::<libc::statx>::uninit();
        let fd = dir.as_fd().as_raw_fd();
        // SAFETY: a valid descriptor and C string, and a buffer of the type statx fills.
        let rc = name.with_nix_path(|name| unsafe {
            libc::statx(fd, name.as_ptr(), flags, mask, buf.as_mut_ptr())
        })?;
        Errno::result(rc)?;
        // SAFETY: statx succeeded, so it filled the buffer.
        let stx = unsafe { buf.assume_init() };
        Ok(Status {
            is_dir: u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
            owner: (stx.stx_uid, stx.stx_gid),
            dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
            mount: (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id),
        })
    }
}

/// `(st_dev, st_ino)` of an open file.
fn file_id(fd: impl std::os::fd::AsFd) -> io::Result<(u64, u64)> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The names of `dir`'s entries (without `.` and `..`) and their types where the file system
/// tells them, read whole before anything changes the directory.
fn list_entries(dir: &mut Dir) -> io::Result<Vec<(CString, Option<Type>)>> {
    let mut entries = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            entries.push((name.to_owned(), entry.file_type()));
        }
    }
    Ok(entries)
}

/// Unlinks every entry of `dir` but its subdirectories, whose names it returns.
fn remove_non_dirs(dir: &mut Dir) -> io::Result<Vec<CString>> {
    let entries = list_entries(dir)?;
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
        std::fs::set_permissions(tree.join("dir/sub"), std::fs::Permissions::from_mode(0o000))
            .unwrap();
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
}
