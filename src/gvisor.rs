//! gVisor's platforms (how the Sentry intercepts system calls).

use serde::{Deserialize, Serialize};

/// The mechanism gVisor's Sentry uses to intercept the sandboxed program's system calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GvisorPlatform {
    /// seccomp-based trapping (gVisor releases from mid-2023 on); the fastest without KVM.
    Systrap,
    /// `PTRACE_SYSEMU`: works everywhere, slowest.
    Ptrace,
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
}

impl GvisorPlatform {
    /// The value of runsc's `--platform` flag.
    pub fn as_flag(self) -> &'static str {
        match self {
            GvisorPlatform::Systrap => "systrap",
            GvisorPlatform::Ptrace => "ptrace",
            GvisorPlatform::Kvm => "kvm",
        }
    }
}

impl std::fmt::Display for GvisorPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_flag())
    }
}

/// Which gVisor platform a [`NamespaceContainer`](crate::NamespaceContainer) uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformChoice {
    /// The platform every container of this runtime runs on.
    pub platform: GvisorPlatform,
    /// The platforms tried before it, each with the reason it was rejected.
    pub rejected: Vec<(GvisorPlatform, String)>,
    /// True when it was chosen by the probe, false when given to the builder.
    pub probed: bool,
    /// How long choosing it took (the probe, or the check of an explicit platform).
    pub took: std::time::Duration,
}

/// The order of the probe. KVM is tried only when asked for explicitly: where it does not
/// work it can hang instead of failing.
pub(crate) const PROBE_ORDER: [GvisorPlatform; 2] =
    [GvisorPlatform::Systrap, GvisorPlatform::Ptrace];

/// How long one platform may take to run `/bin/true` before it is rejected.
pub(crate) const PLATFORM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// The probe's result, shared by every caller in the process.
static PROBE: tokio::sync::OnceCell<PlatformChoice> = tokio::sync::OnceCell::const_new();

/// Runs the probe once per process; concurrent first callers share the one run (a failed
/// probe is not cached: the next caller probes again).
pub(crate) async fn probe_once<F, Fut>(
    check: F,
) -> Result<&'static PlatformChoice, crate::SandboxError>
where
    F: Fn(GvisorPlatform) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    PROBE
        .get_or_try_init(|| async {
            let started = std::time::Instant::now();
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
