//! The runtimes the library drives, and gVisor's platforms.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An OCI runtime the library can drive through its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OciRuntime {
    /// runc: namespaces and cgroups, the reference runtime.
    Runc,
    /// crun: the same isolation as runc, written in C and faster to start.
    Crun,
    /// gVisor's runsc: the command runs on a user-space kernel.
    Gvisor,
}

impl OciRuntime {
    /// The binary's usual name, looked up on `$PATH`.
    pub fn binary_name(self) -> &'static str {
        match self {
            OciRuntime::Runc => "runc",
            OciRuntime::Crun => "crun",
            OciRuntime::Gvisor => "runsc",
        }
    }
}

impl fmt::Display for OciRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.binary_name())
    }
}

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
    /// True when it was chosen by the probe, false when given to the builder. The probe runs
    /// once per process, and its result is kept in the state dir (`gvisor-platform.json`) for
    /// later processes of the same boot with the same runsc binary, which take it without
    /// probing (`took` is then the time to read it; delete the file to probe again).
    pub probed: bool,
    /// How long choosing it took (the probe, or the check of an explicit platform).
    pub took: std::time::Duration,
}
