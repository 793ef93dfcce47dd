//! How a container is launched: its bundle (validated config, user namespace, spec), the
//! runtime CLI under a supervisor, and the launcher's handshake.

use std::time::Duration;

use crate::config::ContainerConfig;
use crate::container::NamespaceContainer;
use crate::error::SandboxError;
use crate::host::bundle::Bundle;
use crate::host::state::new_id;
use crate::image::mount::{Points, RootMount};
use crate::launcher;
use crate::launcher::ControlSocket;
use crate::oci::cli::ContainerFlags;
use crate::oci::cli::Sub;
use crate::spec::identity::HostIdentity;
use crate::supervisor::Supervised;
use crate::supervisor::container::StartMode;
use crate::supervisor::container::Teardown;

/// One container of a sandbox: the first, or the one a snapshot or restore started in its
/// place.
#[derive(Debug)]
pub(crate) struct Live {
    pub container: Supervised,
    /// Requests go to the launcher on it; every command gets a channel of its own.
    pub control: ControlSocket,
    /// The host id of the container's id 0, with a user namespace of its own.
    pub userns_base: Option<u32>,
    /// Where its teardown moves its writable layer when a snapshot asks.
    pub harvest: crate::supervisor::container::Harvest,
    /// The snapshot it started from (whose layers it runs on), if any.
    pub base: Option<crate::snapshot::Snapshot>,
    /// A warm container's image, if any: its spawn applies the image's config. (While held,
    /// it keeps its layers from `prune_images`, as a pool of that image should.)
    pub image: Option<std::sync::Arc<crate::image::PreparedImage>>,
}

/// What a launched container is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LaunchMode {
    /// A long-lived sandbox.
    Sandbox,
    /// A spawn's container, which ends with its one command.
    Spawn,
    /// A spawn's container started ahead ([`NamespaceContainer::warm`]): its writable binds
    /// are handed to its ids when a spawn takes it.
    Warm,
}

/// How long a new sandbox's launcher may take to listen.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// The least time a spawn's container gets to start, whatever its command's timeout.
const MIN_START_DEADLINE: Duration = Duration::from_secs(10);
/// How long `runsc exec` of the launcher's attach may take.
const ATTACH_DEADLINE: Duration = Duration::from_secs(10);

impl NamespaceContainer {
    /// Starts container `id` of `config` with its launcher and returns it with `config` as
    /// applied (its image's config, the egress proxy's variables). `from`: a snapshot to start
    /// from: its layers under the new writable one (runc, crun), or its checkpoint restored
    /// and the launcher attached again (gVisor).
    pub(crate) async fn launch_live(
        &self,
        config: &ContainerConfig,
        mode: LaunchMode,
        id: String,
        from: Option<&crate::snapshot::Snapshot>,
        mut holds: Vec<Hold>,
    ) -> Result<(Live, ContainerConfig), SandboxError> {
        let begun = std::time::Instant::now();
        let one_shot = mode != LaunchMode::Sandbox;
        // A long-lived sandbox's timeout is its commands' default: checked here, as the
        // launcher's own config has none.
        crate::config::check_timeout(config.timeout)?;
        if config.snapshots && self.runtime() == crate::OciRuntime::Gvisor && self.is_rootless() {
            // runsc 20221219: "Rootless mode not supported with \"restore\"" (found before
            // a checkpoint has stopped the sandbox, not after).
            return Err(SandboxError::invalid(
                "snapshots",
                "runsc cannot restore a checkpoint without root: gVisor snapshots need root",
            ));
        }
        self.launcher().await?;
        // Volumes become binds of their directories, held while the container lives.
        let volumed = self.with_volumes(config, &mut holds).await?;
        let config = volumed.as_ref().unwrap_or(config);
        // An image's config applies to the container's (env, cwd, user, command).
        let imaged = self.with_image(config).await?;
        let (config, image) = match &imaged {
            Some((applied, image)) => (applied, Some(image.clone())),
            None => (config, None),
        };
        // With an egress policy, commands find the proxy through the usual variables.
        let proxied = crate::config::network::with_proxy_env(config);
        let config = proxied.as_ref().unwrap_or(config);
        let (control, launcher_end) =
            ControlSocket::pair().map_err(|source| SandboxError::Process {
                context: "opening the sandbox's control socket",
                source,
            })?;
        // A spawn's container gets as long to start as its command's timeout, within
        // 10..30 s (a runtime that hangs, as runsc on kvm does, fails that soon).
        let start_deadline = match config.timeout {
            Some(t) if one_shot => t.clamp(
                MIN_START_DEADLINE,
                crate::supervisor::container::START_DEADLINE,
            ),
            _ => crate::supervisor::container::START_DEADLINE,
        };
        let mut init = config.clone();
        init.id = Some(id.clone());
        init.command = format!("/{}", launcher::PATH_IN_ROOTFS);
        // gVisor's keepers could adopt nothing (see the launcher's `no_keepers`).
        init.args = match self.runtime() {
            crate::OciRuntime::Gvisor => vec![launcher::NO_KEEPERS_ARG.to_owned()],
            _ => Vec::new(),
        };
        init.timeout = None;
        // The launcher's end of the control socket is the container's stdin: no path. A
        // spawn on crun runs its runtime in the foreground (see `StartMode`).
        let attached = self.attached(mode);
        let start = self
            // Checked once, before the bundle is written: a spawn's config with its own
            // command (which must be on PATH), a long-lived sandbox's as its launcher's.
            .run_launcher(
                &init,
                if one_shot { config } else { &init },
                launcher_end,
                start_deadline,
                mode,
                (image, from, holds),
            )
            .await?;
        tracing::debug!(
            elapsed_ms = crate::sys::ms_since(begun),
            attached,
            "bundle written, runtime started"
        );
        let (userns_base, harvest) = (start.userns_base, start.harvest.clone());
        let (container, control) = match from.and_then(|s| s.checkpoint()) {
            None => {
                let container = await_ready(start, &control, &id, start_deadline, begun).await?;
                (container, control)
            }
            Some((_, token)) => self.attach(start, &id, token, begun).await?,
        };
        tracing::debug!(elapsed_ms = crate::sys::ms_since(begun), "started");
        let live = Live {
            container,
            control,
            userns_base,
            harvest,
            base: from.cloned(),
            // Kept for a warm container's spawn only: a long-lived sandbox's `Live` outlived
            // its close in rootless prune tests, and with it the image's hold on its layers.
            image: imaged
                .as_ref()
                .filter(|_| mode == LaunchMode::Warm)
                .map(|(_, image)| image.clone()),
        };
        Ok((live, config.clone()))
    }

    /// Whether a container launched for `mode` runs its runtime in the foreground: a spawn's
    /// (warm or not) on crun (see `StartMode`).
    fn attached(&self, mode: LaunchMode) -> bool {
        mode != LaunchMode::Sandbox && self.runtime() == crate::OciRuntime::Crun
    }

    /// After `runsc restore`: waits for the restored container's start, then hands its
    /// detached launcher a new control socket (`runsc exec` of `launcher attach`) and waits
    /// for its "ready".
    async fn attach(
        &self,
        start: LauncherStart,
        id: &str,
        token: &str,
        begun: std::time::Instant,
    ) -> Result<(Supervised, ControlSocket), SandboxError> {
        let LauncherStart {
            container, started, ..
        } = start;
        started.await.unwrap_or_else(|_| Err(supervisor_gone()))?;
        let (control, theirs) =
            ControlSocket::attach_pair(token).map_err(|source| SandboxError::Process {
                context: "opening the sandbox's control socket",
                source,
            })?;
        let launcher_path = format!("/{}", launcher::PATH_IN_ROOTFS);
        let argv = [launcher_path.as_str(), crate::launcher::ATTACH_ARG];
        let flags = ContainerFlags {
            log: None,
            host_network: container.host_network,
            memory_root: true,
        };
        let mut cmd = self.inner.cli.command(flags, Sub::Exec { id, argv: &argv });
        cmd.stdin(std::process::Stdio::from(theirs))
            .stderr(std::process::Stdio::piped());
        let out = tokio::time::timeout(ATTACH_DEADLINE, async {
            cmd.kill_on_drop(true).output().await
        })
        .await;
        match out {
            Ok(Ok(out)) if out.status.success() => {}
            Ok(Ok(out)) => {
                return Err(SandboxError::Runtime {
                    runtime: self.runtime(),
                    op: crate::RuntimeOp::Exec,
                    code: out.status.code(),
                    message: format!(
                        "attaching to the restored launcher: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            Ok(Err(e)) => return Err(self.inner.cli.spawn_error(e)),
            Err(_) => {
                return Err(SandboxError::Timeout {
                    what: format!("attaching to the launcher of restored sandbox {id}"),
                    after: ATTACH_DEADLINE,
                });
            }
        }
        match tokio::time::timeout(READY_DEADLINE, control.ready()).await {
            Ok(Ok(pid)) => {
                tracing::debug!(
                    elapsed_ms = crate::sys::ms_since(begun),
                    pid,
                    "launcher attached"
                );
                Ok((container, control))
            }
            Ok(Err(source)) => Err(SandboxError::Process {
                context: "attaching to the restored launcher",
                source,
            }),
            Err(_) => Err(SandboxError::Timeout {
                what: format!("the launcher of restored sandbox {id}"),
                after: READY_DEADLINE,
            }),
        }
    }

    /// Starts `<runtime> run` of `config` (its command is the launcher; `checked`, the config
    /// the caller asked for, is validated first) with
    /// `control` as the container's stdin (its control socket) and `/dev/null` as its stdout
    /// and stderr, under a container supervisor: `run --detach --pid-file`, or for a spawn's
    /// container on crun (see [`attached`](Self::attached); runc in the foreground puts pipes
    /// of its own on the container's stdio) in the foreground, when the caller sends the
    /// init's pid (from the launcher's "ready") on the returned sender. The receiver says when
    /// the container has started. If the returned values are dropped, the supervisor removes
    /// the container.
    pub(crate) async fn run_launcher(
        &self,
        config: &ContainerConfig,
        checked: &ContainerConfig,
        control: std::os::fd::OwnedFd,
        start_deadline: std::time::Duration,
        mode: LaunchMode,
        (image, from, holds): RootSource<'_>,
    ) -> Result<LauncherStart, SandboxError> {
        let (attached, hand_over) = (self.attached(mode), mode != LaunchMode::Warm);
        let layers = from.map(|s| s.layers().to_vec()).unwrap_or_default();
        let (id, mut bundle, root_mount) = self
            .prepare(config, checked, image, layers, hand_over)
            .await?;
        bundle.holds = holds;
        // Where the container's ids 0.. start on the host, with a user namespace of its own.
        let userns_base = bundle.userns.as_ref().map(|ns| ns.base());
        let inner = &self.inner;
        let (log, pid_path) = (bundle.log_path(), bundle.pid_path());
        let flags = ContainerFlags {
            log: Some(&log),
            host_network: !config.network.is_isolated(),
            memory_root: config.snapshots && self.runtime() == crate::OciRuntime::Gvisor,
        };
        let restore = from.and_then(|s| s.checkpoint());
        let sub = match restore {
            // runsc restore creates and starts the container itself.
            Some((image, _)) => Sub::Restore {
                id: &id,
                bundle: bundle.path(),
                image,
                pid_file: &pid_path,
            },
            None => Sub::Run {
                id: &id,
                bundle: bundle.path(),
                detach: !attached,
                pid_file: (!attached).then_some(pid_path.as_path()),
            },
        };
        let mut cmd = inner.cli.command(flags, sub);
        let null = std::process::Stdio::null;
        // A restored launcher gets its control socket by an attach, later.
        let stdin = match restore {
            Some(_) => null(),
            None => control.into(),
        };
        cmd.stdin(stdin).stdout(null()).stderr(null());
        if let Some(root) = root_mount {
            // SAFETY: `mount_in_child` makes system calls only, on memory the closure owns;
            // the user namespace fd it names is the bundle's, open until after the spawn.
            unsafe {
                cmd.pre_exec(move || root.mount_in_child());
            }
        }
        let child = cmd.spawn().map_err(|e| inner.cli.spawn_error(e))?;
        // The runtime's end of the control socket goes with `cmd`: only the container holds it.
        drop(cmd);
        let mut teardown = Teardown::new(&inner.cli, &inner.dirs, id, config, bundle);
        teardown.keep = from.cloned();
        teardown.times = Some(self.teardown_times());
        let harvest = teardown.harvest.clone();
        let (init_pid, mode) = if attached {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), StartMode::Attached { init_pid: rx })
        } else {
            (None, StartMode::Detached { pid_file: pid_path })
        };
        let (container, started) =
            Supervised::container(&inner.tracker, child, teardown, mode, start_deadline);
        Ok(LauncherStart {
            container,
            started,
            init_pid,
            userns_base,
            harvest,
        })
    }

    /// Validates `checked` (which looks up host paths: the command along `PATH`), picks
    /// `config`'s id and writes its bundle (with its own user namespace, as root), in one trip
    /// off the async workers.
    async fn prepare(
        &self,
        config: &ContainerConfig,
        checked: &ContainerConfig,
        image: Option<std::sync::Arc<crate::image::PreparedImage>>,
        snapshot_layers: Vec<std::path::PathBuf>,
        hand_over: bool,
    ) -> Result<(String, Bundle, Option<RootMount>), SandboxError> {
        let id = config.id.clone().unwrap_or_else(new_id);
        self.check_limits(config)?;
        let (config, checked) = (config.clone(), checked.clone());
        let dirs = self.inner.dirs.clone();
        let data_dir = self.inner.data.clone();
        let mut target = self.target();
        // If this future is dropped while the closure runs, the closure still finishes and its
        // result (the bundle) is dropped, which removes the directory again.
        let tracker = &self.inner.tracker;
        crate::sys::blocking_tracked(tracker, "preparing the bundle", move || {
            checked.validate()?;
            let userns = own_user_namespace_blocking(&target, &config)?;
            if let Some(ns) = &userns {
                target.identity = HostIdentity::Root {
                    userns_base: ns.base(),
                };
                target.userns_path = Some(ns.path());
            }
            // Rootless, the runtime runs as the root of a user namespace its process makes for
            // the image's mount (see `image::mount`): there the caller is id 0.
            let caller = match target.identity {
                HostIdentity::Rootless { uid, gid } if image.is_some() => {
                    target.identity = HostIdentity::Rootless { uid: 0, gid: 0 };
                    Some((uid, gid))
                }
                _ => None,
            };
            let bundle_dir = dirs.bundle(&id);
            let rootfs = match &image {
                Some(_) => Points::in_bundle(&bundle_dir).rootfs,
                None => dirs.rootfs.clone(),
            };
            // On runc and crun a snapshot takes /tmp with the root's writable layer.
            let mut config = config;
            if config.snapshots && target.runtime != crate::OciRuntime::Gvisor {
                config.mounts.retain(|m| {
                    !(m.destination == std::path::Path::new("/tmp")
                        && matches!(m.kind, crate::config::MountKind::Tmpfs { .. }))
                });
            }
            // The library's own directories (a named sandbox's, volumes) keep the container's
            // ids: as root on runc and crun, each is cloned (idmapped, with a user namespace)
            // onto a point in the bundle, which the spec binds instead. The clone is made
            // here, so that a volume's mount is seen from crun's namespace too.
            let idmap = userns.as_ref().and_then(|ns| ns.raw_fd());
            let owned = owned_binds(&config, &data_dir);
            // Copies of the config only when it has owned binds (not on a plain spawn's path).
            let mut spec_config = std::borrow::Cow::Borrowed(&config);
            let mut points = Vec::new();
            let by_points = matches!(target.identity, HostIdentity::Root { .. })
                && target.runtime != crate::OciRuntime::Gvisor;
            if by_points {
                for (i, source, writable) in &owned {
                    let point = bundle_dir.join("owned").join(i.to_string());
                    spec_config.to_mut().mounts[*i].kind = crate::config::MountKind::Bind {
                        source: point.clone(),
                        writable: *writable,
                    };
                    points.push((source.clone(), point, *writable));
                }
            }
            let spec = crate::spec::build(&spec_config, &rootfs, &id, None, &target)?;
            if image.is_none() {
                crate::host::bundle::ensure_mount_points(&dirs.rootfs, &config)?;
            }
            // (A warm container's binds are handed over when a spawn takes it: another
            // container's start in between would take them back.)
            if hand_over {
                hand_over_blocking(target.identity, &config, &data_dir, target.runtime)?;
            }
            let mut bundle = Bundle::create_blocking(bundle_dir, &id, spec)?;
            bundle.userns = userns;
            bundle.writable_dirs =
                crate::host::sandbox_dirs::SandboxDirs::register_blocking(&config);
            let mut root_mount = match image {
                None => None,
                Some(image) => {
                    let memory_root = target.runtime == crate::OciRuntime::Gvisor;
                    let plan = image_root_blocking(
                        &bundle,
                        &image,
                        &snapshot_layers,
                        &dirs.rootfs,
                        &config,
                        caller,
                        memory_root,
                    )?;
                    bundle.image = Some(image);
                    Some(plan)
                }
            };
            if !points.is_empty() {
                let plan = root_mount.get_or_insert_with(|| RootMount::binds_only(idmap));
                for (source, point, writable) in &points {
                    let io = |e| SandboxError::io("planning an owned mount", point, e);
                    std::fs::create_dir_all(point).map_err(io)?;
                    plan.add_owned_bind(source, point, *writable).map_err(io)?;
                }
            }
            Ok((id, bundle, root_mount))
        })
        .await
    }
}

/// The mount of a container's root over `image` (see `image::mount`): the image's layers and
/// the library's top layer, idmapped into the bundle's user namespace when it has one, with a
/// writable layer of the container's own unless the root is read-only. `caller`: rootless, the
/// caller's uid and gid. Blocking.
fn image_root_blocking(
    bundle: &Bundle,
    image: &crate::image::PreparedImage,
    snapshot_layers: &[std::path::PathBuf],
    shared_rootfs: &std::path::Path,
    config: &ContainerConfig,
    caller: Option<(u32, u32)>,
    gvisor: bool,
) -> Result<RootMount, SandboxError> {
    let launcher = shared_rootfs.join(launcher::PATH_IN_ROOTFS);
    let top = crate::container::image_root::top_layer_blocking(bundle.path(), &launcher, config)?;
    let mut layers = image.layer_dirs.clone();
    // A snapshot's layers go over the image's, the library's own over everything (the
    // sandbox's writes cannot replace the launcher or hide a mount point).
    layers.extend_from_slice(snapshot_layers);
    layers.push(top);
    let userns = bundle.userns.as_ref();
    // A snapshot on gVisor checkpoints the root's writes, which runsc keeps in the sandbox's
    // memory (`--overlay2=root:memory`) over a read-only image.
    let writable = !(config.security.readonly_rootfs || gvisor && config.snapshots);
    let writable = writable.then(|| {
        if config.snapshots {
            return crate::image::mount::Writable::OnDisk {
                owner: userns.map_or(0, |ns| ns.base()),
            };
        }
        let size = config
            .mounts
            .iter()
            .find_map(|m| match m.kind {
                crate::config::MountKind::Tmpfs { size }
                    if m.destination == std::path::Path::new("/tmp") =>
                {
                    Some(size)
                }
                _ => None,
            })
            .unwrap_or(crate::SandboxConfig::default().tmp_size);
        crate::image::mount::Writable::Tmpfs {
            size,
            owner: userns.map_or(0, |ns| ns.base()),
        }
    });
    RootMount::prepare_blocking(
        &layers,
        &Points::in_bundle(bundle.path()),
        userns.and_then(|ns| ns.raw_fd()),
        writable,
        caller,
    )
    .map_err(|e| SandboxError::io("planning the image's root", bundle.path(), e))
}

/// As root, a user namespace of its own for a container that gets one (runc, crun): its own
/// id range, owned by the range's root. Blocking.
fn own_user_namespace_blocking(
    target: &crate::spec::Target,
    config: &ContainerConfig,
) -> Result<Option<crate::host::id_range::UserNamespace>, SandboxError> {
    let HostIdentity::Root { userns_base } = target.identity else {
        return Ok(None);
    };
    if target
        .identity
        .mapped_root(config, target.runtime)
        .is_none()
    {
        return Ok(None);
    }
    let lease = crate::host::id_range::IdRangeLease::acquire_blocking(userns_base)?;
    crate::host::id_range::UserNamespace::create_blocking(lease).map(Some)
}

/// Something a container holds until its bundle is removed (see `Bundle::holds`).
pub(crate) type Hold = Box<dyn std::any::Any + Send + Sync>;

impl NamespaceContainer {
    /// `config` with its volumes as binds of their directories (mounted first if they have
    /// a size limit), and a hold on each in `holds`; `None` without volumes.
    async fn with_volumes(
        &self,
        config: &ContainerConfig,
        holds: &mut Vec<Hold>,
    ) -> Result<Option<ContainerConfig>, SandboxError> {
        if config.volumes.is_empty() {
            return Ok(None);
        }
        config.validate_durable()?;
        let mut with = config.clone();
        for v in &config.volumes {
            let (source, hold) = self.volume_store().prepare(&v.name).await?;
            holds.push(Box::new(hold));
            with.mounts.push(crate::config::Mount {
                destination: v.destination.clone(),
                kind: crate::config::MountKind::Bind {
                    source,
                    writable: !v.read_only,
                },
            });
        }
        // Binds now: checked as such.
        with.volumes.clear();
        Ok(Some(with))
    }
}

/// As root with a user namespace of `identity`'s, hands the sources of `config`'s writable
/// binds to the container's root (see `HostIdentity::hand_over_writable_binds_blocking`),
/// but for the library's own directories under the data dir `data`, which keep the
/// container's ids through idmapped binds and are never chowned. Blocking.
pub(crate) fn hand_over_blocking(
    identity: HostIdentity,
    config: &ContainerConfig,
    data: &std::path::Path,
    runtime: crate::OciRuntime,
) -> Result<(), SandboxError> {
    let mut handed = std::borrow::Cow::Borrowed(config);
    if config
        .mounts
        .iter()
        .any(|m| owned_source(m).is_some_and(|s| s.starts_with(data)))
    {
        handed
            .to_mut()
            .mounts
            .retain(|m| !owned_source(m).is_some_and(|s| s.starts_with(data)));
    }
    identity.hand_over_writable_binds_blocking(&handed, runtime)
}

/// The writable-or-not binds of `config` whose source is under the library's data dir
/// `data`: `(index in mounts, source, writable)`.
fn owned_binds(
    config: &ContainerConfig,
    data: &std::path::Path,
) -> Vec<(usize, std::path::PathBuf, bool)> {
    config
        .mounts
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match &m.kind {
            crate::config::MountKind::Bind { source, writable } if source.starts_with(data) => {
                Some((i, source.clone(), *writable))
            }
            _ => None,
        })
        .collect()
}

fn owned_source(m: &crate::config::Mount) -> Option<&std::path::Path> {
    match &m.kind {
        crate::config::MountKind::Bind { source, .. } => Some(source),
        _ => None,
    }
}

/// What a container's root is made of, besides the shared rootfs: an image, and a snapshot
/// to start from; and what the container holds while it lives (see `Bundle::holds`).
pub(crate) type RootSource<'a> = (
    Option<std::sync::Arc<crate::image::PreparedImage>>,
    Option<&'a crate::snapshot::Snapshot>,
    Vec<Hold>,
);

/// A launcher container the runtime is starting: see [`NamespaceContainer::run_launcher`].
pub(crate) struct LauncherStart {
    pub container: Supervised,
    pub started: tokio::sync::oneshot::Receiver<Result<(), SandboxError>>,
    pub init_pid: Option<tokio::sync::oneshot::Sender<i32>>,
    /// The host id that the container's id 0 is, when it has a user namespace of its own.
    pub userns_base: Option<u32>,
    /// A snapshot's claim on its writable layer.
    pub harvest: crate::supervisor::container::Harvest,
}

/// `config`'s command as an exec: its stdio; environment, directory and timeout are the
/// container's own.
pub(crate) fn command_of(config: &ContainerConfig) -> crate::ExecConfig {
    let mut exec = crate::ExecConfig::new(config.command.clone(), config.args.clone());
    exec.stdin = config.stdin;
    exec.stdout = config.stdout;
    exec.stderr = config.stderr;
    exec.idle_timeout = config.idle_timeout;
    exec
}

fn supervisor_gone() -> SandboxError {
    SandboxError::Process {
        context: "starting the container",
        source: std::io::Error::other("the supervisor ended without reporting"),
    }
}

/// Waits until the runtime has started the container and its launcher is ready, and returns
/// the container. The runtime's start and the launcher's "ready" race: a detached runtime
/// usually exits first; a foreground one waits for the init's pid, which "ready" brings.
async fn await_ready(
    start: LauncherStart,
    control: &ControlSocket,
    id: &str,
    start_deadline: Duration,
    begun: std::time::Instant,
) -> Result<Supervised, SandboxError> {
    let LauncherStart {
        container,
        started,
        init_pid,
        ..
    } = start;
    let mut started =
        std::pin::pin!(async { started.await.unwrap_or_else(|_| Err(supervisor_gone())) });
    let mut is_started = false;
    let ready = {
        let ready = tokio::time::timeout(start_deadline + READY_DEADLINE, control.ready());
        let mut ready = std::pin::pin!(ready);
        loop {
            tokio::select! {
                result = &mut started, if !is_started => {
                    result?;
                    is_started = true;
                }
                ready = &mut ready => break ready,
            }
        }
    };
    match ready {
        Ok(Ok(pid)) => {
            tracing::debug!(
                elapsed_ms = crate::sys::ms_since(begun),
                pid,
                "launcher ready"
            );
            if let Some(init_pid) = init_pid {
                let _ = init_pid.send(pid);
            }
            if !is_started {
                started.await?;
            }
            Ok(container)
        }
        Ok(Err(_)) => {
            // The runtime's own error, when it failed.
            if !is_started {
                started.await?;
            }
            let status = container.wait().await.ok();
            Err(SandboxError::SandboxEnded {
                id: id.to_owned(),
                status,
            })
        }
        Err(_) => Err(SandboxError::Timeout {
            what: format!("the launcher of sandbox {id}"),
            after: start_deadline + READY_DEADLINE,
        }),
    }
}
