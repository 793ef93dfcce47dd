//! Snapshots and forks on every runtime: files before the snapshot are in each fork, writes
//! after it stay on their side, ten forks from one snapshot, rollback in place, save and load;
//! on gVisor a process carried through the checkpoint; bad input leaving nothing behind.

mod common;
#[path = "common/snapshots.rs"]
mod snapshot_support;

use common::images::{self, ImageFixture};
use common::{TestSandbox, sh_in};
use oci_sandbox::{
    ExecConfig, NamespaceContainer, OciRuntime, SandboxConfig, SandboxError, SnapshotErrorKind,
    SnapshotOptions,
};
use snapshot_support::{
    assert_store_empty, close_and_check, fixture, snapshot_policy, start, walk,
};

fn busybox() -> (tempfile::TempDir, ImageFixture) {
    fixture(images::busybox_layout)
}

fn snapshot_kind(err: &SandboxError) -> Option<SnapshotErrorKind> {
    match err {
        SandboxError::Snapshot { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// Files before the snapshot are in the fork; later writes on either side stay there.
async fn forks_see_the_snapshot_and_not_each_other(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let parent = start(&t, &f).await;
    sh_in(
        &parent,
        "echo before > /etc/state; mkdir -p /srv/a; echo tmp > /tmp/t; rm /etc/motd",
    )
    .await;
    let snap = parent.snapshot().await.expect("snapshot");
    assert_eq!(snap.runtime(), kind);
    assert_eq!(snap.has_processes(), kind == OciRuntime::Gvisor);
    // The parent goes on from the snapshot, same id.
    assert_eq!(
        sh_in(
            &parent,
            "cat /etc/state /tmp/t; test -e /etc/motd || echo gone"
        )
        .await,
        "before\ntmp\ngone\n"
    );
    sh_in(&parent, "echo parent-after > /etc/state").await;
    let fork = t.sandbox.start_from(&snap).await.expect("fork");
    assert_ne!(fork.id(), parent.id());
    assert_eq!(
        sh_in(
            &fork,
            "cat /etc/state /tmp/t; ls /srv /tmp; test -e /etc/motd || echo gone"
        )
        .await,
        "before\ntmp\n/srv:\na\n\n/tmp:\nt\ngone\n"
    );
    sh_in(
        &fork,
        "echo fork-after > /etc/state; echo mine > /srv/fork-only",
    )
    .await;
    assert_eq!(sh_in(&parent, "cat /etc/state").await, "parent-after\n");
    assert_eq!(
        sh_in(
            &parent,
            "test -e /srv/fork-only && echo seen || echo unseen"
        )
        .await,
        "unseen\n"
    );
    assert_eq!(sh_in(&fork, "cat /etc/state").await, "fork-after\n");
    drop(snap);
    close_and_check(&t, vec![parent, fork], None).await;
}

/// Ten forks of one snapshot, each with its own writes.
async fn ten_forks_from_one_snapshot(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let parent = start(&t, &f).await;
    sh_in(&parent, "echo base > /srv-base").await;
    let snap = parent
        .snapshot_with(SnapshotOptions::default().keep_running(false))
        .await
        .expect("snapshot");
    let closed = parent.exec(&ExecConfig::shell("true")).await.unwrap_err();
    assert!(
        matches!(closed, SandboxError::SandboxClosed { .. }),
        "{closed}"
    );
    let mut forks = Vec::new();
    for i in 0..10 {
        let fork = t.sandbox.start_from(&snap).await.expect("fork");
        sh_in(&fork, &format!("echo {i} > /mine")).await;
        forks.push(fork);
    }
    for (i, fork) in forks.iter().enumerate() {
        assert_eq!(
            sh_in(fork, "cat /srv-base /mine").await,
            format!("base\n{i}\n")
        );
    }
    drop(snap);
    close_and_check(&t, forks, None).await;
}

/// Rollback in place: the handle (and its clones) go back to the snapshot's state.
async fn restore_rolls_back_in_place(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let sandbox = start(&t, &f).await;
    let clone = sandbox.clone();
    sh_in(&sandbox, "echo good > /etc/state").await;
    let good = sandbox.snapshot().await.expect("snapshot");
    sh_in(&sandbox, "echo broken > /etc/state; rm -rf /bin/ls /tmp/*").await;
    sandbox.restore(&good).await.expect("restore");
    assert_eq!(
        sh_in(&clone, "cat /etc/state; ls / >/dev/null && echo ls-back").await,
        "good\nls-back\n"
    );
    // Again, from the same snapshot.
    sh_in(&sandbox, "echo broken-again > /etc/state").await;
    sandbox.restore(&good).await.expect("second restore");
    assert_eq!(sh_in(&sandbox, "cat /etc/state").await, "good\n");
    drop((good, clone));
    close_and_check(&t, vec![sandbox], None).await;
}

/// A saved snapshot outlives the store's copy and loads in another container of the same
/// runtime; another runtime's, or a corrupt one, is a typed error.
async fn save_and_load(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let parent = start(&t, &f).await;
    // A deletion (a whiteout) and a directory made again (opaque) must survive the save.
    sh_in(
        &parent,
        "echo saved > /etc/state; rm /etc/motd; rm -r /opaque; mkdir /opaque; echo n > /opaque/mine",
    )
    .await;
    let snap = parent
        .snapshot_with(SnapshotOptions::default().keep_running(false))
        .await
        .unwrap();
    let out = tempfile::Builder::new()
        .prefix("osb-saved-")
        .tempdir_in(t.state.path())
        .unwrap();
    let saved = out.path().join("snap");
    snap.save(&saved).await.expect("save");
    let exists = snap.save(&saved).await.unwrap_err();
    assert!(matches!(exists, SandboxError::Io { .. }), "{exists}");
    drop(snap);
    // Another runtime's container of the same state dir refuses it.
    let other = if kind == OciRuntime::Runc {
        OciRuntime::Crun
    } else {
        OciRuntime::Runc
    };
    let other_t = TestSandbox::new(other).await;
    // Snapshot::load takes any runtime's; starting it on another is the same typed error.
    let any = oci_sandbox::Snapshot::load(&saved).await.expect("load");
    assert_eq!(any.runtime(), kind);
    let wrong = other_t.sandbox.start_from(&any).await.unwrap_err();
    assert_eq!(
        snapshot_kind(&wrong),
        Some(SnapshotErrorKind::Mismatch),
        "{wrong}"
    );
    drop(any);
    let wrong = other_t.sandbox.load_snapshot(&saved).await.unwrap_err();
    assert_eq!(
        snapshot_kind(&wrong),
        Some(SnapshotErrorKind::Mismatch),
        "{wrong}"
    );
    // Private, as the store is; a manifest others could have written is refused.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the saved snapshot is not private");
        let open = std::fs::Permissions::from_mode(0o777);
        std::fs::set_permissions(&saved, open).unwrap();
        let shared = t.sandbox.load_snapshot(&saved).await.unwrap_err();
        assert_eq!(
            snapshot_kind(&shared),
            Some(SnapshotErrorKind::Corrupt),
            "{shared}"
        );
        std::fs::set_permissions(&saved, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let loaded = t.sandbox.load_snapshot(&saved).await.expect("load");
    let fork = t
        .sandbox
        .start_from(&loaded)
        .await
        .expect("fork of a loaded snapshot");
    assert_eq!(
        sh_in(
            &fork,
            "cat /etc/state; ls /etc/motd 2>/dev/null || echo gone; ls /opaque"
        )
        .await,
        "saved\ngone\nmine\n"
    );
    let id = fork.id().to_owned();
    fork.close().await;
    drop(loaded);
    // Corrupt: a file gone, the manifest garbled, no directory at all.
    let victim = std::fs::read_dir(&saved)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name() != "manifest.json")
        .unwrap()
        .path();
    let mut removed = false;
    for entry in walk(&victim) {
        if entry.is_file() {
            std::fs::remove_file(&entry).unwrap();
            removed = true;
            break;
        }
    }
    if !removed {
        std::fs::create_dir(victim.join("planted")).unwrap();
    }
    let corrupt = t.sandbox.load_snapshot(&saved).await.unwrap_err();
    assert_eq!(
        snapshot_kind(&corrupt),
        Some(SnapshotErrorKind::Corrupt),
        "{corrupt}"
    );
    std::fs::write(saved.join("manifest.json"), b"{ not json").unwrap();
    let garbled = t.sandbox.load_snapshot(&saved).await.unwrap_err();
    assert_eq!(
        snapshot_kind(&garbled),
        Some(SnapshotErrorKind::Corrupt),
        "{garbled}"
    );
    let missing = t
        .sandbox
        .load_snapshot(out.path().join("nothing"))
        .await
        .unwrap_err();
    assert_eq!(
        snapshot_kind(&missing),
        Some(SnapshotErrorKind::Corrupt),
        "{missing}"
    );
    drop(out);
    t.assert_nothing_left(&[&id], None).await;
    assert_store_empty(&t).await;
    other_t.assert_nothing_left(&[], None).await;
}

/// Bad input: a closed sandbox, one without snapshots, one busy; processes asked of runc and
/// crun. Each a typed error, and the sandbox goes on where it should.
async fn bad_snapshots_are_typed_errors(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    // Not enabled.
    let plain = t.start_sandbox(&SandboxConfig::default()).await;
    let err = plain.snapshot().await.unwrap_err();
    assert_eq!(
        snapshot_kind(&err),
        Some(SnapshotErrorKind::NotEnabled),
        "{err}"
    );
    assert_eq!(sh_in(&plain, "echo alive").await, "alive\n");
    // Invalid config: snapshots without an image.
    let invalid = NamespaceContainer::build_config(
        &SandboxConfig {
            snapshots: true,
            ..SandboxConfig::default()
        },
        "true",
        vec![],
    );
    let err = t.sandbox.start(&invalid).await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::InvalidConfig { field, .. } if field == "snapshots"),
        "{err}"
    );
    let sandbox = start(&t, &f).await;
    // Busy: a command runs.
    let running = sandbox
        .exec(&ExecConfig::shell(common::sleep_marker(410, kind)))
        .await
        .unwrap();
    let err = sandbox.snapshot().await.unwrap_err();
    assert_eq!(snapshot_kind(&err), Some(SnapshotErrorKind::Busy), "{err}");
    drop(running);
    // Processes: only gVisor.
    let with_processes = sandbox
        .snapshot_with(SnapshotOptions::default().processes(true))
        .await;
    match kind {
        OciRuntime::Gvisor => {
            let s = with_processes.expect("gVisor carries processes");
            assert!(s.has_processes());
        }
        _ => {
            let err = with_processes.unwrap_err();
            assert_eq!(
                snapshot_kind(&err),
                Some(SnapshotErrorKind::Unsupported),
                "{err}"
            );
        }
    }
    assert_eq!(sh_in(&sandbox, "echo alive").await, "alive\n");
    // Closed.
    sandbox.close().await;
    let err = sandbox.snapshot().await.unwrap_err();
    assert!(matches!(err, SandboxError::SandboxClosed { .. }), "{err}");
    let marker = common::sleep_marker(410, kind);
    close_and_check(&t, vec![plain, sandbox], Some(&marker)).await;
}

/// A counter loop started in the background before the snapshot: on gVisor it runs on in
/// each fork from its value at the checkpoint (and in the parent); on runc and crun the
/// snapshot ends it (no process state there), and the files stay.
async fn background_processes_through_a_snapshot(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let parent = start(&t, &f).await;
    let counter = ExecConfig::shell(
        "i=0; while :; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count; \
         sleep 0.02; done",
    );
    let pid = parent
        .exec_background(&counter)
        .await
        .expect("background start");
    assert!(pid > 1);
    let count = |s: &oci_sandbox::Sandbox| {
        let s = s.clone();
        async move {
            // 0 until the loop has written its first value.
            sh_in(&s, "cat /tmp/count 2>/dev/null || echo 0")
                .await
                .trim()
                .parse::<u64>()
                .unwrap()
        }
    };
    while count(&parent).await < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let before = count(&parent).await;
    let snap = parent
        .snapshot()
        .await
        .expect("snapshot with a background process");
    let after = count(&parent).await;
    assert!(after >= before, "{after} < {before}");
    let forks = [
        t.sandbox.start_from(&snap).await.unwrap(),
        t.sandbox.start_from(&snap).await.unwrap(),
    ];
    // By its command line, not its pid: a restarted container reuses pids (the check's own
    // shell may get the counter's old one). The pattern does not match itself.
    let alive = "grep -l 'count[.]new' /proc/[0-9]*/cmdline 2>/dev/null | grep -q . \
                 && echo alive || echo gone";
    match kind {
        OciRuntime::Gvisor => {
            // Each fork starts from the checkpoint's value, not from 0, and counts on.
            for fork in &forks {
                let first = count(fork).await;
                assert!(
                    first >= before,
                    "fork restarted its counter: {first} < {before}"
                );
                assert_eq!(sh_in(fork, alive).await, "alive\n");
            }
            let started = count(&forks[1]).await;
            // Independent: stopping one fork's loop stops neither the other's nor the parent's.
            sh_in(&forks[0], &format!("kill {pid}")).await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let stopped = count(&forks[0]).await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert_eq!(count(&forks[0]).await, stopped);
            assert!(
                count(&forks[1]).await > started,
                "the second fork's loop stopped"
            );
            assert_eq!(sh_in(&parent, alive).await, "alive\n");
            assert!(count(&parent).await > after, "the parent's loop stopped");
        }
        _ => {
            // The files are carried, the process is not: not in the forks, not in the parent.
            for sandbox in [&parent, &forks[0], &forks[1]] {
                let first = count(sandbox).await;
                assert!(first >= before, "{first} < {before}");
                assert_eq!(sh_in(sandbox, alive).await, "gone\n");
            }
        }
    }
    drop(snap);
    let [first, second] = forks;
    close_and_check(&t, vec![parent, first, second], None).await;
}

/// A background command that ends while the host attaches to a restored launcher (here: as
/// soon as it sees the attach's process, which `runsc exec` starts with no parent in the
/// sandbox) leaves the attach alone: the launcher once swept the last exec's leftovers at that
/// end and killed the attach in flight (`runsc exec` exited 137). On runc and crun the
/// snapshot ends the command and the forks simply start.
async fn a_background_command_ending_during_the_attach_leaves_it_alone(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let parent = start(&t, &f).await;
    // Shell builtins only (a fork per round would be too slow to see the attach): a process
    // other than the launcher whose parent is 0 is the attach.
    let watcher = ExecConfig::shell(
        "while :; do for s in /proc/[0-9]*/stat; do          read -r pid comm state ppid rest < $s 2>/dev/null || continue;          [ \"$ppid\" = 0 ] && [ \"$pid\" != 1 ] && exit 0; done; done",
    );
    parent.exec_background(&watcher).await.unwrap();
    let snap = parent.snapshot().await.expect("snapshot");
    let mut forks = Vec::new();
    for n in 0..3 {
        let fork = t.sandbox.start_from(&snap).await;
        forks.push(fork.unwrap_or_else(|e| panic!("fork {n}: {e}")));
    }
    for sandbox in forks.iter().chain([&parent]) {
        assert_eq!(sh_in(sandbox, "echo served").await, "served\n");
    }
    drop(snap);
    forks.push(parent);
    close_and_check(&t, forks, None).await;
}

/// A snapshot or restore whose future is dropped (a timeout) still finishes: the sandbox
/// works on with its files, and nothing is left once its handles are gone.
async fn dropped_snapshots_and_restores_leave_a_working_sandbox(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let sandbox = start(&t, &f).await;
    sh_in(&sandbox, "echo kept > /etc/state").await;
    let good = sandbox.snapshot().await.unwrap();
    for delay_ms in [0, 2, 10, 40] {
        let delay = std::time::Duration::from_millis(delay_ms);
        let _ = tokio::time::timeout(delay, sandbox.snapshot()).await;
        assert_eq!(sh_in(&sandbox, "cat /etc/state").await, "kept\n");
        sh_in(&sandbox, "echo changed > /etc/state").await;
        let _ = tokio::time::timeout(delay, sandbox.restore(&good)).await;
        // Whether the restore was done when its future went or not, it is done now.
        assert_eq!(sh_in(&sandbox, "cat /etc/state").await, "kept\n");
    }
    drop(good);
    close_and_check(&t, vec![sandbox], None).await;
}

/// An egress policy goes on through snapshots: the forwarder (a helper holding host sockets)
/// stops for the snapshot and starts again in the sandbox and in each fork; the parent's
/// event stream goes on.
async fn egress_goes_on_through_snapshots(kind: OciRuntime) {
    use common::egress::{LOOPBACK, Upstream, drain};
    use futures::StreamExt;
    let t = TestSandbox::new(kind).await;
    let (_dir, f) = busybox();
    let up = Upstream::start().await;
    let policy = oci_sandbox::EgressPolicy::new()
        .allow_domain("allowed.test")
        .resolve("allowed.test", &[LOOPBACK]);
    let config = NamespaceContainer::build_config(
        &SandboxConfig {
            network: oci_sandbox::Network::Egress(policy),
            ..snapshot_policy(&f)
        },
        "true",
        vec![],
    );
    let parent = t.sandbox.start(&config).await.expect("sandbox start");
    let mut events = parent.egress_events();
    // Through the proxy by hand (the image's busybox has nc; its wget crashes there).
    let fetch = |name: &str| {
        let get = |host: &str, path: &str| {
            format!(
                "printf 'GET http://{host}:{p}/{path} HTTP/1.1\\r\\nHost: {host}:{p}\\r\\n\
                 Connection: close\\r\\n\\r\\n' | nc 127.0.0.1 3128",
                p = up.port
            )
        };
        format!(
            "{} | tail -n 1; {} | head -n 1 | cut -d' ' -f2",
            get("allowed.test", name),
            get("denied.test", "")
        )
    };
    let reached = |name: &str| format!("hello from upstream /{name}\n403\n");
    assert_eq!(sh_in(&parent, &fetch("before")).await, reached("before"));
    let snap = parent.snapshot().await.expect("snapshot with egress");
    assert_eq!(sh_in(&parent, &fetch("after")).await, reached("after"));
    let fork = t.sandbox.start_from(&snap).await.expect("fork with egress");
    let mut fork_events = fork.egress_events();
    assert_eq!(sh_in(&fork, &fetch("fork")).await, reached("fork"));
    parent.restore(&snap).await.expect("restore with egress");
    assert_eq!(
        sh_in(&parent, &fetch("restored")).await,
        reached("restored")
    );
    // The parent's stream saw every decision, across the snapshot and the restore.
    let seen: Vec<String> = drain(&mut events, 6)
        .await
        .iter()
        .map(|e| format!("{}:{:?}", e.host, e.decision))
        .collect();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert!(fork_events.next().await.is_some());
    drop(snap);
    close_and_check(&t, vec![parent, fork], None).await;
}

on_every_runtime!(
    forks_see_the_snapshot_and_not_each_other,
    ten_forks_from_one_snapshot,
    restore_rolls_back_in_place,
    save_and_load,
    bad_snapshots_are_typed_errors,
    background_processes_through_a_snapshot,
    a_background_command_ending_during_the_attach_leaves_it_alone,
    dropped_snapshots_and_restores_leave_a_working_sandbox,
    egress_goes_on_through_snapshots,
);
