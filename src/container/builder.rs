//! [`NamespaceContainerBuilder`]: the runtime, its binary, the state root and the gVisor
//! platform, checked once when a [`NamespaceContainer`] is built.

use super::Inner;
use crate::config::SandboxConfig;
use crate::config::Stdio;
use crate::container::NamespaceContainer;
use crate::container::UnenforcedLimits;
use crate::error::SandboxError;
use crate::host::state::StateDirs;
use crate::oci::cli::RuntimeCli;
use crate::oci::cli::locate;
use crate::oci::sweep::sweep;
use crate::runtimes::GvisorPlatform;
use crate::runtimes::OciRuntime;
use crate::runtimes::PlatformChoice;
use crate::spec::identity::DEFAULT_USERNS_BASE;
use crate::spec::identity::HostIdentity;
use crate::spec::identity::USERNS_SIZE;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::task::TaskTracker;

/// The platform for a gVisor runtime: the explicit one (checked unless told not to), or the
/// process-wide probe's choice.
async fn choose_gvisor_platform(
    binary: &std::path::Path,
    base: &std::path::Path,
    explicit: Option<GvisorPlatform>,
    check: bool,
) -> Result<PlatformChoice, SandboxError> {
    let started = std::time::Instant::now();
    let run = |platform| check_platform(binary.to_owned(), base.to_owned(), platform);
    match explicit {
        Some(platform) => {
            if check {
                run(platform)
                    .await
                    .map_err(|why| SandboxError::NoGvisorPlatform {
                        failures: vec![(platform, why)],
                    })?;
            }
            Ok(PlatformChoice {
                platform,
                rejected: Vec::new(),
                probed: false,
                took: started.elapsed(),
            })
        }
        None => {
            let (binary, base) = (binary.to_owned(), base.to_owned());
            let cache = tokio::task::spawn_blocking(move || {
                crate::oci::gvisor::ProbeCache::new_blocking(&binary, &base)
            })
            .await
            .ok()
            .flatten();
            crate::oci::gvisor::probe_once(run, cache).await.cloned()
        }
    }
}

/// Whether runsc runs `/bin/true` on `platform`, within a deadline, leaving nothing behind.
/// First the cheap question (`list` with the platform flag, which rejects an unknown platform
/// without starting anything), then a real container.
///
/// Boxed: `build` calls this, which calls `build` (without a check this time).
fn check_platform(
    binary: std::path::PathBuf,
    base: std::path::PathBuf,
    platform: GvisorPlatform,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
    Box::pin(check_platform_inner(binary, base, platform))
}

async fn check_platform_inner(
    binary: std::path::PathBuf,
    base: std::path::PathBuf,
    platform: GvisorPlatform,
) -> Result<(), String> {
    let probe_dir = base.join(format!("probe-{}-{platform}", std::process::id()));
    let cli = RuntimeCli {
        kind: OciRuntime::Gvisor,
        binary: binary.clone(),
        root: probe_dir.join("runsc/state"),
        gvisor_platform: Some(platform),
        mount_ns: None,
    };
    let _ = tokio::fs::create_dir_all(&cli.root).await;
    let result = async {
        cli.list().await.map_err(|e| e.to_string())?;
        let sandbox = NamespaceContainer::builder()
            .runtime(OciRuntime::Gvisor)
            .binary(&binary)
            .state_dir(&probe_dir)
            .gvisor_platform(platform)
            .skip_platform_check()
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let policy = SandboxConfig {
            timeout: Some(crate::oci::gvisor::PLATFORM_DEADLINE),
            ..SandboxConfig::default()
        };
        let mut config = NamespaceContainer::build_config(&policy, "/bin/true", vec![]);
        // A name of its own (it runs no untrusted code), so that its leftovers can be found.
        config.id = Some(format!("osb-probe-{}-{platform}", std::process::id()));
        config.stdin = Stdio::Null;
        config.stdout = Stdio::Null;
        config.stderr = Stdio::Null;
        let status = async { sandbox.spawn(&config).await?.wait().await }.await;
        sandbox.close().await;
        match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) if s.timed_out() => Err(format!(
                "did not run /bin/true within {:?}",
                crate::oci::gvisor::PLATFORM_DEADLINE
            )),
            Ok(s) => Err(format!("/bin/true ended with {s}")),
            Err(e) => Err(e.to_string()),
        }
    }
    .await;
    let _ =
        tokio::task::spawn_blocking(move || crate::sys::fs_tree::remove_tree_blocking(&probe_dir))
            .await;
    result
}

/// How many warm containers start at once by default (see
/// [`NamespaceContainerBuilder::warm_refills`]).
const DEFAULT_WARM_REFILLS: usize = 2;

/// Builds a [`NamespaceContainer`]: which runtime, where its binary is, where its state lives.
#[derive(Debug, Clone)]
#[must_use]
pub struct NamespaceContainerBuilder {
    runtime: OciRuntime,
    binary: Option<PathBuf>,
    state_base: Option<PathBuf>,
    capture_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    max_running: Option<usize>,
    gvisor_platform: Option<GvisorPlatform>,
    check_platform: bool,
    userns_base: u32,
    unenforced_limits: UnenforcedLimits,
    warm_refills: usize,
}

impl Default for NamespaceContainerBuilder {
    fn default() -> Self {
        NamespaceContainerBuilder {
            runtime: OciRuntime::Runc,
            binary: None,
            state_base: None,
            capture_dir: None,
            data_dir: None,
            max_running: None,
            gvisor_platform: None,
            check_platform: true,
            userns_base: DEFAULT_USERNS_BASE,
            unenforced_limits: UnenforcedLimits::default(),
            warm_refills: DEFAULT_WARM_REFILLS,
        }
    }
}

impl NamespaceContainerBuilder {
    /// The runtime (runc by default).
    pub fn runtime(mut self, kind: OciRuntime) -> Self {
        self.runtime = kind;
        self
    }

    /// An explicit path to the runtime binary instead of a `$PATH` lookup.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// The directory the library owns for its state (default `/run/oci-sandbox` as root). The
    /// runtime's `--root` and the bundles live under `<dir>/<runtime>/`.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_base = Some(dir.into());
        self
    }

    /// The directory the library keeps durable state in: named sandboxes
    /// ([`SandboxConfig::name`](crate::SandboxConfig::name)) and volumes. Unlike the state
    /// dir (a tmpfs under `/run`), it should survive reboots. Default:
    /// `/var/lib/oci-sandbox` as root, else `$XDG_DATA_HOME/oci-sandbox` or
    /// `~/.local/share/oci-sandbox`. Every process that is to find a sandbox by its name must
    /// use the same one (and the same runtime).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// At most `n` named sandboxes of this `NamespaceContainer` run at once: before one
    /// more starts or resumes, the least recently used idle one (no command running) is
    /// hibernated. With [`SandboxConfig::idle_hibernate`](crate::SandboxConfig::idle_hibernate)
    /// this bounds the machine's memory by the running ones, however many exist. `None`
    /// (the default): no bound. Busy sandboxes are never hibernated for it: when all are,
    /// one more runs.
    pub fn max_running(mut self, n: usize) -> Self {
        self.max_running = Some(n.max(1));
        self
    }

    /// Where [`spawn_captured`](NamespaceContainer::spawn_captured) makes its temp dirs
    /// (default: [`std::env::temp_dir`]).
    pub fn capture_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.capture_dir = Some(dir.into());
        self
    }

    /// gVisor's platform, instead of the probe's choice. `build()` still checks, within a
    /// deadline, that it runs a container (so that a platform that hangs here, like KVM
    /// without working virtualisation, is an error at construction rather than at every
    /// spawn), unless [`skip_platform_check`](Self::skip_platform_check).
    pub fn gvisor_platform(mut self, platform: GvisorPlatform) -> Self {
        self.gvisor_platform = Some(platform);
        self
    }

    /// Trusts an explicit [`gvisor_platform`](Self::gvisor_platform) without running a
    /// container on it first.
    pub fn skip_platform_check(mut self) -> Self {
        self.check_platform = false;
        self
    }

    /// As root, the first host uid and gid that containers' user namespaces map to (ids
    /// `0..65536` inside become `base..base+65536` on the host); default 1 000 000 000. Give
    /// a range no host user owns (see `/etc/subuid`).
    pub fn user_namespace_base(mut self, base: u32) -> Self {
        self.userns_base = base;
        self
    }

    /// What to do, rootless, with cgroup limits the runtime cannot enforce
    /// ([`UnenforcedLimits::Warn`] by default).
    pub fn unenforced_limits(mut self, policy: UnenforcedLimits) -> Self {
        self.unenforced_limits = policy;
        self
    }

    /// At most `n` warm containers start at once, for all the pools of
    /// [`NamespaceContainer::warm`] (2 by default): refills share the machine with the spawns
    /// they serve, and each start costs what a cold spawn's does. `0` is refused by
    /// [`build`](Self::build).
    pub fn warm_refills(mut self, n: usize) -> Self {
        self.warm_refills = n;
        self
    }

    /// Finds the binary, prepares the state root, and sweeps what dead processes left in it.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] for a relative state dir; [`SandboxError::RuntimeNotFound`];
    /// [`SandboxError::Io`] when the state root cannot be created.
    pub async fn build(self) -> Result<NamespaceContainer, SandboxError> {
        if self.warm_refills == 0 {
            return Err(SandboxError::invalid(
                "warm_refills",
                "at least one warm container must be able to start at a time",
            ));
        }
        raise_fd_limit();
        let begun = std::time::Instant::now();
        let phase = |what: &str| {
            tracing::debug!(elapsed_ms = crate::sys::ms_since(begun), "build: {what}");
        };
        let base = self
            .state_base
            .clone()
            .unwrap_or_else(StateDirs::default_base);
        let identity = self.checked_identity(&base)?;
        let binary = locate(self.runtime, self.binary).await?;
        let dirs = StateDirs::new(&base, self.runtime, identity);
        let prepared = dirs.clone();
        crate::sys::blocking("preparing the state root", move || {
            prepared.prepare_blocking()
        })
        .await?;
        phase("state root prepared");
        let platform_choice = match self.runtime {
            OciRuntime::Gvisor => Some(
                choose_gvisor_platform(&binary, &base, self.gvisor_platform, self.check_platform)
                    .await?,
            ),
            _ => None,
        };
        let gvisor_platform = platform_choice.as_ref().map(|c| c.platform);
        let mount_ns = match self.runtime {
            OciRuntime::Crun if crate::oci::crun_ns::needs_namespace() => {
                let dir = dirs
                    .root
                    .parent()
                    .expect("state root has a parent")
                    .join("ns");
                Some(Arc::new(
                    crate::sys::blocking("preparing crun's mount namespace", move || {
                        crate::oci::crun_ns::prepare_blocking(&dir)
                    })
                    .await?,
                ))
            }
            _ => None,
        };
        let cli = RuntimeCli {
            kind: self.runtime,
            binary,
            root: dirs.root.clone(),
            gvisor_platform,
            mount_ns,
        };
        let capture_dir = self.capture_dir.unwrap_or_else(std::env::temp_dir);
        phase("runtime ready");
        sweep_leftovers(&cli, &dirs, &capture_dir).await?;
        phase("leftovers swept");
        let data = match self.data_dir {
            Some(dir) if dir.is_absolute() => dir,
            Some(dir) => {
                return Err(SandboxError::invalid(
                    "data_dir",
                    format!("{} is not an absolute path", dir.display()),
                ));
            }
            None => default_data_dir(),
        };
        let sessions = crate::host::sessions::SessionStore::new(&data);
        let volumes = crate::host::volumes::VolumeStore::new(&data);
        let (swept, swept_volumes, roots, top) = (
            sessions.clone(),
            volumes.clone(),
            [sessions.root().to_path_buf(), volumes.root().to_path_buf()],
            data.clone(),
        );
        // What containers write there is theirs: the host follows no link from there on.
        let data_dirs = crate::sys::blocking("preparing the data dir", move || {
            // Made here when it can be (a user without a writable home still gets a working
            // runtime: the stores make their directories on first use, and say why not).
            for root in &roots {
                if let Err(err) = crate::host::sessions::private_dir(root) {
                    tracing::debug!(%err, ?root, "the data dir cannot be made yet");
                }
            }
            // A record there starts containers with its config (binds included): the dirs
            // must be the caller's alone, as load_snapshot asks of a snapshot's.
            for dir in std::iter::once(&top).chain(roots.iter()) {
                if dir.exists() {
                    check_private_blocking(dir)?;
                }
            }
            swept.sweep_blocking();
            swept_volumes.sweep_blocking();
            Ok(crate::host::sandbox_dirs::SandboxDirs::register_paths_blocking(roots))
        })
        .await?;
        phase("data dir prepared");
        let images = crate::image::ImageStore::new(&base);
        let swept_images = images.sweep().await;
        phase("image store swept");
        if swept_images > 0 {
            tracing::info!(
                count = swept_images,
                "swept image temp dirs left by dead processes"
            );
        }
        Ok(NamespaceContainer {
            inner: Arc::new(Inner {
                cli,
                dirs,
                platform_choice,
                tracker: TaskTracker::new(),
                capture_dir,
                identity,
                unenforced_limits: self.unenforced_limits,
                warned_limits: Default::default(),
                launcher_installed: tokio::sync::OnceCell::new(),
                images,
                open: Default::default(),
                volumes,
                sessions,
                _data_dirs: data_dirs,
                max_running: self.max_running,
                making_room: Default::default(),
                data,
                held: Default::default(),
                counters: Default::default(),
                warm: super::warm::WarmPools::new(self.warm_refills),
            }),
        })
    }

    /// The identity the containers get, once the settings are checked.
    fn checked_identity(&self, base: &std::path::Path) -> Result<HostIdentity, SandboxError> {
        if !base.is_absolute() {
            return Err(SandboxError::invalid(
                "state_dir",
                format!(
                    "{} is not absolute (runtimes store paths as given)",
                    base.display()
                ),
            ));
        }
        if self.userns_base == 0 || self.userns_base.checked_add(USERNS_SIZE).is_none() {
            return Err(SandboxError::invalid(
                "user_namespace_base",
                format!("{} leaves no room for 65536 ids above 0", self.userns_base),
            ));
        }
        let identity = HostIdentity::current(self.userns_base);
        if identity.is_rootless() && self.runtime == OciRuntime::Crun {
            return Err(SandboxError::invalid(
                "runtime",
                "crun needs root here: it refuses hybrid cgroups, and the mount namespace that \
                 hides them needs CAP_SYS_ADMIN; use runc or runsc rootless",
            ));
        }
        Ok(identity)
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit, once: a live sandbox holds
/// two fds (its control socket and its init's pidfd), a running command up to four more, and
/// the common soft default of 1024 would cap a process at a few hundred sandboxes. The one
/// process-wide change the library makes; the crate docs say so.
fn raise_fd_limit() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
            && soft < hard
        {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    });
}

/// Removes what dead processes left: their containers (through the runtime CLI) and their
/// capture dirs.
async fn sweep_leftovers(
    cli: &RuntimeCli,
    dirs: &StateDirs,
    capture_dir: &std::path::Path,
) -> Result<(), SandboxError> {
    let swept = sweep(cli, dirs).await?;
    if !swept.is_empty() {
        tracing::info!(runtime = %cli.kind, count = swept.len(), "swept leftover containers");
    }
    let captures = capture_dir.to_path_buf();
    let swept_captures = tokio::task::spawn_blocking(move || {
        crate::host::state::sweep_capture_dirs_blocking(&captures)
    })
    .await
    .unwrap_or(0);
    if swept_captures > 0 {
        tracing::info!(
            count = swept_captures,
            "swept capture dirs left by dead processes"
        );
    }
    Ok(())
}

/// The data dir when none is set: `/var/lib/oci-sandbox` as root, else
/// `$XDG_DATA_HOME/oci-sandbox`, else `~/.local/share/oci-sandbox`, else under the temp dir.
fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/oci-sandbox");
    }
    let non_empty = |v: &str| {
        std::env::var_os(v)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = non_empty("XDG_DATA_HOME").filter(|d| d.is_absolute()) {
        return dir.join("oci-sandbox");
    }
    if let Some(home) = non_empty("HOME").filter(|d| d.is_absolute()) {
        return home.join(".local/share/oci-sandbox");
    }
    std::env::temp_dir().join(format!("oci-sandbox-data-{}", nix::unistd::geteuid()))
}

/// Refuses a data dir (or one of its stores) that is not the caller's alone: another owner,
/// or writable by its group or others. Blocking.
fn check_private_blocking(dir: &std::path::Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| SandboxError::io("checking the data dir", dir, e))?;
    let mine = meta.uid() == nix::unistd::geteuid().as_raw();
    if !meta.is_dir() || !mine || meta.mode() & 0o022 != 0 {
        return Err(SandboxError::invalid(
            "data_dir",
            format!(
                "{} must be a directory of the caller's alone (owner uid {}, not writable by \
                 group or others; it is uid {}, mode {:o}): its records start containers",
                dir.display(),
                nix::unistd::geteuid(),
                meta.uid(),
                meta.mode() & 0o7777
            ),
        ));
    }
    Ok(())
}
