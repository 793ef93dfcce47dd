//! Unit tests of the config module and its default policy.

use super::*;

#[test]
fn default_policy_mounts_host_tools_read_only_and_a_private_tmp() {
    let c = ContainerConfig::new("true", vec![]);
    assert!(c.mounts.iter().any(|m| m.destination == Path::new("/usr")
        && m.kind
            == MountKind::Bind {
                source: "/usr".into(),
                writable: false
            }));
    assert!(
        c.mounts.iter().any(
            |m| m.destination == Path::new("/tmp") && matches!(m.kind, MountKind::Tmpfs { .. })
        )
    );
    assert!(!c.mounts.iter().any(|m| m.destination.starts_with("/home")
        || m.destination.starts_with("/root")
        || m.destination == Path::new("/etc/shadow")));
    assert_eq!(c.cwd, Path::new("/tmp"));
    assert!(c.validate().is_ok());
}

#[test]
fn policy_env_overrides_defaults() {
    let s = SandboxConfig {
        env: vec![("HOME".into(), "/x".into()), ("A".into(), "b".into())],
        ..Default::default()
    };
    let c = from_policy(&s, "true".into(), vec![]);
    assert_eq!(c.env.iter().filter(|(k, _)| k == "HOME").count(), 1);
    assert!(c.env.contains(&("HOME".into(), "/x".into())));
    assert!(c.env.contains(&("A".into(), "b".into())));
}

#[test]
fn command_is_resolved_through_the_usr_bind() {
    assert!(ContainerConfig::new("sh", vec![]).validate().is_ok());
    assert!(ContainerConfig::new("/bin/sh", vec![]).validate().is_ok());
    assert!(matches!(
        ContainerConfig::new("no-such-command-xyz", vec![]).validate(),
        Err(SandboxError::CommandNotFound { .. })
    ));
    assert!(matches!(
        ContainerConfig::new("/usr/bin/no-such-command-xyz", vec![]).validate(),
        Err(SandboxError::CommandNotFound { .. })
    ));
}

#[test]
fn commands_on_a_tmpfs_are_not_second_guessed() {
    assert!(
        ContainerConfig::new("/tmp/made-at-run-time", vec![])
            .validate()
            .is_ok()
    );
}

#[test]
fn ids_follow_runc_rules() {
    assert!(validate_id("osb-1-2-3").is_ok());
    for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
        assert!(validate_id(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_writable_shared_root_is_refused() {
    let mut c = ContainerConfig::new("true", vec![]);
    c.security.readonly_rootfs = false;
    match c.validate() {
        Err(SandboxError::InvalidConfig { field, .. }) => {
            assert_eq!(field, "security.readonly_rootfs")
        }
        other => panic!("{other:?}"),
    }
}
