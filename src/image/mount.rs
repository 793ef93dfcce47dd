//! A container's root over its image: an overlay of the image's layers (and a top layer of
//! the library's: the launcher and mount points), mounted by the runtime's own process
//! between `fork` and `exec`, in a mount namespace of its own.
//!
//! The runtime's process unshares its mount namespace, mounts the overlay on the bundle's
//! `rootfs` and then executes the runtime, which builds the container from that namespace.
//! Nothing is mounted in the host's namespace: when the runtime and the container are gone,
//! so is the overlay (no unmount to forget, nothing left by a crash). With a user namespace of
//! the library's (runc, crun as root), each layer is first cloned as an idmapped mount, so the
//! image's owners are the container's own ids; gVisor maps ids itself.
//!
//! A writable root puts the overlay's upper layer on a tmpfs of its own (the size given),
//! discarded with the namespace; a sandbox that may be snapshotted has it on disk in its
//! bundle instead, where a snapshot takes it as a layer once the container is gone (an
//! idmapped upper cannot be: overlayfs makes its work dir as the mounter, the host's root,
//! which the container's idmapping does not map, and mounts read-only).
//!
//! Rootless, the runtime's process first unshares a user namespace too, in which the caller
//! is root (`0 <uid> 1`, like `unshare -r`): there it may mount the overlay (with `userxattr`:
//! the store marks opaque directories with `user.overlay.opaque`) and a tmpfs, and the runtime
//! runs as that namespace's root, nesting the container's own namespace inside it.

use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// Everything the mount needs, as C strings made before `fork` (the child may not allocate).
#[derive(Debug)]
pub(crate) struct RootMount {
    target: CString,
    /// Per layer: the store dir and, when idmapped, the point it is cloned onto.
    layers: Vec<(CString, Option<CString>)>,
    overlay_data: CString,
    upper: Option<Upper>,
    userns: Option<RawFd>,
    /// Rootless: the lines of the user namespace the child makes for itself.
    own_userns: Option<OwnUserNs>,
    /// Whether there is an overlay to mount at all (not for a container without an image
    /// that only needs its owned binds).
    overlay: bool,
    /// Directories of the library's (a named sandbox's, a volume's) that keep the
    /// container's own ids: each cloned onto its point, idmapped into the container's user
    /// namespace, read-write or not.
    binds: Vec<OwnedBind>,
}

/// One directory of the library's, cloned (in the host's mount namespace, so that a mount
/// there is seen even from crun's namespace) for the runtime to bind (see [`RootMount`]).
#[derive(Debug)]
struct OwnedBind {
    /// The detached clone (`open_tree(OPEN_TREE_CLONE)`), attached at `point` by the child.
    tree: std::os::fd::OwnedFd,
    point: CString,
    writable: bool,
}

/// A user namespace mapping the caller (an ordinary user) to its root, and nothing else.
#[derive(Debug)]
struct OwnUserNs {
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

#[derive(Debug)]
struct Upper {
    dir: CString,
    /// `Some`: a tmpfs mounted on `dir`, where the upper and work dirs are made. `None`: they
    /// are on disk already (made by the host, for snapshots).
    tmpfs_data: Option<CString>,
    upper: CString,
    work: CString,
    owner: u32,
}

/// Where a writable root's upper layer lives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Writable {
    /// A tmpfs of this many bytes in the runtime's mount namespace, its root owned by this
    /// host id: gone with the container.
    Tmpfs { size: u64, owner: u32 },
    /// A directory in the bundle on the state dir's disk (`rw/upper`), its root owned by
    /// this host id, which a snapshot takes as a layer. It stores host ids (the container's
    /// plus its user namespace's base), which the snapshot shifts back.
    OnDisk { owner: u32 },
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

/// Where the mount's pieces go in a bundle dir.
pub(crate) struct Points {
    pub rootfs: PathBuf,
    pub layers: PathBuf,
    pub rw: PathBuf,
}

impl Points {
    pub(crate) fn in_bundle(bundle: &Path) -> Self {
        Points {
            rootfs: bundle.join("rootfs"),
            layers: bundle.join("layers"),
            rw: bundle.join("rw"),
        }
    }

    /// The upper layer of a writable root on disk ([`Writable::OnDisk`]).
    pub(crate) fn upper(&self) -> PathBuf {
        self.rw.join("upper")
    }
}

impl RootMount {
    /// The plan for `layers` (lowest first; the library's top layer last) onto `points`,
    /// creating the empty dirs it mounts on. `userns`: the container's user namespace for
    /// idmapped layers (kept open by the caller until the runtime has been spawned).
    /// `writable`: where a writable root's upper layer goes.
    /// `rootless`: the caller's uid and gid, when it is an ordinary user (then `userns` is
    /// `None`). Blocking.
    pub(crate) fn prepare_blocking(
        layers: &[PathBuf],
        points: &Points,
        userns: Option<RawFd>,
        writable: Option<Writable>,
        rootless: Option<(u32, u32)>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&points.rootfs)?;
        let mut planned = Vec::with_capacity(layers.len());
        let mut lower = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            match userns {
                Some(_) => {
                    let point = points.layers.join(i.to_string());
                    std::fs::create_dir_all(&point)?;
                    lower.push(point.clone());
                    planned.push((cstr(layer)?, Some(cstr(&point)?)));
                }
                None => {
                    lower.push(layer.clone());
                    planned.push((cstr(layer)?, None));
                }
            }
        }
        // overlayfs lists the top layer first.
        let lowerdir: Vec<String> = lower
            .iter()
            .rev()
            .map(|p| p.to_string_lossy().replace(',', "\\,").replace(':', "\\:"))
            .collect();
        let mut data = format!("lowerdir={}", lowerdir.join(":"));
        let upper = match writable {
            None => None,
            Some(writable) => {
                // Only the host's root (the mounter) goes in: the layer holds the sandbox's
                // files, which no host user may read (on disk, or the tmpfs's mount point).
                std::fs::create_dir_all(&points.rw)?;
                std::fs::set_permissions(
                    &points.rw,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )?;
                let (tmpfs_data, owner, base) = match writable {
                    Writable::Tmpfs { size, owner } => (
                        Some(CString::new(format!("size={size},mode=0700"))?),
                        owner,
                        points.rw.clone(),
                    ),
                    Writable::OnDisk { owner } => {
                        use std::os::unix::fs::PermissionsExt;
                        let (upper, work) = (points.rw.join("upper"), points.rw.join("work"));
                        std::fs::create_dir(&upper)?;
                        std::fs::create_dir(&work)?;
                        std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))?;
                        std::fs::set_permissions(&upper, std::fs::Permissions::from_mode(0o755))?;
                        if owner != 0 {
                            std::os::unix::fs::chown(&upper, Some(owner), Some(owner))?;
                        }
                        (None, owner, points.rw.clone())
                    }
                };
                let (u, w) = (base.join("upper"), base.join("work"));
                data.push_str(&format!(
                    ",upperdir={},workdir={}",
                    u.to_string_lossy(),
                    w.to_string_lossy()
                ));
                // On disk, the container's end would sync the upper layer's file system
                // (tens of ms for what it wrote, on a snapshot's path): the layer is the
                // sandbox's scratch, written back by the kernel in its own time.
                if tmpfs_data.is_none() {
                    data.push_str(",volatile");
                }
                Some(Upper {
                    dir: cstr(&points.rw)?,
                    tmpfs_data,
                    upper: cstr(&u)?,
                    work: cstr(&w)?,
                    owner,
                })
            }
        };
        if rootless.is_some() {
            data.push_str(",userxattr");
        }
        if data.len() >= 4000 {
            return Err(std::io::Error::other(format!(
                "the overlay options for {} layers are too long ({} bytes)",
                layers.len(),
                data.len()
            )));
        }
        Ok(RootMount {
            target: cstr(&points.rootfs)?,
            layers: planned,
            overlay_data: CString::new(data)?,
            upper,
            userns,
            own_userns: rootless.map(|(uid, gid)| OwnUserNs {
                uid_map: format!("0 {uid} 1\n").into_bytes(),
                gid_map: format!("0 {gid} 1\n").into_bytes(),
            }),
            overlay: true,
            binds: Vec::new(),
        })
    }

    /// The plan for a container without an image: no overlay, only its owned binds
    /// (idmapped into `userns` when given).
    pub(crate) fn binds_only(userns: Option<RawFd>) -> Self {
        RootMount {
            target: CString::default(),
            layers: Vec::new(),
            overlay_data: CString::default(),
            upper: None,
            userns,
            own_userns: None,
            overlay: false,
            binds: Vec::new(),
        }
    }

    /// Adds a directory of the library's to clone onto `point` (an empty directory the
    /// runtime then binds into the container), idmapped into the container's user namespace
    /// when there is one. The clone is made here, in the host's mount namespace: a mount at
    /// `source` (a volume's file system) is what is cloned, wherever the runtime runs.
    /// Blocking.
    pub(crate) fn add_owned_bind(
        &mut self,
        source: &Path,
        point: &Path,
        writable: bool,
    ) -> std::io::Result<()> {
        let source = cstr(source)?;
        // SAFETY: a NUL-terminated path; the fd returned is owned here.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                source.as_ptr(),
                libc::OPEN_TREE_CLONE
                    | libc::OPEN_TREE_CLOEXEC
                    | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd, owned by nothing else.
        let tree =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) };
        self.binds.push(OwnedBind {
            tree,
            point: cstr(point)?,
            writable,
        });
        Ok(())
    }

    /// Unshares the mount namespace (rootless, a user namespace too) and mounts the root.
    /// Only system calls: safe between `fork` and `exec`.
    pub(crate) fn mount_in_child(&self) -> std::io::Result<()> {
        fn check(rc: libc::c_long) -> std::io::Result<()> {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        fn check_int(rc: libc::c_int) -> std::io::Result<()> {
            check(libc::c_long::from(rc))
        }
        // SAFETY (all below): system calls on NUL-terminated strings owned by `self`, fds
        // this function opens and closes, and a mount_attr on the stack.
        unsafe {
            match &self.own_userns {
                None => check_int(libc::unshare(libc::CLONE_NEWNS))?,
                Some(ns) => {
                    check_int(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
                    write_proc(c"/proc/self/setgroups", b"deny")?;
                    write_proc(c"/proc/self/uid_map", &ns.uid_map)?;
                    write_proc(c"/proc/self/gid_map", &ns.gid_map)?;
                }
            }
            check_int(libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_SLAVE,
                std::ptr::null(),
            ))?;
            for (source, point) in &self.layers {
                if let (Some(point), Some(userns)) = (point, self.userns) {
                    clone_idmapped(source, point, userns, libc::MOUNT_ATTR_RDONLY)?;
                }
            }
            for bind in &self.binds {
                // A bind of the sandbox's own files: no set-id program, no device.
                let ro = if bind.writable {
                    0
                } else {
                    libc::MOUNT_ATTR_RDONLY
                };
                let attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | ro;
                attach(&bind.tree, &bind.point, self.userns, attrs)?;
            }
            if !self.overlay {
                return Ok(());
            }
            if let Some(up) = &self.upper
                && let Some(tmpfs_data) = &up.tmpfs_data
            {
                check_int(libc::mount(
                    c"tmpfs".as_ptr(),
                    up.dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    tmpfs_data.as_ptr().cast(),
                ))?;
                check_int(libc::mkdir(up.upper.as_ptr(), 0o755))?;
                check_int(libc::chown(up.upper.as_ptr(), up.owner, up.owner))?;
                check_int(libc::mkdir(up.work.as_ptr(), 0o700))?;
            }
            check_int(libc::mount(
                c"overlay".as_ptr(),
                self.target.as_ptr(),
                c"overlay".as_ptr(),
                libc::MS_NODEV,
                self.overlay_data.as_ptr().cast(),
            ))?;
            // overlayfs holds private clones of its layers: the idmapped points can go.
            for (_, point) in &self.layers {
                if let Some(point) = point {
                    libc::umount2(point.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
        Ok(())
    }
}

/// Clones `source` onto `point` as a mount idmapped into `userns`, with mount attributes
/// `attrs` besides. Only system calls: safe between `fork` and `exec`.
fn clone_idmapped(
    source: &std::ffi::CStr,
    point: &std::ffi::CStr,
    userns: RawFd,
    attrs: u64,
) -> std::io::Result<()> {
    // SAFETY: a system call on a NUL-terminated string; the fd it returns is owned here.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd, owned by nothing else (closed when dropped: a system call).
    let tree =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) };
    attach(&tree, point, Some(userns), attrs)
}

/// Sets `attrs` (and an idmapping into `userns`, when given) on the detached mount `tree`
/// and attaches it at `point`. Only system calls: safe between `fork` and `exec`.
fn attach(
    tree: &std::os::fd::OwnedFd,
    point: &std::ffi::CStr,
    userns: Option<RawFd>,
    attrs: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = tree.as_raw_fd();
    // SAFETY: system calls on an fd this process holds, a NUL-terminated path and a
    // mount_attr on the stack.
    unsafe {
        let attr = libc::mount_attr {
            attr_set: attrs
                | if userns.is_some() {
                    libc::MOUNT_ATTR_IDMAP
                } else {
                    0
                },
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.map_or(0, |u| u as u64),
        };
        let set = libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        );
        if set < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let moved = libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            point.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        );
        if moved < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Writes `data` to the proc file `path` in one `write`. Only system calls.
fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path, a buffer of the given length, an fd closed here.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if n != data.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}
