//! Who the containers are on the host: with root, a user namespace maps the container's ids
//! to an unprivileged range; without root (rootless), the container's root is the caller.

use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder};

use crate::config::ContainerConfig;
use crate::config::MountKind;
use crate::error::SandboxError;
use crate::runtimes::OciRuntime;

/// How many uids (and gids) a container's user namespace maps, from 0.
pub const USERNS_SIZE: u32 = 65536;

/// The first host uid and gid of the default range: far above the ranges `useradd` hands out
/// in `/etc/subuid` (from 100000, 65536 per user).
pub const DEFAULT_USERNS_BASE: u32 = 1_000_000_000;

/// A user namespace's uid and gid mappings.
pub(crate) type IdMappings = (Vec<LinuxIdMapping>, Vec<LinuxIdMapping>);

/// The identity the library runs with, which decides how containers are mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostIdentity {
    /// Root: a config's user namespace maps ids `0..USERNS_SIZE` to `base..base+USERNS_SIZE`.
    Root {
        /// The first host id of the range.
        userns_base: u32,
    },
    /// An ordinary user: the runtimes run rootless; the container's root is this user, and
    /// cgroup limits cannot be set (cgroup v1, or v2 without delegation).
    Rootless { uid: u32, gid: u32 },
}

impl HostIdentity {
    /// The identity of this process.
    pub fn current(userns_base: u32) -> Self {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            HostIdentity::Root { userns_base }
        } else {
            HostIdentity::Rootless {
                uid: uid.as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        }
    }

    pub fn is_rootless(self) -> bool {
        matches!(self, HostIdentity::Rootless { .. })
    }

    /// The host uid and gid that the container's root is, when `config` runs on `runtime`
    /// in a user namespace (None: no user namespace, the container's root is the host's).
    /// gVisor gets none: its Sentry already runs unprivileged in a namespace of its own, and
    /// rootless runsc refuses one.
    pub fn mapped_root(self, config: &ContainerConfig, runtime: OciRuntime) -> Option<(u32, u32)> {
        match (self, runtime) {
            (_, OciRuntime::Gvisor) => None,
            (HostIdentity::Rootless { uid, gid }, _) => Some((uid, gid)),
            (HostIdentity::Root { userns_base }, _) if config.security.user_namespace => {
                Some((userns_base, userns_base))
            }
            (HostIdentity::Root { .. }, _) => None,
        }
    }

    /// The uid and gid mappings of the container's user namespace, if it gets one.
    pub fn mappings(
        self,
        config: &ContainerConfig,
        runtime: OciRuntime,
    ) -> Result<Option<IdMappings>, SandboxError> {
        let Some((uid, gid)) = self.mapped_root(config, runtime) else {
            return Ok(None);
        };
        // Rootless, without newuidmap and /etc/subuid, one id is all a user may map.
        let size = if self.is_rootless() { 1 } else { USERNS_SIZE };
        for (field, id) in [("uid", config.uid), ("gid", config.gid)] {
            if id >= size {
                return Err(SandboxError::invalid(
                    field,
                    format!(
                        "{id} is outside the container's user namespace (ids 0..{size}{})",
                        if size == 1 { ", rootless" } else { "" }
                    ),
                ));
            }
        }
        let map = |host: u32| {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(size)
                .build()
        };
        Ok(Some((vec![map(uid)?], vec![map(gid)?])))
    }

    /// As root with a user namespace, hands the sources of `config`'s writable binds to the
    /// container's root (like podman's `:U`): `lchown` of everything under them not already
    /// theirs. Blocking.
    pub fn hand_over_writable_binds_blocking(
        self,
        config: &ContainerConfig,
        runtime: OciRuntime,
    ) -> Result<(), SandboxError> {
        let (HostIdentity::Root { .. }, Some((uid, gid))) =
            (self, self.mapped_root(config, runtime))
        else {
            return Ok(());
        };
        for m in &config.mounts {
            if let MountKind::Bind {
                source,
                writable: true,
            } = &m.kind
            {
                crate::sys::fs_tree::chown_tree_blocking(source, uid, gid).map_err(|e| {
                    SandboxError::io(
                        "handing a writable bind to the container's user namespace",
                        source,
                        e,
                    )
                })?;
            }
        }
        Ok(())
    }
}
