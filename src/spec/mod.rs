//! [`ContainerConfig`] to [`oci_spec::runtime::Spec`]: the only place that knows OCI JSON.

pub(crate) mod identity;
pub(crate) mod seccomp;

use std::collections::HashSet;
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder,
    MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder, get_default_maskedpaths, get_default_mounts,
    get_default_readonly_paths,
};

use crate::config::{ContainerConfig, MountKind};
use crate::error::SandboxError;
use crate::runtimes::OciRuntime;
use crate::spec::identity::HostIdentity;

/// Processes and threads added to a gVisor sandbox's pids limit for gVisor's own. The ptrace
/// platform keeps stub processes and Sentry threads it has made: 200 execs, ten at a time,
/// took a sandbox to 358 host tasks (measured), and a Sentry that cannot make one panics.
pub(crate) const GVISOR_PIDS_ALLOWANCE: i64 = 512;

/// The CFS period of the CPU limit: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;

/// Where the library's containers live in each cgroup hierarchy.
pub(crate) const CGROUP_PARENT: &str = "/oci-sandbox";

/// Where a spec is to run: which runtime, as whom.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub runtime: OciRuntime,
    pub identity: HostIdentity,
    /// A user namespace made beforehand for this container, joined instead of a new one.
    pub userns_path: Option<std::path::PathBuf>,
}

/// Builds the spec for `config`, with `rootfs` as the root filesystem and `id` naming its
/// cgroup; `terminal` gives the process a PTY of that size (columns, rows). Rootless, the
/// spec has no cgroup limits (the caller decides whether that is acceptable).
pub(crate) fn build(
    config: &ContainerConfig,
    rootfs: &Path,
    id: &str,
    terminal: Option<(u16, u16)>,
    target: &Target,
) -> Result<Spec, SandboxError> {
    let runtime = target.runtime;
    let process = process(config, terminal, target)?;
    let mounts = mounts(config, target)?;
    let mappings = target.identity.mappings(config, runtime)?;
    let namespaces = namespaces(config, target, mappings.is_some())?;
    let resources = resources(config, runtime)?;
    let mut linux = LinuxBuilder::default();
    if let Some((uids, gids)) = mappings {
        linux = linux.uid_mappings(uids).gid_mappings(gids);
    }
    if !target.identity.is_rootless() {
        // Rootless runc fails to create even an empty cgroup on v1 ("permission denied"):
        // neither limits nor a cgroup path then.
        linux = linux
            .resources(resources.build()?)
            .cgroups_path(format!("{CGROUP_PARENT}/{id}"));
    }
    if config.security.seccomp {
        let gvisor = target.runtime == crate::OciRuntime::Gvisor;
        linux = linux.seccomp(crate::spec::seccomp::default_profile(gvisor)?);
    }
    let linux = linux
        .namespaces(namespaces)
        .masked_paths(masked_paths())
        .readonly_paths(get_default_readonly_paths())
        .build()?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(config.security.readonly_rootfs)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()?;
    if let Some(h) = &config.hostname {
        spec.set_hostname(Some(h.clone()));
    }
    if let Some(hook) = &config.spec_hook {
        hook.apply(&mut spec);
    }
    Ok(spec)
}

/// The process: command, user, environment, capabilities, rlimits, terminal.
fn process(
    config: &ContainerConfig,
    terminal: Option<(u16, u16)>,
    target: &Target,
) -> Result<oci_spec::runtime::Process, SandboxError> {
    let runtime = target.runtime;
    let mut args = Vec::with_capacity(config.args.len() + 1);
    args.push(config.command.clone());
    args.extend(config.args.iter().cloned());

    let caps: HashSet<Capability> = config.security.capability_set()?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()?;

    let mut process = ProcessBuilder::default();
    if let Some((cols, rows)) = terminal {
        process = process.console_size(
            oci_spec::runtime::BoxBuilder::default()
                .width(u64::from(cols))
                .height(u64::from(rows))
                .build()?,
        );
    }
    let mut env = config
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>();
    if terminal.is_some() && !config.env.iter().any(|(k, _)| k == "TERM") {
        env.push("TERM=xterm".to_owned());
    }
    let process = process
        .terminal(terminal.is_some())
        .user(
            UserBuilder::default()
                .uid(config.uid)
                .gid(config.gid)
                .build()?,
        )
        .args(args)
        .env(env)
        .cwd(config.cwd.clone())
        .capabilities(capabilities)
        .no_new_privileges(config.security.no_new_privileges);
    // runc sets rlimits from outside (prlimit on the init), which needs CAP_SYS_RESOURCE over
    // the init's user namespace: host root has it over namespaces it owns, not over one owned
    // by the container's own range when it lacks the capability itself (as on the machines
    // here). The init then keeps the runtime's limits.
    let own_userns_on_runc = target.userns_path.is_some() && runtime == OciRuntime::Runc;
    let process = if own_userns_on_runc {
        // (The builder's default has an RLIMIT_NOFILE of its own.)
        process.rlimits(Vec::new())
    } else {
        process.rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()?,
        ])
    }
    .build()?;
    Ok(process)
}

/// The runtime's default mounts (adapted to a host network or rootless; `/sys/fs/cgroup` only
/// when asked for), then `config`'s.
fn mounts(
    config: &ContainerConfig,
    target: &Target,
) -> Result<Vec<oci_spec::runtime::Mount>, SandboxError> {
    let mut mounts = get_default_mounts();
    if config.cgroup_view && (target.runtime == OciRuntime::Gvisor || target.identity.is_rootless())
    {
        // runsc 20221219 answers EINVAL on a cgroupfs mount's every path; rootless, the
        // container has no cgroup of its own to show.
        return Err(SandboxError::invalid(
            "cgroup_view",
            if target.identity.is_rootless() {
                "a rootless container has no cgroups of its own to show"
            } else {
                "gVisor (runsc) cannot show a container its cgroups"
            },
        ));
    }
    if !config.cgroup_view {
        mounts.retain(|m| m.destination() != Path::new("/sys/fs/cgroup"));
    }
    if !config.network.is_isolated() {
        // A fresh sysfs needs a network namespace of the container's own; share the host's.
        for m in &mut mounts {
            if m.destination() == Path::new("/sys") {
                *m = MountBuilder::default()
                    .destination("/sys")
                    .typ("bind")
                    .source("/sys")
                    .options(vec![
                        "rbind".into(),
                        "ro".into(),
                        "nosuid".into(),
                        "nodev".into(),
                        "noexec".into(),
                    ])
                    .build()?;
            }
        }
    }
    if target.identity.is_rootless() {
        // Only the caller's own gid is mapped: devpts' `gid=5` (tty) names an unmapped group,
        // which rootless runc refuses.
        for m in &mut mounts {
            if let Some(options) = m.options().clone() {
                m.set_options(Some(
                    options
                        .into_iter()
                        .filter(|o| !o.starts_with("gid="))
                        .collect(),
                ));
            }
        }
    }
    for m in &config.mounts {
        let mount = match &m.kind {
            MountKind::Bind { source, writable } => MountBuilder::default()
                .destination(m.destination.clone())
                .typ("bind")
                .source(source.clone())
                .options(vec![
                    "rbind".to_owned(),
                    if *writable { "rw" } else { "ro" }.to_owned(),
                    "nosuid".to_owned(),
                    "nodev".to_owned(),
                ])
                .build()?,
            MountKind::Tmpfs { size } => {
                let mut options = vec![
                    "nosuid".to_owned(),
                    "nodev".to_owned(),
                    "mode=1777".to_owned(),
                    format!("size={size}"),
                ];
                // runc gives a tmpfs the mode of the directory it is mounted on (0755 in the
                // shared rootfs, which must hold no world-writable directory), whatever
                // `mode=`: the command's user owns it, so that it can write there.
                if config.uid != 0 || config.gid != 0 {
                    options.push(format!("uid={}", config.uid));
                    options.push(format!("gid={}", config.gid));
                }
                MountBuilder::default()
                    .destination(m.destination.clone())
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(options)
                    .build()?
            }
        };
        mounts.push(mount);
    }
    Ok(mounts)
}

/// The namespaces of its own: pid, ipc, uts, mount, network (unless the host's), user (when
/// mapped; joined by path when the library made it).
fn namespaces(
    config: &ContainerConfig,
    target: &Target,
    user: bool,
) -> Result<Vec<oci_spec::runtime::LinuxNamespace>, SandboxError> {
    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if config.network.is_isolated() {
        namespaces.push(LinuxNamespaceType::Network);
    }
    if user {
        namespaces.push(LinuxNamespaceType::User);
    }
    namespaces
        .into_iter()
        .map(|typ| {
            let mut ns = LinuxNamespaceBuilder::default().typ(typ);
            if typ == LinuxNamespaceType::User
                && let Some(path) = &target.userns_path
            {
                ns = ns.path(path.clone());
            }
            ns.build()
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(Into::into)
}

/// The cgroup limits: memory (swap included), CPU quota, pids (plus gVisor's allowance).
fn resources(
    config: &ContainerConfig,
    runtime: OciRuntime,
) -> Result<LinuxResourcesBuilder, SandboxError> {
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = config.limits.memory_bytes()? {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()?,
        );
    }
    // Checked by the config's validation: more than 0.
    if let Some(millicores) = config.limits.cpu_millicores.filter(|m| *m > 0) {
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(CPU_PERIOD_US)
                .quota(i64::from(millicores) * CPU_PERIOD_US as i64 / 1000)
                .build()?,
        );
    }
    if let Some(pids) = config.limits.pids {
        // On gVisor the limit applies to the whole sandbox: the Sentry's and the gofer's own
        // threads (about 60-100 here) count too, and a limit they exhaust kills the sandbox
        // (measured: 32 fails to start, 64 dies mid-run, 128 runs python). Guest processes
        // count through their ptrace stubs. Give the sandbox its own allowance on top.
        let limit = match runtime {
            OciRuntime::Gvisor => i64::from(pids) + GVISOR_PIDS_ALLOWANCE,
            _ => i64::from(pids),
        };
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    Ok(resources)
}

/// The runtime's default masked paths, and what identifies the host: its kernel command line
/// and its boot id.
fn masked_paths() -> Vec<String> {
    let mut paths = get_default_maskedpaths();
    paths.extend(HOST_IDENTIFYING_PATHS.iter().map(|p| (*p).to_owned()));
    paths
}

/// Files that tell the host apart from any other machine, masked in every container.
const HOST_IDENTIFYING_PATHS: &[&str] = &["/proc/cmdline", "/proc/sys/kernel/random/boot_id"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxConfig;

    fn root(runtime: OciRuntime) -> Target {
        Target {
            runtime,
            identity: HostIdentity::Root {
                userns_base: crate::spec::identity::DEFAULT_USERNS_BASE,
            },
            userns_path: None,
        }
    }

    fn spec_for(s: &SandboxConfig) -> Spec {
        let c = crate::config::from_policy(s, "echo".into(), vec!["hi".into()]);
        build(
            &c,
            Path::new("/rootfs"),
            "c1",
            None,
            &root(OciRuntime::Runc),
        )
        .unwrap()
    }

    #[test]
    fn default_policy_is_locked_down() {
        let spec = spec_for(&SandboxConfig::default());
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["echo", "hi"]);
        assert_eq!(p.no_new_privileges(), Some(true));
        let caps = p.capabilities().as_ref().unwrap();
        assert!(caps.bounding().as_ref().unwrap().is_empty());
        assert!(caps.effective().as_ref().unwrap().is_empty());
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        assert!(ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::Pid));
        let masked = linux.masked_paths().as_ref().unwrap();
        for path in std::iter::once(&"/proc/kcore").chain(HOST_IDENTIFYING_PATHS) {
            assert!(masked.iter().any(|p| p == path), "{path}");
        }
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.pids().as_ref().unwrap().limit(), 256);
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/oci-sandbox/c1"))
        );
        let env = p.env().as_ref().unwrap();
        assert!(env.iter().any(|e| e.starts_with("PATH=")));
        assert!(
            !env.iter()
                .any(|e| e.starts_with("USER=") || e.starts_with("SSH_"))
        );
    }

    #[test]
    fn host_network_shares_the_host_namespace() {
        let spec = spec_for(&SandboxConfig {
            network: crate::Network::Host,
            ..Default::default()
        });
        let linux = spec.linux().as_ref().unwrap();
        assert!(
            !linux
                .namespaces()
                .as_ref()
                .unwrap()
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network)
        );
        let sys = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .unwrap();
        assert_eq!(sys.typ().as_deref(), Some("bind"));
    }

    #[test]
    fn gvisor_gets_an_allowance_on_top_of_the_pids_limit() {
        let c = ContainerConfig::new("true", vec![]);
        let spec = build(&c, Path::new("/r"), "c", None, &root(OciRuntime::Gvisor)).unwrap();
        let limit = spec
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .pids()
            .as_ref()
            .unwrap()
            .limit();
        assert_eq!(limit, 256 + GVISOR_PIDS_ALLOWANCE);
    }

    #[test]
    fn spec_hook_runs_last() {
        let mut c = ContainerConfig::new("true", vec![]);
        c.spec_hook = Some(crate::config::SpecHook::new(|s: &mut Spec| {
            s.set_hostname(Some("edited".into()));
        }));
        let spec = build(&c, Path::new("/r"), "c", None, &root(OciRuntime::Runc)).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("edited"));
    }

    #[test]
    fn unknown_capability_is_invalid_config() {
        let mut c = ContainerConfig::new("true", vec![]);
        c.security.capabilities = vec!["CAP_NOPE".into()];
        assert!(matches!(
            build(&c, Path::new("/r"), "c", None, &root(OciRuntime::Runc)),
            Err(SandboxError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn cgroups_are_mounted_only_when_asked_for() {
        let has_cgroupfs = |s: &Spec| {
            s.mounts()
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.destination() == Path::new("/sys/fs/cgroup"))
        };
        assert!(!has_cgroupfs(&spec_for(&SandboxConfig::default())));
        let viewing = SandboxConfig {
            cgroup_view: true,
            ..SandboxConfig::default()
        };
        assert!(has_cgroupfs(&spec_for(&viewing)));
    }

    #[test]
    fn host_etc_is_not_bind_mounted() {
        let spec = spec_for(&SandboxConfig::default());
        let etc: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination().starts_with("/etc"))
            .map(|m| m.destination().clone())
            .collect();
        assert!(etc.is_empty(), "{etc:?}");
    }
}
