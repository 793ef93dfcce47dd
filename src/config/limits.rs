//! What a container may use and do: [`Limits`] (memory, pids, CPU; their floors) and
//! [`Security`] (capabilities, seccomp, the root's writability, the user namespace), with
//! the checks that need no runtime.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::SandboxError;

/// Resource limits, enforced through the runtime's cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes (swap included).
    pub memory: Option<u64>,
    /// Maximum number of processes and threads.
    pub pids: Option<u32>,
    /// CPU time in thousandths of a CPU (1000 = one core).
    pub cpu_millicores: Option<u32>,
}

/// Security settings of the container process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Capabilities kept (names such as `CAP_NET_BIND_SERVICE`); empty drops them all.
    pub capabilities: Vec<String>,
    /// Set `no_new_privileges` (setuid binaries and file capabilities grant nothing).
    pub no_new_privileges: bool,
    /// Mount the root filesystem read-only. It must stay `true`: the root filesystem is
    /// shared by every container of a state root, so `false` is refused as invalid
    /// ([`SandboxError::InvalidConfig`]). Writable places are `/tmp`, tmpfs mounts and
    /// writable binds.
    pub readonly_rootfs: bool,
    /// Apply the library's seccomp profile: system calls that reach past the container
    /// (mounts, namespaces, `ptrace`, modules, kexec, BPF, the keyring, ...) fail with
    /// `EPERM`. On gVisor the Sentry applies it to the guest.
    pub seccomp: bool,
    /// Run the container in a user namespace of its own. As root, its uid and gid 0..65536
    /// map to an unprivileged host range (see
    /// [`NamespaceContainerBuilder::user_namespace_base`](crate::NamespaceContainerBuilder::user_namespace_base)),
    /// so its root is not the host's; writable binds are handed to that range. Without
    /// root it is always on (the container's root is the calling user). gVisor ignores it:
    /// its Sentry already runs as an unprivileged user in a user namespace of its own.
    pub user_namespace: bool,
}

impl Security {
    /// The capabilities kept, parsed; an unknown name is an `InvalidConfig` error.
    pub(crate) fn capability_set(
        &self,
    ) -> Result<std::collections::HashSet<oci_spec::runtime::Capability>, SandboxError> {
        self.capabilities
            .iter()
            .map(|c| {
                // oci-spec parses "CHOWN"; the kernel's and the docs' name is "CAP_CHOWN".
                let name = c.strip_prefix("CAP_").unwrap_or(c);
                name.parse::<oci_spec::runtime::Capability>().map_err(|_| {
                    SandboxError::invalid(
                        "security.capabilities",
                        format!("unknown capability {c:?}"),
                    )
                })
            })
            .collect()
    }
}

/// A timeout of zero is refused (it would kill the command before it starts).
pub(crate) fn check_timeout(timeout: Option<Duration>) -> Result<(), SandboxError> {
    if timeout == Some(Duration::ZERO) {
        return Err(SandboxError::invalid(
            "timeout",
            "zero would kill the command before it starts: None (or Duration::MAX) for no \
             timeout",
        ));
    }
    Ok(())
}

/// The least memory limit a container is started under: runc refuses 1 byte ("unable to
/// set memory limit"), gVisor's kernel died at start under 16 MiB (measured); 32 MiB leaves
/// room for a small command on every runtime.
pub const MIN_MEMORY_LIMIT: u64 = 32 << 20;

/// The least pids limit: the sandbox's init, a command's keeper and the command.
pub const MIN_PIDS_LIMIT: u32 = 4;

impl Limits {
    /// The memory limit as the OCI spec takes it (bytes, signed).
    pub(crate) fn memory_bytes(&self) -> Result<Option<i64>, SandboxError> {
        self.memory
            .map(|bytes| {
                i64::try_from(bytes)
                    .map_err(|_| SandboxError::invalid("limits.memory", "too large"))
            })
            .transpose()
    }

    /// The limits' own checks (cgroup-free: whether they can be enforced is the runtime's).
    pub(crate) fn validate(&self) -> Result<(), SandboxError> {
        self.memory_bytes()?;
        if let Some(bytes) = self.memory
            && bytes < MIN_MEMORY_LIMIT
        {
            return Err(SandboxError::invalid(
                "limits.memory",
                format!(
                    "{bytes} bytes (SandboxConfig::memory_limit) is below the {} MiB a \
                     container can start under (runc refuses less than its own needs, gVisor's \
                     kernel dies at start)",
                    MIN_MEMORY_LIMIT >> 20
                ),
            ));
        }
        if let Some(pids) = self.pids
            && pids < MIN_PIDS_LIMIT
        {
            return Err(SandboxError::invalid(
                "limits.pids",
                format!(
                    "{pids} (SandboxConfig::pids_limit) leaves no room for the command: at \
                     least {MIN_PIDS_LIMIT} (the sandbox's init and its helpers count too)"
                ),
            ));
        }
        if self.cpu_millicores == Some(0) {
            return Err(SandboxError::invalid(
                "limits.cpu_millicores",
                "must be more than 0",
            ));
        }
        Ok(())
    }
}

impl Default for Security {
    fn default() -> Self {
        Security {
            capabilities: Vec::new(),
            no_new_privileges: true,
            readonly_rootfs: true,
            seccomp: true,
            user_namespace: true,
        }
    }
}
