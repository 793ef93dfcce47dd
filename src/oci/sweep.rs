//! Removing containers through the runtime CLI: the crash sweep of dead owners' containers,
//! and the forced removal of one that did not end by itself.

use crate::error::SandboxError;
use crate::host::owner::bundle_owner;
use crate::host::owner::owner_alive;
use crate::host::state::StateDirs;
use crate::host::state::remove_leftovers_blocking;
use crate::oci::cli::ContainerFlags;
use crate::oci::cli::RuntimeCli;

pub(crate) async fn sweep(cli: &RuntimeCli, dirs: &StateDirs) -> Result<Vec<String>, SandboxError> {
    let bundles = dirs.bundles.clone();
    let dead_bundles: Vec<String> = tokio::task::spawn_blocking(move || {
        let Ok(entries) = std::fs::read_dir(&bundles) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let id = e.file_name().into_string().ok()?;
                // A bundle without a readable owner may be one being written right now by a
                // live process: leave it.
                let owner = bundle_owner(&e.path())?;
                (!owner_alive(&owner)).then_some(id)
            })
            .collect()
    })
    .await
    .unwrap_or_default();

    let mut doomed = dead_bundles;
    // An empty runtime root holds no container: no list to ask the runtime for (a process
    // of its own, 5 ms of runc's on the construction's path).
    let root = cli.root.clone();
    let root_empty = tokio::task::spawn_blocking(move || {
        std::fs::read_dir(&root).is_ok_and(|mut entries| entries.next().is_none())
    })
    .await
    .unwrap_or(false);
    let listed = if root_empty {
        Vec::new()
    } else {
        cli.list().await?
    };
    for id in listed {
        if doomed.contains(&id) {
            continue;
        }
        // Bundles are made before their container and removed after it: a container without
        // one was left by a crash mid-cleanup.
        let bundle_missing = !tokio::fs::try_exists(dirs.bundle(&id))
            .await
            .unwrap_or(true);
        if bundle_missing {
            doomed.push(id);
        }
    }
    for id in &doomed {
        tracing::info!(runtime = %cli.kind, id, "sweeping a container left by a dead process");
        remove_container(cli, dirs, id, ContainerFlags::default()).await;
    }
    // Their containers are gone: so may be their snapshots, and the id ranges.
    let snapshots = dirs.snapshots.clone();
    let _ = tokio::task::spawn_blocking(move || crate::snapshot::Store::sweep_blocking(&snapshots))
        .await;
    // The dead owners' id ranges are free again.
    let _ = tokio::task::spawn_blocking(crate::host::id_range::sweep_leases_blocking).await;
    Ok(doomed)
}

/// Ends container `id` and removes everything of it: the runtime's state, leftover processes
/// in its cgroups, the cgroups and the bundle. Best effort, logged.
pub(crate) async fn remove_container(
    cli: &RuntimeCli,
    dirs: &StateDirs,
    id: &str,
    flags: ContainerFlags<'_>,
) {
    remove_from_runtime(cli, id, flags).await;
    let (root, bundle, id) = (dirs.root.clone(), dirs.bundle(id), id.to_owned());
    let _ =
        tokio::task::spawn_blocking(move || remove_leftovers_blocking(&root, &id, &bundle)).await;
}

/// `destroy` (kill and delete). Logged, not returned: what the runtime leaves,
/// `remove_leftovers_blocking` removes.
pub(crate) async fn remove_from_runtime(cli: &RuntimeCli, id: &str, flags: ContainerFlags<'_>) {
    if let Err(err) = cli.destroy(flags, id).await {
        tracing::warn!(runtime = %cli.kind, id, %err, "destroying the container failed");
    }
}
