//! gVisor's platforms (how the Sentry intercepts system calls).

use crate::runtimes::GvisorPlatform;
use crate::runtimes::PlatformChoice;

/// The order of the probe. KVM is tried only when asked for explicitly: where it does not
/// work it can hang instead of failing.
pub(crate) const PROBE_ORDER: [GvisorPlatform; 2] =
    [GvisorPlatform::Systrap, GvisorPlatform::Ptrace];

/// How long one platform may take to run `/bin/true` before it is rejected.
pub(crate) const PLATFORM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The probe's result, shared by every caller in the process.
static PROBE: tokio::sync::OnceCell<PlatformChoice> = tokio::sync::OnceCell::const_new();

/// Runs the probe once per process; concurrent first callers share the one run (a failed
/// probe is not cached: the next caller probes again). With a `cache`, an earlier process's
/// result for the same runsc binary on this boot is taken instead, and a new result is kept
/// there for later ones.
pub(crate) async fn probe_once<F, Fut>(
    check: F,
    cache: Option<ProbeCache>,
) -> Result<&'static PlatformChoice, crate::SandboxError>
where
    F: Fn(GvisorPlatform) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    PROBE
        .get_or_try_init(|| async {
            let started = std::time::Instant::now();
            let cache = cache.map(std::sync::Arc::new);
            if let Some(cache) = &cache {
                let cache = std::sync::Arc::clone(cache);
                let cached = tokio::task::spawn_blocking(move || cache.read_blocking())
                    .await
                    .ok()
                    .flatten();
                if let Some((platform, rejected)) = cached {
                    tracing::debug!(%platform, "gVisor platform from an earlier probe");
                    return Ok(PlatformChoice {
                        platform,
                        rejected,
                        probed: true,
                        took: started.elapsed(),
                    });
                }
            }
            let mut rejected = Vec::new();
            for platform in PROBE_ORDER {
                match check(platform).await {
                    Ok(()) => {
                        let choice = PlatformChoice {
                            platform,
                            rejected,
                            probed: true,
                            took: started.elapsed(),
                        };
                        tracing::info!(
                            %platform,
                            rejected = ?choice.rejected,
                            took = ?choice.took,
                            "gVisor platform chosen"
                        );
                        if let Some(cache) = cache {
                            let kept = (platform, choice.rejected.clone());
                            let _ = tokio::task::spawn_blocking(move || {
                                cache.write_blocking(&kept.0, &kept.1)
                            })
                            .await;
                        }
                        return Ok(choice);
                    }
                    Err(why) => {
                        tracing::info!(%platform, %why, "gVisor platform rejected");
                        rejected.push((platform, why));
                    }
                }
            }
            Err(crate::SandboxError::NoGvisorPlatform { failures: rejected })
        })
        .await
}

/// The probe's result kept on disk, in the state dir, for later processes: valid for one
/// runsc binary (its path, device, inode, size and modification time), one boot of the kernel
/// (its boot id) and one user. A file another user could have written, or one that names
/// KVM (never probed: it can hang), is ignored.
#[derive(Debug)]
pub(crate) struct ProbeCache {
    path: std::path::PathBuf,
    key: String,
}

/// What [`ProbeCache`] keeps.
#[derive(serde::Serialize, serde::Deserialize)]
struct Kept {
    key: String,
    platform: GvisorPlatform,
    rejected: Vec<(GvisorPlatform, String)>,
}

impl ProbeCache {
    /// The cache of the probe of `binary`, in the state base `base`; `None` when the binary
    /// or the boot id cannot be read. Blocking.
    pub(crate) fn new_blocking(binary: &std::path::Path, base: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(binary).ok()?;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let key = format!(
            "{} {} {} {} {}.{} {} {}",
            binary.display(),
            meta.dev(),
            meta.ino(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec(),
            boot.trim(),
            nix::unistd::geteuid()
        );
        Some(ProbeCache {
            path: base.join("gvisor-platform.json"),
            key,
        })
    }

    /// The kept result, if it is this binary's on this boot. Blocking.
    fn read_blocking(&self) -> Option<(GvisorPlatform, Vec<(GvisorPlatform, String)>)> {
        use std::io::Read;
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.mode() & 0o022 != 0
        {
            return None;
        }
        let mut text = String::new();
        file.take(64 * 1024).read_to_string(&mut text).ok()?;
        let kept: Kept = serde_json::from_str(&text).ok()?;
        (kept.key == self.key && kept.platform != GvisorPlatform::Kvm)
            .then_some((kept.platform, kept.rejected))
    }

    /// Keeps `platform` (and why the others were rejected), by a rename. Blocking; a failure
    /// only means the next process probes again.
    fn write_blocking(&self, platform: &GvisorPlatform, rejected: &[(GvisorPlatform, String)]) {
        use std::io::Write;
        let kept = Kept {
            key: self.key.clone(),
            platform: *platform,
            rejected: rejected.to_vec(),
        };
        let Some(dir) = self.path.parent() else {
            return;
        };
        let written = tempfile::NamedTempFile::new_in(dir).and_then(|mut tmp| {
            tmp.write_all(&serde_json::to_vec(&kept).unwrap_or_default())?;
            tmp.persist(&self.path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(err) = written {
            tracing::debug!(%err, "the gVisor probe's result could not be kept");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_probe_is_read_back_for_the_same_binary_only() {
        let dir = tempfile::tempdir().unwrap();
        let binary = std::env::current_exe().unwrap();
        let cache = ProbeCache::new_blocking(&binary, dir.path()).unwrap();
        assert!(cache.read_blocking().is_none());
        let rejected = vec![(GvisorPlatform::Systrap, "no systrap".to_owned())];
        cache.write_blocking(&GvisorPlatform::Ptrace, &rejected);
        assert_eq!(
            cache.read_blocking(),
            Some((GvisorPlatform::Ptrace, rejected.clone()))
        );
        // Another binary (or boot) is another key.
        let other = ProbeCache {
            path: cache.path.clone(),
            key: "another".into(),
        };
        assert!(other.read_blocking().is_none());
        // KVM is never taken from the file, nor a file others may write.
        cache.write_blocking(&GvisorPlatform::Kvm, &[]);
        assert!(cache.read_blocking().is_none());
        cache.write_blocking(&GvisorPlatform::Ptrace, &rejected);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cache.path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(cache.read_blocking().is_none());
    }
}
