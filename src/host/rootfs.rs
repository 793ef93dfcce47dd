//! The shared root filesystem every container of the library starts from: links into the
//! host's `/usr` (bind-mounted read-only per container), a generated `/etc`, and copies of the
//! host's harmless `/etc` entries.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::ROOTFS_LINKS;
use crate::error::SandboxError;

/// Files of the shared root filesystem's `/etc`: users and name lookup without the host's.
const ETC_FILES: &[(&str, &str)] = &[
    (
        "passwd",
        "root:x:0:0:root:/tmp:/bin/sh\nsandbox:x:1000:1000:sandbox:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    (
        "group",
        "root:x:0:\ntty:x:5:\nsandbox:x:1000:\nnogroup:x:65534:\n",
    ),
    (
        "hosts",
        "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    ),
    (
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files dns\n",
    ),
    ("resolv.conf", ""),
];

/// Makes the shared root filesystem (idempotent, blocking): `/bin`, `/lib*`... as links into
/// `/usr` (which is bind-mounted from the host), a generated `/etc`, and copies of the host's
/// [`HOST_ETC`] entries, refreshed when the host's change.
pub(crate) fn prepare_rootfs(rootfs: &Path) -> Result<(), SandboxError> {
    let err = |what, p: &Path, e| SandboxError::io(what, p, e);
    for (link, target) in ROOTFS_LINKS {
        let host_link = Path::new(link);
        // Mirror the host: a link where it has one (merged /usr), nothing where it has none.
        if !host_link.is_symlink() {
            continue;
        }
        let at = rootfs.join(link.trim_start_matches('/'));
        if at.symlink_metadata().is_err() {
            let rel = target.trim_start_matches('/');
            match std::os::unix::fs::symlink(rel, &at) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err("creating a rootfs link", &at, e)),
            }
        }
    }
    let etc = rootfs.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| err("creating the rootfs /etc", &etc, e))?;
    for (name, content) in ETC_FILES {
        let path = etc.join(name);
        if path.exists() {
            continue;
        }
        // Write then rename, so that a concurrent container never sees a half-written file.
        let mut tmp = tempfile::NamedTempFile::new_in(&etc)
            .map_err(|e| err("writing the rootfs /etc", &etc, e))?;
        tmp.write_all(content.as_bytes())
            .map_err(|e| err("writing the rootfs /etc", &path, e))?;
        let _ = tmp
            .as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
        tmp.persist(&path)
            .map_err(|e| err("writing the rootfs /etc", &path, e.error))?;
    }
    for entry in HOST_ETC {
        let source = Path::new(entry);
        let relative = source.strip_prefix("/etc").unwrap_or(source);
        let mut budget = HOST_ETC_BUDGET;
        copy_entry(source, &etc.join(relative), 0, &mut budget)
            .map_err(|e| err("copying the host's /etc into the rootfs", source, e))?;
    }
    Ok(())
}

/// Host entries of `/etc` that programs need and that hold no secrets (dynamic linking, time
/// zone, CA certificates, `update-alternatives` links, service and MIME tables, Debian's
/// matplotlib defaults, which its matplotlib looks for nowhere else, and fontconfig's). Copied into
/// the shared rootfs once rather than bind-mounted per container: eight single-file binds were
/// 6% of a cold runc spawn (benches/spec_cost.rs).
pub(crate) const HOST_ETC: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
    "/etc/matplotlibrc",
    "/etc/fonts",
];

/// The most bytes copied for one [`HOST_ETC`] entry (the CA bundle is ~200 KiB).
const HOST_ETC_BUDGET: u64 = 16 << 20;

/// How deep a copied directory is followed (`/etc/ssl/certs` is flat).
const HOST_ETC_DEPTH: usize = 4;

/// Copies `source` to `dest` unless `dest` is already the same: links as links (never
/// followed), regular files by content (same length and mtime: unchanged), directories entry
/// by entry. Each entry is replaced by a rename, so a running container sees the old or the
/// new one, never half of one. Anything else (devices, sockets) and what is past the depth or
/// the byte budget is left out. A missing source is no error.
fn copy_entry(source: &Path, dest: &Path, depth: usize, budget: &mut u64) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(source) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let existing = std::fs::symlink_metadata(dest).ok();
    let parent = dest.parent().unwrap_or(Path::new("/"));
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(source)?;
        if std::fs::read_link(dest).is_ok_and(|t| t == target) {
            return Ok(());
        }
        let tmp = temporary_name(dest);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        return replace(&tmp, dest, existing.as_ref());
    }
    if meta.is_file() {
        if existing
            .as_ref()
            .is_some_and(|d| d.is_file() && d.len() == meta.len() && d.mtime() == meta.mtime())
        {
            return Ok(());
        }
        if meta.len() > *budget {
            return Ok(());
        }
        *budget -= meta.len();
        let mut tmp = tempfile::NamedTempFile::new_in(parent)?;
        std::io::copy(&mut std::fs::File::open(source)?, tmp.as_file_mut())?;
        tmp.as_file()
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        tmp.as_file().set_modified(meta.modified()?)?;
        let (_, tmp) = tmp.keep().map_err(|e| e.error)?;
        return replace(&tmp, dest, existing.as_ref());
    }
    if meta.is_dir() && depth < HOST_ETC_DEPTH {
        if !existing.as_ref().is_some_and(|d| d.is_dir()) {
            if existing.is_some() {
                std::fs::remove_file(dest)?;
            }
            match std::fs::create_dir_all(dest) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        for entry in std::fs::read_dir(source)? {
            let entry = entry?;
            copy_entry(
                &entry.path(),
                &dest.join(entry.file_name()),
                depth + 1,
                budget,
            )?;
        }
    }
    Ok(())
}

/// A name next to `dest` for what replaces it.
fn temporary_name(dest: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dest.file_name().unwrap_or_default());
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    name.push(format!(".{}-{n}.tmp", std::process::id()));
    dest.with_file_name(name)
}

/// Renames `tmp` over `dest`; a directory in the way (an old mount point) is removed first.
fn replace(tmp: &Path, dest: &Path, existing: Option<&std::fs::Metadata>) -> std::io::Result<()> {
    if existing.is_some_and(|d| d.is_dir()) {
        crate::sys::fs_tree::remove_tree_blocking(dest)?;
    }
    std::fs::rename(tmp, dest).inspect_err(|_| {
        let _ = std::fs::remove_file(tmp);
    })
}
