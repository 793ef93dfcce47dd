//! Long-lived sandboxes: start once, exec many times; on every runtime.

mod common;

use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{ExecConfig, OciRuntime, OutputMode, SandboxError, SandboxPool};
use tokio::io::AsyncWriteExt;

/// A `sleep` argument unique to the test and runtime (tests run in parallel).
fn marker(test: u32, kind: OciRuntime) -> String {
    let k = match kind {
        OciRuntime::Runc => 1,
        OciRuntime::Crun => 2,
        _ => 3,
    };
    format!("100.{test}{k}")
}

fn sh(script: &str) -> ExecConfig {
    ExecConfig::new("sh", vec!["-c".into(), script.into()])
}

async fn start(t: &TestSandbox) -> oci_sandbox::Sandbox {
    t.sandbox
        .start(&t.config("true", &[]))
        .await
        .expect("sandbox start")
}

async fn output(
    sandbox: &oci_sandbox::Sandbox,
    exec: &ExecConfig,
) -> (oci_sandbox::ExitStatus, String) {
    let out = sandbox
        .exec(exec)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn state_persists_across_execs(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let (status, _) = output(&sandbox, &sh("echo remembered > /tmp/state")).await;
    assert!(status.success(), "{status}");
    let (status, out) = output(&sandbox, &ExecConfig::new("cat", vec!["/tmp/state".into()])).await;
    assert!(status.success(), "{status}");
    assert_eq!(out, "remembered\n");
    let id = sandbox.id().to_owned();
    let clone = sandbox.clone();
    sandbox.close().await;
    // Closed, not "no longer running": for this handle and its clones.
    for s in [&sandbox, &clone] {
        match s.exec(&ExecConfig::shell("true")).await {
            Err(SandboxError::SandboxClosed { id: closed }) => assert_eq!(closed, id),
            other => panic!("expected SandboxClosed, got {other:?}"),
        }
    }
    t.assert_nothing_left(&[&id], None).await;
}

async fn env_cwd_exit_codes_and_stdin_are_per_exec(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let mut exec = sh("pwd; echo \"$GREETING\"; exit 3");
    exec.env.push(("GREETING".into(), "hello".into()));
    exec.cwd = Some("/usr".into());
    let (status, out) = output(&sandbox, &exec).await;
    assert_eq!(status.code(), Some(3));
    assert_eq!(out, "/usr\nhello\n");
    // The environment added for one exec is not the next one's.
    let (_, out) = output(&sandbox, &sh("echo \"[$GREETING]\"")).await;
    assert_eq!(out, "[]\n");
    let mut cat = sandbox.exec(&ExecConfig::new("cat", vec![])).await.unwrap();
    cat.stdin
        .take()
        .unwrap()
        .write_all(b"through stdin")
        .await
        .unwrap();
    let out = cat.wait_with_output().await.unwrap();
    assert_eq!(out.stdout, b"through stdin");
    sandbox.close().await;
}

async fn bad_execs_are_typed_errors_and_the_sandbox_lives_on(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    match sandbox
        .exec(&ExecConfig::new("no-such-command-xyz", vec![]))
        .await
    {
        Err(SandboxError::CommandNotFound { command, .. }) => {
            assert_eq!(command, "no-such-command-xyz")
        }
        other => panic!("expected CommandNotFound, got {other:?}"),
    }
    let mut bad_cwd = sh("true");
    bad_cwd.cwd = Some("/no/such/dir".into());
    assert!(matches!(
        sandbox.exec(&bad_cwd).await,
        Err(SandboxError::InvalidConfig { field, .. }) if field == "cwd"
    ));
    let mut bad_env = sh("true");
    bad_env.env.push(("A=B".into(), "c".into()));
    assert!(matches!(
        sandbox.exec(&bad_env).await,
        Err(SandboxError::InvalidConfig { field, .. }) if field == "env"
    ));
    assert!(matches!(
        sandbox.exec(&ExecConfig::new("", vec![])).await,
        Err(SandboxError::InvalidConfig { .. })
    ));
    let (status, out) = output(&sandbox, &sh("echo still here")).await;
    assert!(status.success());
    assert_eq!(out, "still here\n");
    sandbox.close().await;
}

async fn concurrent_execs_all_complete(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let started = Instant::now();
    let runs = (0..10).map(|i| {
        let sandbox = sandbox.clone();
        async move {
            let mut exec = sh("sleep 0.5; echo $N");
            exec.env.push(("N".into(), i.to_string()));
            output(&sandbox, &exec).await
        }
    });
    let results = futures::future::join_all(runs).await;
    for (i, (status, out)) in results.into_iter().enumerate() {
        assert!(status.success(), "{i}: {status}");
        assert_eq!(out, format!("{i}\n"));
    }
    // Concurrent: ten half-second sleeps in well under five seconds.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    sandbox.close().await;
}

async fn an_exec_timeout_kills_only_that_exec(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let marker = &marker(42, kind);
    let mut slow = ExecConfig::new("sleep", vec![marker.into()]);
    slow.timeout = Some(Duration::from_millis(400));
    let neighbour = sandbox
        .exec(&ExecConfig::new("sleep", vec!["1.5".into()]))
        .await
        .unwrap();
    let started = Instant::now();
    let status = sandbox.exec(&slow).await.unwrap().wait().await.unwrap();
    assert!(status.timed_out(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The sandbox and the other exec live on.
    let mut neighbour = neighbour;
    assert!(neighbour.wait().await.unwrap().success());
    let (status, _) = output(&sandbox, &sh("true")).await;
    assert!(status.success());
    assert!(common::processes_mentioning(marker).is_empty());
    sandbox.close().await;
}

async fn captured_and_interactive_execs_work(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let capture = sandbox
        .exec_captured(&sh("echo out; echo err >&2; exit 4"), OutputMode::Separate)
        .await
        .unwrap();
    assert_eq!(capture.wait().await.unwrap().code(), Some(4));
    assert_eq!(&capture.output.read_stdout().await.unwrap()[..], b"out\n");
    assert_eq!(&capture.output.read_stderr().await.unwrap()[..], b"err\n");

    let mut pty = sandbox
        .exec_interactive(&ExecConfig::new("sh", vec![]))
        .await
        .unwrap();
    pty.resize(100, 30).unwrap();
    // On gVisor the resize reaches the relayed terminal unordered with the keystrokes
    // (documented on `PtySession::resize`): the shell waits for it.
    pty.write_all(
        b"until [ \"$(stty size)\" = \"30 100\" ]; do sleep 0.05; done; stty size; echo $((6*7)); exit 5\n",
    )
    .await
    .unwrap();
    let seen = common::read_until(&mut pty, "42").await;
    // stty's own line (the echoed command holds "30 100" too, but not at a line's end).
    assert!(seen.contains("30 100\r\n"), "{seen}");
    assert_eq!(pty.wait().await.unwrap().code(), Some(5));
    sandbox.close().await;
}

async fn ctrl_c_reaches_an_interactive_exec(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let mut pty = sandbox
        .exec_interactive(&ExecConfig::new("sh", vec![]))
        .await
        .unwrap();
    pty.write_all(b"sleep 100\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The terminal turns ^C into SIGINT for the foreground job; the shell lives on.
    pty.write_all(b"\x03").await.unwrap();
    // On gVisor, whose terminal does not know the session's foreground group, the launcher's
    // relay sends the signal to the session's jobs itself.
    tokio::time::sleep(Duration::from_millis(200)).await;
    pty.write_all(b"echo status=$?\n").await.unwrap();
    common::read_until(&mut pty, "status=130").await;
    pty.write_all(b"exit 0\n").await.unwrap();
    assert!(pty.wait().await.unwrap().success());
    sandbox.close().await;
}

async fn a_sandbox_killed_from_outside_is_reported(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let running = sandbox
        .exec(&ExecConfig::new("sleep", vec!["30".into()]))
        .await
        .unwrap();
    let pid: i32 = std::fs::read_to_string(t.bundles_dir().join(sandbox.id()).join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut running = running;
    let waited = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the running exec learns of the sandbox's death");
    assert!(
        matches!(waited, Err(SandboxError::SandboxEnded { .. }))
            || waited.as_ref().is_ok_and(|s| !s.success()),
        "{waited:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while sandbox.ended().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sandbox.ended().is_some());
    match sandbox.exec(&sh("true")).await {
        Err(SandboxError::SandboxEnded { id, status }) => {
            assert_eq!(id, sandbox.id());
            assert!(status.is_some());
        }
        other => panic!("expected SandboxEnded, got {other:?}"),
    }
    let id = sandbox.id().to_owned();
    drop((sandbox, running));
    t.assert_nothing_left(&[&id], None).await;
}

async fn drop_and_cancellation_leave_nothing(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let marker = &marker(51, kind);
    // A dropped sandbox with a command running in it.
    let sandbox = start(&t).await;
    let id = sandbox.id().to_owned();
    let running = sandbox
        .exec(&ExecConfig::new("sleep", vec![marker.into()]))
        .await
        .unwrap();
    drop(sandbox);
    drop(running);
    // Cancelled starts, at several points.
    for delay_ms in [0u64, 5, 20, 60] {
        let config = t.config("true", &[]);
        let _ =
            tokio::time::timeout(Duration::from_millis(delay_ms), t.sandbox.start(&config)).await;
    }
    // A cancelled exec and a dropped exec handle in a live sandbox.
    let sandbox = start(&t).await;
    let id2 = sandbox.id().to_owned();
    for delay_ms in [0u64, 1, 3] {
        let exec = ExecConfig::new("sleep", vec![marker.into()]);
        let _ = tokio::time::timeout(Duration::from_millis(delay_ms), sandbox.exec(&exec)).await;
    }
    let handle = sandbox
        .exec(&ExecConfig::new("sleep", vec![marker.into()]))
        .await
        .unwrap();
    drop(handle);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !common::processes_mentioning(marker).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        common::processes_mentioning(marker).is_empty() || kind == OciRuntime::Gvisor,
        "a dropped exec still runs"
    );
    let (status, _) = output(&sandbox, &sh("true")).await;
    assert!(status.success());
    drop(sandbox);
    t.assert_nothing_left(&[&id, &id2], Some(marker)).await;
    let sockets = t.state.path().join(kind.binary_name()).join("sandboxes");
    let left: Vec<_> = std::fs::read_dir(&sockets)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "socket dirs left: {left:?}");
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_pool_hands_out_fresh_sandboxes_and_refills(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let pool = SandboxPool::new(&t.sandbox, &t.config("true", &[]), 2)
        .await
        .unwrap();
    assert_eq!(pool.ready(), 2);
    let a = pool.get().await.unwrap();
    let (status, _) = output(&a, &sh("echo mine > /tmp/mine")).await;
    assert!(status.success());
    until("the refill", || pool.ready() == 2).await;
    let b = pool.get().await.unwrap();
    assert_ne!(a.id(), b.id());
    // Never shared: b does not see a's file.
    let (status, _) = output(&b, &sh("test -e /tmp/mine")).await;
    assert!(!status.success());
    // A dropped sandbox is destroyed, not returned.
    let a_id = a.id().to_owned();
    drop(a);
    let mut gone = false;
    for _ in 0..250 {
        if !t.sandbox.list().await.unwrap().contains(&a_id) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "{a_id} still listed after its drop");
    until("the refill", || pool.ready() == 2).await;
    // Handed back on purpose, it is reused; a full pool destroys what it is handed.
    let b_id = b.id().to_owned();
    pool.recycle(b);
    assert_eq!(pool.ready(), 2);
    let c = pool.get().await.unwrap();
    pool.recycle(c.clone());
    let again = pool.get().await.unwrap();
    assert_eq!(again.id(), c.id());
    let (_, out) = output(&again, &sh("echo reused")).await;
    assert_eq!(out, "reused\n");
    let ids: Vec<String> = [a_id, b_id, c.id().to_owned()].into();
    drop((c, again));
    pool.close().await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    t.assert_nothing_left(&ids, None).await;
}

async fn each_exec_has_its_own_id(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let a = sandbox
        .exec_captured(&ExecConfig::shell("true"), OutputMode::Combined)
        .await
        .unwrap();
    let mut b = sandbox.exec(&ExecConfig::shell("true")).await.unwrap();
    assert_ne!(a.id(), b.id());
    assert_ne!(a.id(), sandbox.id());
    for (id, in_sandbox) in [(a.id(), a.sandbox_id()), (b.id(), b.sandbox_id())] {
        assert_eq!(in_sandbox, sandbox.id());
        assert!(id.starts_with(sandbox.id()), "{id}");
    }
    assert!(a.wait().await.unwrap().success());
    assert!(b.wait().await.unwrap().success());
    // A spawn's command keeps its container's id.
    let mut p = t.sandbox.spawn(&t.config("true", &[])).await.unwrap();
    assert_eq!(p.id(), p.sandbox_id());
    p.wait().await.unwrap();
    drop((a, b, p));
    let id = sandbox.id().to_owned();
    sandbox.close().await;
    t.assert_nothing_left(&[&id], None).await;
}

/// Busy for 0.3 s of CPU with 64 MiB written, as a Python script.
const BUSY_AND_BIG: &str = "import time\nb = b'x' * (64 << 20)\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n";

async fn every_status_carries_the_commands_usage(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let check = |what: &str, status: oci_sandbox::ExitStatus, min_cpu: Duration| {
        let u = status
            .usage()
            .unwrap_or_else(|| panic!("{what}: no usage in {status:?}"));
        let cpu = u.user_cpu + u.system_cpu;
        assert!(cpu >= min_cpu, "{what}: {u:?}");
        assert!(u.wall >= cpu.min(min_cpu), "{what}: {u:?}");
        assert!(u.wall < Duration::from_secs(30), "{what}: {u:?}");
        u
    };
    // An exec that ends by itself.
    let sandbox = start(&t).await;
    let exec = ExecConfig::new("python3", vec!["-c".into(), BUSY_AND_BIG.into()]);
    let status = sandbox.exec(&exec).await.unwrap().wait().await.unwrap();
    assert!(status.success(), "{status}");
    let u = check("exec", status, Duration::from_millis(250));
    assert!(u.peak_rss_bytes >= 64 << 20, "{u:?}");
    assert!(u.peak_rss_bytes < 512 << 20, "{u:?}");
    // The sandbox's own figures, from its cgroups: they include that command.
    let whole = sandbox.usage().await.expect("a sandbox's cgroup usage");
    assert!(
        whole.cpu.unwrap() >= Duration::from_millis(250),
        "{whole:?}"
    );
    assert!(whole.peak_memory_bytes.unwrap() >= 64 << 20, "{whole:?}");
    assert!(whole.memory_bytes.unwrap() > 0, "{whole:?}");
    assert!(whole.pids.unwrap() >= 1, "{whole:?}");
    // One the timeout killed: its usage to the kill.
    let mut spin = sh("while :; do :; done");
    spin.timeout = Some(Duration::from_millis(500));
    let status = sandbox.exec(&spin).await.unwrap().wait().await.unwrap();
    assert!(status.timed_out(), "{status}");
    check("timed-out exec", status, Duration::from_millis(100));
    sandbox.close().await;
    assert_eq!(sandbox.usage().await, None, "a closed sandbox has no usage");
    // A spawn's command goes through the same init.
    let config = t.config("python3", &["-c", BUSY_AND_BIG]);
    let status = t
        .sandbox
        .spawn(&config)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let u = check("spawn", status, Duration::from_millis(250));
    assert!(u.peak_rss_bytes >= 64 << 20, "{u:?}");
    t.assert_nothing_left(&[], None).await;
}

/// The peak resident set of this test process, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

async fn piped_output_keeps_head_and_tail_within_the_limit(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    // The cap of one exec: head and tail of `seq`, the middle counted.
    let mut seq = sh("seq 1 200000; seq 1 3000 >&2");
    seq.output_limit = Some(1000);
    let out = sandbox
        .exec(&seq)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.status);
    let all: Vec<u8> = (1..=200000)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert_eq!(out.stdout.len(), 1000);
    assert_eq!(&out.stdout[..500], &all[..500]);
    assert_eq!(&out.stdout[500..], &all[all.len() - 500..]);
    assert_eq!(out.stdout_dropped, all.len() as u64 - 1000);
    assert_eq!(out.stderr.len(), 1000);
    assert!(out.stderr.starts_with(b"1\n2\n") && out.stderr.ends_with(b"2999\n3000\n"));
    // The whole spilled to files, the default cap otherwise.
    let spill = tempfile::tempdir().unwrap();
    let out = sandbox
        .exec(&sh("seq 1 200000"))
        .await
        .unwrap()
        .wait_with_output_capped(oci_sandbox::OutputCap::new(100).spill_to(spill.path()))
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 100);
    assert_eq!(std::fs::read(spill.path().join("stdout")).unwrap(), all);
    assert_eq!(std::fs::read(spill.path().join("stderr")).unwrap(), b"");
    // The sandbox's limit (64 MiB by default) applies without a cap of the exec's.
    let out = sandbox
        .exec(&sh("head -c 71303168 /dev/zero"))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(out.stdout.len(), 64 << 20);
    assert_eq!(out.stdout_dropped, 4 << 20);
    drop(out);
    // 256 MiB through an 8 MiB limit: the host holds the limit, not the output (the tests
    // of the three runtimes run at once in this process, so their peaks add up).
    let before = peak_rss();
    let mut big = sh("head -c 268435456 /dev/zero");
    big.output_limit = Some(8 << 20);
    let out = sandbox
        .exec(&big)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", out.status);
    assert_eq!(out.stdout.len(), 8 << 20);
    assert_eq!(out.stdout_dropped, (256 - 8) << 20);
    let grown = peak_rss().saturating_sub(before);
    assert!(grown < 150 << 20, "the host grew by {} MiB", grown >> 20);
    sandbox.close().await;
}

async fn silence_past_the_idle_timeout_kills_and_output_keeps_a_command_alive(kind: OciRuntime) {
    use tokio::io::AsyncReadExt;
    let t = TestSandbox::new(kind).await;
    let sandbox = start(&t).await;
    let sleep = common::sleep_marker(3030, kind);
    let idle = |script: &str, secs: f64| ExecConfig {
        idle_timeout: Some(Duration::from_secs_f64(secs)),
        ..sh(script)
    };
    let piped = async {
        // Writes every 0.5 s for 2 s (alive), then stalls (killed).
        let begun = Instant::now();
        let out = sandbox
            .exec(&idle(
                &format!("for i in 1 2 3 4; do echo $i; sleep 0.5; done; {sleep}"),
                2.0,
            ))
            .await
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        assert!(out.status.idle_timed_out(), "{}", out.status);
        assert_eq!(out.stdout, b"1\n2\n3\n4\n");
        // The last line at 1.5 s, then 2 s of silence.
        assert!(
            begun.elapsed() >= Duration::from_millis(3400),
            "{:?}",
            begun.elapsed()
        );
        // A command that keeps writing ends by itself.
        let busy = sandbox
            .exec(&idle(
                "for i in 1 2 3 4 5 6; do echo $i >&2; sleep 0.5; done",
                2.0,
            ))
            .await
            .unwrap()
            .wait_with_output()
            .await
            .unwrap();
        assert!(busy.status.success(), "{}", busy.status);
        assert_eq!(busy.stderr, b"1\n2\n3\n4\n5\n6\n");
    };
    let captured = async {
        let capture = sandbox
            .exec_captured(
                &idle(&format!("echo started; {sleep}"), 1.5),
                OutputMode::Combined,
            )
            .await
            .unwrap();
        let status = capture.wait().await.unwrap();
        assert!(status.idle_timed_out(), "{status}");
        assert_eq!(capture.output.read_stdout().await.unwrap(), b"started\n");
    };
    let interactive = async {
        let mut pty = sandbox
            .exec_interactive(&idle(&format!("echo hello; {sleep}"), 1.5))
            .await
            .unwrap();
        let mut screen = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), pty.read_to_end(&mut screen))
            .await
            .expect("the idle terminal was not ended")
            .unwrap();
        assert!(String::from_utf8_lossy(&screen).contains("hello"));
        let status = pty.wait().await.unwrap();
        assert!(status.idle_timed_out(), "{status}");
    };
    tokio::join!(piped, captured, interactive);
    sandbox.close().await;
    t.assert_nothing_left(&[], Some(&sleep)).await;
}

on_every_runtime!(
    every_status_carries_the_commands_usage,
    silence_past_the_idle_timeout_kills_and_output_keeps_a_command_alive,
    piped_output_keeps_head_and_tail_within_the_limit,
    each_exec_has_its_own_id,
    a_pool_hands_out_fresh_sandboxes_and_refills,
    state_persists_across_execs,
    env_cwd_exit_codes_and_stdin_are_per_exec,
    bad_execs_are_typed_errors_and_the_sandbox_lives_on,
    concurrent_execs_all_complete,
    an_exec_timeout_kills_only_that_exec,
    captured_and_interactive_execs_work,
    ctrl_c_reaches_an_interactive_exec,
    a_sandbox_killed_from_outside_is_reported,
    drop_and_cancellation_leave_nothing,
);
