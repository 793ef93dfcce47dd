//! 500 sandboxed commands, up to 32 at once, cancelled at random points in every way a caller
//! can; afterwards nothing may be left: measured, not assumed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{ContainerConfig, NamespaceContainer, OciRuntime, OutputMode};
use tokio::io::AsyncReadExt;

const SPAWNS: usize = 500;
const CONCURRENCY: usize = 32;
const MARKER: &str = "stress-9a7c";
const PANIC_MESSAGE: &str = "stress: a deliberate panic in the task holding the handle";

/// How one run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    RunToEnd,
    DropSpawnFuture,
    DropHandleMidRun,
    TimeoutAroundWait,
    AbortTask,
    PanicHoldingHandle,
    KillRacingExit,
}

const FATES: [Fate; 7] = [
    Fate::RunToEnd,
    Fate::DropSpawnFuture,
    Fate::DropHandleMidRun,
    Fate::TimeoutAroundWait,
    Fate::AbortTask,
    Fate::PanicHoldingHandle,
    Fate::KillRacingExit,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Piped,
    Captured,
    Interactive,
}

/// A small deterministic generator (xorshift), so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Handles of any mode, so that every fate applies to every mode.
enum Handle {
    Piped(oci_sandbox::ContainerProcess),
    Captured(oci_sandbox::ProcessCapture),
    Interactive(oci_sandbox::PtySession),
}

impl Handle {
    fn id(&self) -> String {
        match self {
            Handle::Piped(p) => p.id().to_owned(),
            Handle::Captured(c) => c.id().to_owned(),
            Handle::Interactive(s) => s.id().to_owned(),
        }
    }

    async fn wait(&mut self) {
        let status = match self {
            Handle::Piped(p) => {
                let mut out = Vec::new();
                if let Some(mut stdout) = p.stdout.take() {
                    let _ = stdout.read_to_end(&mut out).await;
                }
                p.wait().await
            }
            Handle::Captured(c) => c.wait().await,
            Handle::Interactive(s) => {
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out).await;
                s.wait().await
            }
        };
        status.expect("a run to its end has a status");
    }

    fn start_kill(&mut self) {
        match self {
            Handle::Piped(p) => p.start_kill(),
            Handle::Captured(c) => c.start_kill(),
            Handle::Interactive(s) => s.start_kill(),
        }
    }
}

async fn spawn(sandbox: &NamespaceContainer, mode: Mode, config: &ContainerConfig) -> Handle {
    match mode {
        Mode::Piped => Handle::Piped(sandbox.spawn(config).await.unwrap()),
        Mode::Captured => Handle::Captured(
            sandbox
                .spawn_captured(config, OutputMode::Combined)
                .await
                .unwrap(),
        ),
        Mode::Interactive => Handle::Interactive(sandbox.spawn_interactive(config).await.unwrap()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_spawns_cancelled_at_random_leave_nothing() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let deliberate = info.payload().downcast_ref::<&str>() == Some(&PANIC_MESSAGE);
        if !deliberate {
            default_hook(info);
        }
    }));
    let started = Instant::now();
    let t = TestSandbox::new(OciRuntime::Runc).await;
    // Warm up every mode once, so that lazily opened fds (tokio's signal pipe, the reactor,
    // the launcher's installation) are in the baseline.
    for mode in [Mode::Piped, Mode::Captured, Mode::Interactive] {
        spawn(&t.sandbox, mode, &t.config("true", &[]))
            .await
            .wait()
            .await;
    }
    t.sandbox.close().await;
    let fd_baseline = open_fds();

    let ids = Arc::new(Mutex::new(Vec::<String>::new()));
    let tally = Arc::new(Mutex::new(BTreeMap::<(Fate, Mode), usize>::new()));
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut tasks = Vec::new();
    for i in 0..SPAWNS {
        let fate = FATES[rng.below(FATES.len() as u64) as usize];
        let mode = [Mode::Piped, Mode::Captured, Mode::Interactive][rng.below(3) as usize];
        let sleep_ms = rng.below(300);
        let cut_us = rng.below(30_000);
        let script = format!("echo {MARKER} {i}; sleep 0.{sleep_ms:03}; echo done");
        let config = t.sh(&script);
        let sandbox = t.sandbox.clone();
        let (ids, tally) = (ids.clone(), tally.clone());
        let permit = permits.clone().acquire_owned().await.unwrap();
        *tally.lock().unwrap().entry((fate, mode)).or_default() += 1;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let record = move |h: &Handle| ids.lock().unwrap().push(h.id());
            match fate {
                Fate::RunToEnd => {
                    let mut h = spawn(&sandbox, mode, &config).await;
                    record(&h);
                    h.wait().await;
                }
                Fate::DropSpawnFuture => {
                    let _ = tokio::time::timeout(
                        Duration::from_micros(cut_us),
                        spawn(&sandbox, mode, &config),
                    )
                    .await;
                }
                Fate::DropHandleMidRun => {
                    let h = spawn(&sandbox, mode, &config).await;
                    record(&h);
                    tokio::time::sleep(Duration::from_micros(cut_us * 5)).await;
                    drop(h);
                }
                Fate::TimeoutAroundWait => {
                    let mut h = spawn(&sandbox, mode, &config).await;
                    record(&h);
                    let _ = tokio::time::timeout(Duration::from_micros(cut_us * 5), h.wait()).await;
                }
                Fate::AbortTask => {
                    let inner = tokio::spawn(async move {
                        let mut h = spawn(&sandbox, mode, &config).await;
                        record(&h);
                        h.wait().await;
                    });
                    tokio::time::sleep(Duration::from_micros(cut_us * 3)).await;
                    inner.abort();
                    let _ = inner.await;
                }
                Fate::PanicHoldingHandle => {
                    let inner = tokio::spawn(async move {
                        let h = spawn(&sandbox, mode, &config).await;
                        record(&h);
                        tokio::time::sleep(Duration::from_micros(cut_us)).await;
                        std::panic::panic_any(PANIC_MESSAGE);
                    });
                    assert!(inner.await.unwrap_err().is_panic());
                }
                Fate::KillRacingExit => {
                    let mut h = spawn(&sandbox, mode, &config).await;
                    record(&h);
                    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
                    h.start_kill();
                    h.wait().await;
                }
            }
        }));
        let _ = i;
    }
    for task in tasks {
        task.await.expect("no task fails other than by its fate");
    }
    let ran = started.elapsed();

    // Measured: the runtime's list, bundles, capture dirs, processes, zombies, cgroups...
    let ids = ids.lock().unwrap().clone();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    t.assert_nothing_left(&id_refs, Some(MARKER)).await;
    // ...and this process's open fds.
    let mut fds = open_fds();
    for _ in 0..100 {
        if fds <= fd_baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        fds = open_fds();
    }
    assert_eq!(
        fds, fd_baseline,
        "fds leaked: {fds} open against {fd_baseline} before"
    );

    let tally = tally.lock().unwrap();
    let mut by_fate = BTreeMap::<Fate, usize>::new();
    for ((fate, _), n) in tally.iter() {
        *by_fate.entry(*fate).or_default() += n;
    }
    println!(
        "stress: {SPAWNS} spawns, {CONCURRENCY} at once, {:?} (checks included {:?})",
        ran,
        started.elapsed()
    );
    println!("stress: by fate {by_fate:?}");
    println!("stress: by (fate, mode) {tally:?}");
    println!(
        "stress: leaks: 0 containers, 0 bundles, 0 capture dirs, 0 processes, 0 zombies, 0 cgroups, 0 fds"
    );
}
