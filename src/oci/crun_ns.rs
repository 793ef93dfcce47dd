//! crun on hybrid cgroups (v1 controllers with a v2 mount at `/sys/fs/cgroup/unified` that
//! holds a controller): crun refuses to run there ("cgroups in hybrid mode not supported").
//! It runs, limits and all, in a mount namespace where that v2 mount is gone.
//!
//! The library keeps one such namespace per state directory, made persistent by bind-mounting
//! it on a file (`unshare --mount=<file>`), holds it open, and every crun call enters it with
//! `setns` in the forked child before crun is executed. That was `nsenter --mount=<file>`
//! (one more exec per call, 0.88 ms on this machine: 8% of a crun `run`), and before that an
//! `unshare` and a shell per call (crun 20 ms against 13 ms). The namespace is a *slave* of
//! the host's: mounts made on the host later still show in it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::SandboxError;

const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// Whether crun would refuse this machine's cgroups.
pub(crate) fn needs_namespace() -> bool {
    let unified_controllers =
        std::fs::read_to_string(Path::new(UNIFIED).join("cgroup.controllers"))
            .map(|c| !c.trim().is_empty())
            .unwrap_or(false);
    let root_is_tmpfs = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false);
    root_is_tmpfs && unified_controllers
}

/// Whether `path` is a mount point of a namespace file (already prepared).
fn is_ns_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.get(4) == Some(&p.as_ref()) && l.contains(" - nsfs ")
    })
}

fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_ref()))
}

/// crun's mount namespace, held open for the library's life: the commands that run crun enter
/// it in the child, between `fork` and `exec`.
#[derive(Debug)]
pub(crate) struct MountNamespace {
    file: PathBuf,
    fd: OwnedFd,
}

impl MountNamespace {
    /// The file the namespace is bound on.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// Makes `cmd` enter the namespace before it executes its program.
    pub(crate) fn enter_before_exec(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        let fd = self.fd.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // system call (async-signal-safe); the fd stays open as long as `self`, which the
        // caller holds while the command is spawned.
        unsafe {
            cmd.pre_exec(move || {
                let ns = std::os::fd::BorrowedFd::borrow_raw(fd);
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)
            });
        }
    }
}

/// Opens the namespace bound on `file`.
fn open_blocking(file: PathBuf) -> Result<MountNamespace, SandboxError> {
    let fd = std::fs::File::open(&file)
        .map_err(|e| SandboxError::io("opening crun's mount namespace", &file, e))?;
    Ok(MountNamespace {
        file,
        fd: fd.into(),
    })
}

/// Makes (or finds) the persistent namespace under `dir` and opens it. Blocking; needs root
/// (`CAP_SYS_ADMIN`).
pub(crate) fn prepare_blocking(dir: &Path) -> Result<MountNamespace, SandboxError> {
    use nix::mount::{MsFlags, mount};
    let file = dir.join("mnt");
    if is_ns_mount(&file) {
        return open_blocking(file);
    }
    let io = |what, p: &Path, e: std::io::Error| SandboxError::io(what, p, e);
    std::fs::create_dir_all(dir).map_err(|e| io("creating the crun namespace dir", dir, e))?;
    // A namespace can be bound only on a mount that does not propagate: make the dir one.
    if !is_mount_point(dir) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| io("bind-mounting the crun namespace dir", dir, e.into()))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| io("making the crun namespace dir private", dir, e.into()))?;
    std::fs::write(&file, b"").map_err(|e| io("creating the crun namespace file", &file, e))?;
    let out = std::process::Command::new("unshare")
        .arg(format!("--mount={}", file.display()))
        .args(["--propagation", "slave", "umount", UNIFIED])
        .output()
        .map_err(|e| io("running unshare for crun's namespace", &file, e))?;
    if !out.status.success() {
        return Err(SandboxError::Process {
            context: "preparing crun's mount namespace without the cgroup v2 mount (unshare)",
            source: std::io::Error::other(format!(
                "unshare exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        });
    }
    open_blocking(file)
}
