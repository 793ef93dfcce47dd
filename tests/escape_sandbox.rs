//! Attacks on long-lived sandboxes (`NamespaceContainer::start` + `Sandbox::exec*`) from the
//! commands exec'd in them, on runc, crun and runsc with the default hardened policy.
//!
//! An exec is untrusted: it runs as the sandbox's root (no capabilities) next to the
//! launcher that forks every exec, and it may run concurrently with, or before, other execs
//! that carry secrets or whose statuses the host trusts. Each test states what must hold
//! whatever the exec does: the host gets true statuses and outputs, secrets of one exec never
//! reach another through the library's machinery, nothing the exec makes lands on the host with
//! a dangerous mode, the host's own kernel quotas and fds are not consumed, the host never
//! hangs and never crashes, and nothing about the host leaks.
//!
//! The in-container programs are `python3 -c` or `sh -c` scripts that print one line per
//! attempt; the host asserts on those lines, so a failure message shows what the attack got.

mod common;

use std::future::Future;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{
    ContainerProcess, ExecConfig, ExitStatus, NamespaceContainer, OciRuntime, OutputMode, Sandbox,
    SandboxConfig, SandboxError, Stdio,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

/// Tests that measure process-wide or user-wide resources (this process's fd table, the host
/// root's kernel quotas) hold this exclusively; every other test holds it shared, so that
/// neither disturbs the other when the harness runs tests in parallel.
static EXCLUSIVE: LazyLock<tokio::sync::RwLock<()>> =
    LazyLock::new(|| tokio::sync::RwLock::new(()));

/// Bounds a step: a hang is a failure with a name, never a stuck test.
async fn within<T>(what: &str, limit: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?} (the host hung)"),
    }
}

const STEP: Duration = Duration::from_secs(60);

async fn start(t: &TestSandbox, policy: &SandboxConfig) -> Sandbox {
    within(
        "starting the sandbox",
        STEP,
        t.sandbox.start(&t.config_with(policy, "true", &[])),
    )
    .await
    .expect("sandbox start")
}

fn sh(script: &str) -> ExecConfig {
    ExecConfig::new("sh", vec!["-c".into(), script.into()])
}

fn py(script: &str) -> ExecConfig {
    ExecConfig::new("python3", vec!["-c".into(), script.into()])
}

/// What one exec gave back.
#[derive(Debug)]
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

async fn try_run(s: &Sandbox, exec: &ExecConfig) -> Result<Ran, SandboxError> {
    let out = s.exec(exec).await?.wait_with_output().await?;
    Ok(Ran {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `exec` to its end within `limit`; a library error or a hang is an `Err` saying which.
async fn attempt(s: &Sandbox, exec: &ExecConfig, limit: Duration) -> Result<Ran, String> {
    match tokio::time::timeout(limit, try_run(s, exec)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("error: {e:?}")),
        Err(_) => Err(format!("HUNG: no answer within {limit:?}")),
    }
}

/// Runs `exec` to its end (bounded); panics if the library fails.
async fn run(s: &Sandbox, exec: &ExecConfig, what: &str) -> Ran {
    within(what, STEP, try_run(s, exec))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A legitimate command in the same sandbox: it must run and answer truly.
async fn assert_sandbox_still_works(s: &Sandbox) {
    let r = run(
        s,
        &sh("echo fine > /tmp/legit && cat /tmp/legit && python3 -c 'print(6*7)'"),
        "a legitimate exec after the attack",
    )
    .await;
    assert!(r.status.success(), "{} / {}", r.status, r.stderr);
    assert_eq!(r.stdout, "fine\n42\n");
}

/// `n` random bytes as hex.
fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lines of `out` that start with `tag` followed by a space.
fn tagged<'a>(out: &'a str, tag: &str) -> Vec<&'a str> {
    let prefix = format!("{tag} ");
    out.lines()
        .filter(|l| l.starts_with(&prefix) || *l == tag)
        .collect()
}

/// Collects broken expectations, so that one run reports every one of them.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(&self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{} finding(s):\n  - {}\n--- context ---\n{context}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

/// A command left running in the sandbox whose stdout the host reads line by line.
struct Background {
    process: ContainerProcess,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: String,
}

impl Background {
    async fn start(s: &Sandbox, mut exec: ExecConfig) -> Self {
        exec.stderr = Stdio::Null;
        let mut process = within("starting a background exec", STEP, s.exec(&exec))
            .await
            .expect("background exec");
        let stdout = process.stdout.take().expect("piped stdout");
        Background {
            process,
            lines: tokio::io::BufReader::new(stdout).lines(),
            seen: String::new(),
        }
    }

    /// Reads lines until one starts with `tag`; false at end of output or after `limit`.
    async fn until(&mut self, tag: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    let hit = line.starts_with(tag);
                    self.seen.push_str(&line);
                    self.seen.push('\n');
                    if hit {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    }

    /// Closes its stdin (the scripts end on that), reads the rest of its output and waits
    /// for it, all bounded; kills it if it does not end.
    async fn finish(mut self, limit: Duration) -> (Option<ExitStatus>, String) {
        drop(self.process.stdin.take());
        let deadline = tokio::time::Instant::now() + limit;
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout_at(deadline, self.lines.next_line()).await
        {
            self.seen.push_str(&line);
            self.seen.push('\n');
        }
        let status = match tokio::time::timeout_at(deadline, self.process.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                self.process.start_kill();
                None
            }
        };
        (status, self.seen)
    }
}

/// Python shared by the scripts: a walk of the container's filesystem that skips the kernel's
/// and the host's read-only trees, and a real write probe (access() is not enough).
const PY_PRELUDE: &str = r#"
import ctypes, os, socket, stat, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(x) for x in a])
    return r, ctypes.get_errno()
def say(*a):
    print(*a, flush=True)
SKIP = ('/proc', '/sys', '/usr')
def walk():
    for root, dirs, files in os.walk('/'):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
        yield root, dirs, files
def sockets():
    found = []
    for root, dirs, files in walk():
        for name in files + dirs:
            p = os.path.join(root, name)
            try:
                if stat.S_ISSOCK(os.lstat(p).st_mode):
                    found.append(p)
            except OSError:
                pass
    return found
def writable(d):
    p = os.path.join(d, '.osb-probe-%d' % os.getpid())
    try:
        os.mkdir(p)
        os.rmdir(p)
        return True
    except OSError:
        pass
    try:
        os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(p)
        return True
    except OSError:
        return False
"#;

fn python(body: &str) -> ExecConfig {
    py(&format!("{PY_PRELUDE}\n{body}"))
}

/// Scratch places an exec may write to; anything else writable is the machinery's or the
/// host's, and must not be.
fn allowed_writable(dir: &str) -> bool {
    // gVisor's /dev/net (tun) lives in the Sentry's own devtmpfs, like /dev itself.
    matches!(
        dir,
        "/tmp" | "/dev" | "/dev/shm" | "/dev/mqueue" | "/dev/net"
    ) || dir.starts_with("/tmp/")
}

// ---------------------------------------------------------------------------------------------
// 1. Forged results and stolen secrets through the library's channel.

/// Takes over anything that looks like the launcher's endpoint, serves forged replies, and
/// reports what it received. Ends when the host closes its stdin (or after 25 s).
const FORGER: &str = r#"
import select, threading
# Anything inherited from the machinery?
for fd in range(3, 1024):
    try:
        say('MYFD', fd, os.readlink('/proc/self/fd/%d' % fd))
    except OSError:
        pass
found = sockets()
for p in found:
    say('SOCKET', p)
for root, dirs, files in walk():
    if writable(root):
        say('WRITABLE', root)
old = '/.oci-sandbox'
say('OLD-DIR', 'exists' if os.path.lexists(old) else 'absent',
    'writable' if os.path.isdir(old) and writable(old) else 'not-writable')
stolen = open('/tmp/osb-stolen', 'ab', buffering=0)
listeners = []
for path in found + [old + '/launcher.sock']:
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        l = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        l.bind(path)
        l.listen(128)
        listeners.append(l)
        say('BOUND', path)
    except OSError as e:
        say('BIND-REFUSED', path, e)
def serve(l):
    while True:
        try:
            c, _ = l.accept()
        except OSError:
            return
        try:
            msg, fds, flags, addr = socket.recv_fds(c, 1 << 18, 16)
            stolen.write(msg + b'\n')
            say('STOLEN', repr(msg))
            for fd in fds:
                try:
                    os.write(fd, b'forged\n')
                except OSError:
                    pass
            c.send(b'S 1')
            c.send(b'X 0')
        except OSError as e:
            say('SERVE-ERROR', e)
for l in listeners:
    threading.Thread(target=serve, args=(l,), daemon=True).start()
say('READY')
select.select([0], [], [], 25)
say('END')
"#;

async fn forged_results_and_stolen_secrets(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    let secret = random_hex(16);
    let marker = format!("true-output-{}", random_hex(4));
    let mut attacker_exec = python(FORGER);
    attacker_exec.timeout = Some(Duration::from_secs(45));
    let mut attacker = Background::start(&s, attacker_exec).await;
    let ready = attacker.until("READY", Duration::from_secs(40)).await;
    assert!(ready, "the attacker never got ready:\n{}", attacker.seen);

    let mut f = Findings::default();
    // The host's next commands, with the attacker still running.
    let limit = Duration::from_secs(12);
    let falsy = attempt(&s, &ExecConfig::new("false", vec![]), limit).await;
    f.check(
        matches!(&falsy, Ok(r) if r.status.code() == Some(1)),
        || format!("`false` must exit 1, got {falsy:?}"),
    );
    let echo = attempt(&s, &ExecConfig::new("echo", vec![marker.clone()]), limit).await;
    f.check(
        matches!(&echo, Ok(r) if r.status.success() && r.stdout == format!("{marker}\n")),
        || format!("`echo {marker}` must print it and succeed, got {echo:?}"),
    );
    let mut with_secret = sh("test -n \"$API_TOKEN\" && echo has-token");
    with_secret
        .env
        .push(("API_TOKEN".into(), format!("tok-{secret}")));
    let secretive = attempt(&s, &with_secret, limit).await;
    f.check(
        matches!(&secretive, Ok(r) if r.status.success() && r.stdout == "has-token\n"),
        || format!("the exec with API_TOKEN must see it, got {secretive:?}"),
    );

    let (status, said) = attacker.finish(Duration::from_secs(30)).await;
    eprintln!(
        "[{kind}] host saw: false -> {falsy:?}\necho -> {echo:?}\nsecret exec -> {secretive:?}\nattacker said:\n{said}"
    );
    let stolen = attempt(&s, &sh("cat /tmp/osb-stolen 2>/dev/null; echo EOF"), limit).await;
    let stolen = format!("{stolen:?}");
    f.check(status.is_some(), || "the attacker did not end".into());
    f.check(!said.contains(&secret) && !stolen.contains(&secret), || {
        "API_TOKEN reached the attacker".into()
    });
    f.check(tagged(&said, "STOLEN").is_empty(), || {
        format!("requests intercepted: {:?}", tagged(&said, "STOLEN"))
    });
    f.check(tagged(&said, "BOUND").is_empty(), || {
        format!(
            "listeners bound on the machinery's paths: {:?}",
            tagged(&said, "BOUND")
        )
    });
    f.check(tagged(&said, "SOCKET").is_empty(), || {
        format!(
            "unix sockets in the container's filesystem: {:?}",
            tagged(&said, "SOCKET")
        )
    });
    f.check(tagged(&said, "MYFD").is_empty(), || {
        format!("fds inherited by an exec: {:?}", tagged(&said, "MYFD"))
    });
    f.check(
        tagged(&said, "OLD-DIR")
            .iter()
            .all(|l| l.ends_with("not-writable")),
        || format!("/.oci-sandbox: {:?}", tagged(&said, "OLD-DIR")),
    );
    let writable: Vec<&str> = tagged(&said, "WRITABLE")
        .into_iter()
        .map(|l| &l["WRITABLE ".len()..])
        .filter(|d| !allowed_writable(d) || d.contains("oci-sandbox"))
        .collect();
    f.check(writable.is_empty(), || {
        format!("writable directories beyond the scratch places: {writable:?}")
    });
    f.assert_none(&format!("attacker said:\n{said}\nstolen file: {stolen}"));
    assert_sandbox_still_works(&s).await;
    s.close().await;
    t.sandbox.close().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Symlinks planted where the host would look for the launcher.

/// A host listener that must never get a connection.
struct Victim {
    _dir: tempfile::TempDir,
    seqpacket: std::os::fd::OwnedFd,
    seqpacket_path: PathBuf,
    stream: std::os::unix::net::UnixListener,
    stream_path: PathBuf,
}

impl Victim {
    fn bind() -> Self {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
        };
        let dir = tempfile::Builder::new()
            .prefix("osb-victim-")
            .tempdir_in("/tmp")
            .unwrap();
        let seqpacket_path = dir.path().join("victim.sock");
        let seqpacket = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            seqpacket.as_raw_fd(),
            &UnixAddr::new(&seqpacket_path).unwrap(),
        )
        .unwrap();
        listen(&seqpacket, Backlog::new(64).unwrap()).unwrap();
        let stream_path = dir.path().join("victim-stream.sock");
        let stream = std::os::unix::net::UnixListener::bind(&stream_path).unwrap();
        stream.set_nonblocking(true).unwrap();
        Victim {
            _dir: dir,
            seqpacket,
            seqpacket_path,
            stream,
            stream_path,
        }
    }

    /// Connections accepted within `window`.
    async fn connections(&self, window: Duration) -> usize {
        let deadline = Instant::now() + window;
        let mut n = 0;
        loop {
            while let Ok(fd) = nix::sys::socket::accept(self.seqpacket.as_raw_fd()) {
                let _ = nix::unistd::close(fd);
                n += 1;
            }
            while self.stream.accept().is_ok() {
                n += 1;
            }
            if Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn planted_symlinks_lead_nowhere(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let victim = Victim::bind();
    let s = start(&t, &SandboxConfig::default()).await;
    let script = format!(
        r#"
seq='{seq}'; stream='{stream}'; dir='{dir}'
mkdir -p /tmp/.oci-sandbox 2>/dev/null
for s in $(find / \( -path /proc -o -path /sys -o -path /usr \) -prune -o -type s -print 2>/dev/null) \
         /.oci-sandbox/launcher.sock /tmp/.oci-sandbox/launcher.sock; do
  rm -f "$s" 2>/dev/null
  if ln -s "$seq" "$s" 2>/dev/null; then echo "LINKED $s"; else echo "LINK-REFUSED $s"; fi
  if ln -s "$stream" "$s.stream" 2>/dev/null; then echo "LINKED $s.stream"; fi
done
if ln -s "$dir" /.oci-sandbox 2>/dev/null; then echo "LINKED /.oci-sandbox"; else echo "LINK-REFUSED /.oci-sandbox"; fi
echo DONE
"#,
        seq = victim.seqpacket_path.display(),
        stream = victim.stream_path.display(),
        dir = victim.seqpacket_path.parent().unwrap().display(),
    );
    let planted = run(&s, &sh(&script), "planting the links").await;
    assert!(planted.stdout.contains("DONE"), "{planted:?}");
    let mut f = Findings::default();
    let in_machinery: Vec<&str> = planted
        .stdout
        .lines()
        .filter(|l| l.starts_with("LINKED /.oci-sandbox"))
        .collect();
    f.check(in_machinery.is_empty(), || {
        format!("links planted in the machinery's paths: {in_machinery:?}")
    });
    // Later execs: they must work, and the host must follow none of the links.
    for i in 0..2 {
        let r = attempt(
            &s,
            &ExecConfig::new("echo", vec![format!("later-{i}")]),
            Duration::from_secs(15),
        )
        .await;
        f.check(
            matches!(&r, Ok(r) if r.status.success() && r.stdout == format!("later-{i}\n")),
            || format!("exec {i} after the links: {r:?}"),
        );
    }
    let connections = victim.connections(Duration::from_secs(2)).await;
    eprintln!(
        "[{kind}] planting said:\n{}victim connections: {connections}",
        planted.stdout
    );
    f.check(connections == 0, || {
        format!("the host's victim listener got {connections} connection(s) from the library")
    });
    f.assert_none(&format!("planting said:\n{}", planted.stdout));
    s.close().await;
    t.sandbox.close().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Forging the status of a concurrent exec through the launcher (PID 1).

const THIEF: &str = r#"
got = []
try:
    pidfd = os.pidfd_open(1)
    say('PIDFD-OPEN ok')
except OSError as e:
    r, err = sc(434, 1, 0)
    pidfd = r
    say('PIDFD-OPEN', 'ok' if r >= 0 else 'refused', os.strerror(err))
errors = set()
if pidfd >= 0:
    for n in range(65):
        r, err = sc(438, pidfd, n, 0)
        if r >= 0:
            say('GETFD', n, 'ok', os.readlink('/proc/self/fd/%d' % r))
            got.append(r)
        else:
            errors.add(os.strerror(err))
say('GETFD-ERRORS', sorted(errors))
for fd in got:
    try:
        s = socket.socket(fileno=os.dup(fd))
        s.send(b'X 0')
        say('SENT', fd)
    except OSError:
        try:
            os.write(fd, b'X 0')
            say('WROTE', fd)
        except OSError:
            pass
for mode, label in ((os.O_RDONLY, 'ro'), (os.O_RDWR, 'rw')):
    try:
        os.close(os.open('/proc/1/mem', mode))
        say('MEM', label, 'ok')
    except OSError as e:
        say('MEM', label, 'refused', e)
try:
    names = os.listdir('/proc/1/fd')
    say('FD-LIST ok', names)
except OSError as e:
    names = [str(n) for n in range(65)]
    say('FD-LIST refused', e)
for n in names:
    try:
        fd = os.open('/proc/1/fd/' + n, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        try:
            fd = os.open('/proc/1/fd/' + n, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
    st = os.fstat(fd)
    null = stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    say('PROC-FD', n, 'ok', 'null' if null else 'not-null', os.readlink('/proc/self/fd/%d' % fd))
    try:
        os.write(fd, b'X 0')
    except OSError:
        pass
r, err = sc(101, 16, 1, 0, 0)
say('PTRACE', 'ok' if r >= 0 else 'refused', os.strerror(err))
r, err = sc(101, 0x4206, 1, 0, 0)
say('PTRACE-SEIZE', 'ok' if r >= 0 else 'refused', os.strerror(err))
say('DONE')
"#;

async fn a_concurrent_exec_status_cannot_be_forged(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    let victim = within("starting the victim", STEP, s.exec(&sh("sleep 3; exit 1")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let thief = run(&s, &python(THIEF), "the thief").await;
    eprintln!("[{kind}] the thief said:\n{}", thief.stdout);
    let victim = within("the victim's status", STEP, victim.wait_with_output())
        .await
        .map(|o| o.status);
    let out = &thief.stdout;
    let mut f = Findings::default();
    f.check(out.contains("DONE"), || "the thief did not finish".into());
    f.check(matches!(&victim, Ok(s) if s.code() == Some(1)), || {
        format!("the victim exits 1, the host said {victim:?}")
    });
    let stolen: Vec<&str> = tagged(out, "GETFD")
        .into_iter()
        .filter(|l| l.contains(" ok"))
        .collect();
    f.check(stolen.is_empty(), || {
        format!("pidfd_getfd took the launcher's fds: {stolen:?}")
    });
    f.check(
        !out.contains("MEM ro ok") && !out.contains("MEM rw ok"),
        || "/proc/1/mem opened".into(),
    );
    // The launcher's stdio is /dev/null; anything else it holds (its channels, the control
    // socket, a command's pipes or PTY) must stay out of reach. (gVisor lists /proc/1/fd of a
    // non-dumpable process and opens its /dev/null: harmless.)
    let opened: Vec<&str> = tagged(out, "PROC-FD")
        .into_iter()
        .filter(|l| !l.contains(" ok null "))
        .collect();
    f.check(opened.is_empty(), || {
        format!("the launcher's fds opened through /proc/1/fd: {opened:?}")
    });
    f.check(
        !out.contains("PTRACE ok") && !out.contains("PTRACE-SEIZE ok"),
        || "ptrace attached to the launcher".into(),
    );
    f.assert_none(&format!("thief said:\n{out}\nstderr: {}", thief.stderr));
    assert_sandbox_still_works(&s).await;
    s.close().await;
    t.sandbox.close().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Floods: sockets, connections, processes. The host never hangs.

const SOCKET_FLOOD: &str = r#"
import select
targets = list(dict.fromkeys(sockets() + ['/.oci-sandbox/launcher.sock']))
def connect(s, t):
    # A full backlog answers EAGAIN: come back while the listener accepts, give up once it
    # has stopped accepting.
    give_up = time.time() + 0.3
    while True:
        try:
            s.connect(t)
            return True
        except BlockingIOError:
            if time.time() > give_up:
                return False
            time.sleep(0.002)
        except OSError:
            return False
def flood(n):
    held, connected = [], 0
    live = list(targets)
    deadline = time.time() + 10
    for i in range(n):
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:
            break
        s.setblocking(False)
        held.append(s)
        for t in list(live):
            if time.time() > deadline:
                break
            if connect(s, t):
                connected += 1
                break
            live.remove(t)
    return held, connected
r, w = os.pipe()
for k in range(3):
    if os.fork() == 0:
        os.close(r)
        held, c = flood(1000)
        os.write(w, b'%d/%d ' % (c, len(held)))
        time.sleep(15)
        os._exit(0)
os.close(w)
report = b''
deadline = time.time() + 20
while report.count(b'/') < 3 and time.time() < deadline:
    if select.select([r], [], [], 1)[0]:
        chunk = os.read(r, 100)
        if not chunk:
            break
        report += chunk
say('FLOOD connected/sockets per process:', report.decode(), 'targets:', targets)
say('READY')
time.sleep(15)
"#;

const PROCESS_HOLD: &str = r#"
n = 0
err = ''
try:
    for n in range(1, 5000):
        if os.fork() == 0:
            time.sleep(12)
            os._exit(0)
except OSError as e:
    err = str(e)
say('HELD', n, err)
time.sleep(12)
"#;

async fn floods_do_not_hang_the_host(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    // The host's next exec, with a 2 s timeout of its own: it must come back, one way or the
    // other, well within 10 s.
    let mut next = ExecConfig::new("echo", vec!["alive".into()]);
    next.timeout = Some(Duration::from_secs(2));
    let mut flood = Background::start(&s, python(SOCKET_FLOOD)).await;
    let flooding = flood.until("READY", Duration::from_secs(40)).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), try_run(&s, &next)).await;
    let took_sockets = started.elapsed();
    let after_sockets = format!("{answer:?} in {took_sockets:?}");
    let mut hold = Background::start(&s, python(PROCESS_HOLD)).await;
    let holding = hold.until("HELD", Duration::from_secs(30)).await;
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), try_run(&s, &next)).await;
    let took = started.elapsed();
    let context = format!(
        "flood ({flooding}):\n{}\nhold ({holding}):\n{}\nthe exec after the socket flood: {after_sockets}",
        flood.seen, hold.seen
    );
    assert!(
        took_sockets < Duration::from_secs(10),
        "the host's exec hung for {took_sockets:?} during the socket flood\n{context}"
    );
    assert!(
        answer.is_ok(),
        "the host's exec hung for {took:?} while the processes were held\n{context}"
    );
    eprintln!(
        "[{kind}] during the flood the host's exec answered {answer:?} in {took:?}\n{context}"
    );
    drop(flood);
    drop(hold);
    // gVisor's Sentry ends the whole sandbox (exit 2) when the pids cgroup keeps it from
    // making the host threads it needs: the sandbox is lost, which must be known promptly
    // (the exec during the hold failed; the sandbox reports its end within seconds; every
    // later exec says SandboxEnded), and a fresh sandbox must work.
    if kind == OciRuntime::Gvisor && matches!(answer, Ok(Err(_))) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.ended().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if kind == OciRuntime::Gvisor && s.ended().is_some() {
        let during = answer.unwrap();
        assert!(during.is_err(), "{during:?}");
        let after = within(
            "an exec in the ended sandbox",
            Duration::from_secs(10),
            try_run(&s, &ExecConfig::new("true", vec![])),
        )
        .await;
        assert!(
            matches!(after, Err(SandboxError::SandboxEnded { .. })),
            "{after:?}"
        );
        let fresh = start(&t, &SandboxConfig::default()).await;
        assert_sandbox_still_works(&fresh).await;
        fresh.close().await;
        t.sandbox.close().await;
        return;
    }
    // Once the floods are gone (their handles dropped), a normal exec works again.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut last = None;
    while Instant::now() < deadline {
        match within(
            "an exec after the flood",
            Duration::from_secs(15),
            try_run(&s, &ExecConfig::new("echo", vec!["back".into()])),
        )
        .await
        {
            Ok(r) if r.status.success() && r.stdout == "back\n" => {
                last = None;
                break;
            }
            other => last = Some(format!("{other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        last.is_none(),
        "no normal exec after the flood: {last:?}\nthe exec during the flood: {answer:?} in {took:?}\n{context}"
    );
    s.close().await;
    t.sandbox.close().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Host fds: nothing leaks, whatever the commands do with theirs.

fn open_fds() -> Vec<(i32, String)> {
    let mut fds: Vec<(i32, String)> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let n: i32 = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.display().to_string()))
        })
        .collect();
    fds.sort();
    fds
}

/// The fd count once it has stopped moving (background work of earlier tests winds down).
async fn settled_fd_count() -> usize {
    let mut last = open_fds().len();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = open_fds().len();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

const FD_GARBAGE: &str = r#"
held = []
for fd in range(0, 65):
    try:
        st = os.fstat(fd)
    except OSError:
        continue
    if fd > 2:
        say('HAVE', fd, stat.filemode(st.st_mode))
    try:
        os.write(fd, b'X 0\0S 1\0garbage' * 8)
    except OSError:
        pass
    if stat.S_ISSOCK(st.st_mode):
        try:
            s = socket.socket(fileno=os.dup(fd))
            s.setblocking(False)
            socket.send_fds(s, [b'X 0'], [0, 1, 2] * 80)
            say('SENT-FDS', fd)
        except OSError:
            pass
# The launcher's fds, if reachable: send it ours.
try:
    pidfd = os.pidfd_open(1)
    for n in range(65):
        r, err = sc(438, pidfd, n, 0)
        if r >= 0:
            try:
                s = socket.socket(fileno=r)
                s.setblocking(False)
                socket.send_fds(s, [b'X 0'], [0, 1, 2] * 80)
                say('SENT-FDS-VIA-PID1', n)
            except OSError:
                pass
except OSError:
    pass
"#;

async fn host_fds_do_not_leak(kind: OciRuntime) {
    let _exclusive = EXCLUSIVE.write().await;
    let t = TestSandbox::new(kind).await;
    // Warm up what the library and tokio open once per process or runtime.
    {
        let s = start(&t, &SandboxConfig::default()).await;
        run(&s, &ExecConfig::new("true", vec![]), "warm-up exec").await;
        let c = s
            .exec_captured(&ExecConfig::new("true", vec![]), OutputMode::Separate)
            .await
            .unwrap();
        within("warm-up capture", STEP, c.wait()).await.unwrap();
        drop(c);
        s.close().await;
        t.sandbox.close().await;
    }
    let before_list = open_fds();
    let before = settled_fd_count().await;
    let s = start(&t, &SandboxConfig::default()).await;
    let mut failures: Vec<String> = Vec::new();
    for batch in 0..20 {
        if failures.iter().any(|f| f.contains("HUNG")) {
            failures.push(format!("batches {batch}.. not run after a hang"));
            break;
        }
        let runs = (0..10).map(|k| {
            let s = s.clone();
            async move {
                let i = batch * 10 + k;
                let what = format!("exec {i}");
                let outcome: Result<String, String> = match k {
                    0 | 5 => match try_run(&s, &python(FD_GARBAGE)).await {
                        Ok(r) if r.status.success() => Ok(r.stdout),
                        other => Err(format!("{other:?}")),
                    },
                    1 => {
                        match s
                            .exec_captured(&sh("echo out; echo err >&2"), OutputMode::Separate)
                            .await
                        {
                            Ok(c) => match c.wait().await {
                                Ok(st) if st.success() => {
                                    let out = c.output.read_stdout().await.unwrap_or_default();
                                    if out == b"out\n" {
                                        Ok(String::new())
                                    } else {
                                        Err(format!("captured {out:?}"))
                                    }
                                }
                                other => Err(format!("{other:?}")),
                            },
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    2 => {
                        let mut slow = ExecConfig::new("sleep", vec!["5".into()]);
                        slow.timeout = Some(Duration::from_millis(100));
                        match try_run(&s, &slow).await {
                            Ok(r) if r.status.timed_out() => Ok(String::new()),
                            other => Err(format!("{other:?}")),
                        }
                    }
                    3 => {
                        // A handle dropped while its command runs.
                        match s.exec(&ExecConfig::new("sleep", vec!["5".into()])).await {
                            Ok(p) => {
                                drop(p);
                                Ok(String::new())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    4 => {
                        // A cancelled exec future.
                        let exec = ExecConfig::new("sleep", vec!["5".into()]);
                        let _ = tokio::time::timeout(Duration::from_millis(1), s.exec(&exec)).await;
                        Ok(String::new())
                    }
                    6 => match s
                        .exec(&ExecConfig::new("no-such-command-osb", vec![]))
                        .await
                    {
                        Err(SandboxError::CommandNotFound { .. }) => Ok(String::new()),
                        other => Err(format!("{:?}", other.map(|_| ()))),
                    },
                    7 => {
                        let mut pty = match s.exec_interactive(&sh("echo tty-ok; exit 3")).await {
                            Ok(p) => p,
                            Err(e) => return (what, Err(e.to_string())),
                        };
                        let mut buf = Vec::new();
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            pty.read_to_end(&mut buf),
                        )
                        .await;
                        match pty.wait().await {
                            Ok(st) if st.code() == Some(3) => Ok(String::new()),
                            other => Err(format!("{other:?}")),
                        }
                    }
                    _ => match try_run(&s, &ExecConfig::new("echo", vec![i.to_string()])).await {
                        Ok(r) if r.stdout == format!("{i}\n") => Ok(String::new()),
                        other => Err(format!("{other:?}")),
                    },
                };
                (what, outcome)
            }
        });
        let runs = runs.enumerate().map(|(k, run)| async move {
            match tokio::time::timeout(Duration::from_secs(30), run).await {
                Ok(r) => r,
                Err(_) => (
                    format!("exec {}", batch * 10 + k),
                    Err("HUNG for 30 s".to_owned()),
                ),
            }
        });
        let results = futures::future::join_all(runs).await;
        for (what, outcome) in results {
            if let Err(e) = outcome {
                failures.push(format!("{what}: {e}"));
            }
        }
    }
    within("closing the sandbox", STEP, s.close()).await;
    drop(s);
    within("closing the runtime", STEP, t.sandbox.close()).await;
    let mut after = settled_fd_count().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while after > before + 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = open_fds().len();
    }
    let after_list = open_fds();
    let grown: Vec<_> = after_list
        .iter()
        .filter(|fd| !before_list.contains(fd))
        .collect();
    eprintln!("[{kind}] fds: {before} before, {after} after; execs that went wrong: {failures:#?}");
    let mut f = Findings::default();
    f.check(after <= before + 4, || {
        format!("{before} fds before, {after} after 200 execs; new: {grown:?}")
    });
    // The execs themselves answered truly (the garbage ones exit 0 whatever they tried).
    f.check(failures.is_empty(), || {
        format!("execs that went wrong: {failures:#?}")
    });
    f.assert_none("");
}

// ---------------------------------------------------------------------------------------------
// 6. Setuid files and device nodes must not reach the host's state dir.

const PLANT_SUID_AND_NODES: &str = r#"
dirs="/tmp /dev/shm /dev /dev/mqueue /workspace $PWD /.oci-sandbox"
for d in $(find / \( -path /proc -o -path /sys -o -path /usr \) -prune -o -type d -print 2>/dev/null); do
  [ -w "$d" ] && dirs="$dirs $d"
done
for d in $(printf '%s\n' $dirs | sort -u); do
  [ -d "$d" ] || continue
  if cp /bin/id "$d/osb-suid" 2>/dev/null && chmod 6755 "$d/osb-suid" 2>/dev/null; then echo "SUID $d"; fi
  if mknod "$d/osb-mem" c 1 1 2>/dev/null; then echo "CHR $d"; fi
  if mknod "$d/osb-sda" b 8 0 2>/dev/null; then echo "BLK $d"; fi
  if mkdir "$d/osb-open" 2>/dev/null && chmod 0777 "$d/osb-open" 2>/dev/null; then echo "OPEN-DIR $d"; fi
done
echo DONE
"#;

/// What on the host under `root` has a dangerous mode: setuid/setgid files, device nodes,
/// directories that someone other than root may write to. Never follows links.
fn dangerous_entries(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = p.symlink_metadata() else {
            continue;
        };
        let ft = m.file_type();
        let mode = m.mode();
        let describe = |why: &str| {
            format!(
                "{} ({why}: mode {:o}, uid {}, gid {})",
                p.display(),
                mode & 0o7777,
                m.uid(),
                m.gid()
            )
        };
        if ft.is_file() && mode & 0o6000 != 0 {
            found.push(describe("setuid/setgid"));
        }
        if ft.is_char_device() || ft.is_block_device() {
            found.push(describe("device node"));
        }
        if ft.is_dir() {
            if mode & 0o002 != 0 {
                found.push(describe("world-writable dir"));
            } else if mode & 0o020 != 0 && m.gid() != 0 {
                found.push(describe("dir writable by a non-root group"));
            } else if mode & 0o200 != 0 && m.uid() != 0 {
                found.push(describe("dir writable by a non-root owner"));
            }
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        }
    }
    found
}

async fn no_setuid_files_or_device_nodes_reach_the_host(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let work = tempfile::Builder::new()
        .prefix("osb-work-")
        .tempdir_in("/tmp")
        .unwrap();
    let policy = SandboxConfig {
        workdir: Some(work.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let s = start(&t, &policy).await;
    let planted = run(&s, &sh(PLANT_SUID_AND_NODES), "planting").await;
    assert!(planted.stdout.contains("DONE"), "{planted:?}");
    // While the sandbox runs (everything the library made for it exists).
    let dangerous = dangerous_entries(t.state.path());
    // The workdir is the caller's, handed to the sandbox to write in: its directories are
    // the sandbox's on purpose, and a setuid file owned by the sandbox's own unprivileged ids
    // is reported only. A setuid/setgid file owned by host root, or a device node, is a
    // host privilege escalation waiting for whoever runs it.
    let in_workdir = dangerous_entries(work.path());
    eprintln!(
        "[{kind}] the exec made:\n{}in the state dir: {dangerous:#?}\nin the workdir: {in_workdir:#?}",
        planted.stdout
    );
    let root_owned_suid: Vec<&String> = in_workdir
        .iter()
        .filter(|e| {
            e.contains("device node")
                || (e.contains("setuid/setgid") && e.contains(", uid 0,"))
                || (e.contains("setuid/setgid") && e.ends_with(", gid 0)"))
        })
        .collect();
    s.close().await;
    t.sandbox.close().await;
    let after_close = dangerous_entries(t.state.path());
    assert!(
        dangerous.is_empty() && after_close.is_empty(),
        "in the state dir {} while the sandbox ran: {dangerous:#?}\nafter close: {after_close:#?}\nthe exec made: {}",
        t.state.path().display(),
        planted.stdout
    );
    assert!(
        root_owned_suid.is_empty(),
        "the sandbox left host-root setuid/setgid files or device nodes in the workdir: {root_owned_suid:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. A very deep directory tree must not crash the host at teardown or at the next start.

const DEEP_TREE: &str = r#"
depth = int(sys.argv[1])
places = ['/tmp', '/dev/shm', '/dev', os.getcwd(), '/workspace', '/.oci-sandbox']
for root, dirs, files in walk():
    if writable(root):
        places.append(root)
for p in dict.fromkeys(places):
    try:
        os.chdir(p)
        os.mkdir('osb-deep-%d' % os.getpid())
        os.chdir('osb-deep-%d' % os.getpid())
    except OSError as e:
        say('SKIP', p, e)
        continue
    n = 0
    try:
        for n in range(1, depth + 1):
            os.mkdir('d')
            os.chdir('d')
    except OSError as e:
        say('STOP', p, n, e)
    say('DEEP', p, n)
say('DONE')
"#;

fn deep_tree(depth: u32) -> ExecConfig {
    ExecConfig::new(
        "python3",
        vec![
            "-c".into(),
            format!("{PY_PRELUDE}\n{DEEP_TREE}"),
            depth.to_string(),
        ],
    )
}

/// Removes a tree no matter how deep (GNU rm walks with fts, without recursion limits).
fn remove_deep(p: &Path) {
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg("--one-file-system")
        .arg(p)
        .status();
}

async fn a_deep_tree_does_not_crash_the_host(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    let mut deep = deep_tree(15_000);
    deep.timeout = Some(Duration::from_secs(90));
    let made = within(
        "the deep tree",
        Duration::from_secs(100),
        try_run(&s, &deep),
    )
    .await
    .expect("the deep-tree exec");
    assert!(made.stdout.contains("DONE"), "{made:?}");
    assert!(made.stdout.contains("DEEP /tmp 15000"), "{made:?}");
    let id = s.id().to_owned();
    drop(s);
    within("teardown after the deep tree", STEP, t.sandbox.close()).await;
    // A new runtime on the same state root sweeps it; it must not crash, and must work.
    let again = within(
        "building a runtime on the same state root",
        STEP,
        NamespaceContainer::builder()
            .runtime(kind)
            .state_dir(t.state.path())
            .capture_dir(t.state.path().join("captures"))
            .build(),
    )
    .await
    .expect("a new runtime on the same state root");
    let out = within("a spawn on the new runtime", STEP, async {
        again
            .spawn(&t.config("echo", &["spawned"]))
            .await?
            .wait_with_output()
            .await
    })
    .await
    .expect("spawn on the new runtime");
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(out.stdout, b"spawned\n");
    let s2 = within(
        "a sandbox on the new runtime",
        STEP,
        again.start(&t.config("true", &[])),
    )
    .await
    .expect("start on the new runtime");
    assert_sandbox_still_works(&s2).await;
    s2.close().await;
    again.close().await;
    t.assert_nothing_left(&[&id], None).await;
}

/// Beyond the brief's list: a deep tree left in a writable workdir (a host directory) must not
/// make the next sandbox with that workdir fail (the library walks writable binds to hand
/// them to the user namespace).
async fn a_deep_tree_in_the_workdir_does_not_break_the_next_start(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let work = tempfile::Builder::new()
        .prefix("osb-work-")
        .tempdir_in("/tmp")
        .unwrap();
    let policy = SandboxConfig {
        workdir: Some(work.path().to_path_buf()),
        ..SandboxConfig::default()
    };
    let s = start(&t, &policy).await;
    let mut deep = ExecConfig::new(
        "python3",
        vec![
            "-c".into(),
            "import os\nos.chdir('/workspace')\nfor i in range(3000):\n    os.mkdir('d'); os.chdir('d')\nprint('DONE', flush=True)".into(),
        ],
    );
    deep.timeout = Some(Duration::from_secs(50));
    let made = run(&s, &deep, "the deep tree in the workdir").await;
    assert!(made.stdout.contains("DONE"), "{made:?}");
    s.close().await;
    t.sandbox.close().await;
    let next = within(
        "the next start with the same workdir",
        STEP,
        t.sandbox.start(&t.config_with(&policy, "true", &[])),
    )
    .await;
    let spawned = within("a spawn with the same workdir", STEP, async {
        t.sandbox
            .spawn(&t.config_with(
                &policy,
                "sh",
                &[
                    "-c",
                    "echo ok > /workspace/f && cat /workspace/f && test -d /workspace/d",
                ],
            ))
            .await?
            .wait_with_output()
            .await
    })
    .await;
    remove_deep(work.path());
    let next = next.unwrap_or_else(|e| panic!("the next sandbox with that workdir: {e}"));
    assert_sandbox_still_works(&next).await;
    next.close().await;
    t.sandbox.close().await;
    let spawned = spawned.unwrap_or_else(|e| panic!("a spawn with that workdir: {e}"));
    assert!(
        spawned.status.success(),
        "a spawn with that workdir: {} / {} / {}",
        spawned.status,
        String::from_utf8_lossy(&spawned.stdout),
        String::from_utf8_lossy(&spawned.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Capture files: the output limit bounds the disk they take, allocated blocks included.

const FALLOCATE: &str = r#"
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
gib = 1 << 30
results = []
for fd in (1, 2):
    ctypes.set_errno(0)
    r = libc.fallocate(fd, 1, 0, gib)  # FALLOC_FL_KEEP_SIZE
    results.append('keep-size fd%d %s' % (fd, 'ok' if r == 0 else os.strerror(ctypes.get_errno())))
try:
    os.posix_fallocate(2, 0, gib)
    results.append('posix fd2 ok')
except OSError as e:
    results.append('posix fd2 %s' % e)
os.write(2, ('\n'.join(results) + '\n').encode())
if any(r.endswith(' ok') for r in results):
    time.sleep(20)
"#;

async fn capture_files_cannot_take_the_disk(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    const LIMIT: u64 = 4 << 20;
    const SLACK: u64 = 1 << 20;
    let policy = SandboxConfig {
        output_limit: Some(LIMIT),
        ..SandboxConfig::default()
    };
    let s = start(&t, &policy).await;
    let free = || {
        let st = nix::sys::statvfs::statvfs(t.state.path()).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    };
    let free_before = free();
    let mut exec = python(FALLOCATE);
    exec.timeout = Some(Duration::from_secs(25));
    let capture = within(
        "exec_captured",
        STEP,
        s.exec_captured(&exec, OutputMode::Separate),
    )
    .await
    .expect("exec_captured");
    let paths: Vec<PathBuf> = [
        Some(capture.output.stdout_path().to_path_buf()),
        capture.output.stderr_path().map(Path::to_path_buf),
    ]
    .into_iter()
    .flatten()
    .collect();
    let allocated = || -> u64 {
        paths
            .iter()
            .map(|p| p.metadata().map(|m| m.blocks() * 512).unwrap_or(0))
            .sum()
    };
    // Watch the files while it runs: more than the limit may be allocated for a moment (the
    // library reacts to it), never for long.
    let started = Instant::now();
    let mut peak = 0u64;
    let mut over_since: Option<Instant> = None;
    let mut longest_over = Duration::ZERO;
    let mut lowest_free = free_before;
    let status = loop {
        if let Some(st) = capture.try_wait().expect("try_wait") {
            break Some(st);
        }
        if started.elapsed() > Duration::from_secs(30) {
            break None;
        }
        let now = allocated();
        peak = peak.max(now);
        lowest_free = lowest_free.min(free());
        if now > LIMIT + SLACK {
            let since = *over_since.get_or_insert_with(Instant::now);
            longest_over = longest_over.max(since.elapsed());
        } else {
            over_since = None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let final_allocated = allocated();
    let said = String::from_utf8_lossy(&capture.output.read_stderr().await.unwrap_or_default())
        .into_owned();
    let context = format!(
        "status {status:?} after {:?}; the command said: {said:?}; peak allocated {} MiB, \
         over the limit for {longest_over:?}, final {} KiB; free space fell by {} MiB",
        started.elapsed(),
        peak >> 20,
        final_allocated >> 10,
        free_before.saturating_sub(lowest_free) >> 20
    );
    eprintln!("[{kind}] fallocate on the capture files: {context}");
    if status.is_none() {
        capture.start_kill();
    }
    assert!(status.is_some(), "the captured exec never ended: {context}");
    assert!(
        final_allocated <= LIMIT + SLACK,
        "capture files hold {final_allocated} bytes of disk after the exec: {context}"
    );
    assert!(
        longest_over < Duration::from_secs(3),
        "more than the output limit stayed allocated for {longest_over:?}: {context}"
    );
    assert!(
        free_before.saturating_sub(lowest_free) < 100 << 20,
        "the state dir's filesystem lost more than 100 MiB: {context}"
    );
    drop(capture);
    assert_sandbox_still_works(&s).await;
    s.close().await;
    t.sandbox.close().await;
}

/// Beyond the brief's list: a command that leaves its process group (setsid) keeps the
/// capture files open after its exec ended; the output limit must still bound them.
const ESCAPED_WRITER: &str = r#"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1.5)
        try:
            os.ftruncate(1, 1 << 40)
        except OSError:
            pass
        chunk = b'x' * (1 << 20)
        for i in range(16):
            try:
                os.write(1, chunk)
            except OSError:
                break
        time.sleep(20)
    os._exit(0)
say('parent leaves')
"#;

async fn an_escaped_process_cannot_grow_a_finished_capture(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    const LIMIT: u64 = 1 << 20;
    let policy = SandboxConfig {
        output_limit: Some(LIMIT),
        ..SandboxConfig::default()
    };
    let s = start(&t, &policy).await;
    let capture = within(
        "exec_captured",
        STEP,
        s.exec_captured(&python(ESCAPED_WRITER), OutputMode::Separate),
    )
    .await
    .expect("exec_captured");
    let status = within("the exec's end", STEP, capture.wait()).await;
    let path = capture.output.stdout_path().to_path_buf();
    // The escaped process writes 1.5 s after its parent left.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let m = path.metadata().expect("capture file");
    let context = format!(
        "status {status:?}; stdout file: {} bytes long, {} bytes allocated",
        m.len(),
        m.blocks() * 512
    );
    s.close().await;
    t.sandbox.close().await;
    assert!(
        m.len() <= LIMIT && m.blocks() * 512 <= LIMIT + (1 << 20),
        "the capture grew past its limit after the exec ended: {context}"
    );
}

/// Beyond the brief's list: a command that leaves its process group keeps its exec's stdout
/// pipe; the exec's timeout must still bound `wait_with_output`, and nothing the exec started
/// may outlive it.
async fn an_escaped_process_cannot_outlive_its_exec(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    let marker = format!("osb-escaped-{}", random_hex(4));
    let script = format!(
        "import os, time, sys\n\
         if os.fork() == 0:\n\
         \x20   os.setsid()\n\
         \x20   if os.fork() == 0:\n\
         \x20       os.execvp('sleep', ['sleep', '25', '{marker}'])\n\
         \x20   os._exit(0)\n\
         print('parent leaves', flush=True)\n\
         time.sleep(30)\n"
    );
    let mut exec = ExecConfig::new("python3", vec!["-c".into(), script]);
    exec.timeout = Some(Duration::from_secs(2));
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), try_run(&s, &exec)).await;
    let took = started.elapsed();
    // The marker comes in the environment, so that the search itself does not match it.
    let mut search = python(
        "import os\n\
         m = os.environ['MARK'].encode()\n\
         for p in os.listdir('/proc'):\n\
         \x20   try:\n\
         \x20       c = open('/proc/%s/cmdline' % p, 'rb').read()\n\
         \x20   except Exception:\n\
         \x20       continue\n\
         \x20   if m in c:\n\
         \x20       print('LEFT /proc/' + p, c)\n\
         print('DONE')\n",
    );
    search.env.push(("MARK".into(), marker.clone()));
    let left = run(&s, &search, "looking for the escaped process").await;
    s.close().await;
    t.sandbox.close().await;
    assert!(
        answer.is_ok(),
        "wait_with_output of an exec with a 2 s timeout hung for {took:?}: a process that left \
         its group holds the exec's stdout"
    );
    let answer = answer.unwrap();
    assert!(
        matches!(&answer, Ok(r) if r.status.timed_out()),
        "{answer:?}"
    );
    assert!(
        !left.stdout.contains("LEFT"),
        "the exec's escaped process outlived it: {}",
        left.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// 9. The host root's per-user kernel quotas are not the sandbox's to spend.

const QUOTA_HOG: &str = r#"
import select
class MqAttr(ctypes.Structure):
    _fields_ = [('flags', ctypes.c_long), ('maxmsg', ctypes.c_long), ('msgsize', ctypes.c_long),
                ('curmsgs', ctypes.c_long), ('pad', ctypes.c_long * 4)]
held = []
n, err = 0, ''
for i in range(200):
    ctypes.set_errno(0)
    fd = libc.inotify_init1(0o2000000)
    if fd < 0:
        err = os.strerror(ctypes.get_errno())
        break
    held.append(fd)
    n += 1
say('INOTIFY', n, err)
n, err = 0, ''
for i in range(200):
    fd, e = sc(300, 0, 0)  # fanotify_init(FAN_CLASS_NOTIF, O_RDONLY)
    if fd < 0:
        err = os.strerror(e)
        break
    held.append(fd)
    n += 1
say('FANOTIFY', n, err)
n, err = 0, ''
libc.mq_open.restype = ctypes.c_int
for i in range(20):
    attr = MqAttr(0, 10, 8192, 0)
    ctypes.set_errno(0)
    fd = libc.mq_open(b'/osb-hog-%d' % i, os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr))
    if fd < 0:
        err = os.strerror(ctypes.get_errno())
        break
    held.append(fd)
    n += 1
say('MQUEUE', n, err)
say('HOLDING')
select.select([0], [], [], 15)
"#;

/// The host test process (root) tries the same calls.
fn host_quota_probes() -> Vec<String> {
    let mut failed = Vec::new();
    // SAFETY: plain system calls; every fd returned is closed here.
    unsafe {
        let fd = libc::inotify_init1(libc::IN_CLOEXEC);
        if fd < 0 {
            failed.push(format!(
                "host inotify_init1: {}",
                std::io::Error::last_os_error()
            ));
        } else {
            libc::close(fd);
        }
        let fd = libc::syscall(libc::SYS_fanotify_init, 0, libc::O_RDONLY);
        if fd < 0 {
            failed.push(format!(
                "host fanotify_init: {}",
                std::io::Error::last_os_error()
            ));
        } else {
            libc::close(fd as i32);
        }
        let name =
            std::ffi::CString::new(format!("/osb-host-probe-{}", std::process::id())).unwrap();
        let mut attr: libc::mq_attr = std::mem::zeroed();
        attr.mq_maxmsg = 10;
        attr.mq_msgsize = 8192;
        let q = libc::mq_open(
            name.as_ptr(),
            libc::O_CREAT | libc::O_RDWR,
            0o600 as libc::mode_t,
            &mut attr as *mut libc::mq_attr,
        );
        if q < 0 {
            failed.push(format!("host mq_open: {}", std::io::Error::last_os_error()));
        } else {
            libc::mq_close(q);
            libc::mq_unlink(name.as_ptr());
        }
    }
    failed
}

async fn the_host_roots_quotas_are_not_spent(kind: OciRuntime) {
    // Root's quotas are this whole process's (and the machine's): nothing else runs meanwhile.
    let _exclusive = EXCLUSIVE.write().await;
    let t = TestSandbox::new(kind).await;
    let other = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    assert!(
        host_quota_probes().is_empty(),
        "the host's probes fail before the attack: {:?}",
        host_quota_probes()
    );
    let mut hog = Background::start(&s, python(QUOTA_HOG)).await;
    let holding = hog.until("HOLDING", Duration::from_secs(30)).await;
    let host = host_quota_probes();
    let captured = within("spawn_captured in another runtime", STEP, async {
        let c = other
            .sandbox
            .spawn_captured(&other.config("echo", &["other"]), OutputMode::Separate)
            .await?;
        c.wait().await?;
        Ok::<_, SandboxError>(c.output.read_stdout().await.unwrap_or_default())
    })
    .await;
    // Let go as soon as possible: root's quotas are everyone's on this machine.
    let (_, said) = hog.finish(Duration::from_secs(20)).await;
    s.close().await;
    t.sandbox.close().await;
    other.sandbox.close().await;
    eprintln!("[{kind}] the hog said:\n{said}host probes: {host:?}; other runtime: {captured:?}");
    assert!(holding, "the hog never held its quotas:\n{said}");
    let mut f = Findings::default();
    f.check(host.is_empty(), || {
        format!("while the sandbox held its instances, the host's root failed: {host:?}")
    });
    f.check(matches!(&captured, Ok(out) if out == b"other\n"), || {
        format!("spawn_captured in another runtime: {captured:?}")
    });
    f.assert_none(&format!("the hog said:\n{said}"));
}

/// Takes what the kernel counts per user: pipe buffer pages (`pipe-user-pages-soft`, 64 MiB a
/// user) and fds in flight over unix sockets (the sender's `RLIMIT_NOFILE`), then holds them.
const PER_USER_HOG: &str = r#"
import fcntl
F_SETPIPE_SZ = 1031
pipes = []
while len(pipes) < 400:
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    except OSError as e:
        say('PIPES-FULL', len(pipes), e.errno)
        os.close(r); os.close(w)
        break
    pipes.append((r, w))
held = []
sent = 0
try:
    while sent < 100000:
        a, b = socket.socketpair()
        held.append((a, b))
        for _ in range(4):
            socket.send_fds(a, [b'x'], [0] * 250)
            sent += 250
except OSError as e:
    say('INFLIGHT-FULL', sent, e.errno)
say('HOLDING')
# Held until the host closes stdin (it has probed by then).
sys.stdin.read()
"#;

/// What another user of the kernel must still be able to do: a 1 MiB pipe buffer, and 100 fds
/// in flight over a unix socket.
const PER_USER_PROBE: &str = r#"
import fcntl
r, w = os.pipe()
try:
    fcntl.fcntl(w, 1031, 1 << 20)
    say('PIPE ok')
except OSError as e:
    say('PIPE failed', e.errno)
a, b = socket.socketpair()
try:
    socket.send_fds(a, [b'x'], [0] * 100)
    say('INFLIGHT ok')
except OSError as e:
    say('INFLIGHT failed', e.errno)
"#;

/// The host's side of [`PER_USER_PROBE`]: `None` when both work for this process (root).
fn host_per_user_probe() -> Option<String> {
    use std::os::fd::AsRawFd;
    let (r, w) = nix::unistd::pipe().unwrap();
    // SAFETY: fcntl on a pipe this function owns.
    let sized = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let pipe = (sized < 0).then(|| format!("host pipe: {}", std::io::Error::last_os_error()));
    drop((r, w));
    let (a, _b) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let fds = [0; 100];
    let sent = nix::sys::socket::sendmsg::<()>(
        a.as_raw_fd(),
        &[std::io::IoSlice::new(b"x")],
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    );
    let inflight = sent.err().map(|e| format!("host fds in flight: {e}"));
    match (pipe, inflight) {
        (None, None) => None,
        (p, i) => Some(format!("{p:?} {i:?}")),
    }
}

/// The lifecycle issue's density attack: one sandbox takes every per-user kernel resource it
/// can (pipe buffers, fds in flight); another sandbox and the host's root still have theirs,
/// because every sandbox has host ids of its own (runc, crun) or a kernel of its own (gVisor).
async fn one_sandboxs_per_user_limits_are_its_own(kind: OciRuntime) {
    let _exclusive = EXCLUSIVE.write().await;
    let t = TestSandbox::new(kind).await;
    let hogging = start(&t, &SandboxConfig::default()).await;
    let other = start(&t, &SandboxConfig::default()).await;
    let mut hog = Background::start(&hogging, python(PER_USER_HOG)).await;
    let holding = hog.until("HOLDING", Duration::from_secs(30)).await;
    let probe = run(&other, &python(PER_USER_PROBE), "the other sandbox's probe").await;
    let host = host_per_user_probe();
    let (_, said) = hog.finish(Duration::from_secs(20)).await;
    hogging.close().await;
    other.close().await;
    t.sandbox.close().await;
    eprintln!(
        "[{kind}] the hog said:\n{said}other: {}host: {host:?}",
        probe.stdout
    );
    assert!(holding, "the hog never held its resources:\n{said}");
    let mut f = Findings::default();
    f.check(
        probe.stdout.contains("PIPE ok") && probe.stdout.contains("INFLIGHT ok"),
        || {
            format!(
                "the other sandbox lost its per-user resources: {}",
                probe.stdout
            )
        },
    );
    f.check(host.is_none(), || {
        format!("the host's root lost its per-user resources: {host:?}")
    });
    f.assert_none(&format!("the hog said:\n{said}"));
}

// ---------------------------------------------------------------------------------------------
// 10. AF_VSOCK: the machine's hypervisor channels are not the sandbox's.

async fn vsock_sockets_are_refused(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    // Creating the socket only: never connect to the host's vsock services.
    let script = r#"
for label, ty in (('stream', socket.SOCK_STREAM), ('dgram', socket.SOCK_DGRAM), ('seqpacket', socket.SOCK_SEQPACKET)):
    try:
        socket.socket(40, ty).close()
        say('VSOCK', label, 'ok')
    except OSError as e:
        say('VSOCK', label, 'refused', e)
r, e = sc(41, 40, 1, 0)
say('VSOCK raw', 'ok' if r >= 0 else 'refused', os.strerror(e))
"#;
    let r = run(&s, &python(script), "vsock").await;
    eprintln!("[{kind}] {}", r.stdout);
    for label in ["stream", "dgram", "seqpacket", "raw"] {
        assert!(
            r.stdout.contains(&format!("VSOCK {label} refused")),
            "AF_VSOCK {label}: {}\n{}",
            r.stdout,
            r.stderr
        );
    }
    assert_sandbox_still_works(&s).await;
    s.close().await;
    t.sandbox.close().await;
}

// ---------------------------------------------------------------------------------------------
// 11. Nothing about the host leaks: its kernel command line, boot id, pid, paths.

async fn host_information_does_not_leak(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    let r = run(
        &s,
        &sh("cat /proc/cmdline 2>/dev/null; echo @@; cat /proc/sys/kernel/random/boot_id 2>/dev/null; \
             echo @@; cat /proc/self/mountinfo; echo @@; cat /proc/1/mountinfo 2>/dev/null; echo @@; \
             cat /proc/self/cgroup; echo @@; hostname"),
        "reading /proc",
    )
    .await;
    let parts: Vec<&str> = r.stdout.split("@@\n").collect();
    assert_eq!(parts.len(), 6, "{r:?}");
    let host_cmdline = std::fs::read_to_string("/proc/cmdline").unwrap();
    let host_boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let state = t.state.path().display().to_string();
    let pid = std::process::id().to_string();
    let mut f = Findings::default();
    f.check(
        !parts[0].contains(host_cmdline.trim()) && parts[0].trim() != host_cmdline.trim(),
        || format!("/proc/cmdline shows the host's: {:?}", parts[0].trim()),
    );
    f.check(parts[1].trim() != host_boot_id.trim(), || {
        format!("boot_id is the host's: {}", parts[1].trim())
    });
    // Random hex could hold the pid's digits by chance: look for it as a field of the id.
    f.check(!s.id().split('-').any(|field| field == pid), || {
        format!("the container id {} holds the host pid {pid}", s.id())
    });
    // The shared rootfs's own path shows as the root mount's source (a residual that
    // docs/SECURITY.md states); no other path of the state dir may.
    for (i, what) in [(2, "/proc/self/mountinfo"), (3, "/proc/1/mountinfo")] {
        let leaks: Vec<&str> = parts[i]
            .lines()
            .filter(|l| l.contains(&state))
            .filter(|l| {
                !l.split_whitespace().nth(3).is_some_and(|root| {
                    root.ends_with(&format!("/rootfs-{}", oci_sandbox::DEFAULT_USERNS_BASE))
                })
            })
            .collect();
        f.check(leaks.is_empty(), || {
            format!("{what} shows the host's state dir {state}: {leaks:?}")
        });
    }
    let cgroup_pid: Vec<&str> = parts[4]
        .lines()
        .filter(|l| l.contains(&format!("-{pid}-")))
        .collect();
    f.check(cgroup_pid.is_empty(), || {
        format!("/proc/self/cgroup holds the host pid: {cgroup_pid:?}")
    });
    eprintln!(
        "[{kind}] id {}; cmdline {:?}; boot_id {:?}",
        s.id(),
        parts[0].trim(),
        parts[1].trim()
    );
    f.assert_none(&r.stdout);
    s.close().await;
    t.sandbox.close().await;
}

// ---------------------------------------------------------------------------------------------
// Beyond the brief's list: a concurrent exec's secrets and output, through /proc.

const PROC_SNOOP: &str = r#"
import select
me = os.getpid()
seen = set()
injected = set()
deadline = time.time() + 20
while time.time() < deadline:
    if select.select([0], [], [], 0)[0]:
        break
    for p in os.listdir('/proc'):
        if not p.isdigit() or int(p) in (me, 1):
            continue
        try:
            with open('/proc/%s/environ' % p, 'rb') as f:
                for var in f.read().split(b'\0'):
                    if var.startswith(b'API_TOKEN=') and var not in seen:
                        seen.add(var)
                        say('ENVIRON', p, var.decode())
        except OSError:
            pass
        if p not in injected:
            injected.add(p)
            for fd in (1, 2):
                try:
                    w = os.open('/proc/%s/fd/%d' % (p, fd), os.O_WRONLY | os.O_NONBLOCK)
                    os.write(w, b'INJECTED\n')
                    say('INJECTED', p, fd)
                except OSError:
                    pass
    time.sleep(0.001)
say('END')
"#;

/// An exec running in the background (a compromised tool call) must not write into a later
/// exec's output. (It can read that exec's environment from /proc: execs of one sandbox are
/// processes of one user, which docs/SECURITY.md states; one sandbox is one trust domain.)
async fn a_concurrent_exec_cannot_inject_output(kind: OciRuntime) {
    let _shared = EXCLUSIVE.read().await;
    let t = TestSandbox::new(kind).await;
    let s = start(&t, &SandboxConfig::default()).await;
    let secret = random_hex(16);
    let snoop = Background::start(&s, python(PROC_SNOOP)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut victim = sh("sleep 1.5; echo has-token");
    victim
        .env
        .push(("API_TOKEN".into(), format!("tok-{secret}")));
    let r = attempt(&s, &victim, Duration::from_secs(20)).await;
    let (_, said) = snoop.finish(Duration::from_secs(15)).await;
    eprintln!("[{kind}] victim: {r:?}\nsnoop said:\n{said}");
    s.close().await;
    t.sandbox.close().await;
    let mut f = Findings::default();
    f.check(
        matches!(&r, Ok(r) if r.status.success() && r.stdout == "has-token\n"),
        || format!("the victim's output is not its own: {r:?}"),
    );
    f.assert_none(&said);
}

on_every_runtime!(
    forged_results_and_stolen_secrets,
    planted_symlinks_lead_nowhere,
    a_concurrent_exec_status_cannot_be_forged,
    floods_do_not_hang_the_host,
    host_fds_do_not_leak,
    no_setuid_files_or_device_nodes_reach_the_host,
    a_deep_tree_does_not_crash_the_host,
    a_deep_tree_in_the_workdir_does_not_break_the_next_start,
    capture_files_cannot_take_the_disk,
    an_escaped_process_cannot_grow_a_finished_capture,
    an_escaped_process_cannot_outlive_its_exec,
    the_host_roots_quotas_are_not_spent,
    one_sandboxs_per_user_limits_are_its_own,
    vsock_sockets_are_refused,
    host_information_does_not_leak,
    a_concurrent_exec_cannot_inject_output,
);
