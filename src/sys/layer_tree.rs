//! Trees of files that a sandbox wrote and the host keeps: snapshot layers. Cleaned when a
//! snapshot takes one ([`clean_layer_blocking`]), copied or linked when a snapshot is saved
//! ([`copy_layer_blocking`]), checked when a saved one is loaded ([`check_layer_blocking`]).
//!
//! Everything goes through [`walk`](super::fs_tree)'s directory descriptors: entries are
//! opened `O_PATH | O_NOFOLLOW` relative to their directory, `fstat`ed, and changed through
//! that descriptor (`fchownat(AT_EMPTY_PATH)`, or the descriptor's `/proc/self/fd` link for
//! `chmod` and extended attributes, which reaches the very file opened); no path below the
//! top is ever built or followed.
//!
//! What a layer may hold, and why:
//!
//! - **No set-id bits** (`S_ISUID`, `S_ISGID`), on files or directories. overlayfs copies a
//!   lower file up with its mode, and a write through `mmap` keeps the bits: a sandbox
//!   could otherwise leave a root-owned set-id program of its own content in the store. A
//!   directory made in a setgid directory inherits the bit; clearing it on directories too
//!   costs only the inheritance of the directory's group in a fork.
//! - **No `security.capability`, no `trusted.*`** extended attribute but overlayfs's own
//!   (`trusted.overlay.*`, which only the kernel writes into an upper layer: opaque
//!   directories, redirects, metacopy, origins). `user.*` ones stay (rootless overlays keep
//!   their markers there, `user.overlay.*`).
//! - **No device** but overlayfs's whiteouts (character devices `0/0`, how a layer deletes
//!   a lower file; a sandbox cannot make another one: `mknod` needs `CAP_MKNOD` in the
//!   host's user namespace). Fifos and sockets are plain entries.
//! - **No other file system**: a mount point in the tree stops the walk with an error.
//!
//! Symbolic links are kept as links, never followed (an absolute one resolves in the root of
//! the container that sees the layer). Hard links inside a layer are kept when saving on the
//! same file system; a saved layer's files are hard links to the store's, which is why
//! nothing here ever changes a file it did not create except when taking a layer from the
//! container that wrote it ([`clean_layer_blocking`]).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat};
use nix::unistd::{Gid, Uid};

use super::fs_tree::{DIR_FLAGS, Status, Visitor, list_entries, walk};

/// The entries (everything below the top, directories included) and bytes (of regular
/// files) of a layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeSize {
    pub entries: u64,
    pub bytes: u64,
}

/// What an entry of a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    /// An overlayfs whiteout: a character device `0/0`.
    Whiteout,
    /// A fifo or a socket.
    Special,
    /// Any other device.
    Device,
}

impl Kind {
    fn of(st: &FileStat) -> Kind {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFCHR if st.st_rdev == 0 => Kind::Whiteout,
            libc::S_IFIFO | libc::S_IFSOCK => Kind::Special,
            _ => Kind::Device,
        }
    }
}

/// The set-id mode bits.
const SET_ID: u32 = libc::S_ISUID | libc::S_ISGID;

/// An error for what a layer must not hold.
fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Whether extended attribute `name` grants privileges or is trusted by the kernel, and is
/// not overlayfs's own: `security.capability` and `trusted.*` but `trusted.overlay.*`.
fn is_privileged_xattr(name: &CStr) -> bool {
    let name = name.to_bytes();
    name == b"security.capability"
        || (name.starts_with(b"trusted.") && !name.starts_with(b"trusted.overlay."))
}

/// An entry opened `O_PATH | O_NOFOLLOW`, with its status and its `/proc/self/fd` link.
struct Entry {
    fd: OwnedFd,
    st: FileStat,
    kind: Kind,
    /// `/proc/self/fd/<fd>`: `chmod` and the `*xattr` calls through it reach the very file
    /// opened (never through a symlink: those are not changed that way).
    proc: CString,
}

impl Entry {
    /// Opens entry `name` of `dir` without following it. `None`: it is gone.
    fn open(dir: &impl AsFd, name: &CStr) -> io::Result<Option<Entry>> {
        let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => Ok(Some(Entry::of(fd)?)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The entry of an open descriptor (a directory of the walk, or an `O_PATH` one).
    fn of(fd: OwnedFd) -> io::Result<Entry> {
        let st = fstat(&fd)?;
        let proc = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        Ok(Entry {
            kind: Kind::of(&st),
            fd,
            st,
            proc,
        })
    }

    /// A second descriptor on an open directory of the walk.
    fn of_dir(dir: &Dir) -> io::Result<Entry> {
        Entry::of(dir.as_fd().try_clone_to_owned()?)
    }

    fn mode(&self) -> u32 {
        self.st.st_mode & 0o7777
    }

    /// Its extended attributes' names (none for a symlink: no privilege is read from a
    /// link's, and the calls through `/proc` are not made on links).
    fn xattrs(&self) -> io::Result<Vec<CString>> {
        if self.kind == Kind::Symlink {
            return Ok(Vec::new());
        }
        list_xattrs(&self.proc)
    }

    /// Hands it to `uid` and `gid` (`None`: unchanged), through its descriptor.
    fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> nix::Result<()> {
        nix::unistd::fchownat(
            &self.fd,
            c"",
            uid.map(Uid::from_raw),
            gid.map(Gid::from_raw),
            AtFlags::AT_EMPTY_PATH,
        )
    }

    /// Sets its permission bits to `mode` (not for a symlink).
    fn chmod(&self, mode: u32) -> nix::Result<()> {
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            self.proc.as_c_str(),
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }
}

/// The names of the extended attributes of the file at `path` (a `/proc/self/fd` link).
fn list_xattrs(path: &CStr) -> io::Result<Vec<CString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: a NUL-terminated path and a buffer of the length given.
        let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        match Errno::last() {
            Errno::ERANGE if buf.len() < 1 << 16 => buf.resize(buf.len() * 4, 0),
            Errno::ENOTSUP => return Ok(Vec::new()),
            e => return Err(e.into()),
        }
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

/// The value of extended attribute `name` of the file at `path`. `None`: it has none.
fn get_xattr(path: &CStr, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return match Errno::last() {
            Errno::ENODATA => Ok(None),
            e => Err(e.into()),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn set_xattr(path: &CStr, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(rc).map(drop).map_err(Into::into)
}

fn remove_xattr(path: &CStr, name: &CStr) -> nix::Result<()> {
    // SAFETY: NUL-terminated strings.
    Errno::result(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// Opens the directory at `path` (its last component not followed) and its file system's
/// `(st_dev, mount id)`.
fn open_top(path: &Path) -> io::Result<(Dir, u64)> {
    let dir = Dir::open(path, DIR_FLAGS, Mode::empty())?;
    let dev = fstat(&dir)?.st_dev;
    Ok((dir, dev))
}

/// An error if directory `dir` (of status `st`) is not on the walk's file system and mount.
fn same_mount(dir: &Dir, st: &FileStat, dev: u64, mount: Option<u64>) -> io::Result<()> {
    let here = Status::of(dir, c"", AtFlags::AT_EMPTY_PATH)?.mount;
    if st.st_dev != dev || (mount.is_some() && here != mount) {
        return Err(io::Error::new(
            io::ErrorKind::CrossesDevices,
            "a file system is mounted in the layer",
        ));
    }
    Ok(())
}

/// The mount id of directory `dir`, where the kernel tells it.
fn mount_of(dir: &Dir) -> io::Result<Option<u64>> {
    Ok(Status::of(dir, c"", AtFlags::AT_EMPTY_PATH)?.mount)
}

/// Cleans the layer at `path` that a container wrote, once the container is gone: set-id
/// bits cleared, `security.capability` and `trusted.*` attributes (but overlayfs's own)
/// removed, devices (but whiteouts) unlinked, and with `shift`, owners shifted down by it
/// (host ids of the container's user namespace back to the container's own; ids below it
/// stay). One walk by descriptors (see the module's docs); links are not followed. Blocking.
pub(crate) fn clean_layer_blocking(path: &Path, shift: Option<u32>) -> io::Result<()> {
    let (dir, dev) = open_top(path)?;
    let mount = mount_of(&dir)?;
    let mut clean = Clean {
        shift,
        mount,
        restore: Vec::new(),
    };
    walk(dir, dev, &mut clean)
}

/// The [`Visitor`] of [`clean_layer_blocking`].
struct Clean {
    shift: Option<u32>,
    mount: Option<u64>,
    /// Per directory from below the top down to the current one: the mode it gets back once
    /// walked, when it lacked its owner's read and search permission (rootless, without
    /// root's override, the walk needs them).
    restore: Vec<Option<u32>>,
}

impl Clean {
    /// Cleans `entry`; `keep_mode`: its mode is set once it has been walked.
    fn clean(&self, entry: &Entry, keep_mode: bool) -> io::Result<()> {
        if let Some(base) = self.shift {
            let shift = |id: u32| (id >= base).then(|| id - base);
            let (uid, gid) = (shift(entry.st.st_uid), shift(entry.st.st_gid));
            if uid.is_some() || gid.is_some() {
                // For anything but a directory this clears the set-id bits and
                // `security.capability` too.
                entry.chown(uid, gid)?;
            }
        }
        if !keep_mode && entry.kind != Kind::Symlink && entry.mode() & SET_ID != 0 {
            entry.chmod(entry.mode() & !SET_ID)?;
        }
        for name in entry.xattrs()? {
            if !is_privileged_xattr(&name) {
                continue;
            }
            match remove_xattr(&entry.proc, &name) {
                Ok(()) | Err(Errno::ENODATA) => {}
                // Rootless, only a change of owner (to the same owner) drops a file's
                // capabilities.
                Err(Errno::EPERM) if entry.kind != Kind::Dir => {
                    entry.chown(None, None)?;
                    if get_xattr(&entry.proc, &name)?.is_some() {
                        return Err(io::Error::from(Errno::EPERM));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Visitor for Clean {
    const DOING: &str = "cleaned";

    fn enter_dir(&mut self, dir: &Dir, st: &FileStat, dev: u64) -> io::Result<bool> {
        same_mount(dir, st, dev, self.mount)?;
        let keep_mode = self.restore.last().is_some_and(Option::is_some);
        self.clean(&Entry::of_dir(dir)?, keep_mode)?;
        Ok(true)
    }

    fn visit_entries(&mut self, dir: &mut Dir, dev: u64) -> io::Result<Vec<CString>> {
        let mut subdirs = Vec::new();
        for (name, kind) in list_entries(dir)? {
            if kind == Some(Type::Directory) {
                subdirs.push(name);
                continue;
            }
            let Some(entry) = Entry::open(&*dir, &name)? else {
                continue;
            };
            match entry.kind {
                Kind::Dir => subdirs.push(name),
                Kind::Device => {
                    tracing::warn!(?name, "removing a device node from a snapshot's layer");
                    nix::unistd::unlinkat(
                        &*dir,
                        name.as_c_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    )?;
                }
                _ if entry.st.st_dev != dev => {
                    return Err(io::Error::new(
                        io::ErrorKind::CrossesDevices,
                        "a file system is mounted in the layer",
                    ));
                }
                _ => self.clean(&entry, false)?,
            }
        }
        Ok(subdirs)
    }

    /// Opens subdirectory `name` of `parent`, giving it its owner's read and search
    /// permission for the walk if it lacks them.
    fn open_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<Option<Dir>> {
        let Some(entry) = Entry::open(parent, name)? else {
            return Ok(None);
        };
        let needed = libc::S_IRUSR | libc::S_IXUSR;
        let restore = (entry.kind == Kind::Dir && entry.mode() & needed != needed).then(|| {
            let mode = entry.mode() & !SET_ID;
            entry.chmod(entry.mode() | needed).map(|()| mode)
        });
        let restore = restore.transpose()?;
        let Some(dir) = open_subdir(parent, name)? else {
            return Ok(None);
        };
        if file_id(&dir)? != (entry.st.st_dev, entry.st.st_ino) {
            return Err(io::Error::other(
                "a directory of the layer changed while it was walked",
            ));
        }
        self.restore.push(restore);
        Ok(Some(dir))
    }

    /// Gives the directory just walked its mode back, if the walk changed it.
    fn leave_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<()> {
        if let Some(mode) = self.restore.pop().flatten() {
            let entry = Entry::open(parent, name)?
                .ok_or_else(|| io::Error::other("a directory of the layer went while walked"))?;
            entry.chmod(mode)?;
        }
        Ok(())
    }
}

/// `(st_dev, st_ino)` of an open file.
fn file_id(fd: &impl AsFd) -> io::Result<(u64, u64)> {
    let st = fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Opens subdirectory `name` of `parent` for a walk of a quiescent layer. `None`: gone.
fn open_subdir(parent: &Dir, name: &CStr) -> io::Result<Option<Dir>> {
    match Dir::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(dir) => Ok(Some(dir)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(io::Error::other(format!(
            "a directory of the layer changed while it was walked: {e}"
        ))),
    }
}

/// Checks the layer at `path` (a saved snapshot's): an error of kind
/// [`io::ErrorKind::InvalidData`] if it holds what a layer of the library's never does (see
/// the module's docs: set-id bits, a device other than a whiteout, a privileged extended
/// attribute) and [`io::ErrorKind::CrossesDevices`] for a mount point in it. Reads only:
/// nothing is changed. Returns its size. Blocking.
#[cfg(test)]
pub(crate) fn check_layer_blocking(path: &Path) -> io::Result<TreeSize> {
    let (dir, dev) = open_top(path)?;
    check_layer_dir(dir, dev)
}

/// [`check_layer_blocking`] of an open directory on file system `dev`.
pub(crate) fn check_layer_dir(dir: Dir, dev: u64) -> io::Result<TreeSize> {
    let mount = mount_of(&dir)?;
    let mut check = Check {
        size: TreeSize::default(),
        mount,
    };
    walk(dir, dev, &mut check)?;
    Ok(check.size)
}

/// The [`Visitor`] of [`check_layer_blocking`].
struct Check {
    size: TreeSize,
    mount: Option<u64>,
}

/// An error if `entry`, named `name`, is not what a layer may hold.
fn check_entry(entry: &Entry, name: &CStr) -> io::Result<()> {
    let name = name.to_string_lossy();
    if entry.kind == Kind::Device {
        return Err(refused(format!("{name} is a device node")));
    }
    if entry.kind != Kind::Symlink && entry.mode() & SET_ID != 0 {
        return Err(refused(format!(
            "{name} has set-id bits (mode {:o})",
            entry.mode()
        )));
    }
    if let Some(attr) = entry.xattrs()?.iter().find(|n| is_privileged_xattr(n)) {
        return Err(refused(format!(
            "{name} has extended attribute {}",
            attr.to_string_lossy()
        )));
    }
    Ok(())
}

impl Visitor for Check {
    const DOING: &str = "checked";

    fn enter_dir(&mut self, dir: &Dir, st: &FileStat, dev: u64) -> io::Result<bool> {
        same_mount(dir, st, dev, self.mount)?;
        check_entry(&Entry::of_dir(dir)?, c"a directory")?;
        Ok(true)
    }

    fn visit_entries(&mut self, dir: &mut Dir, dev: u64) -> io::Result<Vec<CString>> {
        let mut subdirs = Vec::new();
        for (name, kind) in list_entries(dir)? {
            self.size.entries += 1;
            if kind == Some(Type::Directory) {
                subdirs.push(name);
                continue;
            }
            let Some(entry) = Entry::open(&*dir, &name)? else {
                return Err(io::Error::other("the layer changed while it was checked"));
            };
            if entry.kind == Kind::Dir {
                subdirs.push(name);
                continue;
            }
            if entry.st.st_dev != dev {
                return Err(io::Error::new(
                    io::ErrorKind::CrossesDevices,
                    "a file system is mounted in the layer",
                ));
            }
            check_entry(&entry, &name)?;
            if entry.kind == Kind::File {
                self.size.bytes += entry.st.st_size as u64;
            }
        }
        Ok(subdirs)
    }

    fn open_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<Option<Dir>> {
        match open_subdir(parent, name)? {
            Some(dir) => Ok(Some(dir)),
            None => Err(io::Error::other("the layer changed while it was checked")),
        }
    }

    fn leave_subdir(&mut self, _: &Dir, _: &CString) -> io::Result<()> {
        Ok(())
    }
}

/// Recreates the layer at `from` as directory `name` of `to` (which must not have it):
/// directories made with the same owner, mode and extended attributes; other entries
/// hard-linked where `to` is on `from`'s file system, else copied (hard links inside the
/// layer then become copies). Never what a layer must not hold: set-id bits are cleared
/// (a file with them, or with a privileged attribute, is copied without them, so that the
/// source is never changed), privileged attributes are left out, and a device other than a
/// whiteout is an error of kind [`io::ErrorKind::InvalidData`]. Symlinks are made again,
/// not followed. Blocking.
pub(crate) fn copy_layer_blocking(from: &Path, to: &Dir, name: &CStr) -> io::Result<()> {
    let (src, dev) = open_top(from)?;
    let mount = mount_of(&src)?;
    let link = fstat(to)?.st_dev == dev;
    nix::sys::stat::mkdirat(to, name, Mode::S_IRWXU)?;
    let dest = Dir::openat(to, name, DIR_FLAGS, Mode::empty())?;
    let dest_id = fstat(&dest)?;
    let mut copy = Copy {
        dest: Some(dest),
        up: vec![(dest_id.st_dev, dest_id.st_ino)],
        modes: Vec::new(),
        link,
        mount,
    };
    walk(src, dev, &mut copy)?;
    // The top's mode, last: a read-only directory is filled first.
    let (dest, mode) = (copy.dest.take(), copy.modes.pop());
    if let (Some(dest), Some(mode)) = (dest, mode) {
        fchmod(&dest, Mode::from_bits_truncate(mode))?;
    }
    Ok(())
}

/// The [`Visitor`] of [`copy_layer_blocking`]: it walks the source, and keeps the twin of
/// the source's current directory open in the destination.
struct Copy {
    /// The destination's current directory.
    dest: Option<Dir>,
    /// `(st_dev, st_ino)` of the destination's directories from the top down to the current
    /// one, to check the way back up.
    up: Vec<(u64, u64)>,
    /// The modes the destination's directories get once filled, top first.
    modes: Vec<u32>,
    /// Whether to hard-link (same file system) rather than copy.
    link: bool,
    mount: Option<u64>,
}

impl Copy {
    fn dest(&self) -> &Dir {
        self.dest
            .as_ref()
            .expect("the destination is open while walking")
    }

    /// Copies `src`'s allowed extended attributes to the file at `to` (a `/proc` link).
    fn copy_xattrs(src: &Entry, to: &CStr) -> io::Result<()> {
        for name in src.xattrs()? {
            if is_privileged_xattr(&name) {
                continue;
            }
            if let Some(value) = get_xattr(&src.proc, &name)? {
                set_xattr(to, &name, &value)?;
            }
        }
        Ok(())
    }

    /// Makes entry `name` of the current destination directory from `src`.
    fn entry(&self, src: &Entry, name: &CStr) -> io::Result<()> {
        let dest = self.dest();
        if src.kind == Kind::Device {
            return Err(refused(format!(
                "{} is a device node",
                name.to_string_lossy()
            )));
        }
        let clean = src.mode() & SET_ID == 0
            && (src.kind == Kind::Symlink || !src.xattrs()?.iter().any(|n| is_privileged_xattr(n)));
        if self.link && clean && src.kind != Kind::Symlink {
            // Through the descriptor's link: exactly the file checked (not a symlink, which
            // this way would be followed).
            return nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                src.proc.as_c_str(),
                dest,
                name,
                AtFlags::AT_SYMLINK_FOLLOW,
            )
            .map_err(Into::into);
        }
        let owner = (
            Some(Uid::from_raw(src.st.st_uid)),
            Some(Gid::from_raw(src.st.st_gid)),
        );
        let mode = Mode::from_bits_truncate(src.mode() & !SET_ID);
        match src.kind {
            Kind::File => {
                // Reopened through the descriptor's link: the very file checked.
                let mut input = std::fs::File::from(nix::fcntl::open(
                    src.proc.as_c_str(),
                    OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
                    Mode::empty(),
                )?);
                let flags = OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                let out = nix::fcntl::openat(dest, name, flags, Mode::S_IRUSR | Mode::S_IWUSR)?;
                let mut output = std::fs::File::from(out);
                io::copy(&mut input, &mut output)?;
                nix::unistd::fchown(&output, owner.0, owner.1)?;
                fchmod(&output, mode)?;
                let proc = CString::new(format!("/proc/self/fd/{}", output.as_raw_fd()))?;
                Self::copy_xattrs(src, &proc)?;
                nix::sys::stat::futimens(&output, &atime(&src.st), &mtime(&src.st))?;
                Ok(())
            }
            Kind::Symlink => {
                let target = nix::fcntl::readlinkat(&src.fd, c"")?;
                nix::unistd::symlinkat(target.as_os_str(), dest, name)?;
                nix::unistd::fchownat(dest, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                Ok(())
            }
            Kind::Whiteout | Kind::Special => {
                let kind = SFlag::from_bits_truncate(src.st.st_mode & SFlag::S_IFMT.bits());
                nix::sys::stat::mknodat(dest, name, kind, mode, 0)?;
                nix::unistd::fchownat(dest, name, owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)?;
                Ok(())
            }
            Kind::Device | Kind::Dir => unreachable!("devices are refused, directories walked"),
        }
    }
}

fn atime(st: &FileStat) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(st.st_atime, st.st_atime_nsec)
}

fn mtime(st: &FileStat) -> nix::sys::time::TimeSpec {
    nix::sys::time::TimeSpec::new(st.st_mtime, st.st_mtime_nsec)
}

impl Visitor for Copy {
    const DOING: &str = "copied";

    /// Gives the destination's twin of `dir` its owner and attributes (its mode once it is
    /// filled).
    fn enter_dir(&mut self, dir: &Dir, st: &FileStat, dev: u64) -> io::Result<bool> {
        same_mount(dir, st, dev, self.mount)?;
        let src = Entry::of_dir(dir)?;
        let dest = Entry::of_dir(self.dest())?;
        if (dest.st.st_uid, dest.st.st_gid) != (st.st_uid, st.st_gid) {
            dest.chown(Some(st.st_uid), Some(st.st_gid))?;
        }
        Self::copy_xattrs(&src, &dest.proc)?;
        self.modes.push(src.mode() & !SET_ID);
        Ok(true)
    }

    fn visit_entries(&mut self, dir: &mut Dir, dev: u64) -> io::Result<Vec<CString>> {
        let mut subdirs = Vec::new();
        for (name, kind) in list_entries(dir)? {
            if kind == Some(Type::Directory) {
                subdirs.push(name);
                continue;
            }
            let Some(entry) = Entry::open(&*dir, &name)? else {
                continue;
            };
            if entry.kind == Kind::Dir {
                subdirs.push(name);
                continue;
            }
            if entry.st.st_dev != dev {
                return Err(io::Error::new(
                    io::ErrorKind::CrossesDevices,
                    "a file system is mounted in the layer",
                ));
            }
            self.entry(&entry, &name)?;
        }
        Ok(subdirs)
    }

    /// Opens the source's subdirectory, and makes and opens its twin as the destination's
    /// current directory.
    fn open_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<Option<Dir>> {
        let Some(src) = open_subdir(parent, name)? else {
            return Ok(None);
        };
        nix::sys::stat::mkdirat(self.dest(), name.as_c_str(), Mode::S_IRWXU)?;
        let twin = Dir::openat(self.dest(), name.as_c_str(), DIR_FLAGS, Mode::empty())?;
        let st = fstat(&twin)?;
        self.up.push((st.st_dev, st.st_ino));
        self.dest = Some(twin);
        Ok(Some(src))
    }

    /// Gives the twin of the subdirectory just walked its mode, and goes up to its parent.
    fn leave_subdir(&mut self, _: &Dir, _: &CString) -> io::Result<()> {
        let twin = self
            .dest
            .take()
            .expect("the destination is open while walking");
        if let Some(mode) = self.modes.pop() {
            fchmod(&twin, Mode::from_bits_truncate(mode))?;
        }
        self.up.pop();
        let parent = Dir::openat(&twin, "..", DIR_FLAGS, Mode::empty())?;
        let st = fstat(&parent)?;
        if self.up.last() != Some(&(st.st_dev, st.st_ino)) {
            return Err(io::Error::other(
                "a directory of the copy was moved while it was made",
            ));
        }
        self.dest = Some(parent);
        Ok(())
    }
}

#[cfg(test)]
#[path = "layer_tree_tests.rs"]
mod tests;
