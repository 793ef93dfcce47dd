//! Whole trees between the host and a [`Sandbox`]: [`Sandbox::upload_dir`] and
//! [`Sandbox::download_dir`], as tar streams. The sandbox's side is its own `/usr/bin/tar`
//! as its user; the host's side works by directory fds (`crate::sys::host_tree`), since the
//! host directory may be one that a sandbox changes meanwhile.

use std::io;
use std::path::Path;

use super::Sandbox;
use crate::error::SandboxError;
use crate::handle::file::{StallingWriter, file_error};

impl Sandbox {
    /// Copies the host directory `host_dir` into the sandbox at `sandbox_dir` (made if
    /// missing): the whole tree, binary-safe, with modes and symlinks as they are (links are
    /// copied as links, never followed on the host). The files are the sandbox user's.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] for a host directory that cannot be read, or the sandbox's
    /// failure (no space, permission) with `sandbox_dir`.
    pub async fn upload_dir(
        &self,
        host_dir: impl AsRef<Path>,
        sandbox_dir: impl AsRef<Path>,
    ) -> Result<(), SandboxError> {
        let (host_dir, sandbox_dir) = (host_dir.as_ref().to_path_buf(), sandbox_dir.as_ref());
        let context = "uploading a directory into the sandbox";
        let top = open_host_dir(context, &host_dir, false).await?;
        self.create_dir_all(sandbox_dir).await?;
        let untar = tar_exec(&["-x", "--no-same-owner", "-p", "-C"], sandbox_dir);
        let mut process = self.exec(&untar).await?;
        let stdin = process.stdin.take().expect("piped stdin");
        let packing = tokio::task::spawn_blocking(move || {
            // A tar the sandbox stopped makes the upload fail, not hang.
            let mut writer = tokio_util::io::SyncIoBridge::new(StallingWriter::new(stdin));
            crate::sys::host_tree::pack_blocking(top, &mut writer)?;
            writer.shutdown()
        });
        // The archive first (tar's own output is a few lines at most); a tar that stopped
        // taking it is killed, so that its end can be awaited.
        let packed = packing.await.unwrap_or_else(|e| Err(io::Error::other(e)));
        if packed.is_err() {
            process.start_kill();
        }
        let out = process.wait_with_output().await?;
        match packed {
            Err(e) if out.status.success() || out.status.signal().is_some() => {
                Err(file_error(context, &host_dir, e))
            }
            _ => tar_result(context, sandbox_dir, &out),
        }
    }

    /// Copies the sandbox's directory `sandbox_dir` to `host_dir` on the host (made if
    /// missing): the whole tree, binary-safe, modes (without setuid/setgid bits) and symlinks
    /// kept. What the sandbox sends is untrusted: an entry that would land outside `host_dir`
    /// (`..`, an absolute path, a path through a link) is refused.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Io`] with the sandbox's failure and `sandbox_dir`, or a host write
    /// failure with `host_dir` (also for an entry that would land outside it).
    pub async fn download_dir(
        &self,
        sandbox_dir: impl AsRef<Path>,
        host_dir: impl AsRef<Path>,
    ) -> Result<(), SandboxError> {
        let (sandbox_dir, host_dir) = (sandbox_dir.as_ref(), host_dir.as_ref().to_path_buf());
        let context = "downloading a directory from the sandbox";
        let top = open_host_dir(context, &host_dir, true).await?;
        // Sparse files travel as holes (a 1 TiB hole is no 1 TiB on the host), and a tar that
        // stops sending (the sandbox can stop it) ends the download instead of hanging it.
        let tar = tar_exec(&["-c", "--sparse", "-C"], sandbox_dir);
        let tar = crate::ExecConfig {
            args: [tar.args, vec![".".into()]].concat(),
            idle_timeout: Some(TRANSFER_STALL),
            ..tar
        };
        let mut process = self.exec(&tar).await?;
        let stdout = process.stdout.take().expect("piped stdout");
        let limit = download_limit(self.inner.config.output_limit);
        let unpacking = tokio::task::spawn_blocking(move || {
            let stream = std::io::Read::take(tokio_util::io::SyncIoBridge::new(stdout), limit);
            crate::sys::host_tree::unpack_blocking(stream, top, limit)
        });
        let (unpacked, out) = tokio::join!(unpacking, process.wait_with_output());
        let out = out?;
        tar_result(context, sandbox_dir, &out)?;
        match unpacked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(file_error(context, &host_dir, e)),
            Err(e) => Err(file_error(context, &host_dir, io::Error::other(e))),
        }
    }
}

/// Opens (`create`: makes) the caller's host directory for a transfer, refusing a path
/// through a link or `..` inside a directory a container can write (see
/// [`crate::sys::host_tree::open_dir_blocking`]).
async fn open_host_dir(
    context: &'static str,
    host_dir: &Path,
    create: bool,
) -> Result<std::os::fd::OwnedFd, SandboxError> {
    let path = host_dir.to_path_buf();
    crate::sys::blocking(context, move || {
        crate::sys::host_tree::open_dir_blocking(
            &path,
            create,
            &crate::host::sandbox_dirs::writable_by_a_container,
        )
        .map_err(|e| file_error(context, &path, e))
    })
    .await
}

/// How long a directory transfer may send nothing before it fails.
const TRANSFER_STALL: std::time::Duration = std::time::Duration::from_secs(10);

/// The most bytes a `download_dir` archive may hold (more when the sandbox's output limit is
/// higher): a sandbox's files can be far larger than what it stores (sparse files).
const DOWNLOAD_LIMIT: u64 = 4 << 30;

/// What a `download_dir` may cost the host: [`DOWNLOAD_LIMIT`], or the output limit when it
/// is higher. Without an output limit, still [`DOWNLOAD_LIMIT`]: the limit is on what the
/// sandbox keeps of its own output, and unbounded host disk is not what lifting it asks for.
fn download_limit(output_limit: Option<u64>) -> u64 {
    output_limit.map_or(DOWNLOAD_LIMIT, |limit| limit.max(DOWNLOAD_LIMIT))
}

/// `tar <args> <dir>` in the sandbox, reading or writing the archive on stdio; no timeout
/// of the sandbox's (a large tree takes what it takes), stderr kept for the error.
fn tar_exec(args: &[&str], dir: &Path) -> crate::ExecConfig {
    let mut all: Vec<String> = vec!["-f".into(), "-".into()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all.push(dir.to_string_lossy().into_owned());
    crate::ExecConfig {
        timeout: Some(std::time::Duration::MAX),
        ..crate::ExecConfig::new("/usr/bin/tar", all)
    }
}

/// The sandbox's tar's status as a result, its stderr as the reason.
fn tar_result(context: &'static str, dir: &Path, out: &crate::Output) -> Result<(), SandboxError> {
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let kind = if stderr.contains("No space left") {
        io::ErrorKind::StorageFull
    } else if stderr.contains("Permission denied") {
        io::ErrorKind::PermissionDenied
    } else if stderr.contains("No such file") {
        io::ErrorKind::NotFound
    } else if stderr.contains("Not a directory") {
        io::ErrorKind::NotADirectory
    } else {
        io::ErrorKind::Other
    };
    Err(file_error(
        context,
        dir,
        io::Error::new(kind, format!("tar: {} ({})", stderr.trim(), out.status)),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_download_is_bounded_without_an_output_limit() {
        // `output_limit: None` made the archive's stream and the size budget u64::MAX: a
        // sandbox (or a forged archive) could fill the host's disk.
        let limit = super::download_limit(None);
        assert!(
            limit <= super::DOWNLOAD_LIMIT,
            "BREAK: without an output limit a download may cost the host {limit} bytes"
        );
        assert_eq!(super::download_limit(Some(1)), super::DOWNLOAD_LIMIT);
        assert_eq!(super::download_limit(Some(8 << 30)), 8 << 30);
    }
}
