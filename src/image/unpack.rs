//! One layer blob (a tar: plain, gzip or zstd) unpacked into a directory of its own, in the
//! form overlayfs stacks: whiteouts (`.wh.<name>`) become `0/0` character devices and opaque
//! directories (`.wh..wh..opq`) the `trusted.overlay.opaque` attribute.
//!
//! What the layer cannot do: write outside its directory (`..` components are refused, and a
//! path through a link that leads out is refused by the tar crate's check of every parent it
//! creates), write through a link it planted (an existing entry is removed before a new one
//! takes its name), create device nodes or fifos (skipped), or set extended attributes (not
//! unpacked: a layer's own `trusted.overlay.*` would fake whiteouts or redirects).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

/// What went wrong unpacking: a layer that is unsafe, or one that is not a readable tar.
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// A path with `..`, a link out of the layer, an entry the format forbids.
    Unsafe(String),
    /// Not a tar, a truncated or corrupt stream.
    Invalid(String),
    /// The host failed us (disk full, permissions).
    Io(std::io::Error),
}

/// What an unpacked layer holds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Unpacked {
    /// Bytes of regular files.
    pub bytes: u64,
    /// Device nodes and fifos left out.
    pub skipped_devices: u64,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// A layer blob's tar stream, decompressed by what its first bytes say it is (gzip, zstd, or
/// a plain tar).
pub(crate) fn decompressed(blob: &Path) -> std::io::Result<Box<dyn Read>> {
    let file = std::fs::File::open(blob)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(GZIP_MAGIC) {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else if head.starts_with(ZSTD_MAGIC) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

/// The entry's path relative to the layer's root: leading `/` and `.` dropped; `..` refused.
fn relative(path: &Path) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(UnpackError::Unsafe(format!(
                    "entry {} climbs out of the layer with ..",
                    path.display()
                )));
            }
            Component::Normal(p) => out.push(p),
        }
    }
    Ok(out)
}

/// Makes `rel`'s directory in `dest` (and its parents) with no link on the way: an existing
/// component must be a real directory.
fn real_dir(dest: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let mut dir = dest.to_path_buf();
    for part in rel.components() {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::Unsafe(format!(
                    "{} is not a directory of the layer",
                    rel.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(&dir).map_err(UnpackError::Io)?;
            }
            Err(e) => return Err(UnpackError::Io(e)),
        }
    }
    Ok(dir)
}

/// Removes whatever `path` names (a file, a link, a directory tree), if anything.
fn clear(path: &Path) -> Result<(), UnpackError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(UnpackError::Io),
        Ok(_) => std::fs::remove_file(path).map_err(UnpackError::Io),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UnpackError::Io(e)),
    }
}

/// An overlayfs whiteout for `name` in `dir`: a character device 0/0.
fn whiteout(dir: &Path, name: &OsStr) -> Result<(), UnpackError> {
    use nix::sys::stat::{Mode, SFlag, mknod};
    let path = dir.join(name);
    clear(&path)?;
    mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0)
        .map_err(|e| UnpackError::Io(std::io::Error::from(e)))
}

/// Marks `dir` opaque: nothing of the lower layers shows through it. An ordinary user's
/// overlay (mounted with `userxattr`) reads the `user.` attribute.
fn opaque(dir: &Path, owners: Owners) -> Result<(), UnpackError> {
    let name = match owners {
        Owners::Preserved => "trusted.overlay.opaque",
        Owners::Caller => "user.overlay.opaque",
    };
    xattr_set(dir, name, b"y").map_err(UnpackError::Io)
}

/// Who owns the unpacked files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owners {
    /// As root: the owners the layer names.
    Preserved,
    /// As an ordinary user: the caller owns everything (it is the container's root, the only
    /// id a rootless container maps), with owner read and write on every file and directory
    /// (root in the container passes permission checks anyway; the store must be able to
    /// unpack into and remove what it unpacked).
    Caller,
}

/// Rootless: gives the caller read, write (and for directories search) on what `path` names.
fn owner_can_write(path: &Path, owners: Owners) -> Result<(), UnpackError> {
    use std::os::unix::fs::PermissionsExt;
    if owners == Owners::Preserved {
        return Ok(());
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let needed = if meta.is_dir() {
        0o700
    } else if meta.is_file() {
        0o600
    } else {
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & needed != needed {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | needed))
            .map_err(UnpackError::Io)?;
    }
    Ok(())
}

fn xattr_set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `rel` under `root` if it is there with every directory on the way a real directory:
/// `Ok(None)` if it is not there, an unsafe-layer error if a link is on the way (a hard link
/// names a file, never a path through a link, which could lead out to a host file).
fn beneath(root: &Path, rel: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut path = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Ok(None);
        };
        if i + 1 < parts.len() && !meta.is_dir() {
            return Err(UnpackError::Unsafe(format!(
                "hard link target {} passes through a link or a file",
                rel.display()
            )));
        }
    }
    Ok(Some(path))
}

/// A hard link's target that a lower layer holds: copied up into this layer first, so the
/// link can be made (links never cross layers in the store). The target is looked up in each
/// layer without following links (a lower layer's link must not lead the copy to a host file).
fn copy_up_link_target(
    dest: &Path,
    target: &Path,
    lowers: &[PathBuf],
    owners: Owners,
) -> Result<(), UnpackError> {
    if let Some(parent) = target.parent() {
        real_dir(dest, parent)?;
    }
    let here = dest.join(target);
    if std::fs::symlink_metadata(&here).is_ok() {
        return Ok(());
    }
    let mut source = None;
    for lower in lowers.iter().rev() {
        if let Some(p) = beneath(lower, target)? {
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                source = Some(p);
            }
            break; // The topmost layer holding the name decides.
        }
    }
    let Some(source) = source else {
        return Ok(()); // The tar crate reports the missing target.
    };
    std::fs::copy(&source, &here).map_err(UnpackError::Io)?;
    let meta = std::fs::metadata(&source).map_err(UnpackError::Io)?;
    use std::os::unix::fs::MetadataExt;
    if owners == Owners::Preserved {
        std::os::unix::fs::lchown(&here, Some(meta.uid()), Some(meta.gid()))
            .map_err(UnpackError::Io)?;
    }
    std::fs::set_permissions(&here, meta.permissions()).map_err(UnpackError::Io)?;
    owner_can_write(&here, owners)
}

/// Unpacks `blob` into `dest` (an empty directory). `lowers`: the image's layers below this
/// one, lowest first, for hard links to their files. Stops before the next entry once `stop`
/// is set (the pull was dropped). Blocking.
pub(crate) fn unpack_layer_blocking(
    blob: &Path,
    dest: &Path,
    lowers: &[PathBuf],
    owners: Owners,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<Unpacked, UnpackError> {
    let mut archive = tar::Archive::new(decompressed(blob).map_err(UnpackError::Io)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(owners == Owners::Preserved);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut done = Unpacked::default();
    let entries = archive
        .entries()
        .map_err(|e| UnpackError::Invalid(e.to_string()))?;
    for entry in entries {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(UnpackError::Io(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the pull was cancelled",
            )));
        }
        let mut entry = entry.map_err(|e| UnpackError::Invalid(e.to_string()))?;
        let rel = relative(
            &entry
                .path()
                .map_err(|e| UnpackError::Invalid(e.to_string()))?,
        )?;
        let Some(name) = rel.file_name().map(OsStr::to_owned) else {
            continue; // The layer's root itself.
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE_MARKER {
            opaque(&real_dir(dest, parent_rel)?, owners)?;
            continue;
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden.starts_with(WHITEOUT_PREFIX) {
                return Err(UnpackError::Unsafe(format!(
                    "malformed whiteout {}",
                    rel.display()
                )));
            }
            whiteout(&real_dir(dest, parent_rel)?, OsStr::new(hidden))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            done.skipped_devices += 1;
            tracing::debug!(path = %rel.display(), "device node or fifo in a layer left out");
            continue;
        }
        if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| UnpackError::Invalid(e.to_string()))?
                .ok_or_else(|| UnpackError::Invalid(format!("{} links nowhere", rel.display())))?;
            if target.is_absolute() {
                // The tar crate would join it onto nothing: a host path.
                return Err(UnpackError::Unsafe(format!(
                    "hard link {} names the absolute path {}",
                    rel.display(),
                    target.display()
                )));
            }
            copy_up_link_target(dest, &relative(&target)?, lowers, owners)?;
        }
        // Every directory on the way is a real one of this layer (made if missing): a link
        // planted by an earlier entry must not lead the removal below out of the layer.
        real_dir(dest, parent_rel)?;
        let here = dest.join(&rel);
        // A directory entry over an existing directory keeps its contents; anything else
        // replaces what had the name (never written through: it may be a link).
        let keeps = kind.is_dir() && std::fs::symlink_metadata(&here).is_ok_and(|m| m.is_dir());
        if !keeps {
            clear(&here)?;
        }
        if kind.is_file() {
            done.bytes += entry.header().size().unwrap_or(0);
        }
        match entry.unpack_in(dest) {
            Ok(true) => owner_can_write(&here, owners)?,
            Ok(false) => {
                return Err(UnpackError::Unsafe(format!(
                    "entry {} is outside the layer",
                    rel.display()
                )));
            }
            Err(e) if e.to_string().contains("outside of destination") => {
                return Err(UnpackError::Unsafe(format!(
                    "entry {} leads out of the layer through a link",
                    rel.display()
                )));
            }
            Err(e) => return Err(UnpackError::Invalid(format!("{}: {e}", rel.display()))),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_components_are_refused_and_roots_dropped() {
        assert!(matches!(
            relative(Path::new("a/../../etc/passwd")),
            Err(UnpackError::Unsafe(_))
        ));
        assert_eq!(
            relative(Path::new("/./usr//bin/sh")).unwrap(),
            Path::new("usr/bin/sh")
        );
    }
}
