//! Background jobs of a long-lived sandbox: they outlive their handles, are listed, found
//! by id, replayed from any offset, killed, forgotten, and end with the sandbox.

mod common;

use std::time::Duration;

use common::TestSandbox;
use futures::StreamExt;
use oci_sandbox::{ExecConfig, Job, OciRuntime, OutputMode, SandboxError};

fn forever(script: &str) -> ExecConfig {
    ExecConfig {
        timeout: Some(Duration::MAX),
        ..ExecConfig::shell(script)
    }
}

/// Everything a stream yields, to its end.
async fn collect(
    mut stream: impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Unpin,
) -> String {
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8(all).unwrap()
}

async fn a_job_outlives_its_handle_and_replays_from_any_offset(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.sandbox.start(&t.config("true", &[])).await.unwrap();
    let script = "for i in 1 2 3; do echo line$i; echo err$i >&2; sleep 0.2; done";
    let id = {
        let job = sandbox
            .spawn_job(&forever(script), OutputMode::Separate)
            .await
            .unwrap();
        assert_eq!(job.command(), ["sh", "-c", script]);
        assert_eq!(job.sandbox_id(), sandbox.id());
        job.id().to_owned()
        // The handle is dropped here: the job runs on.
    };
    // Another exec meanwhile does not touch it.
    let out = sandbox
        .exec(&ExecConfig::shell("echo other"))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"other\n");
    let listed: Vec<String> = sandbox.jobs().iter().map(|j| j.id().to_owned()).collect();
    assert_eq!(listed, std::slice::from_ref(&id));
    // Attached from the start and from an offset, while it runs: both follow to its end.
    let (all, later) = tokio::join!(
        collect(sandbox.attach(&id, 0).unwrap()),
        collect(sandbox.attach(&id, 6).unwrap())
    );
    assert_eq!(all, "line1\nline2\nline3\n");
    assert_eq!(later, "line2\nline3\n");
    let job = sandbox.job(&id).unwrap();
    let status = job.wait().await.unwrap();
    assert!(status.success(), "{status}");
    assert!(status.usage().is_some());
    assert_eq!(
        job.output().read_stderr().await.unwrap(),
        b"err1\nerr2\nerr3\n"
    );
    // Ended, it stays listed and replayable until forgotten.
    assert_eq!(collect(sandbox.attach(&id, 12).unwrap()).await, "line3\n");
    assert_eq!(sandbox.forget_job(&id).unwrap().id(), id);
    assert!(sandbox.jobs().is_empty());
    match sandbox.attach(&id, 0) {
        Err(SandboxError::NoSuchJob { job, .. }) => assert_eq!(job, id),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a forgotten job is attachable"),
    }
    sandbox.close().await;
    drop(job);
    t.assert_nothing_left(&[], None).await;
}

async fn jobs_are_killed_by_kill_by_forgetting_and_by_close(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.sandbox.start(&t.config("true", &[])).await.unwrap();
    let sleep = common::sleep_marker(3010, kind);
    let start = |script: String| {
        let sandbox = sandbox.clone();
        async move {
            sandbox
                .spawn_job(&forever(&script), OutputMode::Combined)
                .await
                .unwrap()
        }
    };
    // Killed by id, with what it started in the background.
    let killed = start(format!("{sleep} & echo started; wait")).await;
    let mut log = sandbox.attach(killed.id(), 0).unwrap();
    assert_eq!(&log.next().await.unwrap().unwrap()[..], b"started\n");
    sandbox.job(killed.id()).unwrap().kill().await.unwrap();
    let status = killed.wait().await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert!(log.next().await.is_none(), "the stream ends with the job");
    // Forgotten while running, with no handle left: killed.
    let forgotten = start("sleep 301".to_owned()).await;
    let id = forgotten.id().to_owned();
    drop(forgotten);
    let count = ExecConfig::shell(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done 2>/dev/null | grep -c '^sleep 301 $' || true",
    );
    let running = |sandbox: oci_sandbox::Sandbox| {
        let count = count.clone();
        async move {
            let out = sandbox
                .exec(&count)
                .await
                .unwrap()
                .wait_with_output()
                .await
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
    };
    // Its shell may not have forked its sleep yet when the job has started (it did not, once,
    // under gVisor on a loaded machine): wait for the sleep, then see it run on.
    let mut seen = String::new();
    for _ in 0..50 {
        seen = running(sandbox.clone()).await;
        if seen == "1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, "1", "a job without handles runs on");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        running(sandbox.clone()).await,
        "1",
        "a job without handles runs on"
    );
    sandbox.forget_job(&id).unwrap();
    let mut left = String::new();
    for _ in 0..50 {
        left = running(sandbox.clone()).await;
        if left == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, "0", "a forgotten job without handles was not killed");
    // A running job survives its handles until the sandbox closes.
    let running = start(format!("echo up; {sleep}")).await;
    let mut log = sandbox.attach(running.id(), 0).unwrap();
    assert_eq!(&log.next().await.unwrap().unwrap()[..], b"up\n");
    assert!(running.try_wait().unwrap().is_none());
    sandbox.close().await;
    let status = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("a job outlived its sandbox's close");
    assert!(status.is_err() || status.unwrap().signal() == Some(libc::SIGKILL));
    assert!(sandbox.jobs().is_empty(), "a closed sandbox lists no jobs");
    drop((killed, running, log));
    t.assert_nothing_left(&[], Some(&sleep)).await;
}

/// Jobs in flight from many tasks at once: each gets its own id and its own output.
async fn concurrent_jobs_keep_their_own_output(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let sandbox = t.sandbox.start(&t.config("true", &[])).await.unwrap();
    let jobs: Vec<Job> = futures::future::join_all((0..6).map(|i| {
        let sandbox = sandbox.clone();
        async move {
            sandbox
                .spawn_job(&forever(&format!("echo job{i}")), OutputMode::Combined)
                .await
                .unwrap()
        }
    }))
    .await;
    for (i, job) in jobs.iter().enumerate() {
        assert!(job.wait().await.unwrap().success());
        assert_eq!(collect(job.attach(0)).await, format!("job{i}\n"));
    }
    let mut ids: Vec<_> = sandbox.jobs().iter().map(|j| j.id().to_owned()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    sandbox.close().await;
    drop(jobs);
    t.assert_nothing_left(&[], None).await;
}

on_every_runtime!(
    a_job_outlives_its_handle_and_replays_from_any_offset,
    jobs_are_killed_by_kill_by_forgetting_and_by_close,
    concurrent_jobs_keep_their_own_output,
);
