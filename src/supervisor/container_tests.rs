//! Unit tests of the container supervisor with fake runtimes.
//!
//! As containerd's Go runc package tests its runner with `/bin/true` and `/bin/false`, the
//! runtime here is a small shell script written at test time: it is spawned with the real
//! `run` command line (`RuntimeCli::command`, as `run_launcher` does) and plays one part
//! (starts a background "init", fails with a JSON log line, hangs...). Every other subcommand
//! (the teardown's `kill` and `delete`) succeeds at once and is recorded in `calls` next to
//! the script, with the state of the `run` process at that moment. Nothing here needs root:
//! no namespace, no cgroup; the ids are random, so the teardown's cgroup sweep finds nothing.

use super::*;
use crate::host::state::new_id;
use crate::runtimes::OciRuntime;
use crate::spec::identity::HostIdentity;
use std::path::Path;
use std::path::PathBuf;

/// The short start deadline of the tests where it is the point.
const DEADLINE: Duration = Duration::from_millis(300);

/// The start deadline of the others: never reached, so that an early end proves its cause
/// (and a loaded machine cannot make a start time out).
const LONG: Duration = Duration::from_secs(20);

/// How long anything that should happen at once may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(5);

/// The common part of every fake runtime: parses the real argv, records non-`run` calls
/// and succeeds on them; for `run`, records its own pid and falls through to the case's body
/// (with `$dir`, `$log` and `$pidfile` set).
const PRELUDE: &str = r#"#!/bin/sh
dir=$(dirname "$0")
args="$*"
sub= log= pidfile=
while [ $# -gt 0 ]; do
  case $1 in
    --log) log=$2; shift 2 ;;
    --pid-file) pidfile=$2; shift 2 ;;
    --root|--log-format|--bundle) shift 2 ;;
    -*) shift ;;
    *) [ -n "$sub" ] || sub=$1; shift ;;
  esac
done
if [ "$sub" != run ]; then
  state=none
  if [ -f "$dir/runtime.pid" ]; then
    p=$(cat "$dir/runtime.pid")
    if [ -r "/proc/$p/stat" ]; then
      state=$(sed 's/.*) //' "/proc/$p/stat" | cut -d' ' -f1)
    else
      state=gone
    fi
  fi
  echo "$args | run:$state" >> "$dir/calls"
  exit 0
fi
echo "$args" >> "$dir/calls"
echo $$ > "$dir/runtime.pid"
"#;

/// A detached runtime that starts a long-lived init.
const STARTS_INIT: &str = r#"sleep 30 </dev/null >/dev/null 2>&1 &
echo $! > "$dir/init.pid"
echo $! > "$pidfile"
exit 0
"#;

/// A runtime that never finishes (the same process: a kill ends it all).
const HANGS: &str = "exec sleep 30\n";

/// A runtime that fails the way runc does: an error line in its JSON log, exit 1.
const FAILS: &str = r#"echo '{"level":"info","msg":"creating","time":"t"}' >> "$log"
echo '{"level":"error","msg":"boom: no such thing","time":"t"}' >> "$log"
exit 1
"#;

/// One test's state root, bundles and fake runtime.
struct Fake {
    tmp: tempfile::TempDir,
    cli: RuntimeCli,
    dirs: StateDirs,
    id: String,
    config: crate::ContainerConfig,
}

impl Fake {
    /// A fake runtime whose `run` does `body`.
    fn new(body: &str) -> Fake {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("fake-runtime");
        std::fs::write(&script, format!("{PRELUDE}{body}")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dirs = StateDirs::new(
            tmp.path(),
            OciRuntime::Runc,
            HostIdentity::Rootless {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            },
        );
        std::fs::create_dir_all(&dirs.root).unwrap();
        std::fs::create_dir_all(&dirs.bundles).unwrap();
        let cli = RuntimeCli {
            kind: OciRuntime::Runc,
            binary: script,
            root: dirs.root.clone(),
            gvisor_platform: None,
            mount_ns: None,
        };
        Fake {
            tmp,
            cli,
            dirs,
            id: new_id(),
            config: crate::ContainerConfig::new("true", vec![]),
        }
    }

    fn bundle_dir(&self) -> PathBuf {
        self.dirs.bundle(&self.id)
    }

    fn pid_file(&self) -> PathBuf {
        self.bundle_dir().join(crate::host::bundle::PID_FILE)
    }

    /// Writes the bundle and spawns `<fake> ... run ...` as `run_launcher` does: returns the
    /// runtime, its pid and the teardown.
    fn spawn(&self, attached: bool) -> (Child, i32, Teardown) {
        let spec = oci_spec::runtime::Spec::default();
        let bundle = Bundle::create_blocking(self.bundle_dir(), &self.id, spec).unwrap();
        let (log, pid_path) = (bundle.log_path(), bundle.pid_path());
        let flags = ContainerFlags {
            log: Some(&log),
            host_network: !self.config.network.is_isolated(),
            memory_root: false,
        };
        let sub = Sub::Run {
            id: &self.id,
            bundle: bundle.path(),
            detach: !attached,
            pid_file: (!attached).then_some(pid_path.as_path()),
        };
        // A script just written may be held open for writing by a child another test thread
        // forked meanwhile, until that child executes: ETXTBSY for a moment.
        let mut tries = 0;
        let child = loop {
            match self.cli.command(flags, sub).spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other.unwrap(),
            }
        };
        let pid = child.id().unwrap() as i32;
        let teardown = Teardown::new(&self.cli, &self.dirs, self.id.clone(), &self.config, bundle);
        (child, pid, teardown)
    }

    fn detached(&self, tracker: &tokio_util::task::TaskTracker, deadline: Duration) -> Started {
        let (runtime, runtime_pid, teardown) = self.spawn(false);
        let mode = StartMode::Detached {
            pid_file: self.pid_file(),
        };
        let (sup, started) = Supervised::container(tracker, runtime, teardown, mode, deadline);
        Started {
            sup,
            started,
            runtime_pid,
            init_pid: None,
        }
    }

    fn attached(&self, tracker: &tokio_util::task::TaskTracker, deadline: Duration) -> Started {
        let (runtime, runtime_pid, teardown) = self.spawn(true);
        let (tx, rx) = oneshot::channel();
        let mode = StartMode::Attached { init_pid: rx };
        let (sup, started) = Supervised::container(tracker, runtime, teardown, mode, deadline);
        Started {
            sup,
            started,
            runtime_pid,
            init_pid: Some(tx),
        }
    }

    /// The runtime calls made so far, `run` first.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.tmp.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The calls other than `run`, as `<sub> <id> | run:<state of the run process>`.
    fn teardown_calls(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| !c.contains(" run "))
            .map(|c| {
                let (args, state) = c.split_once(" | ").unwrap();
                // `--root <root> <sub> [flags] <id> [signal]`
                let words: Vec<&str> = args.split(' ').collect();
                let sub = words[2].to_owned();
                assert!(
                    args.ends_with(&format!(" {}", self.id))
                        || args.ends_with(&format!(" {} KILL", self.id)),
                    "{c}"
                );
                format!("{sub} {state}")
            })
            .collect()
    }

    /// The pid of the init the fake started, from its own record.
    fn init_pid(&self) -> i32 {
        read_pid(&self.tmp.path().join("init.pid"))
    }
}

impl Drop for Fake {
    /// A failed test leaves no `sleep` behind.
    fn drop(&mut self) {
        for file in ["init.pid", "runtime.pid"] {
            if let Ok(text) = std::fs::read_to_string(self.tmp.path().join(file))
                && let Ok(pid) = text.trim().parse::<i32>()
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

struct Started {
    sup: Supervised,
    started: oneshot::Receiver<Result<(), SandboxError>>,
    runtime_pid: i32,
    /// Attached: where the launcher's "ready" would send the init's pid.
    init_pid: Option<oneshot::Sender<i32>>,
}

impl Started {
    async fn started(&mut self) -> Result<(), SandboxError> {
        within(&mut self.started)
            .await
            .expect("the supervisor dropped `started`")
    }
}

fn read_pid(file: &Path) -> i32 {
    let text = std::fs::read_to_string(file).unwrap();
    text.trim().parse().unwrap()
}

/// `f`, which must complete within [`PATIENCE`].
async fn within<F: std::future::IntoFuture>(f: F) -> F::Output {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("did not complete in time")
}

/// The state letter of process `pid` (`R`, `S`, `Z`...), `None` when there is none.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Whether `pid` has exited (a zombie, or reaped).
fn exited(pid: i32) -> bool {
    matches!(proc_state(pid), None | Some('Z'))
}

/// Waits until `pid` no longer exists (it was reaped), within [`PATIENCE`].
async fn reaped(pid: i32) -> bool {
    let end = std::time::Instant::now() + PATIENCE;
    while proc_state(pid).is_some() {
        if std::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Polls for a file the fake runtime writes.
async fn wait_for_file(file: &Path) {
    let end = std::time::Instant::now() + PATIENCE;
    while std::fs::read_to_string(file).map_or(true, |t| !t.ends_with('\n')) {
        assert!(std::time::Instant::now() < end, "{file:?} never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_timeout(e: SandboxError, deadline: Duration) {
    match e {
        SandboxError::Timeout { what, after } => {
            assert_eq!(what, "runc run");
            assert_eq!(after, deadline);
        }
        other => panic!("expected a start timeout, got {other:?}"),
    }
}

fn assert_stopped(e: SandboxError) {
    match e {
        SandboxError::Process { context, source } => {
            assert_eq!(context, "starting the container");
            assert_eq!(source.kind(), std::io::ErrorKind::Interrupted, "{source}");
        }
        other => panic!("expected a stopped start, got {other:?}"),
    }
}

fn assert_boom(e: SandboxError) {
    match e {
        SandboxError::Runtime {
            runtime,
            op,
            code,
            message,
        } => {
            assert_eq!(runtime, OciRuntime::Runc);
            assert!(matches!(op, crate::error::RuntimeOp::Run), "{op}");
            assert_eq!(code, Some(1));
            // The error line only, not the info one.
            assert_eq!(message, "boom: no such thing");
        }
        other => panic!("expected the runtime's failure, got {other:?}"),
    }
}

// ---- Detached (`run --detach --pid-file`) ----

#[tokio::test]
async fn detached_start_then_kill_through_the_pidfd() {
    let fake = Fake::new(STARTS_INIT);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.detached(&tracker, LONG);
    s.started().await.unwrap();
    let init = fake.init_pid();
    assert_eq!(read_pid(&fake.pid_file()), init);
    assert!(!exited(init), "the init runs");
    assert!(s.sup.try_wait().unwrap().is_none());
    // The detached runtime has exited and was reaped: the supervisor waited for it.
    assert!(reaped(s.runtime_pid).await);

    s.sup.start_kill();
    let status = within(s.sup.wait()).await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!status.oom_killed());
    within(s.sup.gone()).await;
    // Adopted by PID 1 (or a subreaper), which may reap it late: a zombie at least.
    assert!(exited(init), "state {:?}", proc_state(init));
    within(s.sup.finished()).await;
    assert_eq!(s.sup.try_wait().unwrap(), Some(status));
    assert!(!fake.bundle_dir().exists(), "the bundle is removed");
    // The init exited: no runtime call to remove the container.
    assert_eq!(fake.teardown_calls(), Vec::<String>::new());
    assert_eq!(fake.calls().len(), 1);
    tracker.close();
    within(tracker.wait()).await;
}

#[tokio::test]
async fn detached_handle_dropped_after_start_kills_the_init() {
    let fake = Fake::new(STARTS_INIT);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.detached(&tracker, LONG);
    s.started().await.unwrap();
    let init = fake.init_pid();
    assert!(!exited(init));
    drop(s);
    tracker.close();
    within(tracker.wait()).await;
    assert!(exited(init), "state {:?}", proc_state(init));
    assert!(!fake.bundle_dir().exists());
    assert_eq!(fake.teardown_calls(), Vec::<String>::new());
}

#[tokio::test]
async fn detached_init_exits_by_itself() {
    let fake = Fake::new(&STARTS_INIT.replace("sleep 30", "sleep 0.4"));
    let tracker = tokio_util::task::TaskTracker::new();
    let since = std::time::Instant::now();
    let mut s = fake.detached(&tracker, LONG);
    s.started().await.unwrap();
    let init = fake.init_pid();
    let status = within(s.sup.wait()).await.unwrap();
    // Not before the init's own end: it was not killed.
    assert!(since.elapsed() >= Duration::from_millis(400), "{since:?}");
    assert!(exited(init));
    // The status is SIGKILL whatever the init's: the real one comes from the launcher.
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    assert_eq!(fake.teardown_calls(), Vec::<String>::new());
}

#[tokio::test]
async fn detached_runtime_failure_is_its_logged_error() {
    let fake = Fake::new(FAILS);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.detached(&tracker, LONG);
    assert_boom(s.started().await.unwrap_err());
    assert_boom(within(s.sup.wait()).await.unwrap_err());
    assert_boom(s.sup.try_wait().unwrap_err());
    within(s.sup.gone()).await;
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists(), "the bundle is removed");
    assert!(reaped(s.runtime_pid).await);
    // A container that never started may exist half-made: it is destroyed through the
    // runtime (kill --all, then delete --force), after the runtime's own exit.
    assert_eq!(fake.teardown_calls(), ["kill run:gone", "delete run:gone"]);
    assert!(
        fake.calls()
            .iter()
            .any(|c| c.ends_with(&format!("kill --all {} KILL | run:gone", fake.id)))
    );
}

#[tokio::test]
async fn detached_garbage_pid_file_is_invalid_data() {
    let fake = Fake::new("echo 'not a pid' > \"$pidfile\"\n");
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.detached(&tracker, LONG);
    match s.started().await.unwrap_err() {
        SandboxError::Io {
            context,
            path,
            source,
        } => {
            assert_eq!(context, "reading the runtime's pid file");
            assert_eq!(path, fake.pid_file());
            assert_eq!(source.kind(), std::io::ErrorKind::InvalidData);
            assert!(source.to_string().contains("not a pid"), "{source}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert!(matches!(
        within(s.sup.wait()).await,
        Err(SandboxError::Io { .. })
    ));
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    assert_eq!(fake.teardown_calls(), ["kill run:gone", "delete run:gone"]);
}

#[tokio::test]
async fn detached_missing_pid_file_is_not_found() {
    let fake = Fake::new("exit 0\n");
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.detached(&tracker, LONG);
    match s.started().await.unwrap_err() {
        SandboxError::Io { path, source, .. } => {
            assert_eq!(path, fake.pid_file());
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
}

#[tokio::test]
async fn detached_pid_file_naming_no_process_is_esrch() {
    // Above any pid_max (at most 2^22).
    let fake = Fake::new("echo 2147483000 > \"$pidfile\"\n");
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.detached(&tracker, LONG);
    match s.started().await.unwrap_err() {
        SandboxError::Process { context, source } => {
            assert_eq!(context, "opening a pidfd for the container's init");
            // `started` holds a copy (`SandboxError::duplicate`): the kind and message of
            // the cause, not its errno.
            assert!(source.to_string().contains("No such process"), "{source}");
        }
        other => panic!("expected a process error, got {other:?}"),
    }
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
}

#[tokio::test]
async fn detached_runtime_killed_by_a_signal() {
    let fake = Fake::new("kill -9 $$\n");
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.detached(&tracker, LONG);
    match s.started().await.unwrap_err() {
        SandboxError::Runtime { code, message, .. } => {
            assert_eq!(code, None, "no exit code: killed");
            assert_eq!(message, crate::oci::cli::NO_MESSAGE);
        }
        other => panic!("expected the runtime's failure, got {other:?}"),
    }
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    assert!(reaped(s.runtime_pid).await);
}

#[tokio::test]
async fn detached_hang_times_out_and_the_runtime_is_killed() {
    let fake = Fake::new(HANGS);
    let tracker = tokio_util::task::TaskTracker::new();
    let since = std::time::Instant::now();
    let mut s = fake.detached(&tracker, DEADLINE);
    assert_timeout(s.started().await.unwrap_err(), DEADLINE);
    let took = since.elapsed();
    assert!(
        took >= DEADLINE && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_timeout(within(s.sup.wait()).await.unwrap_err(), DEADLINE);
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    // Killed (dropped with `kill_on_drop`, as `RuntimeCli::command` makes it) and reaped.
    assert!(reaped(s.runtime_pid).await, "the hung runtime is left");
    // The container is destroyed through the runtime (it may exist half-made).
    let calls = fake.teardown_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with("kill ") && calls[1].starts_with("delete "));
}

/// As in attached mode, a detached runtime that has not exited (deadline passed, or the
/// handle stopped it) should be killed and reaped before the teardown's `kill`/`delete`, or it
/// may go on creating the container after the `delete`. Today `supervise_container` only does
/// so when attached (`runtime_running = attached && ...`): the detached runtime is still
/// running (`run:S`) during both calls and only dies when its `Child` is dropped at the end.
#[tokio::test]
async fn detached_runtime_is_stopped_before_the_teardown() {
    for stop in [false, true] {
        let fake = Fake::new(HANGS);
        let tracker = tokio_util::task::TaskTracker::new();
        let mut s = fake.detached(&tracker, DEADLINE);
        if stop {
            wait_for_file(&fake.tmp.path().join("runtime.pid")).await;
            s.sup.start_kill();
        }
        assert!(s.started().await.is_err());
        within(s.sup.finished()).await;
        assert_eq!(
            fake.teardown_calls(),
            ["kill run:gone", "delete run:gone"],
            "stopped by the handle: {stop}"
        );
    }
}

#[tokio::test]
async fn detached_kill_before_start_stops_the_runtime() {
    let fake = Fake::new(HANGS);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.detached(&tracker, LONG);
    wait_for_file(&fake.tmp.path().join("runtime.pid")).await;
    s.sup.start_kill();
    // At once (`within` is far shorter than the deadline), though reported as a timeout.
    assert_stopped(s.started().await.unwrap_err());
    assert_stopped(within(s.sup.wait()).await.unwrap_err());
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    assert!(reaped(s.runtime_pid).await, "the hung runtime is left");
}

#[tokio::test]
async fn detached_handle_dropped_before_start_stops_the_runtime() {
    let fake = Fake::new(HANGS);
    let tracker = tokio_util::task::TaskTracker::new();
    let s = fake.detached(&tracker, LONG);
    wait_for_file(&fake.tmp.path().join("runtime.pid")).await;
    let (runtime_pid, started) = (s.runtime_pid, s.started);
    drop(s.sup);
    assert_stopped(within(started).await.unwrap().unwrap_err());
    tracker.close();
    within(tracker.wait()).await;
    assert!(!fake.bundle_dir().exists());
    assert!(reaped(runtime_pid).await, "the hung runtime is left");
}

// ---- Attached (`run` in the foreground; the init's pid comes from the launcher) ----

#[tokio::test]
async fn attached_runtime_is_the_init_killed_then_reaped() {
    let fake = Fake::new(HANGS);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.attached(&tracker, LONG);
    wait_for_file(&fake.tmp.path().join("runtime.pid")).await;
    s.init_pid.take().unwrap().send(s.runtime_pid).unwrap();
    s.started().await.unwrap();
    assert!(s.sup.try_wait().unwrap().is_none());
    s.sup.start_kill();
    let status = within(s.sup.wait()).await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    within(s.sup.finished()).await;
    // The supervisor waited for the runtime (this process's child): no zombie is left.
    assert_eq!(proc_state(s.runtime_pid), None);
    assert!(!fake.bundle_dir().exists());
    assert_eq!(fake.teardown_calls(), Vec::<String>::new());
    assert!(!fake.calls()[0].contains("--detach"), "{:?}", fake.calls());
}

#[tokio::test]
async fn attached_runtime_waits_for_its_init_and_is_awaited() {
    // As `runc run` in the foreground: the init is its child, and it exits after it.
    let fake = Fake::new(
        r#"sleep 30 </dev/null >/dev/null 2>&1 &
echo $! > "$dir/init.pid"
wait $!
exit 0
"#,
    );
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.attached(&tracker, LONG);
    wait_for_file(&fake.tmp.path().join("init.pid")).await;
    let init = fake.init_pid();
    assert_ne!(init, s.runtime_pid);
    s.init_pid.take().unwrap().send(init).unwrap();
    s.started().await.unwrap();
    assert!(!exited(init));
    s.sup.start_kill();
    let status = within(s.sup.wait()).await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    within(s.sup.finished()).await;
    // The init was reaped by the runtime, and the runtime by the supervisor.
    assert_eq!(proc_state(init), None);
    assert_eq!(proc_state(s.runtime_pid), None);
    assert!(!fake.bundle_dir().exists());
    assert_eq!(fake.teardown_calls(), Vec::<String>::new());
}

#[tokio::test]
async fn attached_runtime_failure_before_the_pid() {
    let fake = Fake::new(FAILS);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.attached(&tracker, LONG);
    assert_boom(s.started().await.unwrap_err());
    assert_boom(within(s.sup.wait()).await.unwrap_err());
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    assert_eq!(proc_state(s.runtime_pid), None);
    assert_eq!(fake.teardown_calls(), ["kill run:gone", "delete run:gone"]);
}

#[tokio::test]
async fn attached_runtime_killed_by_a_signal() {
    let fake = Fake::new("kill -9 $$\n");
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.attached(&tracker, LONG);
    assert!(matches!(
        s.started().await.unwrap_err(),
        SandboxError::Runtime { code: None, .. }
    ));
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    assert_eq!(proc_state(s.runtime_pid), None);
}

#[tokio::test]
async fn attached_hang_times_out_and_the_runtime_is_killed_first() {
    let fake = Fake::new(HANGS);
    let tracker = tokio_util::task::TaskTracker::new();
    let since = std::time::Instant::now();
    let mut s = fake.attached(&tracker, DEADLINE);
    assert_timeout(s.started().await.unwrap_err(), DEADLINE);
    let took = since.elapsed();
    assert!(
        took >= DEADLINE && took < Duration::from_secs(2),
        "{took:?}"
    );
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    // Killed and reaped before the teardown's runtime calls.
    assert_eq!(proc_state(s.runtime_pid), None);
    assert_eq!(fake.teardown_calls(), ["kill run:gone", "delete run:gone"]);
}

#[tokio::test]
async fn attached_launch_given_up_kills_the_runtime() {
    let fake = Fake::new(HANGS);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.attached(&tracker, LONG);
    wait_for_file(&fake.tmp.path().join("runtime.pid")).await;
    // The launch gives up: no pid will come.
    drop(s.init_pid.take());
    assert_stopped(s.started().await.unwrap_err());
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    assert_eq!(proc_state(s.runtime_pid), None);
    assert_eq!(fake.teardown_calls(), ["kill run:gone", "delete run:gone"]);
}

#[tokio::test]
async fn attached_kill_before_start_kills_the_runtime() {
    let fake = Fake::new(HANGS);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut s = fake.attached(&tracker, LONG);
    wait_for_file(&fake.tmp.path().join("runtime.pid")).await;
    s.sup.start_kill();
    assert_stopped(s.started().await.unwrap_err());
    within(s.sup.finished()).await;
    assert!(!fake.bundle_dir().exists());
    assert_eq!(proc_state(s.runtime_pid), None);
    assert_eq!(fake.teardown_calls(), ["kill run:gone", "delete run:gone"]);
}

// ---- The Tokio runtime shutting down under a supervisor ----

#[test]
fn runtime_shutdown_mid_start_cleans_up_synchronously() {
    let fake = Fake::new(HANGS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (s, tracker) = rt.block_on(async {
        let tracker = tokio_util::task::TaskTracker::new();
        let s = fake.detached(&tracker, LONG);
        wait_for_file(&fake.tmp.path().join("runtime.pid")).await;
        tokio::task::yield_now().await;
        (s, tracker)
    });
    // The supervisor task is dropped unfinished: its Teardown's Drop runs the runtime's
    // kill and delete and removes the bundle.
    drop(rt);
    assert!(!fake.bundle_dir().exists());
    let calls = fake.teardown_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].starts_with("kill ") && calls[1].starts_with("delete "));
    drop((s, tracker));
}
