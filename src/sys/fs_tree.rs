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
pub(super) const DIR_FLAGS: OFlag = OFlag::O_RDONLY
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
pub(super) trait Visitor {
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
pub(super) fn walk<V: Visitor>(mut dir: Dir, dev: u64, visitor: &mut V) -> io::Result<()> {
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
pub(super) struct Status {
    is_dir: bool,
    /// `(uid, gid)`.
    owner: (u32, u32),
    /// Its file system, as `st_dev`.
    dev: u64,
    /// The id of its mount (`None` before Linux 5.8).
    pub(super) mount: Option<u64>,
}

impl Status {
    /// The status of `name` in `dir`, or of `dir` itself with `AT_EMPTY_PATH` and an empty
    /// name; never through a final symlink.
    pub(super) fn of<P: ?Sized + NixPath>(
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

/// Opens `path` beneath directory `dir` with `flags` (and `O_NOFOLLOW | O_CLOEXEC`): no
/// component may be a symlink (nor a magic link of `/proc`) or lead out of `dir`
/// (`openat2`'s `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`).
pub(crate) fn open_beneath(
    dir: &impl std::os::fd::AsFd,
    path: &str,
    flags: OFlag,
) -> nix::Result<std::os::fd::OwnedFd> {
    use nix::fcntl::{OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    nix::fcntl::openat2(dir, path, how)
}

/// `(st_dev, st_ino)` of an open file.
fn file_id(fd: impl std::os::fd::AsFd) -> io::Result<(u64, u64)> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The names of `dir`'s entries (without `.` and `..`) and their types where the file system
/// tells them, read whole before anything changes the directory.
pub(super) fn list_entries(dir: &mut Dir) -> io::Result<Vec<(CString, Option<Type>)>> {
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
#[path = "fs_tree_tests.rs"]
mod tests;

/// The disk space the tree at `path` takes (allocated blocks, in bytes), counted on its own
/// file system only, like `du -sx`: the same walk by descriptors as the others, nothing
/// followed, so a tree that a container changes meanwhile is never left. Blocking.
pub(crate) fn disk_usage_blocking(path: &Path) -> io::Result<u64> {
    let (usage, walked) = measure(Dir::open(path, DIR_FLAGS, Mode::empty())?)?;
    walked.map(|()| usage.bytes)
}

/// The walk of [`disk_usage_blocking`] from `dir`: what it counted, and how it ended.
fn measure(dir: Dir) -> io::Result<(DiskUsage, io::Result<()>)> {
    let top = fstat(&dir)?;
    let mut usage = DiskUsage {
        bytes: 0,
        missed: false,
    };
    let walked = walk(dir, top.st_dev, &mut usage);
    Ok((usage, walked))
}

/// [`disk_usage_blocking`] of the directory open as `fd` (an `O_PATH` one will do), as far as
/// the walk got: the bytes counted, and whether the walk finished and missed nothing (a tree
/// changed under it may end it early, or move an entry away between its listing and its
/// visit). Blocking.
pub(crate) fn disk_usage_of_blocking(fd: &std::os::fd::OwnedFd) -> io::Result<(u64, bool)> {
    let (usage, walked) = measure(Dir::openat(fd, ".", DIR_FLAGS, Mode::empty())?)?;
    Ok((usage.bytes, walked.is_ok() && !usage.missed))
}

/// The [`Visitor`] of [`disk_usage_blocking`].
struct DiskUsage {
    bytes: u64,
    /// An entry listed was gone (or no longer a directory) when it was reached: the tree
    /// changed under the walk, which missed it.
    missed: bool,
}

impl DiskUsage {
    fn add(&mut self, st: &FileStat) {
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512));
    }
}

impl Visitor for DiskUsage {
    const DOING: &str = "measured";

    fn enter_dir(&mut self, _: &Dir, st: &FileStat, dev: u64) -> io::Result<bool> {
        if st.st_dev != dev {
            return Ok(false);
        }
        self.add(st);
        Ok(true)
    }

    fn visit_entries(&mut self, dir: &mut Dir, dev: u64) -> io::Result<Vec<CString>> {
        let mut subdirs = Vec::new();
        for (name, kind) in list_entries(dir)? {
            if kind == Some(Type::Directory) {
                subdirs.push(name);
                continue;
            }
            match nix::sys::stat::fstatat(&*dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => subdirs.push(name),
                Ok(st) if st.st_dev == dev => self.add(&st),
                Ok(_) => {}
                Err(Errno::ENOENT) => self.missed = true,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(subdirs)
    }

    fn open_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<Option<Dir>> {
        match Dir::openat(parent, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
            Ok(dir) => Ok(Some(dir)),
            // Gone, or replaced by a link or a file meanwhile: not walked into, and missed.
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => {
                self.missed = true;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn leave_subdir(&mut self, _: &Dir, _: &CString) -> io::Result<()> {
        Ok(())
    }
}
