//! Durable sandboxes on every runtime: named sandboxes that outlive their handle and their
//! process (a clean exit, a `SIGKILL`), pause, hibernate and resume, idle sleeps, two
//! connects racing, volumes shared and size-limited, and bad input as typed errors.

mod common;

use std::time::Duration;

use common::{TestSandbox, sh_in};
use oci_sandbox::{
    ExecConfig, HibernateOptions, NamespaceContainer, OciRuntime, SandboxConfig, SandboxError,
    SandboxState, SessionErrorKind, VolumeMount, VolumeOptions,
};

fn named(name: &str) -> SandboxConfig {
    SandboxConfig {
        name: Some(name.to_owned()),
        labels: [("owner".to_owned(), "tests".to_owned())].into(),
        ..SandboxConfig::default()
    }
}

fn session_kind(err: &SandboxError) -> Option<SessionErrorKind> {
    match err {
        SandboxError::Session { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// A second `NamespaceContainer` on the same state and data dirs: what a later process sees.
async fn again(t: &TestSandbox, kind: OciRuntime) -> NamespaceContainer {
    NamespaceContainer::builder()
        .runtime(kind)
        .state_dir(t.state.path())
        .capture_dir(t.state.path().join("captures"))
        .data_dir(t.sandbox.data_dir())
        .build()
        .await
        .expect("a second runtime handle")
}

/// Files written in /workspace and /tmp survive the handle; the listing follows the states;
/// a clone of the held handle comes back from `connect` in the same process.
async fn named_sandbox_outlives_its_handle(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.sandbox.create(&named("keep")).await.expect("create");
    assert_eq!(sandbox.name(), Some("keep"));
    assert_eq!(
        sh_in(
            &sandbox,
            "pwd; echo w > w.txt; echo t > /tmp/t.txt; cat w.txt"
        )
        .await,
        "/workspace\nw\n"
    );
    sandbox
        .write_file("/workspace/api.txt", "by the file api")
        .await
        .expect("write_file");
    let listed = t.sandbox.sandboxes().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "keep");
    assert_eq!(listed[0].state, SandboxState::Running);
    assert_eq!(
        listed[0].labels.get("owner").map(String::as_str),
        Some("tests")
    );
    assert!(listed[0].disk_bytes > 0);
    // Held here: connect gives the same sandbox.
    let same = t.sandbox.connect("keep").await.expect("connect while held");
    assert_eq!(same.id(), sandbox.id());
    drop(same);
    sandbox.close().await;
    let listed = t.sandbox.sandboxes().await.expect("list");
    assert_eq!(listed[0].state, SandboxState::Hibernated);
    // Another handle (a later process's view) gets it back, files and all.
    let later = again(&t, kind).await;
    let back = later.connect("keep").await.expect("connect after close");
    assert_eq!(
        sh_in(&back, "cat w.txt /tmp/t.txt /workspace/api.txt").await,
        "w\nt\nby the file api"
    );
    // While the later handle holds it, this one cannot.
    let err = t.sandbox.connect("keep").await.expect_err("held elsewhere");
    assert_eq!(session_kind(&err), Some(SessionErrorKind::InUse), "{err}");
    back.close().await;
    later.remove_sandbox("keep").await.expect("remove");
    assert!(t.sandbox.sandboxes().await.unwrap().is_empty());
    let err = t.sandbox.connect("keep").await.expect_err("removed");
    assert_eq!(
        session_kind(&err),
        Some(SessionErrorKind::NotFound),
        "{err}"
    );
    later.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// Twenty hibernate/resume cycles: every file written before each is there after it; on
/// gVisor a counter process is carried through each one.
async fn hibernate_resume_cycles(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.sandbox.create(&named("cycles")).await.expect("create");
    if kind == OciRuntime::Gvisor {
        let counter = "i=0; while :; do i=$((i+1)); echo $i > /workspace/.n.tmp; mv /workspace/.n.tmp /workspace/n; sleep 0.05; done";
        sandbox
            .exec_background(&ExecConfig::shell(counter))
            .await
            .expect("counter");
    }
    let mut last = 0u64;
    for round in 0..20 {
        sh_in(
            &sandbox,
            &format!("echo {round} > /workspace/r{round}; echo {round} > /tmp/t{round}"),
        )
        .await;
        sandbox.hibernate().await.expect("hibernate");
        assert_eq!(sandbox.state(), SandboxState::Hibernated);
        assert!(sandbox.ended().is_none());
        // No container, no process left for it.
        assert!(t.sandbox.list().await.unwrap().is_empty());
        assert!(sandbox.usage().await.is_none());
        // The next call resumes it.
        let seen = sh_in(
            &sandbox,
            "cat /workspace/r* /tmp/t* | sort -n | tr '\\n' ' '",
        )
        .await;
        let want: String = (0..=round)
            .map(|i| format!("{i} "))
            .collect::<Vec<_>>()
            .join("");
        let mut want_sorted: Vec<u32> = (0..=round).collect();
        want_sorted.extend(0..=round);
        want_sorted.sort();
        let want_both: String = want_sorted.iter().map(|i| format!("{i} ")).collect();
        assert_eq!(seen, want_both, "round {round} ({want})");
        assert_eq!(sandbox.state(), SandboxState::Running);
        if kind == OciRuntime::Gvisor {
            // The counter runs on from where it was.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let n: u64 = sh_in(&sandbox, "cat /workspace/n")
                .await
                .trim()
                .parse()
                .unwrap();
            assert!(
                n > last,
                "round {round}: the counter went from {last} to {n}"
            );
            last = n;
        }
    }
    if kind != OciRuntime::Gvisor {
        let err = sandbox
            .hibernate_with(HibernateOptions::default().processes(true))
            .await
            .expect_err("processes on runc/crun");
        assert_eq!(
            session_kind(&err),
            Some(SessionErrorKind::Unsupported),
            "{err}"
        );
    }
    sandbox.close().await;
    t.sandbox.remove_sandbox("cycles").await.expect("remove");
    t.assert_nothing_left(&[], None).await;
}

/// A paused sandbox uses no CPU; a call resumes it; pause and resume take milliseconds.
async fn pause_stops_cpu(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    sandbox
        .exec_background(&ExecConfig::shell("while :; do :; done"))
        .await
        .expect("spinner");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let begun = std::time::Instant::now();
    sandbox.pause().await.expect("pause");
    let paused_in = begun.elapsed();
    assert_eq!(sandbox.state(), SandboxState::Paused);
    let before = sandbox.usage().await.and_then(|u| u.cpu).expect("cpu");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = sandbox.usage().await.and_then(|u| u.cpu).expect("cpu");
    assert_eq!(before, after, "a paused sandbox used CPU");
    let begun = std::time::Instant::now();
    sandbox.resume().await.expect("resume");
    let resumed_in = begun.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = sandbox.usage().await.and_then(|u| u.cpu).expect("cpu");
    assert!(later > after, "the resumed spinner did not run");
    // A call resumes a paused sandbox by itself.
    sandbox.pause().await.expect("pause again");
    assert_eq!(sh_in(&sandbox, "echo awake").await, "awake\n");
    assert_eq!(sandbox.state(), SandboxState::Running);
    assert!(
        paused_in < Duration::from_millis(500) && resumed_in < Duration::from_millis(500),
        "pause {paused_in:?}, resume {resumed_in:?}"
    );
    // Close works on a paused sandbox (frozen tasks die once thawed).
    sandbox.pause().await.expect("pause before close");
    let id = sandbox.id().to_owned();
    tokio::time::timeout(Duration::from_secs(10), sandbox.close())
        .await
        .expect("close of a paused sandbox");
    t.assert_nothing_left(&[&id], None).await;
}

/// `idle_hibernate` fires when nothing runs, and the next exec resumes; `idle_pause` too.
async fn idle_sleeps_fire_and_the_next_call_resumes(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let config = SandboxConfig {
        idle_hibernate: Some(Duration::from_millis(600)),
        ..named("idle")
    };
    let sandbox = t.sandbox.create(&config).await.expect("create");
    sh_in(&sandbox, "echo kept > k").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sandbox.state() != SandboxState::Hibernated {
        assert!(
            std::time::Instant::now() < deadline,
            "idle_hibernate never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sh_in(&sandbox, "cat k").await, "kept\n");
    sandbox.close().await;
    t.sandbox.remove_sandbox("idle").await.unwrap();
    let paused = t
        .start_sandbox(&SandboxConfig {
            idle_pause: Some(Duration::from_millis(300)),
            ..SandboxConfig::default()
        })
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while paused.state() != SandboxState::Paused {
        assert!(
            std::time::Instant::now() < deadline,
            "idle_pause never fired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sh_in(&paused, "echo up").await, "up\n");
    paused.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// Two handles connecting at once: one gets the sandbox, the other `InUse`.
async fn two_connects_race(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.sandbox.create(&named("race")).await.expect("create");
    sh_in(&sandbox, "echo 1 > one").await;
    sandbox.close().await;
    let (a, b) = (again(&t, kind).await, again(&t, kind).await);
    let (ra, rb) = tokio::join!(a.connect("race"), b.connect("race"));
    let (won, lost) = match (ra, rb) {
        (Ok(s), Err(e)) | (Err(e), Ok(s)) => (s, e),
        (Ok(_), Ok(_)) => panic!("both connects won"),
        (Err(e1), Err(e2)) => panic!("both lost: {e1}; {e2}"),
    };
    assert_eq!(session_kind(&lost), Some(SessionErrorKind::InUse), "{lost}");
    assert_eq!(sh_in(&won, "cat one").await, "1\n");
    won.close().await;
    t.sandbox.remove_sandbox("race").await.unwrap();
    a.close().await;
    b.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A volume shared by two sandboxes (of different id ranges), read-only in one, kept after
/// both are removed; a size limit enforced.
async fn volumes_are_shared_kept_and_limited(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    t.sandbox
        .create_volume("shared", &VolumeOptions::default())
        .await
        .expect("volume");
    t.sandbox
        .create_volume("small", &VolumeOptions::size_limit(32 << 20))
        .await
        .expect("sized volume");
    let writer = SandboxConfig {
        volumes: vec![
            VolumeMount::new("shared", "/data"),
            VolumeMount::new("small", "/small"),
        ],
        ..named("writer")
    };
    let reader = SandboxConfig {
        volumes: vec![VolumeMount::read_only("shared", "/data")],
        ..SandboxConfig::default()
    };
    let a = t.sandbox.create(&writer).await.expect("writer");
    let b = t.sandbox.create(&reader).await.expect("reader");
    sh_in(
        &a,
        "echo from-a > /data/a; mkdir /data/d; echo x > /data/d/x",
    )
    .await;
    assert_eq!(sh_in(&b, "cat /data/a /data/d/x").await, "from-a\nx\n");
    let denied = sh_in(&b, "echo no > /data/b 2>&1 || echo refused").await;
    assert!(denied.contains("refused"), "{denied}");
    // The file API works on a volume.
    a.write_file("/data/api", "api")
        .await
        .expect("write into a volume");
    assert_eq!(&b.read_file("/data/api").await.expect("read")[..], b"api");
    // The size limit holds.
    let full = sh_in(
        &a,
        "dd if=/dev/zero of=/small/big bs=1M count=64 2>&1; echo rc=$?; du -k /small/big",
    )
    .await;
    assert!(full.contains("No space left"), "{full}");
    let kib: u64 = full
        .lines()
        .last()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(kib <= 32 << 10, "{full}");
    let err = t.sandbox.remove_volume("shared").await.expect_err("in use");
    assert_eq!(session_kind(&err), Some(SessionErrorKind::InUse), "{err}");
    a.close().await;
    b.close().await;
    t.sandbox.remove_sandbox("writer").await.unwrap();
    // Kept after both sandboxes are gone, and mounted again into a new one.
    let c = t
        .sandbox
        .create(&SandboxConfig {
            volumes: vec![VolumeMount::new("shared", "/v")],
            ..SandboxConfig::default()
        })
        .await
        .expect("third");
    assert_eq!(sh_in(&c, "cat /v/a /v/api").await, "from-a\napi");
    c.close().await;
    let listed = t.sandbox.volumes().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .any(|v| v.name == "small" && v.size_limit == Some(32 << 20))
    );
    for v in ["shared", "small"] {
        t.sandbox.remove_volume(v).await.expect("remove volume");
    }
    assert!(t.sandbox.volumes().await.unwrap().is_empty());
    t.assert_nothing_left(&[], None).await;
}

/// Bad input: typed errors, nothing left behind.
async fn bad_input_is_typed(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    for bad in ["", "Upper", "../x", ".hidden", "a/b", &"x".repeat(64)] {
        let err = t.sandbox.create(&named(bad)).await.expect_err(bad);
        assert!(
            matches!(err, SandboxError::InvalidConfig { ref field, .. } if field == "name"),
            "{bad}: {err}"
        );
    }
    let err = t.sandbox.connect("nobody").await.expect_err("unknown");
    assert_eq!(
        session_kind(&err),
        Some(SessionErrorKind::NotFound),
        "{err}"
    );
    let first = t.sandbox.create(&named("taken")).await.expect("create");
    let err = t
        .sandbox
        .create(&named("taken"))
        .await
        .expect_err("name in use");
    assert_eq!(session_kind(&err), Some(SessionErrorKind::Exists), "{err}");
    first.close().await;
    let err = t
        .sandbox
        .create(&named("taken"))
        .await
        .expect_err("name on disk");
    assert_eq!(session_kind(&err), Some(SessionErrorKind::Exists), "{err}");
    // A corrupt record.
    let record = t.sandbox.data_dir().join("sessions/taken/record.json");
    std::fs::write(&record, b"{not json").unwrap();
    let err = t.sandbox.connect("taken").await.expect_err("corrupt");
    assert_eq!(session_kind(&err), Some(SessionErrorKind::Corrupt), "{err}");
    t.sandbox
        .remove_sandbox("taken")
        .await
        .expect("a corrupt sandbox is removable");
    // A workdir, a missing volume, an unnamed hibernation, an idle_hibernate without a name.
    let dir = tempfile::tempdir().unwrap();
    let err = t
        .sandbox
        .create(&SandboxConfig {
            workdir: Some(dir.path().to_path_buf()),
            ..named("wd")
        })
        .await
        .expect_err("workdir");
    assert!(
        matches!(err, SandboxError::InvalidConfig { ref field, .. } if field == "workdir"),
        "{err}"
    );
    let err = t
        .sandbox
        .create(&SandboxConfig {
            volumes: vec![VolumeMount::new("missing", "/m")],
            ..named("novol")
        })
        .await
        .expect_err("missing volume");
    assert_eq!(
        session_kind(&err),
        Some(SessionErrorKind::NotFound),
        "{err}"
    );
    let unnamed = t.start_sandbox(&SandboxConfig::default()).await;
    let err = unnamed.hibernate().await.expect_err("unnamed");
    assert_eq!(
        session_kind(&err),
        Some(SessionErrorKind::Unsupported),
        "{err}"
    );
    unnamed.close().await;
    let err = t
        .sandbox
        .create(&SandboxConfig {
            idle_hibernate: Some(Duration::from_secs(1)),
            ..SandboxConfig::default()
        })
        .await
        .expect_err("idle_hibernate without a name");
    assert!(matches!(err, SandboxError::InvalidConfig { .. }), "{err}");
    // Another runtime's sandbox.
    let other = if kind == OciRuntime::Runc {
        OciRuntime::Crun
    } else {
        OciRuntime::Runc
    };
    let mine = t.sandbox.create(&named("mine")).await.unwrap();
    mine.close().await;
    let theirs = again(&t, other).await;
    let err = theirs.connect("mine").await.expect_err("another runtime's");
    assert_eq!(
        session_kind(&err),
        Some(SessionErrorKind::Mismatch),
        "{err}"
    );
    theirs.close().await;
    t.sandbox.remove_sandbox("mine").await.unwrap();
    // Nothing left: no session, no half-made one.
    let left: Vec<_> = std::fs::read_dir(t.sandbox.data_dir().join("sessions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    t.assert_nothing_left(&[], None).await;
}

/// A hibernated sandbox holds no image layer: a prune removes them, and the resume unpacks
/// them again from the image's source. With the source gone too, the resume is a typed
/// `Image` error that starts nothing, and the sandbox stays hibernated and removable.
async fn a_hibernated_sandbox_whose_image_was_pruned(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let dir = tempfile::Builder::new()
        .prefix("osb-test-pruned-")
        .tempdir()
        .unwrap();
    let image = common::images::busybox_layout(&dir.path().join("busybox"));
    let config = SandboxConfig {
        image: Some(oci_sandbox::Image::OciLayout {
            path: image.layout.clone(),
            reference: image.tag.clone(),
        }),
        ..named("pruned")
    };
    let sandbox = t.sandbox.create(&config).await.expect("create");
    let greeting = sh_in(&sandbox, "echo kept > /workspace/f; echo $GREETING").await;
    assert_eq!(greeting.trim(), "hello-from-image");
    sandbox.hibernate().await.expect("hibernate");
    let removed = t.sandbox.prune_images().await.unwrap();
    assert!(!removed.is_empty(), "a hibernated sandbox kept its layers");
    assert_eq!(sh_in(&sandbox, "cat /workspace/f").await.trim(), "kept");
    sandbox.hibernate().await.expect("hibernate again");
    assert!(!t.sandbox.prune_images().await.unwrap().is_empty());
    std::fs::remove_dir_all(&image.layout).unwrap();
    let err = sandbox
        .exec(&ExecConfig::shell("true"))
        .await
        .expect_err("no image to resume on");
    assert!(matches!(err, SandboxError::Image { .. }), "{err}");
    assert!(
        t.sandbox.list().await.unwrap().is_empty(),
        "a container started"
    );
    let listed = t.sandbox.sandboxes().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, SandboxState::Hibernated);
    drop(sandbox);
    t.sandbox.remove_sandbox("pruned").await.expect("remove");
    t.assert_nothing_left(&[], None).await;
}

/// With `max_running`, the least recently used idle sandbox hibernates for a new one, and
/// resumes when called again.
async fn max_running_hibernates_the_least_recently_used(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let capped = NamespaceContainer::builder()
        .runtime(kind)
        .state_dir(t.state.path())
        .capture_dir(t.state.path().join("captures"))
        .data_dir(t.sandbox.data_dir())
        .max_running(2)
        .build()
        .await
        .unwrap();
    let mut all = Vec::new();
    for i in 0..4 {
        let s = capped
            .create(&named(&format!("s{i}")))
            .await
            .expect("create");
        sh_in(&s, &format!("echo {i} > me")).await;
        all.push(s);
    }
    let running = |all: &[oci_sandbox::Sandbox]| {
        all.iter()
            .filter(|s| s.state() == SandboxState::Running)
            .count()
    };
    assert_eq!(running(&all), 2);
    assert_eq!(all[0].state(), SandboxState::Hibernated);
    assert_eq!(all[1].state(), SandboxState::Hibernated);
    // The oldest comes back, and another goes.
    assert_eq!(sh_in(&all[0], "cat me").await, "0\n");
    assert_eq!(running(&all), 2);
    assert_eq!(all[2].state(), SandboxState::Hibernated);
    for (i, s) in all.iter().enumerate() {
        assert_eq!(sh_in(s, "cat me").await, format!("{i}\n"));
        assert!(running(&all) <= 2);
    }
    for s in all {
        s.close().await;
    }
    for i in 0..4 {
        capped.remove_sandbox(&format!("s{i}")).await.unwrap();
    }
    capped.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A sandbox's own directories hold links to the host's files, a deep tree and a swapped
/// directory: the host's listing (disk use) and removal follow none of them and leave the
/// host's files alone; the data dir is the host's alone; set-id bits do not reach a volume.
async fn the_host_follows_nothing_in_a_sandboxs_directories(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let canary_dir = tempfile::tempdir().unwrap();
    let canary = canary_dir.path().join("canary");
    std::fs::write(&canary, vec![b'x'; 1 << 20]).unwrap();
    t.sandbox
        .create_volume("vol", &VolumeOptions::default())
        .await
        .unwrap();
    let config = SandboxConfig {
        volumes: vec![VolumeMount::new("vol", "/vol")],
        ..named("hostile")
    };
    let sandbox = t.sandbox.create(&config).await.expect("create");
    let script = format!(
        "ln -s {c} /workspace/to-canary; ln -s {d} /workspace/to-dir; ln -s / /tmp/root; \
         mkdir -p /workspace/deep && cd /workspace/deep && for i in $(seq 300); do mkdir d && cd d; done; \
         cd /workspace; ln -s /usr /vol/usr; \
         touch /vol/f; chmod 4755 /vol/f 2>/dev/null || echo setuid-refused; \
         grep ' /vol ' /proc/self/mounts | grep -q nosuid && echo vol-nosuid || echo vol-suid; \
         mv /workspace /elsewhere 2>/dev/null || echo workspace-stays",
        c = canary.display(),
        d = canary_dir.path().display()
    );
    let out = sh_in(&sandbox, &script).await;
    assert!(out.contains("setuid-refused"), "{out}");
    assert!(out.contains("workspace-stays"), "{out}");
    if kind != OciRuntime::Gvisor {
        assert!(out.contains("vol-nosuid"), "{out}");
    }
    // Disk use counts the sandbox's own files, not the 1 MiB canary nor /usr.
    let listed = t.sandbox.sandboxes().await.unwrap();
    assert!(listed[0].disk_bytes < 8 << 20, "{listed:?}");
    let vols = t.sandbox.volumes().await.unwrap();
    assert!(vols[0].used_bytes < 1 << 20, "{vols:?}");
    // The data dir and its stores are the host's alone.
    use std::os::unix::fs::PermissionsExt;
    for dir in ["sessions", "volumes", "sessions/hostile"] {
        let mode = std::fs::metadata(t.sandbox.data_dir().join(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{dir}: {mode:o}");
    }
    // The host's transfers from a sandbox's directory follow none of its links.
    let out_dir = tempfile::tempdir().unwrap();
    let from = t.sandbox.data_dir().join("sessions/hostile/workspace");
    let _ = sandbox.upload_dir(&from, "/tmp/copied").await;
    let leaked = sh_in(&sandbox, "cat /tmp/copied/to-canary/* 2>/dev/null | head -c 1; ls /tmp/copied 2>/dev/null | head -3; true").await;
    assert!(!leaked.starts_with('x'), "{leaked}");
    drop(out_dir);
    sandbox.close().await;
    t.sandbox.remove_sandbox("hostile").await.expect("remove");
    t.sandbox.remove_volume("vol").await.expect("remove volume");
    assert_eq!(std::fs::read(&canary).unwrap().len(), 1 << 20);
    assert!(canary_dir.path().exists());
    assert!(std::path::Path::new("/usr/bin/sh").exists());
    t.assert_nothing_left(&[], None).await;
}

/// Listing never makes a connect elsewhere fail; an idle pause never freezes a running
/// command; a paused sandbox dropped without a close goes away whole.
async fn listing_idle_pauses_and_drops_are_harmless(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let first = t.sandbox.create(&named("listed")).await.expect("create");
    first.close().await;
    let other = again(&t, kind).await;
    let lister = t.sandbox.clone();
    let listing = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        let mut n = 0;
        while std::time::Instant::now() < deadline {
            lister.sandboxes().await.unwrap();
            n += 1;
        }
        n
    });
    for _ in 0..10 {
        let s = other
            .connect("listed")
            .await
            .expect("a connect while listing");
        s.close().await;
    }
    assert!(listing.await.unwrap() > 10);
    // A handle dropped without a close: connect and remove right after still work.
    let dropped = other.connect("listed").await.unwrap();
    sh_in(&dropped, "echo kept > k").await;
    drop(dropped);
    let again_now = other
        .connect("listed")
        .await
        .expect("connect right after a drop");
    assert_eq!(sh_in(&again_now, "cat k").await, "kept\n");
    drop(again_now);
    other.remove_sandbox("listed").await.unwrap();
    other.close().await;
    // A command longer than the idle pause runs to its end.
    let paused = t
        .start_sandbox(&SandboxConfig {
            idle_pause: Some(Duration::from_millis(200)),
            ..SandboxConfig::default()
        })
        .await;
    let begun = std::time::Instant::now();
    let out = paused
        .exec(&ExecConfig::shell("sleep 1; echo finished"))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "finished\n");
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "{:?}",
        begun.elapsed()
    );
    // Dropped while paused: nothing is left.
    paused.pause().await.unwrap();
    let id = paused.id().to_owned();
    drop(paused);
    t.assert_nothing_left(&[&id], None).await;
}

fn runtime_flag(kind: OciRuntime) -> &'static str {
    match kind {
        OciRuntime::Crun => "crun",
        OciRuntime::Gvisor => "runsc",
        _ => "runc",
    }
}

/// The owner is another process: after its clean exit, and after a `SIGKILL` in the middle
/// of its writes, this process connects and finds every write of a completed call.
async fn connect_after_the_owner_exits_or_is_killed(kind: OciRuntime) {
    use std::io::BufRead;
    let t = TestSandbox::new(kind).await;
    let owner = |mode: &str| {
        let mut cmd = std::process::Command::new(common::example_binary("durable_session"));
        cmd.args(["--runtime", runtime_flag(kind)])
            .arg("--state")
            .arg(t.state.path())
            .arg("--data")
            .arg(t.sandbox.data_dir())
            .args([mode, "owned"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        cmd
    };
    // A clean exit: the example's own run (one exec, a hibernation, a close).
    let done = owner("run").output().expect("the owner ran");
    assert!(done.status.success(), "{done:?}");
    assert!(String::from_utf8_lossy(&done.stdout).contains("run 1 time"));
    let listed = t.sandbox.sandboxes().await.unwrap();
    assert_eq!(listed[0].state, SandboxState::Hibernated);
    let back = t
        .sandbox
        .connect("owned")
        .await
        .expect("connect after a clean exit");
    assert_eq!(sh_in(&back, "cat runs.txt").await, "run\n");
    back.close().await;
    // A SIGKILL while it writes.
    let mut child = owner("write").spawn().expect("the writing owner");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(i) = line.strip_prefix("wrote ") {
                let _ = tx.send(i.parse::<u32>().unwrap());
            }
        }
    });
    let mut last = 0;
    while last < 15 {
        last = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the owner writes");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    while let Ok(i) = rx.try_recv() {
        last = last.max(i);
    }
    let listed = t.sandbox.sandboxes().await.unwrap();
    assert_eq!(listed[0].state, SandboxState::Crashed, "{listed:?}");
    let later = again(&t, kind).await;
    let back = later.connect("owned").await.expect("connect after SIGKILL");
    let check = format!(
        "for i in $(seq 0 {last}); do test \"$(cat /workspace/f$i)\" = $i && test \"$(cat /tmp/g$i)\" = $i || echo missing $i; done; echo checked"
    );
    assert_eq!(sh_in(&back, &check).await, "checked\n");
    back.close().await;
    later.remove_sandbox("owned").await.unwrap();
    later.close().await;
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    listing_idle_pauses_and_drops_are_harmless,
    the_host_follows_nothing_in_a_sandboxs_directories,
    max_running_hibernates_the_least_recently_used,
    connect_after_the_owner_exits_or_is_killed,
    named_sandbox_outlives_its_handle,
    hibernate_resume_cycles,
    pause_stops_cpu,
    idle_sleeps_fire_and_the_next_call_resumes,
    two_connects_race,
    volumes_are_shared_kept_and_limited,
    bad_input_is_typed,
    a_hibernated_sandbox_whose_image_was_pruned,
);
