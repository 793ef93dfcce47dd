//! Attacks on the host side of `upload_dir` and `download_dir` (the attacker's review of
//! `sys::host_tree`) that need containers: a sandbox whose workdir is another sandbox's
//! upload source. A failure's message starts with BREAK. The archive- and fd-level attacks
//! (forged archives: huge long names and pax headers, implied directories, names past
//! PATH_MAX, sparse claims; swaps) are unit tests in `src/sys/host_tree_tests.rs`: a
//! sandbox cannot write into its download tar's stdout through `/proc/<tar>/fd/1` here
//! (the pipe is the host's: `EACCES`, as root or not), so the forged stream needs a tar of
//! the sandbox's own (an image's `/usr/bin/tar`, or `/etc/ld.so.preload` in a writable
//! root).

mod common;

use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{ExecConfig, OciRuntime, SandboxConfig, SandboxError};

/// B's workdir, A's upload source, holds a FIFO, a listening socket and a file under a
/// write lease (which an open by anyone else breaks: `O_NONBLOCK` makes that `EWOULDBLOCK`,
/// not a 45 s wait): the upload ends at once, the FIFO and the socket left out.
async fn special_files_in_another_sandboxs_dir_do_not_hang_an_upload(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let b_work = tempfile::tempdir().unwrap();
    let a = t.start_sandbox(&SandboxConfig::default()).await;
    let b = t
        .start_sandbox(&SandboxConfig {
            workdir: Some(b_work.path().to_path_buf()),
            ..SandboxConfig::default()
        })
        .await;
    let holder = "import fcntl, os, socket, time\n\
                  os.chdir('/workspace')\n\
                  os.mkfifo('fifo')\n\
                  s = socket.socket(socket.AF_UNIX); s.bind('sock'); s.listen()\n\
                  open('plain', 'w').write('plain')\n\
                  fd = os.open('leased', os.O_RDWR | os.O_CREAT)\n\
                  try:\n    fcntl.fcntl(fd, 1024, fcntl.F_WRLCK); r = 'leased'\n\
                  except OSError as e:\n    r = f'no lease: {e}'\n\
                  open('/tmp/ready.t', 'w').write(r); os.replace('/tmp/ready.t', '/tmp/ready')\n\
                  time.sleep(600)\n";
    let mut holding = b
        .exec(&ExecConfig {
            timeout: Some(Duration::from_secs(600)),
            ..ExecConfig::new("/usr/bin/python3", &["-c", holder][..])
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let lease = loop {
        if let Ok(r) = b.read_file("/tmp/ready").await {
            break String::from_utf8_lossy(&r).into_owned();
        }
        assert!(Instant::now() < deadline, "B never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        a.upload_dir(b_work.path(), "/tmp/in"),
    )
    .await
    .expect("BREAK: the upload hung on B's special files");
    let took = started.elapsed();
    holding.kill().await.ok();
    let on_host: Vec<_> = std::fs::read_dir(b_work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    eprintln!("lease: {lease}; upload: {r:?} in {took:?}; on the host: {on_host:?}");
    assert!(
        took < Duration::from_secs(5),
        "BREAK: the upload took {took:?}"
    );
    match r {
        Ok(()) => {}
        // A leased file the upload cannot open without waiting: a typed failure (B can make
        // an upload of its directory fail, as it can by deleting things; it cannot hang it).
        Err(SandboxError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::WouldBlock && lease == "leased" => {}
        Err(other) => panic!("BREAK: an unexpected failure: {other}"),
    }
    // Without the lease: the FIFO and the socket are left out.
    std::fs::remove_file(b_work.path().join("leased")).unwrap();
    a.upload_dir(b_work.path(), "/tmp/in2").await.unwrap();
    // (No `ls -l`: gVisor answers its statx with EINVAL.)
    let got = common::sh_in(
        &a,
        "for f in fifo sock plain; do [ -e /tmp/in2/$f ] && echo $f; done; cat /tmp/in2/plain",
    )
    .await;
    assert!(
        got == "plain\nplain",
        "BREAK: A got {got:?} from {on_host:?}"
    );
}

on_every_runtime!(special_files_in_another_sandboxs_dir_do_not_hang_an_upload,);
