//! The gVisor platform probe: once per process, systrap then ptrace, KVM only when asked for.
//! (A file of its own: the probe's result lives as long as the test process.)

mod common;

use std::time::{Duration, Instant};

use oci_sandbox::{GvisorPlatform, NamespaceContainer, OciRuntime, SandboxError};

fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("osb-probe-")
        .tempdir_in("/tmp")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_runs_once_for_twenty_concurrent_callers_and_picks_ptrace() {
    let dirs: Vec<_> = (0..20).map(|_| state_dir()).collect();
    let started = Instant::now();
    let builds = dirs.iter().map(|d| {
        NamespaceContainer::builder()
            .runtime(OciRuntime::Gvisor)
            .state_dir(d.path())
            .build()
    });
    let sandboxes: Vec<NamespaceContainer> = futures::future::try_join_all(builds).await.unwrap();
    let first_call = started.elapsed();
    let choices: Vec<_> = sandboxes
        .iter()
        .map(|s| s.gvisor_platform().unwrap().clone())
        .collect();
    // One probe run: every caller got the very same result, down to its measured duration.
    assert!(choices.windows(2).all(|w| w[0] == w[1]));
    let choice = &choices[0];
    assert!(choice.probed);
    assert_eq!(choice.platform, GvisorPlatform::Ptrace, "{choice:?}");
    let (rejected, why) = &choice.rejected[0];
    assert_eq!(*rejected, GvisorPlatform::Systrap);
    assert!(why.contains("systrap"), "{why}");

    let later = Instant::now();
    let again = NamespaceContainer::builder()
        .runtime(OciRuntime::Gvisor)
        .state_dir(dirs[0].path())
        .build()
        .await
        .unwrap();
    let later_call = later.elapsed();
    assert_eq!(again.gvisor_platform().unwrap(), choice);
    println!(
        "probe: {:?} (first calls, 20 concurrent, {:?} of it the probe); a later call {:?}",
        first_call, choice.took, later_call
    );

    // And the chosen platform runs things.
    let config =
        NamespaceContainer::build_config(&Default::default(), "echo", vec!["on gvisor".into()]);
    let out = again
        .spawn(&config)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"on gvisor\n");
}

#[tokio::test]
async fn an_explicit_kvm_fails_within_its_deadline_and_leaves_nothing() {
    let dir = state_dir();
    let started = Instant::now();
    let err = NamespaceContainer::builder()
        .runtime(OciRuntime::Gvisor)
        .state_dir(dir.path())
        .gvisor_platform(GvisorPlatform::Kvm)
        .build()
        .await
        .unwrap_err();
    let took = started.elapsed();
    match &err {
        SandboxError::NoGvisorPlatform { failures } => {
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].0, GvisorPlatform::Kvm);
        }
        other => panic!("expected NoGvisorPlatform, got {other:?}"),
    }
    assert!(took < Duration::from_secs(25), "took {took:?}");
    println!("explicit kvm: {err} after {took:?}");
    // Nothing left: no process of the attempt, no probe state (lock files), no cgroup.
    let needle = dir.path().to_string_lossy().into_owned();
    let mut left = Vec::new();
    for _ in 0..100 {
        left = common::processes_mentioning(&needle);
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "processes left: {left:?}");
    let entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        entries
            .iter()
            .all(|e| !e.to_string_lossy().starts_with("probe-")),
        "{entries:?}"
    );
    // The probe's container is named after this process and the platform.
    let prefix = format!("osb-probe-{}-", std::process::id());
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .filter_map(Result::ok)
    {
        if let Ok(cgs) = std::fs::read_dir(h.path().join("oci-sandbox")) {
            for cg in cgs.filter_map(Result::ok) {
                assert!(
                    !cg.file_name().to_string_lossy().starts_with(&prefix),
                    "cgroup left: {}",
                    cg.path().display()
                );
            }
        }
    }
    assert!(
        common::zombie_children().is_empty(),
        "{:?}",
        common::zombie_children()
    );
}
