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
