//! `RUST_LOG=oci_sandbox=debug` tells what happened and how long each step took: a span per
//! container and per exec, an event at each lifecycle step.

mod common;

use std::sync::{Arc, Mutex};

use oci_sandbox::{NamespaceContainer, OciRuntime, SandboxConfig};

/// Everything the subscriber writes, for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_spawn_and_an_exec_log_every_lifecycle_step_in_their_spans() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("oci_sandbox=debug")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let t = common::TestSandbox::new(OciRuntime::Runc).await;
    let status = t
        .sandbox
        .spawn(&t.config("true", &[]))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert!(status.success());
    let sandbox = t
        .sandbox
        .start(&NamespaceContainer::build_config(
            &SandboxConfig::default(),
            "true",
            vec![],
        ))
        .await
        .unwrap();
    let exec = oci_sandbox::ExecConfig::new("true", vec![]);
    assert!(
        sandbox
            .exec(&exec)
            .await
            .unwrap()
            .wait()
            .await
            .unwrap()
            .success()
    );
    sandbox.close().await;
    t.sandbox.close().await;

    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for step in [
        "bundle written, runtime started",
        "launcher ready",
        "the init runs",
        "the init has exited",
        "removed",
        "started",
        "ended",
    ] {
        assert!(log.contains(step), "no {step:?} event in:\n{log}");
    }
    // In their spans, with what they are about and how long a step took.
    assert!(
        log.contains("container{id=osb-"),
        "no container span in:\n{log}"
    );
    assert!(
        log.contains("mode=\"spawn\"") || log.contains("mode=spawn"),
        "{log}"
    );
    assert!(log.contains("exec{sandbox=osb-"), "no exec span in:\n{log}");
    assert!(log.contains("elapsed_ms="), "{log}");
}
