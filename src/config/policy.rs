//! The default policy made concrete: a [`SandboxConfig`] to a [`ContainerConfig`] (host tool
//! mounts, a private `/tmp`, the environment), and the shared root filesystem's links.

use std::path::{Path, PathBuf};

use std::sync::OnceLock;

use super::{Bind, ContainerConfig, Limits, Mount, MountKind, SandboxConfig, Security, Stdio};

/// Sets each of `overrides` in `env`, in order: a later value replaces an earlier one of the
/// same name, which moves to the end.
pub(crate) fn merge_env(env: &mut Vec<(String, String)>, overrides: &[(String, String)]) {
    for (k, v) in overrides {
        env.retain(|(key, _)| key != k);
        env.push((k.clone(), v.clone()));
    }
}

/// `PATH` inside the container unless the config sets one.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Symlinks of the shared root filesystem, as on a merged-/usr system.
pub(crate) const ROOTFS_LINKS: &[(&str, &str)] = &[
    ("/bin", "/usr/bin"),
    ("/sbin", "/usr/sbin"),
    ("/lib", "/usr/lib"),
    ("/lib32", "/usr/lib32"),
    ("/lib64", "/usr/lib64"),
    ("/libx32", "/usr/libx32"),
];

/// The read-only host tool mounts that exist on this host (looked up once per process).
fn host_tool_mounts() -> &'static [Mount] {
    static MOUNTS: OnceLock<Vec<Mount>> = OnceLock::new();
    MOUNTS.get_or_init(|| {
        std::iter::once("/usr")
            .filter(|p| Path::new(p).exists())
            .map(|p| Mount {
                destination: PathBuf::from(p),
                kind: MountKind::Bind {
                    source: PathBuf::from(p),
                    writable: false,
                },
            })
            .collect()
    })
}

pub(crate) fn from_policy(
    s: &SandboxConfig,
    command: String,
    args: Vec<String>,
) -> ContainerConfig {
    // An image brings its own tools; without one, the host's.
    let mut mounts: Vec<Mount> = if s.image.is_some() {
        Vec::new()
    } else {
        host_tool_mounts().to_vec()
    };
    mounts.push(Mount {
        destination: PathBuf::from("/tmp"),
        kind: MountKind::Tmpfs { size: s.tmp_size },
    });
    let bind = |b: &Bind, writable| Mount {
        destination: b.destination.clone(),
        kind: MountKind::Bind {
            source: b.source.clone(),
            writable,
        },
    };
    mounts.extend(s.readonly_binds.iter().map(|b| bind(b, false)));
    mounts.extend(s.writable_binds.iter().map(|b| bind(b, true)));
    let cwd = match &s.workdir {
        Some(dir) => {
            mounts.push(bind(&Bind::new(dir, SandboxConfig::WORKDIR), true));
            PathBuf::from(SandboxConfig::WORKDIR)
        }
        // An image's `WorkingDir`, once it is known (empty until then).
        None if s.image.is_some() => PathBuf::new(),
        None => PathBuf::from("/tmp"),
    };
    // An image's `Env` goes under the caller's variables when the image is known.
    let mut env = if s.image.is_some() {
        Vec::new()
    } else {
        vec![
            ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
            ("HOME".to_owned(), cwd.to_string_lossy().into_owned()),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ]
    };
    merge_env(&mut env, &s.env);
    let security = Security {
        readonly_rootfs: !s.writable_root,
        ..Security::default()
    };
    ContainerConfig {
        id: None,
        command,
        args,
        env,
        cwd,
        mounts,
        cgroup_view: s.cgroup_view,
        network: s.network.clone(),
        hostname: Some(s.hostname.clone()),
        uid: s.uid,
        gid: s.gid,
        limits: Limits {
            memory: s.memory_limit,
            pids: s.pids_limit,
            cpu_millicores: s.cpu_millicores,
        },
        security,
        timeout: s.timeout,
        output_limit: s.output_limit,
        idle_timeout: None,
        ttl: s.ttl,
        idle_lifetime: s.idle_lifetime,
        stdin: Stdio::Piped,
        stdout: Stdio::Piped,
        stderr: Stdio::Piped,
        spec_hook: None,
        image: s.image.clone(),
        snapshots: s.snapshots,
        name: s.name.clone(),
        labels: s.labels.clone(),
        volumes: s.volumes.clone(),
        idle_pause: s.idle_pause,
        idle_hibernate: s.idle_hibernate,
    }
}
