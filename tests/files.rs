//! Files in and out of a long-lived sandbox, on every runtime: round trips, ownership,
//! confinement against planted links, full disks, concurrency, cancellation.

mod common;

use std::time::Duration;

use common::TestSandbox;
use futures::StreamExt;
use oci_sandbox::{FileEvent, FileKind, OciRuntime, SandboxConfig, SandboxError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes that are not text: every value, in a pattern that does not repeat quickly.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn io_kind(err: &SandboxError) -> std::io::ErrorKind {
    match err {
        SandboxError::Io { source, .. } => source.kind(),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

async fn binary_round_trips_of_every_size(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    for (i, len) in [0usize, 1, 64 * 1024 + 1].into_iter().enumerate() {
        let data = random_bytes(len, i as u64 + 7);
        let path = format!("/tmp/f{i}");
        sandbox.write_file(&path, &data).await.unwrap();
        assert_eq!(
            &sandbox.read_file(&path).await.unwrap()[..],
            &data[..],
            "{len} bytes"
        );
        let meta = sandbox.metadata(&path).await.unwrap();
        assert_eq!(
            (meta.kind, meta.size, meta.mode),
            (FileKind::File, len as u64, 0o644)
        );
        // What the sandbox sees is the same.
        assert_eq!(
            common::sh_in(&sandbox, &format!("wc -c < {path}"))
                .await
                .trim(),
            len.to_string()
        );
    }
    // 100 MiB streamed in and out.
    let big = random_bytes(100 << 20, 99);
    let mut writer = sandbox.create("/tmp/big").await.unwrap();
    for chunk in big.chunks(1 << 20) {
        writer.write_all(chunk).await.unwrap();
    }
    writer.finish().await.unwrap();
    let mut reader = sandbox.open("/tmp/big").await.unwrap();
    assert_eq!(reader.size(), big.len() as u64);
    let mut back = Vec::new();
    reader.read_to_end(&mut back).await.unwrap();
    assert!(back == big, "100 MiB came back different");
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

async fn directories_listing_rename_remove_and_typed_errors(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    sandbox.create_dir_all("/tmp/a/b/c").await.unwrap();
    sandbox.create_dir_all("/tmp/a/b/c").await.unwrap();
    sandbox.write_file("/tmp/a/b/one", "1").await.unwrap();
    sandbox
        .write_file("/tmp/a/b/name with spaces\nand a newline", "2")
        .await
        .unwrap();
    common::sh_in(&sandbox, "ln -s /etc/hostname /tmp/a/b/link").await;
    let mut names: Vec<(String, FileKind)> = sandbox
        .list_dir("/tmp/a/b")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.metadata.kind))
        .collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        names,
        [
            ("c".to_owned(), FileKind::Dir),
            ("link".to_owned(), FileKind::Symlink),
            ("name with spaces\nand a newline".to_owned(), FileKind::File),
            ("one".to_owned(), FileKind::File),
        ]
    );
    sandbox.rename("/tmp/a/b/one", "/tmp/a/two").await.unwrap();
    assert_eq!(&sandbox.read_file("/tmp/a/two").await.unwrap()[..], b"1");
    sandbox.remove("/tmp/a").await.unwrap();
    assert!(sandbox.list_dir("/tmp").await.unwrap().is_empty());
    // Typed errors, each with its path.
    let missing = sandbox.read_file("/tmp/nope").await.unwrap_err();
    assert_eq!(io_kind(&missing), std::io::ErrorKind::NotFound);
    assert!(missing.to_string().contains("/tmp/nope"), "{missing}");
    let no_dir = sandbox.write_file("/tmp/no/dir/f", "x").await.unwrap_err();
    assert_eq!(io_kind(&no_dir), std::io::ErrorKind::NotFound);
    sandbox.write_file("/tmp/file", "x").await.unwrap();
    let not_dir = sandbox.list_dir("/tmp/file").await.unwrap_err();
    assert_eq!(io_kind(&not_dir), std::io::ErrorKind::NotADirectory);
    let is_dir = sandbox.read_file("/tmp").await.unwrap_err();
    assert_eq!(io_kind(&is_dir), std::io::ErrorKind::IsADirectory);
    let read_only = sandbox.write_file("/usr/evil", "x").await.unwrap_err();
    assert!(
        matches!(
            io_kind(&read_only),
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
        ),
        "{read_only}"
    );
    match sandbox.read_file("relative").await.unwrap_err() {
        SandboxError::InvalidConfig { field, .. } => assert_eq!(field, "path"),
        other => panic!("{other}"),
    }
    // A FIFO planted at the path does not hang the read.
    common::sh_in(&sandbox, "mkfifo /tmp/fifo").await;
    let fifo = tokio::time::timeout(Duration::from_secs(5), sandbox.read_file("/tmp/fifo"))
        .await
        .expect("a FIFO hung the read")
        .unwrap_err();
    assert_eq!(io_kind(&fifo), std::io::ErrorKind::InvalidInput);
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// Links and `..` planted by the sandbox resolve inside it: the host's own files are never
/// read or written through them.
async fn planted_links_and_dot_dots_stay_inside_the_sandbox(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let workdir = tempfile::tempdir().unwrap();
    let sandbox = t
        .start_sandbox(&SandboxConfig {
            workdir: Some(workdir.path().to_path_buf()),
            ..SandboxConfig::default()
        })
        .await;
    let host_secret = std::fs::read("/etc/shadow").expect("the host has /etc/shadow");
    let host_hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    common::sh_in(
        &sandbox,
        "ln -s /etc/shadow /tmp/shadow; ln -s /proc/1/root/etc /workspace/etc; \
         ln -s ../../../../../../etc/shadow /workspace/up; ln -s /etc/passwd /tmp/victim",
    )
    .await;
    for path in [
        "/tmp/shadow",
        "/workspace/up",
        "/tmp/../../../etc/shadow",
        "/workspace/etc/shadow",
    ] {
        match sandbox.read_file(path).await {
            Ok(bytes) => assert!(
                bytes[..] != host_secret[..],
                "{path} read the host's shadow"
            ),
            // Not there, or (/proc/1/root: the launcher is not dumpable) not reachable.
            Err(e) => assert!(
                matches!(
                    io_kind(&e),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ),
                "{path}: {e}"
            ),
        }
    }
    // Through /proc/1/root the sandbox's own root is reached, not the host's.
    let hostname = sandbox.read_file("/workspace/etc/hostname").await;
    if let Ok(h) = hostname {
        assert!(host_hostname.is_empty() || h[..] != *host_hostname.as_bytes());
    }
    // A write at a link replaces the link; the file it pointed to is untouched.
    let passwd = common::sh_in(&sandbox, "cat /etc/passwd").await;
    sandbox.write_file("/tmp/victim", "replaced").await.unwrap();
    assert_eq!(common::sh_in(&sandbox, "cat /etc/passwd").await, passwd);
    assert_eq!(
        &sandbox.read_file("/tmp/victim").await.unwrap()[..],
        b"replaced"
    );
    assert_eq!(
        sandbox.metadata("/tmp/victim").await.unwrap().kind,
        FileKind::File
    );
    // Writing through a link into a directory the sandbox user may not write fails typed.
    let denied = sandbox
        .write_file("/workspace/etc/planted", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(
            io_kind(&denied),
            std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
        ),
        "{denied}"
    );
    assert!(!std::path::Path::new("/etc/planted").exists());
    // Removing a link to a host directory removes the link only.
    sandbox.remove("/workspace/etc").await.unwrap();
    assert!(std::path::Path::new("/etc/passwd").exists());
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// What the host writes is the sandbox user's, and what the sandbox writes is readable.
async fn ownership_is_the_sandbox_users_both_ways(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let workdir = tempfile::tempdir().unwrap();
    let sandbox = t
        .start_sandbox(&SandboxConfig {
            uid: 1000,
            gid: 1000,
            workdir: Some(workdir.path().to_path_buf()),
            ..SandboxConfig::default()
        })
        .await;
    // A file the host puts straight into the workdir, handed to the sandbox's host ids.
    let direct = workdir.path().join("direct.txt");
    std::fs::write(&direct, "host").unwrap();
    match sandbox.host_ids() {
        Some((uid, gid)) => {
            assert_ne!(uid, 1000, "the sandbox's user is not a host user");
            std::os::unix::fs::chown(&direct, Some(uid), Some(gid)).unwrap();
            assert_eq!(
                common::sh_in(
                    &sandbox,
                    "echo +box >> /workspace/direct.txt && cat /workspace/direct.txt"
                )
                .await,
                "host+box\n"
            );
        }
        None => assert_eq!(
            kind,
            OciRuntime::Gvisor,
            "runc and crun have a user namespace"
        ),
    }
    sandbox.write_file("/tmp/from-host", "a").await.unwrap();
    let meta = sandbox.metadata("/tmp/from-host").await.unwrap();
    assert_eq!((meta.uid, meta.gid), (1000, 1000));
    assert_eq!(
        common::sh_in(&sandbox, "echo b >> /tmp/from-host && cat /tmp/from-host").await,
        "ab\n"
    );
    common::sh_in(&sandbox, "echo private > /tmp/mine && chmod 600 /tmp/mine").await;
    assert_eq!(
        &sandbox.read_file("/tmp/mine").await.unwrap()[..],
        b"private\n"
    );
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A full /tmp is a typed error and leaves neither a partial file nor the old one changed;
/// a dropped write leaves nothing; concurrent writers each replace the file whole.
async fn full_disks_dropped_writes_and_concurrent_writers(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t
        .start_sandbox(&SandboxConfig {
            tmp_size: 1 << 20,
            ..SandboxConfig::default()
        })
        .await;
    sandbox.write_file("/tmp/keep", "old").await.unwrap();
    let full = sandbox
        .write_file("/tmp/keep", vec![7u8; 2 << 20])
        .await
        .unwrap_err();
    assert_eq!(io_kind(&full), std::io::ErrorKind::StorageFull, "{full}");
    assert_eq!(&sandbox.read_file("/tmp/keep").await.unwrap()[..], b"old");
    let names = |entries: Vec<oci_sandbox::DirEntry>| {
        let mut n: Vec<String> = entries.into_iter().map(|e| e.name).collect();
        n.sort();
        n
    };
    assert_eq!(names(sandbox.list_dir("/tmp").await.unwrap()), ["keep"]);
    // Dropped mid-write.
    let mut writer = sandbox.create("/tmp/dropped").await.unwrap();
    writer.write_all(&[1u8; 100_000]).await.unwrap();
    drop(writer);
    let mut left = Vec::new();
    for _ in 0..50 {
        left = names(sandbox.list_dir("/tmp").await.unwrap());
        if left == ["keep"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, ["keep"], "a dropped write left a file");
    // Eight writers of one file: it ends as one of them, whole.
    let writes = (0..8u8).map(|i| {
        let sandbox = sandbox.clone();
        async move { sandbox.write_file("/tmp/shared", vec![i; 50_000]).await }
    });
    for r in futures::future::join_all(writes).await {
        r.unwrap();
    }
    let shared = sandbox.read_file("/tmp/shared").await.unwrap();
    assert_eq!(shared.len(), 50_000);
    assert!(
        shared.iter().all(|b| *b == shared[0]),
        "writers interleaved"
    );
    // More requests at once than the launcher has helpers: they wait their turn.
    let many = (0..150u32).map(|i| {
        let sandbox = sandbox.clone();
        async move {
            let path = format!("/tmp/many-{i}");
            sandbox.write_file(&path, i.to_string()).await.unwrap();
            sandbox.read_file(&path).await.unwrap()
        }
    });
    for (i, back) in futures::future::join_all(many)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(&back[..], i.to_string().as_bytes());
    }
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A file the sandbox deletes while the host streams it comes whole (the open file lives on)
/// or fails: never short.
async fn a_file_deleted_while_streamed_comes_whole(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let data = random_bytes(8 << 20, 3);
    sandbox.write_file("/tmp/doomed", &data).await.unwrap();
    let mut reader = sandbox.open("/tmp/doomed").await.unwrap();
    let mut first = vec![0u8; 4096];
    reader.read_exact(&mut first).await.unwrap();
    common::sh_in(&sandbox, "rm /tmp/doomed").await;
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest).await {
        Ok(_) => {
            first.extend(rest);
            assert!(first == data, "a deleted file came back different");
        }
        Err(e) => panic!("{e}"),
    }
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

async fn directories_go_up_and_down_whole(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let up = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(up.path().join("src/deep/er")).unwrap();
    std::fs::write(
        up.path().join("src/deep/er/data.bin"),
        random_bytes(70_000, 5),
    )
    .unwrap();
    std::fs::write(up.path().join("run.sh"), "#!/bin/sh\necho ran\n").unwrap();
    std::fs::set_permissions(
        up.path().join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("src/deep", up.path().join("shortcut")).unwrap();
    for i in 0..200 {
        std::fs::write(up.path().join(format!("src/f{i}")), format!("{i}")).unwrap();
    }
    sandbox.upload_dir(up.path(), "/tmp/project").await.unwrap();
    assert_eq!(
        common::sh_in(&sandbox, "/tmp/project/run.sh").await,
        "ran\n"
    );
    assert_eq!(
        sandbox
            .metadata("/tmp/project/shortcut")
            .await
            .unwrap()
            .kind,
        FileKind::Symlink
    );
    assert_eq!(
        common::sh_in(&sandbox, "cat /tmp/project/shortcut/er/data.bin | wc -c")
            .await
            .trim(),
        "70000"
    );
    common::sh_in(
        &sandbox,
        "echo made > /tmp/project/src/new.txt && rm /tmp/project/src/f7",
    )
    .await;
    let down = tempfile::tempdir().unwrap();
    sandbox
        .download_dir("/tmp/project", down.path())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(down.path().join("src/new.txt")).unwrap(),
        "made\n"
    );
    assert!(!down.path().join("src/f7").exists());
    assert_eq!(
        std::fs::read(down.path().join("src/deep/er/data.bin")).unwrap(),
        random_bytes(70_000, 5)
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(down.path().join("run.sh"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(down.path().join("shortcut")).unwrap(),
        std::path::Path::new("src/deep")
    );
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// The events of `events` up to `last` (included), each within 10 s.
async fn events_until(events: &mut oci_sandbox::FileEvents, last: FileEvent) -> Vec<FileEvent> {
    let mut seen = Vec::new();
    while !seen.contains(&last) {
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("no event within 10 s")
            .expect("the watch ended")
            .unwrap();
        seen.push(event);
    }
    seen
}

async fn watching_a_directory_sees_creates_writes_and_removes(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    sandbox.create_dir_all("/tmp/watched").await.unwrap();
    let mut events = sandbox.watch("/tmp/watched").await.unwrap();
    // Watches hold a helper each: a few at once, then a typed refusal.
    let mut more = Vec::new();
    for _ in 0..7 {
        more.push(sandbox.watch("/tmp").await.unwrap());
    }
    let refused = sandbox.watch("/tmp").await.unwrap_err();
    assert_eq!(
        io_kind(&refused),
        std::io::ErrorKind::QuotaExceeded,
        "{refused}"
    );
    drop(more);
    common::sh_in(
        &sandbox,
        "echo 1 > /tmp/watched/a; echo 2 >> /tmp/watched/a; rm /tmp/watched/a",
    )
    .await;
    let seen = events_until(&mut events, FileEvent::Removed("a".into())).await;
    assert_eq!(
        seen.first(),
        Some(&FileEvent::Created("a".into())),
        "{seen:?}"
    );
    assert!(seen.contains(&FileEvent::Modified("a".into())), "{seen:?}");
    // The file API's own temp files are not shown: a write is the path created.
    sandbox.write_file("/tmp/watched/b", b"x").await.unwrap();
    sandbox.remove("/tmp/watched/b").await.unwrap();
    let seen = events_until(&mut events, FileEvent::Removed("b".into())).await;
    assert_eq!(
        seen,
        [
            FileEvent::Created("b".into()),
            FileEvent::Removed("b".into())
        ],
        "the library's temp files showed (before: .osb-write-<pid> created, modified, moved)"
    );
    sandbox.remove("/tmp/watched").await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(e) = events.next().await {
            if e.unwrap() == FileEvent::WatchedPathGone {
                return true;
            }
        }
        false
    })
    .await
    .expect("the watch did not end with its path");
    assert!(end);
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// A recursive watch names changes anywhere below by their relative paths, directories made
/// after it started included.
async fn a_recursive_watch_sees_the_whole_tree(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    sandbox.create_dir_all("/tmp/tree/a/b").await.unwrap();
    let mut events = sandbox.watch_recursive("/tmp/tree").await.unwrap();
    sandbox
        .write_file("/tmp/tree/a/b/deep", b"1")
        .await
        .unwrap();
    sandbox.create_dir_all("/tmp/tree/new").await.unwrap();
    // The new directory's watch is added when its creation is read: wait for it.
    let mut seen = events_until(&mut events, FileEvent::Created("new".into())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sandbox
        .write_file("/tmp/tree/new/later", b"2")
        .await
        .unwrap();
    sandbox.remove("/tmp/tree/a/b/deep").await.unwrap();
    seen.extend(events_until(&mut events, FileEvent::Removed("a/b/deep".into())).await);
    for expected in [
        FileEvent::Created("a/b/deep".into()),
        FileEvent::Created("new".into()),
        FileEvent::Created("new/later".into()),
    ] {
        assert!(seen.contains(&expected), "{expected:?} not in {seen:?}");
    }
    assert!(
        !seen.iter().any(|e| format!("{e:?}").contains(".osb-write")),
        "{seen:?}"
    );
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

/// Attack on the recursive watch's helper (the sandbox shapes the tree it walks): more
/// directories than it watches, a link looping to its parent, a link out of the tree. The
/// watch starts within its deadline, follows no link (nothing outside is watched), stays
/// bounded (8192 directories; the kernel's per-user limit may stop it earlier), and still
/// reports changes; the file API goes on working.
async fn a_recursive_watch_survives_a_hostile_tree(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.start_sandbox(&SandboxConfig::default()).await;
    let shape = "import os\n\
                 os.makedirs('/tmp/outside/x')\n\
                 for i in range(9000): os.makedirs(f'/tmp/tree/d{i}')\n\
                 os.symlink('/tmp/tree', '/tmp/tree/d0/loop')\n\
                 os.symlink('/tmp/outside', '/tmp/tree/out')\n";
    common::exec_in(
        &sandbox,
        &oci_sandbox::ExecConfig::new("/usr/bin/python3", &["-c", shape][..]),
    )
    .await;
    let started = std::time::Instant::now();
    let mut events = sandbox.watch_recursive("/tmp/tree").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // Through the link out of the tree: not watched.
    sandbox
        .write_file("/tmp/outside/x/secret", b"s")
        .await
        .unwrap();
    // Past the bound some directories go unwatched (which is said in the docs); the top
    // always is.
    sandbox.write_file("/tmp/tree/seen", b"1").await.unwrap();
    let seen = events_until(&mut events, FileEvent::Created("seen".into())).await;
    assert!(
        !seen.iter().any(|e| format!("{e:?}").contains("secret")),
        "a link was followed: {seen:?}"
    );
    assert_eq!(
        sandbox.read_file("/tmp/tree/seen").await.unwrap(),
        &b"1"[..]
    );
    drop(events);
    sandbox.close().await;
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    a_recursive_watch_survives_a_hostile_tree,
    a_recursive_watch_sees_the_whole_tree,
    binary_round_trips_of_every_size,
    directories_listing_rename_remove_and_typed_errors,
    planted_links_and_dot_dots_stay_inside_the_sandbox,
    ownership_is_the_sandbox_users_both_ways,
    full_disks_dropped_writes_and_concurrent_writers,
    a_file_deleted_while_streamed_comes_whole,
    directories_go_up_and_down_whole,
    watching_a_directory_sees_creates_writes_and_removes,
);
