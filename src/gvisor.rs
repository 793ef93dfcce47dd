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
