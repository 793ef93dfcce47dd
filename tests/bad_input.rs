//! Bad input: each case gives a clear, typed error and leaves nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::TestSandbox;
use oci_sandbox::{Bind, NamespaceContainer, OciRuntime, SandboxConfig, SandboxError};

#[tokio::test]
async fn missing_runtime_binary_on_path_is_runtime_not_found() {
    let err = NamespaceContainer::builder()
        .binary("/nonexistent/runc")
        .state_dir(tempfile::tempdir().unwrap().path())
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SandboxError::RuntimeNotFound {
                runtime: OciRuntime::Runc,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("/nonexistent/runc"), "{err}");
}

#[tokio::test]
async fn non_executable_runtime_binary_is_runtime_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("runc");
    std::fs::write(&fake, "not a program").unwrap();
    let err = NamespaceContainer::builder()
        .binary(&fake)
        .state_dir(dir.path().join("state"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, SandboxError::RuntimeNotFound { .. }), "{err}");
}

#[tokio::test]
async fn runtime_binary_removed_after_construction_is_runtime_not_found_at_spawn() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("runc");
    std::fs::copy(which("runc"), &copy).unwrap();
    let state = dir.path().join("state");
    let sandbox = NamespaceContainer::builder()
        .binary(&copy)
        .state_dir(&state)
        .build()
        .await
        .unwrap();
    std::fs::remove_file(&copy).unwrap();
    let config = NamespaceContainer::build_config(&SandboxConfig::default(), "true", vec![]);
    let err = sandbox.spawn(&config).await.unwrap_err();
    assert!(matches!(err, SandboxError::RuntimeNotFound { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(state.join("runc/bundles"))
            .unwrap()
            .count(),
        0
    );
}

async fn command_not_found_is_reported_before_anything_is_created(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let err = t
        .sandbox
        .spawn(&t.config("no-such-command-xyz", &[]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SandboxError::CommandNotFound { command, .. } if command == "no-such-command-xyz"),
        "{err}"
    );
    t.assert_nothing_left(&[], None).await;
}

async fn command_missing_on_a_tmpfs_is_reported_by_the_runtime_as_command_not_found(
    kind: OciRuntime,
) {
    // The library cannot see into the container's /tmp, so the runtime is the one to fail.
    let t = TestSandbox::new(kind).await;
    let started = Instant::now();
    let err = t
        .sandbox
        .spawn(&t.config("/tmp/nothing-here", &[]))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match &err {
        SandboxError::CommandNotFound {
            message: Some(m), ..
        } => assert!(m.contains("/tmp/nothing-here"), "{m}"),
        other => panic!("expected CommandNotFound with the runtime's message, got {other:?}"),
    }
    t.assert_nothing_left(&[], None).await;
}

async fn relative_bind_source_is_invalid_config(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        readonly_binds: vec![Bind::new("relative/dir", "/data")],
        ..Default::default()
    };
    let err = t
        .sandbox
        .spawn(&t.config_with(&policy, "true", &[]))
        .await
        .unwrap_err();
    match &err {
        SandboxError::InvalidConfig { field, reason } => {
            assert!(field.ends_with(".source"), "{field}");
            assert!(
                reason.contains("relative/dir") && reason.contains("not an absolute path"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    t.assert_nothing_left(&[], None).await;
}

async fn nonexistent_workdir_is_invalid_config(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let policy = SandboxConfig {
        workdir: Some("/nonexistent/workdir".into()),
        ..Default::default()
    };
    let err = t
        .sandbox
        .spawn(&t.config_with(&policy, "true", &[]))
        .await
        .unwrap_err();
    match &err {
        SandboxError::InvalidConfig { reason, .. } => {
            assert!(
                reason.contains("/nonexistent/workdir") && reason.contains("/workspace"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    t.assert_nothing_left(&[], None).await;
}

async fn cwd_that_is_not_a_directory_is_invalid_config(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mut c = t.config("true", &[]);
    c.cwd = "/usr/no-such-dir".into();
    let err = t.sandbox.spawn(&c).await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::InvalidConfig { field, .. } if field == "cwd"),
        "{err}"
    );
    c.cwd = "relative".into();
    let err = t.sandbox.spawn(&c).await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::InvalidConfig { field, .. } if field == "cwd"),
        "{err}"
    );
    t.assert_nothing_left(&[], None).await;
}

async fn env_key_with_equals_or_nul_is_invalid_config(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    for (k, v) in [
        ("A=B", "x"),
        ("A\0B", "x"),
        ("", "x"),
        ("OK", "nul\0inside"),
    ] {
        let policy = SandboxConfig {
            env: vec![(k.into(), v.into())],
            ..Default::default()
        };
        let err = t
            .sandbox
            .spawn(&t.config_with(&policy, "true", &[]))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, SandboxError::InvalidConfig { field, .. } if field == "env"),
            "{k:?}: {err}"
        );
    }
    t.assert_nothing_left(&[], None).await;
}

async fn empty_command_is_invalid_config(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let err = t.sandbox.spawn(&t.config("", &[])).await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::InvalidConfig { field, .. } if field == "command"),
        "{err}"
    );
    t.assert_nothing_left(&[], None).await;
}

async fn invalid_id_is_invalid_config(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mut c = t.config("true", &[]);
    c.id = Some("../escape".into());
    let err = t.sandbox.spawn(&c).await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::InvalidConfig { field, .. } if field == "id"),
        "{err}"
    );
    t.assert_nothing_left(&[], None).await;
}

async fn duplicate_id_is_refused_and_the_original_keeps_running(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let mut c = t.sh("read line; echo got $line");
    c.id = Some("my-fixed-id".into());
    let mut first = t.sandbox.spawn(&c).await.unwrap();
    let err = t.sandbox.spawn(&c).await.unwrap_err();
    assert!(
        matches!(&err, SandboxError::DuplicateId { id } if id == "my-fixed-id"),
        "{err}"
    );
    use tokio::io::AsyncWriteExt;
    first
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"x\n")
        .await
        .unwrap();
    let out = first.wait_with_output().await.unwrap();
    assert_eq!(out.stdout, b"got x\n");
    t.assert_nothing_left(&["my-fixed-id"], None).await;
}

#[tokio::test]
async fn relative_state_dir_is_invalid_config() {
    let err = NamespaceContainer::builder()
        .state_dir("relative/state")
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SandboxError::InvalidConfig { field, .. } if field == "state_dir"),
        "{err}"
    );
}

fn which(name: &str) -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not on PATH"))
}

on_every_runtime!(
    command_missing_on_a_tmpfs_is_reported_by_the_runtime_as_command_not_found,
    command_not_found_is_reported_before_anything_is_created,
    relative_bind_source_is_invalid_config,
    nonexistent_workdir_is_invalid_config,
    cwd_that_is_not_a_directory_is_invalid_config,
    env_key_with_equals_or_nul_is_invalid_config,
    empty_command_is_invalid_config,
    invalid_id_is_invalid_config,
    duplicate_id_is_refused_and_the_original_keeps_running,
);
