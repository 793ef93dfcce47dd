//! Layer 4: what the library keeps on the host: state dirs and ids, bundles, cgroups, id
//! ranges with their user namespaces, capture files.

pub(crate) mod bundle;
pub(crate) mod capture;
pub(crate) mod cgroup;
pub(crate) mod cgroup_stats;
pub(crate) mod disk_gauge;
pub(crate) mod id_range;
pub(crate) mod owner;
pub(crate) mod rootfs;
pub(crate) mod sandbox_dirs;
pub(crate) mod sessions;
pub(crate) mod state;
pub(crate) mod volumes;
