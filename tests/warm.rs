//! Warm spawns ([`NamespaceContainer::warm`]) on every runtime: the same results as cold
//! spawns in every mode, a container never used twice, a config that differs in one limit
//! spawned cold, pools that refill, bad input refused and nothing left, cancellation at any
//! point, and a burst bigger than the pool.

mod common;

use std::time::Duration;

use common::TestSandbox;
use oci_sandbox::{
    NamespaceContainer, OciRuntime, OutputMode, SandboxConfig, SandboxError, Signal,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Spawns `config` and waits for its output.
async fn output_of(t: &TestSandbox, config: &oci_sandbox::ContainerConfig) -> oci_sandbox::Output {
    t.sandbox
        .spawn(config)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap()
}

/// Spawns served by a warm container so far.
fn hits(t: &TestSandbox) -> u64 {
    t.sandbox.warm_pools().iter().map(|p| p.hits).sum()
}

fn ready(t: &TestSandbox) -> usize {
    t.sandbox.warm_pools().iter().map(|p| p.ready).sum()
}

/// Waits (up to 60 s) until the pools hold `n` ready containers.
async fn wait_ready(t: &TestSandbox, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while ready(t) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the pools did not refill: {:?}",
            t.sandbox.warm_pools()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A policy with a memory limit (the scenarios' second spec).
fn limited() -> SandboxConfig {
    SandboxConfig {
        memory_limit: Some(96 * 1024 * 1024),
        ..SandboxConfig::default()
    }
}

/// What every scenario showed, in order: comparable between a cold and a warm run.
async fn scenarios(t: &TestSandbox) -> Vec<String> {
    let rt = &t.sandbox;
    let mut seen = Vec::new();
    let status = |s: oci_sandbox::ExitStatus| {
        format!(
            "code={:?} signal={:?} timed_out={} oom={} capped={}",
            s.code(),
            s.signal(),
            s.timed_out(),
            s.oom_killed(),
            s.output_limit_exceeded()
        )
    };

    // Piped: its own environment (exactly), directory and exit code; a fresh /tmp.
    let mut c = t.sh(
        "echo \"$FOO\"; pwd; id -u; env | sort; ls -A /tmp | wc -l; \
                      echo err >&2; exit 3",
    );
    c.env.push(("FOO".into(), "bar".into()));
    let out = rt
        .spawn(&c)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    seen.push(format!(
        "piped {:?} {:?} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        status(out.status)
    ));

    // Stdin through cat.
    let mut child = rt.spawn(&t.config("cat", &[])).await.unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"through stdin\n").await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    seen.push(format!(
        "stdin {:?} {}",
        String::from_utf8_lossy(&out.stdout),
        status(out.status)
    ));

    // A signal reaches the command.
    let mut child = rt.spawn(&t.sh("echo up; exec sleep 30")).await.unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 3];
    stdout.read_exact(&mut first).await.unwrap();
    child.signal(Signal::SIGTERM).await.unwrap();
    seen.push(format!("signal {}", status(child.wait().await.unwrap())));

    // The timeout kills it.
    let mut c = t.config("sleep", &["30"]);
    c.timeout = Some(Duration::from_millis(500));
    seen.push(format!(
        "timeout {}",
        status(rt.spawn(&c).await.unwrap().wait().await.unwrap())
    ));

    // Captured, combined.
    let capture = rt
        .spawn_captured(&t.sh("echo a; echo b >&2; exit 4"), OutputMode::Combined)
        .await
        .unwrap();
    let ended = capture.wait().await.unwrap();
    seen.push(format!(
        "captured {:?} {}",
        String::from_utf8_lossy(&capture.output.read_stdout().await.unwrap()),
        status(ended)
    ));

    // Captured past the output limit.
    let mut c = t.config("yes", &[]);
    c.output_limit = Some(4096);
    let capture = rt.spawn_captured(&c, OutputMode::Separate).await.unwrap();
    let ended = capture.wait().await.unwrap();
    seen.push(format!(
        "capped {} {}",
        capture.output.read_stdout().await.unwrap().len(),
        status(ended)
    ));

    // A terminal: its size and its name.
    let mut pty = rt
        .spawn_interactive(&t.sh("stty size; tty; exit 5"))
        .await
        .unwrap();
    let mut text = Vec::new();
    pty.read_to_end(&mut text).await.unwrap();
    seen.push(format!(
        "terminal {:?} {}",
        String::from_utf8_lossy(&text),
        status(pty.wait().await.unwrap())
    ));

    // A limit of the second spec holds: the OOM killer takes a hog.
    let hog = t.config_with(
        &limited(),
        "python3",
        &["-c", "x = bytearray(1024 * 1024 * 1024)\nprint('hog ok')"],
    );
    let out = rt
        .spawn(&hog)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    seen.push(format!(
        "limit {:?} {}",
        String::from_utf8_lossy(&out.stdout),
        status(out.status)
    ));
    seen
}

/// The scenarios of [`scenarios`] give the same results cold and warm, and the warm run was
/// all warm: every spawn of it took a ready container.
async fn warm_and_cold_spawns_give_the_same_results(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let cold = scenarios(&t).await;
    assert_eq!(hits(&t), 0);
    // Templates with another command: spawns bring their own.
    t.sandbox.warm(&t.config("true", &[]), 7).await.unwrap();
    let hog_template = t.config_with(&limited(), "true", &[]);
    t.sandbox.warm(&hog_template, 1).await.unwrap();
    let warm = scenarios(&t).await;
    assert_eq!(hits(&t), 8, "{:?}", t.sandbox.warm_pools());
    assert_eq!(warm, cold);
    t.assert_nothing_left(&[], None).await;
}

/// Each spawn gets a container of its own, never used before: it sees an empty /tmp, and no
/// other spawn's id.
async fn a_warm_container_is_never_used_twice(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    t.sandbox.warm(&t.config("true", &[]), 2).await.unwrap();
    let mut ids = std::collections::HashSet::new();
    for round in 0..6 {
        wait_ready(&t, 1).await;
        let before = hits(&t);
        let c = t.sh("ls -A /tmp; echo left > /tmp/mark; sleep 1 & echo done");
        let child = t.sandbox.spawn(&c).await.unwrap();
        assert!(ids.insert(child.id().to_owned()), "a container came twice");
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.stdout, b"done\n", "round {round}: /tmp was not fresh");
        assert_eq!(hits(&t), before + 1);
    }
    t.assert_nothing_left(&[], None).await;
}

/// A config that differs from the pool's in one limit, the network, a mount or its working
/// directory (which runc and crun make when the container starts) is spawned cold (the pool
/// keeps its container); one that differs only in what its command brings is served.
async fn only_the_same_spec_takes_a_warm_container(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    t.sandbox.warm(&t.config("true", &[]), 1).await.unwrap();
    let mut pids = t.config("true", &[]);
    pids.limits.pids = Some(pids.limits.pids.unwrap_or(512) + 1);
    let mut network = t.config("true", &[]);
    network.network = oci_sandbox::Network::Host;
    let dir = tempfile::tempdir().unwrap();
    let bound = t.config_with(
        &SandboxConfig {
            workdir: Some(dir.path().to_owned()),
            ..SandboxConfig::default()
        },
        "true",
        &[],
    );
    let mut cwd = t.config("true", &[]);
    cwd.cwd = "/usr".into();
    for other in [pids, network, bound, cwd] {
        let status = t.sandbox.spawn(&other).await.unwrap().wait().await.unwrap();
        assert!(status.success(), "{status}");
        assert_eq!(hits(&t), 0);
        assert_eq!(ready(&t), 1);
    }
    let mut same = t.sh("echo \"$X\"");
    same.env.push(("X".into(), "y".into()));
    same.timeout = Some(Duration::from_secs(9));
    same.output_limit = Some(1000);
    let out = output_of(&t, &same).await;
    assert_eq!(out.stdout, b"y\n");
    assert_eq!(hits(&t), 1);
    t.assert_nothing_left(&[], None).await;
}

/// A workdir (a writable bind) is the spawn's to write in a warm container, as in a cold
/// one, though the pool's refills start containers of other ids meanwhile; one replaced on
/// the host since the container started sends the spawn cold, which sees the new one.
async fn writable_binds_are_the_spawns_and_a_replaced_one_goes_cold(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let dir = tempfile::tempdir_in("/tmp").unwrap();
    let workdir = dir.path().join("work");
    std::fs::create_dir(&workdir).unwrap();
    let policy = SandboxConfig {
        workdir: Some(workdir.clone()),
        ..SandboxConfig::default()
    };
    t.sandbox
        .warm(&t.config_with(&policy, "true", &[]), 2)
        .await
        .unwrap();
    for round in 0..4 {
        wait_ready(&t, 2).await;
        let before = hits(&t);
        let script = format!("echo {round} > /workspace/f{round} && cat /workspace/f*");
        let out = output_of(&t, &t.config_with(&policy, "sh", &["-c", &script])).await;
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected: String = (0..=round).map(|r| format!("{r}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
        assert_eq!(hits(&t), before + 1);
    }
    // Replaced on the host: the ready containers bound the old directory.
    wait_ready(&t, 2).await;
    std::fs::rename(&workdir, dir.path().join("old")).unwrap();
    std::fs::create_dir(&workdir).unwrap();
    std::fs::write(workdir.join("new"), "fresh\n").unwrap();
    let out = output_of(&t, &t.config_with(&policy, "cat", &["/workspace/new"])).await;
    assert_eq!(
        out.stdout,
        b"fresh\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = &t.sandbox.warm_pools()[0];
    assert_eq!((stats.hits, stats.discarded), (4, 1), "{stats:?}");
    t.assert_nothing_left(&[], None).await;
}

/// A pool refills in the background; an empty one spawns cold without an error; `0` ends
/// it; `close` ends them all, and the runtime works on.
async fn pools_refill_and_end(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let template = t.config("true", &[]);
    t.sandbox.warm(&template, 2).await.unwrap();
    for _ in 0..2 {
        t.sandbox
            .spawn(&template)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    assert_eq!(hits(&t), 2);
    wait_ready(&t, 2).await;
    let stats = t.sandbox.warm_pools();
    assert_eq!(stats.len(), 1);
    assert_eq!((stats[0].target, stats[0].started), (2, 4), "{stats:?}");
    // A burst that empties it: the rest go cold.
    let burst: Vec<_> = (0..4).map(|_| t.sandbox.spawn(&template)).collect();
    for spawned in futures::future::join_all(burst).await {
        assert!(spawned.unwrap().wait().await.unwrap().success());
    }
    let stats = &t.sandbox.warm_pools()[0];
    assert_eq!((stats.hits, stats.misses), (4, 2), "{stats:?}");
    // Ended by `0`: its containers go.
    t.sandbox.warm(&template, 0).await.unwrap();
    assert!(t.sandbox.warm_pools().is_empty());
    t.sandbox.warm(&template, 1).await.unwrap();
    t.sandbox.close().await;
    assert!(t.sandbox.warm_pools().is_empty());
    assert!(t.sandbox.list_all().await.unwrap().is_empty());
    let status = t
        .sandbox
        .spawn(&template)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(status.success());
    t.assert_nothing_left(&[], None).await;
}

/// A spawn that finds no container ready, but one starting that no other spawn waits for,
/// takes that one when it is up instead of starting a container of its own.
async fn a_spawn_takes_a_container_already_starting(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let template = t.config("true", &[]);
    t.sandbox.warm(&template, 1).await.unwrap();
    let first = t.sandbox.spawn(&t.config("sleep", &["30"])).await.unwrap();
    // Its replacement starts once the first command runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = &t.sandbox.warm_pools()[0];
        if stats.starting == 1 {
            break;
        }
        assert_eq!(
            stats.ready, 0,
            "started before it was seen starting: {stats:?}"
        );
        assert!(std::time::Instant::now() < deadline, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let out = output_of(&t, &t.sh("echo waited")).await;
    assert_eq!(out.stdout, b"waited\n");
    let stats = &t.sandbox.warm_pools()[0];
    assert_eq!((stats.hits, stats.misses), (2, 0), "{stats:?}");
    drop(first);
    t.assert_nothing_left(&[], Some("sleep 30")).await;
}

/// Configs no warm container can serve, and configs that cannot start, are typed errors
/// that leave no pool and no container; a spawn whose command is missing fails as a cold one
/// does and leaves the warm container for the next.
async fn bad_input_is_refused_and_leaves_nothing(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mut with_id = t.config("true", &[]);
    with_id.id = Some("osb-warm-own-id".into());
    let mut with_hook = t.config("true", &[]);
    with_hook.spec_hook = Some(oci_sandbox::SpecHook::new(|_| {}));
    let mut bad_cwd = t.config("true", &[]);
    bad_cwd.cwd = "relative".into();
    for config in [&with_id, &with_hook, &bad_cwd] {
        let err = t.sandbox.warm(config, 2).await.unwrap_err();
        assert!(matches!(err, SandboxError::InvalidConfig { .. }), "{err}");
    }
    let missing = t.config("no-such-command-here", &[]);
    let err = t.sandbox.warm(&missing, 2).await.unwrap_err();
    assert!(matches!(err, SandboxError::CommandNotFound { .. }), "{err}");
    // A config that fails only when a container starts: an image that is not there.
    let refused = t.config_with(
        &SandboxConfig {
            image: Some(oci_sandbox::Image::OciLayout {
                path: t.state.path().join("no-such-layout"),
                reference: "latest".into(),
            }),
            ..SandboxConfig::default()
        },
        "true",
        &[],
    );
    let err = t.sandbox.warm(&refused, 2).await.unwrap_err();
    assert!(matches!(err, SandboxError::Image { .. }), "{err}");
    assert!(t.sandbox.warm_pools().is_empty());
    t.sandbox.close().await;
    assert!(t.sandbox.list_all().await.unwrap().is_empty());

    t.sandbox.warm(&t.config("true", &[]), 1).await.unwrap();
    let err = t
        .sandbox
        .spawn(&t.config("no-such-command-here", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::CommandNotFound { .. }), "{err}");
    let mut bad_env = t.config("true", &[]);
    bad_env.env.push(("A=B".into(), "c".into()));
    let err = t.sandbox.spawn(&bad_env).await.unwrap_err();
    assert!(matches!(err, SandboxError::InvalidConfig { .. }), "{err}");
    assert_eq!((hits(&t), ready(&t)), (0, 1));
    t.assert_nothing_left(&[], None).await;
}

/// Dropped at any point (the pool's first fill, a warm spawn), nothing is left once the
/// runtime closes, and the pool still serves.
async fn cancellation_leaves_nothing(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let template = t.config("true", &[]);
    for delay_ms in [0, 1, 5, 20] {
        let delay = Duration::from_millis(delay_ms);
        let _ = tokio::time::timeout(delay, t.sandbox.warm(&template, 2)).await;
    }
    t.sandbox.warm(&template, 2).await.unwrap();
    let sleeper = t.config("sleep", &["30"]);
    for delay_us in [0, 100, 500, 2000] {
        wait_ready(&t, 2).await;
        let delay = Duration::from_micros(delay_us);
        if let Ok(Ok(child)) = tokio::time::timeout(delay, t.sandbox.spawn(&sleeper)).await {
            drop(child);
        }
    }
    wait_ready(&t, 2).await;
    let out = output_of(&t, &t.sh("echo still")).await;
    assert_eq!(out.stdout, b"still\n");
    t.assert_nothing_left(&[], Some("sleep 30")).await;
}

/// Twenty-four spawns at once against a pool of eight: all succeed, eight of them warm (the
/// benches burst fifty).
async fn a_burst_bigger_than_the_pool_all_succeeds(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let template = t.config("true", &[]);
    t.sandbox.warm(&template, 8).await.unwrap();
    let spawns = (0..24).map(|i| {
        let rt = t.sandbox.clone();
        let c = t.sh(&format!("echo {i}"));
        async move { rt.spawn(&c).await?.wait_with_output().await }
    });
    let outs = futures::future::join_all(spawns).await;
    for (i, out) in outs.into_iter().enumerate() {
        let out = out.unwrap_or_else(|e| panic!("spawn {i}: {e}"));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{i}\n"));
    }
    let stats = &t.sandbox.warm_pools()[0];
    assert_eq!(
        (stats.hits, stats.hits + stats.misses),
        (8, 24),
        "{stats:?}"
    );
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    warm_and_cold_spawns_give_the_same_results,
    a_warm_container_is_never_used_twice,
    only_the_same_spec_takes_a_warm_container,
    writable_binds_are_the_spawns_and_a_replaced_one_goes_cold,
    pools_refill_and_end,
    a_spawn_takes_a_container_already_starting,
    bad_input_is_refused_and_leaves_nothing,
    cancellation_leaves_nothing,
    a_burst_bigger_than_the_pool_all_succeeds,
);

/// A pool of a runtime that is dropped without `close` ends with it: its containers go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_runtime_takes_its_pools_with_it() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let other = NamespaceContainer::builder()
        .state_dir(t.state.path())
        .capture_dir(t.state.path().join("captures"))
        .data_dir(t.state.path().join("data"))
        .build()
        .await
        .unwrap();
    other.warm(&t.config("true", &[]), 2).await.unwrap();
    assert_eq!(other.list().await.unwrap().len(), 2);
    drop(other);
    // Its teardown runs on its own tracker, which nothing here waits for: poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let bundles = || std::fs::read_dir(t.bundles_dir()).unwrap().count();
    while !t.sandbox.list_all().await.unwrap().is_empty() || bundles() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "warm containers outlived their runtime"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.assert_nothing_left(&[], None).await;
}

/// `warm_refills(0)` is refused.
#[tokio::test]
async fn zero_refills_is_refused() {
    let err = NamespaceContainer::builder()
        .warm_refills(0)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::InvalidConfig { .. }), "{err}");
}
