//! Host directory trees that a sandbox may be changing while the host reads or writes them
//! (`upload_dir` packs one, `download_dir` unpacks into one): everything by directory fds.
//!
//! - [`open_dir_blocking`] resolves the caller's path one name at a time: once a directory on
//!   the way is one a container can write, no link is followed (it may be the container's).
//! - [`pack_blocking`] walks a tree with [`super::fs_tree`]'s walker (no recursion, `O_NOFOLLOW`
//!   on every directory, the way back up checked), lists each directory's entries, `fstatat`s
//!   them without following, reads links with `readlinkat` and opens files with `O_NOFOLLOW`,
//!   then archives what the *opened descriptor* is (`fstat`): a file swapped for a link, a
//!   FIFO or a directory between the listing and the open is never followed, read or waited on.
//! - [`unpack_blocking`] refuses `..` and absolute names, walks every parent down from the
//!   top's descriptor with `O_NOFOLLOW | O_DIRECTORY` (a link on the way is an error),
//!   creates with `O_CREAT | O_EXCL | O_NOFOLLOW`, sets modes through the new descriptor, and
//!   makes links with `symlinkat`/`linkat` (never following): nothing lands outside the top,
//!   whatever the archive or a concurrent swap does.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstat, fstatat};
use nix::unistd::UnlinkatFlags;

use super::fs_tree::{DIR_FLAGS, Visitor, list_entries, walk};

/// How many links [`open_dir_blocking`] follows at most (as the kernel's `ELOOP` limit).
const MAX_LINKS: usize = 40;

/// The mode bits kept on what is archived or unpacked: no set-user-id, set-group-id or
/// sticky bit.
const KEPT_MODE: u32 = 0o777;

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

/// Opens directory `path` (made, with its missing parents, when `create`), resolving it one
/// name at a time from `/` (or the working directory) with `O_NOFOLLOW`: the caller's own
/// links (`/var/run`, a link to a work area) are followed until the walk enters a directory
/// for which `writable_by_a_container` names a container-writable directory; from there on a
/// link or `..` is refused (`InvalidInput`), since the container may have planted or moved it.
/// Blocking.
///
/// # Errors
///
/// `NotFound` for a missing path (without `create`), `NotADirectory`, `InvalidInput` for a
/// refused link or too many links, or the system's error.
pub(crate) fn open_dir_blocking(
    path: &Path,
    create: bool,
    writable_by_a_container: &dyn Fn(u64, u64) -> Option<PathBuf>,
) -> io::Result<OwnedFd> {
    let start = if path.is_absolute() { "/" } else { "." };
    let mut dir = open_path_dir(nix::fcntl::AT_FDCWD, start)?;
    // A relative path starts wherever the working directory is, which may be below a
    // container's directory without the walk ever entering it: look up from there.
    let mut inside = if path.is_absolute() {
        None
    } else {
        container_dir_above(&dir, writable_by_a_container)?
    };
    let mut links = 0;
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, path)?;
    loop {
        if inside.is_none() {
            let st = fstat(&dir)?;
            inside = writable_by_a_container(st.st_dev, st.st_ino);
        }
        let Some(name) = todo.pop() else {
            // Opened for reading (listing, creating in it) rather than as a path.
            return Ok(nix::fcntl::openat(&dir, ".", DIR_FLAGS, Mode::empty())?);
        };
        if name == ".." {
            if let Some(writable) = &inside {
                return Err(invalid(format!(
                    "the path climbs out of {} with '..' (a sandbox can write there): name \
                     the directory by a path without '..'",
                    writable.display()
                )));
            }
            dir = open_path_dir(&dir, "..")?;
            continue;
        }
        let st = match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) if create => {
                match nix::sys::stat::mkdirat(
                    &dir,
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?
            }
            st => st?,
        };
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK {
            if let Some(writable) = &inside {
                return Err(invalid(format!(
                    "{} is a symbolic link inside {}, which a sandbox can write: the host \
                     follows no link there",
                    name.to_string_lossy(),
                    writable.display()
                )));
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(invalid(format!(
                    "more than {MAX_LINKS} symbolic links in {}",
                    path.display()
                )));
            }
            let target = nix::fcntl::readlinkat(&dir, name.as_os_str())?;
            let target = PathBuf::from(target);
            if target.is_absolute() {
                dir = open_path_dir(nix::fcntl::AT_FDCWD, "/")?;
            }
            push_components(&mut todo, &target)?;
            continue;
        }
        // Opened without following: a link swapped in since the `fstatat` fails here.
        dir = open_path_dir(&dir, name.as_os_str())?;
    }
}

/// The container-writable directory that `dir` is in (or is), found by walking up through
/// `..` to the root: a container can move `dir` only within its own directory, so the walk
/// up passes it.
fn container_dir_above(
    dir: &OwnedFd,
    writable_by_a_container: &dyn Fn(u64, u64) -> Option<PathBuf>,
) -> io::Result<Option<PathBuf>> {
    let mut dir = open_path_dir(dir, ".")?;
    let mut st = fstat(&dir)?;
    loop {
        if let Some(writable) = writable_by_a_container(st.st_dev, st.st_ino) {
            return Ok(Some(writable));
        }
        let up = open_path_dir(&dir, "..")?;
        let up_st = fstat(&up)?;
        if (up_st.st_dev, up_st.st_ino) == (st.st_dev, st.st_ino) {
            return Ok(None); // The root.
        }
        (dir, st) = (up, up_st);
    }
}

/// Pushes the names of `path` onto `todo`, the first one last (`todo` is popped).
fn push_components(todo: &mut Vec<OsString>, path: &Path) -> io::Result<()> {
    let mut names = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => names.push(OsString::from("..")),
            Component::Normal(n) => names.push(n.to_owned()),
            Component::Prefix(_) => return Err(invalid("a path prefix".into())),
        }
    }
    todo.extend(names.into_iter().rev());
    Ok(())
}

/// `O_PATH` descriptor of directory `name` in `dir`, not through a final link.
fn open_path_dir<Fd: AsFd, P: ?Sized + nix::NixPath>(dir: Fd, name: &P) -> io::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(dir, name, flags, Mode::empty()).map_err(|e| match e {
        Errno::ELOOP => {
            invalid("a symbolic link was swapped in while the path was resolved".into())
        }
        e => e.into(),
    })
}

// ---------------------------------------------------------------------------------------
// Packing.

/// Writes the tree of directory `top` to `out` as a tar archive (the top as `.`), without
/// following any link: see the module's docs. Sockets, FIFOs and devices are left out, and so
/// is an entry that vanished or changed its type while the tree was walked; set-id and sticky
/// bits are dropped. Blocking.
pub(crate) fn pack_blocking(top: OwnedFd, out: impl Write) -> io::Result<()> {
    let dir = Dir::from_fd(top)?;
    let dev = fstat(&dir)?.st_dev;
    let mut pack = Pack {
        builder: tar::Builder::new(out),
        path: PathBuf::new(),
    };
    walk(dir, dev, &mut pack)?;
    pack.builder.into_inner()?.flush()
}

/// The [`Visitor`] of [`pack_blocking`].
struct Pack<W: Write> {
    builder: tar::Builder<W>,
    /// The archive path of the directory being visited (empty for the top).
    path: PathBuf,
}

impl<W: Write> Pack<W> {
    /// The archive path of entry `name` of the current directory.
    fn entry_path(&self, name: &CString) -> PathBuf {
        self.path.join(OsStr::from_bytes(name.as_bytes()))
    }

    fn header(st: &FileStat, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(st.st_mode & KEPT_MODE);
        header.set_uid(u64::from(st.st_uid));
        header.set_gid(u64::from(st.st_gid));
        header.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
        header.set_size(size);
        header
    }

    /// Archives entry `name` of `dir` (not a directory) as what it is once opened.
    fn entry(&mut self, dir: &Dir, name: &CString) -> io::Result<()> {
        let st = match fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let path = self.entry_path(name);
        match SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFLNK => {
                let target = match nix::fcntl::readlinkat(dir, name.as_c_str()) {
                    Ok(target) => target,
                    // Gone, or no longer a link.
                    Err(Errno::ENOENT | Errno::EINVAL) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let mut header = Self::header(&st, tar::EntryType::Symlink, 0);
                self.builder.append_link(&mut header, &path, target)
            }
            SFlag::S_IFREG => {
                // Non-blocking, without a controlling terminal: if a FIFO or a device took
                // the name meanwhile, the open neither waits nor takes it over.
                let flags = OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_CLOEXEC;
                let fd = match nix::fcntl::openat(dir, name.as_c_str(), flags, Mode::empty()) {
                    Ok(fd) => fd,
                    // Gone, a link, or a socket (which cannot be opened) swapped in.
                    Err(Errno::ENOENT | Errno::ELOOP | Errno::ENXIO) => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let st = fstat(&fd)?;
                if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
                    return Ok(());
                }
                let size = u64::try_from(st.st_size).unwrap_or(0);
                let mut header = Self::header(&st, tar::EntryType::Regular, size);
                // Exactly `size` bytes, whatever the file does meanwhile (a shrunk one is
                // padded with zeros).
                let data = File::from(fd).take(size).chain(io::repeat(0)).take(size);
                self.builder.append_data(&mut header, &path, data)
            }
            _ => Ok(()),
        }
    }
}

impl<W: Write> Visitor for Pack<W> {
    const DOING: &str = "archived";

    fn enter_dir(&mut self, _: &Dir, st: &FileStat, _dev: u64) -> io::Result<bool> {
        let mut header = Self::header(st, tar::EntryType::Directory, 0);
        let path = if self.path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.path
        };
        self.builder.append_data(&mut header, path, io::empty())?;
        Ok(true)
    }

    fn visit_entries(&mut self, dir: &mut Dir, _dev: u64) -> io::Result<Vec<CString>> {
        let mut subdirs = Vec::new();
        for (name, kind) in list_entries(dir)? {
            match kind {
                Some(nix::dir::Type::Directory) => subdirs.push(name),
                Some(_) => self.entry(dir, &name)?,
                None => match fstatat(&*dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits() => {
                        subdirs.push(name);
                    }
                    Ok(_) => self.entry(dir, &name)?,
                    Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                },
            }
        }
        // Walked in the order listed (the walker pops from the end).
        subdirs.reverse();
        Ok(subdirs)
    }

    fn open_subdir(&mut self, parent: &Dir, name: &CString) -> io::Result<Option<Dir>> {
        match Dir::openat(parent, name.as_c_str(), DIR_FLAGS, Mode::empty()) {
            Ok(dir) => {
                self.path.push(OsStr::from_bytes(name.as_bytes()));
                Ok(Some(dir))
            }
            // Gone, or no longer a directory (a link swapped in is not followed): a file that
            // took its place is archived as such.
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                self.entry(parent, name)?;
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn leave_subdir(&mut self, _: &Dir, _: &CString) -> io::Result<()> {
        self.path.pop();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Unpacking.

/// The most bytes of headers the tar reader may take for one entry (its header, GNU long
/// name and link, pax records, sparse maps), which it holds in memory.
const ENTRY_HEADERS_LIMIT: u64 = 16 << 20;

/// The longest entry name or link target unpacked: `PATH_MAX`. A longer one would be split
/// into that many names (memory), make as many directories, and leave a tree the host's
/// own tools cannot name (`std::fs::remove_dir_all` recurses once per level).
const NAME_LIMIT: usize = 4096;

/// What each entry made costs the size budget besides its contents: an inode and a block,
/// about what a directory takes on the host's disk.
const ENTRY_COST: u64 = 4096;

/// The most bytes of names of directories whose final mode waits for the end of an unpack.
const DEFERRED_LIMIT: usize = 16 << 20;

/// Unpacks the untrusted tar archive `archive` into directory `top`: see the module's docs.
/// Directories and files get the archive's permission bits without set-id and sticky bits
/// (a directory keeps its owner's `rwx` until the end, so that its entries can be made), an
/// existing non-directory at an entry's name is replaced, devices and FIFOs are left out.
/// All-zero blocks of a file are left as holes. The files' apparent sizes, and
/// [`ENTRY_COST`] for every entry and directory made, together may not pass `size_limit`
/// (`FileTooLarge`): a sparse file costs the host what it costs the sandbox, and neither
/// empty entries nor the parents a name implies are free. An entry's headers are read up to
/// [`ENTRY_HEADERS_LIMIT`] bytes, its names up to `PATH_MAX`. Blocking.
///
/// # Errors
///
/// `InvalidData` for an entry that would land outside `top` (`..`, an absolute name, a path
/// through a link) or whose headers or names are too long, `AlreadyExists` for a name a
/// concurrent writer took meanwhile, or the system's error.
pub(crate) fn unpack_blocking(archive: impl Read, top: OwnedFd, size_limit: u64) -> io::Result<()> {
    let headers = std::rc::Rc::new(std::cell::Cell::new(None));
    let mut archive = tar::Archive::new(Metered {
        inner: archive,
        left: std::rc::Rc::clone(&headers),
    });
    let mut budget = Budget {
        left: size_limit,
        limit: size_limit,
    };
    // Directories whose final mode lacks some of its owner's bits: set at the end.
    let mut deferred: Vec<(PathBuf, u32)> = Vec::new();
    let mut deferred_bytes = 0;
    let mut entries = archive.entries()?;
    loop {
        // What the tar reader takes from here to the next entry is headers, held in memory.
        headers.set(Some(ENTRY_HEADERS_LIMIT));
        let next = entries.next();
        headers.set(None);
        let Some(entry) = next else {
            break;
        };
        let mut entry = entry?;
        if let Some((path, mode)) = unpack_entry(&mut entry, &top, &mut budget)? {
            deferred_bytes += path.as_os_str().len();
            if deferred_bytes > DEFERRED_LIMIT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the sandbox sent too many directories without their owner's permissions",
                ));
            }
            deferred.push((path, mode));
        }
        // The rest of the entry (what was not unpacked) is data, not headers.
        io::copy(&mut entry, &mut io::sink())?;
    }
    for (path, mode) in deferred.into_iter().rev() {
        let names = inside_names(&path)?;
        let (name, parents) = names.split_last().expect("deferred entries have a name");
        let parent = open_parents(&top, parents, &path, None)?;
        let dir = nix::fcntl::openat(&parent, name.as_os_str(), DIR_FLAGS, Mode::empty())
            .map_err(|e| through_link(e, &path))?;
        fchmod(&dir, Mode::from_bits_truncate(mode))?;
    }
    Ok(())
}

/// Unpacks one entry of [`unpack_blocking`]; a directory whose mode must wait for the end is
/// returned with its mode.
fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    top: &OwnedFd,
    budget: &mut Budget,
) -> io::Result<Option<(PathBuf, u32)>> {
    let raw = entry.path()?.into_owned();
    let names = inside_names(&raw)?;
    let Some((name, parents)) = names.split_last() else {
        return Ok(None); // The top itself: the caller's directory keeps its mode.
    };
    let mode = entry.header().mode()? & KEPT_MODE;
    let kind = entry.header().entry_type();
    let makes = matches!(
        kind,
        tar::EntryType::Directory
            | tar::EntryType::Regular
            | tar::EntryType::Continuous
            | tar::EntryType::GNUSparse
            | tar::EntryType::Symlink
            | tar::EntryType::Link
    );
    if !makes {
        // Extension headers are read by `tar` itself; devices and FIFOs are not made.
        return Ok(None);
    }
    budget.charge(ENTRY_COST)?;
    let parent = open_parents(top, parents, &raw, Some(budget))?;
    match kind {
        tar::EntryType::Directory => {
            let dir = make_dir(&parent, name, &raw, None)?;
            fchmod(&dir, Mode::from_bits_truncate(mode | 0o700))?;
            if mode & 0o700 != 0o700 {
                return Ok(Some((raw, mode)));
            }
        }
        tar::EntryType::Symlink => {
            let target = entry
                .link_name()?
                .ok_or_else(|| bad_entry(&raw, "a link without a target"))?;
            check_length(&target)?;
            replace_non_dir(&parent, name, &raw)?;
            nix::unistd::symlinkat(target.as_os_str(), &parent, name.as_os_str())
                .map_err(|e| taken(e, &raw))?;
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name()?
                .ok_or_else(|| bad_entry(&raw, "a hard link without a target"))?;
            check_length(&target)?;
            let target_names = inside_names(&target)?;
            let Some((target_name, target_parents)) = target_names.split_last() else {
                return Err(bad_entry(&raw, "a hard link to the top directory"));
            };
            // Looked up, never made.
            let target_parent = open_parents(top, target_parents, &target, None)?;
            replace_non_dir(&parent, name, &raw)?;
            // Without AT_SYMLINK_FOLLOW: a link to a symlink is a link to the symlink.
            nix::unistd::linkat(
                &target_parent,
                target_name.as_os_str(),
                &parent,
                name.as_os_str(),
                AtFlags::empty(),
            )
            .map_err(|e| taken(e, &raw))?;
        }
        _ => {
            budget.charge(entry.size())?;
            replace_non_dir(&parent, name, &raw)?;
            let flags = OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC;
            let fd = nix::fcntl::openat(
                &parent,
                name.as_os_str(),
                flags,
                Mode::S_IRUSR | Mode::S_IWUSR,
            )
            .map_err(|e| taken(e, &raw))?;
            let mut file = File::from(fd);
            copy_sparse(entry, &mut file)?;
            fchmod(&file, Mode::from_bits_truncate(mode))?;
            if let Ok(mtime) = entry.header().mtime() {
                let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                let _ = file.set_modified(time);
            }
        }
    }
    Ok(None)
}

/// What an unpack may still cost the host (see [`unpack_blocking`]).
struct Budget {
    left: u64,
    limit: u64,
}

impl Budget {
    fn charge(&mut self, cost: u64) -> io::Result<()> {
        self.left = self.left.checked_sub(cost).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "the files' sizes and entries together pass {} bytes",
                    self.limit
                ),
            )
        })?;
        Ok(())
    }
}

/// The archive's reader, which fails past `left` bytes while that is set: the tar reader
/// holds what it takes between entries (headers) in memory.
struct Metered<R> {
    inner: R,
    left: std::rc::Rc<std::cell::Cell<Option<u64>>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.left.get() else {
            return self.inner.read(buf);
        };
        if left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the sandbox sent an entry with more than {ENTRY_HEADERS_LIMIT} bytes of headers"
                ),
            ));
        }
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.left.set(Some(left - n as u64));
        Ok(n)
    }
}

/// An error for a name longer than [`NAME_LIMIT`].
fn check_length(name: &Path) -> io::Result<()> {
    if name.as_os_str().len() > NAME_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the sandbox sent a name of {} bytes (more than {NAME_LIMIT})",
                name.as_os_str().len()
            ),
        ));
    }
    Ok(())
}

fn bad_entry(raw: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the sandbox sent a bad entry {}: {why}", raw.display()),
    )
}

/// An `EEXIST` (or `ELOOP`) from a create that follows nothing: someone took the name.
fn taken(e: Errno, raw: &Path) -> io::Error {
    match e {
        Errno::EEXIST | Errno::ELOOP => io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} was taken by something else while it was being written",
                raw.display()
            ),
        ),
        e => e.into(),
    }
}

/// The names of archive path `raw`, which must stay inside the top: no `..`, no root.
fn inside_names(raw: &Path) -> io::Result<Vec<OsString>> {
    check_length(raw)?;
    let mut names = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => names.push(n.to_owned()),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the sandbox sent an entry outside the directory: {}",
                        raw.display()
                    ),
                ));
            }
        }
    }
    Ok(names)
}

/// The directory `parents` below `top`, walked with `O_NOFOLLOW`; missing ones are made and
/// charged to `budget` when there is one, an error otherwise.
fn open_parents(
    top: &OwnedFd,
    parents: &[OsString],
    raw: &Path,
    mut budget: Option<&mut Budget>,
) -> io::Result<OwnedFd> {
    let mut dir = nix::fcntl::openat(top, ".", DIR_FLAGS, Mode::empty())?;
    for name in parents {
        dir = match budget.as_deref_mut() {
            Some(budget) => make_dir(&dir, name, raw, Some(budget))?,
            None => nix::fcntl::openat(&dir, name.as_os_str(), DIR_FLAGS, Mode::empty())
                .map_err(|e| through_link(e, raw))?,
        };
    }
    Ok(dir)
}

/// Directory `name` of `parent`, made (`0o755`) if missing; never through a link. A
/// directory made is charged to `budget`, if any (an entry's own is already charged).
fn make_dir(
    parent: &OwnedFd,
    name: &OsString,
    raw: &Path,
    budget: Option<&mut Budget>,
) -> io::Result<OwnedFd> {
    let open = || nix::fcntl::openat(parent, name.as_os_str(), DIR_FLAGS, Mode::empty());
    match open() {
        Ok(dir) => Ok(dir),
        Err(Errno::ENOENT) => {
            if let Some(budget) = budget {
                budget.charge(ENTRY_COST)?;
            }
            match nix::sys::stat::mkdirat(parent, name.as_os_str(), Mode::from_bits_truncate(0o755))
            {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            open().map_err(|e| through_link(e, raw))
        }
        Err(e) => Err(through_link(e, raw)),
    }
}

fn through_link(e: Errno, raw: &Path) -> io::Error {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the sandbox sent an entry outside the directory (a path through a link or a \
                 file): {}",
                raw.display()
            ),
        ),
        e => e.into(),
    }
}

/// Unlinks what is at `name` in `parent` unless it is a directory (an error then).
fn replace_non_dir(parent: &OwnedFd, name: &OsString, raw: &Path) -> io::Result<()> {
    match nix::unistd::unlinkat(parent, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) if is_dir_at(parent, name) => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            format!("a directory is in the way of {}", raw.display()),
        )),
        Err(e) => Err(e.into()),
    }
}

fn is_dir_at(parent: &OwnedFd, name: &OsString) -> bool {
    fstatat(parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits())
}

/// Copies `from` into `to`, leaving all-zero blocks as holes.
fn copy_sparse(from: &mut impl Read, to: &mut File) -> io::Result<()> {
    const BLOCK: usize = 64 * 1024;
    let mut buf = vec![0u8; BLOCK];
    let mut len: u64 = 0;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            match from.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        let chunk = &buf[..filled];
        if chunk.iter().all(|b| *b == 0) {
            to.seek(io::SeekFrom::Current(filled as i64))?;
        } else {
            to.write_all(chunk)?;
        }
        len += filled as u64;
        if filled < BLOCK {
            break;
        }
    }
    to.set_len(len)
}

#[cfg(test)]
#[path = "host_tree_tests.rs"]
mod tests;
