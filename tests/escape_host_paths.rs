//! The host side of `upload_dir` and `download_dir` under attack from *another* sandbox:
//! sandbox B's workdir (a host directory) is A's source or destination, and B swaps entries
//! there with links to host files and directories, as fast as it can, with
//! `renameat2(RENAME_EXCHANGE)` or with plain renames, while the host loops the transfer.
//! The host must never read or write through what B planted. A failure's message starts with
//! BREAK. (The same races without containers, thousands of rounds, are the unit tests of
//! `src/sys/host_tree.rs`.)

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{ContainerProcess, ExecConfig, OciRuntime, Sandbox, SandboxConfig, SandboxError};

/// How long the host loops a transfer against the swapping sandbox.
const RACE_FOR: Duration = Duration::from_secs(3);

/// The swaps B makes: pairs of names in its `/workspace` exchanged over and over, by
/// `RENAME_EXCHANGE` or by three plain renames; the count of those that succeeded goes to
/// `/tmp/swaps` every 200 or so.
const SWAPPER: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
mode, pairs = sys.argv[1], [p.split(':') for p in sys.argv[2:]]
os.chdir('/workspace')
n = told = 0
while True:
    for a, b in pairs:
        if mode == 'exchange':
            # Fails while another pair moved the parent away; it goes on.
            n += libc.renameat2(-100, a.encode(), -100, b.encode(), 2) == 0
        else:
            for x, y in ((a, a + '.t'), (b, a), (a + '.t', b)):
                try:
                    os.rename(x, y)
                    n += 1
                except OSError: pass
    if n - told >= 200:
        # By a rename: a read between a truncate and its write would see no count.
        open('/tmp/swaps.t', 'w').write(str(n))
        os.replace('/tmp/swaps.t', '/tmp/swaps')
        told = n
"#;

/// Whether `renameat2(RENAME_EXCHANGE)` works in `sandbox`: gVisor 20221219 answers
/// `EINVAL`, so there the plain-rename races are the attack (and if a later gVisor has it,
/// this says so and the exchange races run there too).
async fn has_rename_exchange(sandbox: &Sandbox) -> bool {
    let probe = "import ctypes, os\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 os.mkdir('/tmp/x1'); os.mkdir('/tmp/x2')\n\
                 r = libc.renameat2(-100, b'/tmp/x1', -100, b'/tmp/x2', 2)\n\
                 print(0 if r == 0 else ctypes.get_errno())";
    let out = common::exec_in(
        sandbox,
        &ExecConfig::new("/usr/bin/python3", &["-c", probe][..]),
    )
    .await;
    match out.trim() {
        "0" => true,
        "22" => false,
        other => panic!("renameat2(RENAME_EXCHANGE) failed with errno {other}"),
    }
}

/// Starts the swapper in `sandbox` and waits until it has swapped.
async fn swapper(sandbox: &Sandbox, mode: &str, pairs: &[&str]) -> ContainerProcess {
    let mut args = vec!["-c".to_owned(), SWAPPER.to_owned(), mode.to_owned()];
    args.extend(pairs.iter().map(|p| (*p).to_owned()));
    let process = sandbox
        .exec(&ExecConfig {
            timeout: Some(Duration::from_secs(600)),
            ..ExecConfig::new("/usr/bin/python3", args)
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while swaps(sandbox).await == 0 {
        assert!(Instant::now() < deadline, "the swapper never swapped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    process
}

/// How many rounds the swapper has made so far.
async fn swaps(sandbox: &Sandbox) -> u64 {
    match sandbox.read_file("/tmp/swaps").await {
        Ok(n) => String::from_utf8_lossy(&n).trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

/// A host directory holding a root-only secret file, standing for `/root` or `/etc`.
fn host_secret() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shadow");
    std::fs::write(&file, "root:SECRET-HASH:").unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    (dir, file)
}

async fn sandbox_with_workdir(t: &TestSandbox, workdir: &Path) -> Sandbox {
    t.start_sandbox(&SandboxConfig {
        workdir: Some(workdir.to_path_buf()),
        ..SandboxConfig::default()
    })
    .await
}

/// A uploads B's workdir over and over while B swaps a directory and a file with links to
/// a host directory and a host file.
async fn upload_from_another_sandbox(kind: OciRuntime, mode: &str) {
    let t = TestSandbox::new(kind).await;
    let (secret_dir, secret_file) = host_secret();
    let b_work = tempfile::tempdir().unwrap();
    let a = t.start_sandbox(&SandboxConfig::default()).await;
    let b = sandbox_with_workdir(&t, b_work.path()).await;
    common::sh_in(
        &b,
        &format!(
            "cd /workspace && mkdir d && echo plain > d/shadow && echo plain > f && \
             ln -s {} l && ln -s {} g",
            secret_dir.path().display(),
            secret_file.display()
        ),
    )
    .await;
    if mode == "exchange" && !has_rename_exchange(&b).await {
        assert_eq!(kind, OciRuntime::Gvisor, "no RENAME_EXCHANGE on {kind}");
        return;
    }
    let mut swapping = swapper(&b, mode, &["d:l", "f:g"]).await;
    let (mut done, mut failed, started) = (0, Vec::new(), Instant::now());
    while started.elapsed() < RACE_FOR {
        match a.upload_dir(b_work.path(), format!("/tmp/up{done}")).await {
            Ok(()) => {}
            Err(e) => failed.push(e.to_string()),
        }
        done += 1;
    }
    let rounds = swaps(&b).await;
    swapping.kill().await.ok();
    let got = common::sh_in(&a, "grep -rl SECRET /tmp 2>/dev/null | head -3; true").await;
    assert!(
        got.is_empty(),
        "BREAK ({mode}): sandbox A received the host's secret through B's links: {got} \
         ({done} uploads, {rounds} swaps)"
    );
    assert!(rounds >= 200, "the swapper made only {rounds} swaps");
    assert!(
        failed.len() < done,
        "no upload succeeded in {done}: {:?}",
        failed.first()
    );
    // Each upload that succeeded brought what was a real file or directory then.
    let listing = common::sh_in(&a, "cat /tmp/up*/f /tmp/up*/d/shadow 2>/dev/null | sort -u").await;
    assert!(
        listing.trim().is_empty() || listing.trim() == "plain",
        "{listing}"
    );
}

/// A downloads into B's workdir over and over while B swaps the destination's subdirectory,
/// and the destination itself, with links to a host directory.
async fn download_into_another_sandbox(kind: OciRuntime, mode: &str) {
    let t = TestSandbox::new(kind).await;
    let victim = tempfile::tempdir().unwrap(); // stands for /etc/cron.d
    let b_work = tempfile::tempdir().unwrap();
    let a = t.start_sandbox(&SandboxConfig::default()).await;
    let b = sandbox_with_workdir(&t, b_work.path()).await;
    common::sh_in(
        &a,
        "mkdir -p /tmp/out/sub && cd /tmp/out/sub && \
         for i in $(seq 1 3000); do echo '* * * * * root evil' > f$i; done",
    )
    .await;
    common::sh_in(
        &b,
        &format!(
            "cd /workspace && mkdir -p dl/sub && ln -s {v} dl/l && ln -s {v} dl2",
            v = victim.path().display()
        ),
    )
    .await;
    if mode == "exchange" && !has_rename_exchange(&b).await {
        assert_eq!(kind, OciRuntime::Gvisor, "no RENAME_EXCHANGE on {kind}");
        return;
    }
    let mut swapping = swapper(&b, mode, &["dl/sub:dl/l", "dl:dl2"]).await;
    let (mut done, mut succeeded, started) = (0, 0, Instant::now());
    while started.elapsed() < RACE_FOR || done < 2 {
        let r = a.download_dir("/tmp/out", b_work.path().join("dl")).await;
        match r {
            Ok(()) => succeeded += 1,
            Err(SandboxError::Io { .. }) => {}
            Err(other) => panic!("an untyped failure: {other}"),
        }
        done += 1;
    }
    let rounds = swaps(&b).await;
    swapping.kill().await.ok();
    let landed = std::fs::read_dir(victim.path()).unwrap().count();
    assert_eq!(
        landed, 0,
        "BREAK ({mode}): download_dir wrote {landed} files into a host directory through B's \
         links ({done} downloads, {succeeded} whole, {rounds} swaps)"
    );
    assert!(rounds >= 200, "the swapper made only {rounds} swaps");
}

async fn upload_races_rename_exchange(kind: OciRuntime) {
    upload_from_another_sandbox(kind, "exchange").await;
}

async fn upload_races_plain_renames(kind: OciRuntime) {
    upload_from_another_sandbox(kind, "rename").await;
}

async fn download_races_rename_exchange(kind: OciRuntime) {
    download_into_another_sandbox(kind, "exchange").await;
}

async fn download_races_plain_renames(kind: OciRuntime) {
    download_into_another_sandbox(kind, "rename").await;
}

/// A link B planted in its workdir is never followed by the host, even when the caller names
/// the path through it (the caller cannot know it is B's): a typed refusal, nothing written.
async fn a_planted_link_in_the_path_is_refused(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let (secret_dir, _) = host_secret();
    let b_work = tempfile::tempdir().unwrap();
    let a = t.start_sandbox(&SandboxConfig::default()).await;
    let b = sandbox_with_workdir(&t, b_work.path()).await;
    common::sh_in(
        &b,
        &format!(
            "ln -s {} /workspace/input && mkdir /workspace/real",
            secret_dir.path().display()
        ),
    )
    .await;
    common::sh_in(&a, "mkdir -p /tmp/src && echo evil > /tmp/src/pwned").await;
    for path in [
        b_work.path().join("input"),
        b_work.path().join("input/sub"),
        b_work.path().join("real/../input"),
    ] {
        let up = a.upload_dir(&path, "/tmp/in").await;
        let down = a.download_dir("/tmp/src", &path).await;
        for r in [up, down] {
            match r {
                Err(SandboxError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::InvalidInput => {}
                other => panic!("BREAK: {} was not refused: {other:?}", path.display()),
            }
        }
    }
    assert_eq!(std::fs::read_dir(secret_dir.path()).unwrap().count(), 1);
    let got = common::sh_in(&a, "cat /tmp/in/shadow 2>/dev/null; true").await;
    assert!(!got.contains("SECRET"), "BREAK: {got}");
    // B's real directory is fine as a source and a destination, in both directions.
    a.download_dir("/tmp/src", b_work.path().join("real/x"))
        .await
        .unwrap();
    a.upload_dir(b_work.path().join("real"), "/tmp/back")
        .await
        .unwrap();
    assert_eq!(common::sh_in(&a, "cat /tmp/back/x/pwned").await, "evil\n");
}

on_every_runtime!(
    upload_races_rename_exchange,
    upload_races_plain_renames,
    download_races_rename_exchange,
    download_races_plain_renames,
    a_planted_link_in_the_path_is_refused,
);
