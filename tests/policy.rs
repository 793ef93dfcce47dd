//! What `SandboxConfig` options do inside a real container.

mod common;

use common::TestSandbox;
use oci_sandbox::{Bind, Network, OciRuntime, SandboxConfig, Spec, SpecHook};

async fn run(t: &TestSandbox, policy: &SandboxConfig, script: &str) -> String {
    let out = t
        .sandbox
        .spawn(&t.config_with(policy, "sh", &["-c", script]))
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {} / {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn default_policy_hides_host_secrets_and_homes() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let script = "for p in /etc/shadow /root /home /etc/ssh; do [ -e $p ] && echo present:$p; done; echo done";
    assert_eq!(run(&t, &SandboxConfig::default(), script).await, "done\n");
}

#[tokio::test]
async fn hostname_uid_and_gid_are_applied() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let policy = SandboxConfig {
        hostname: "box-7".into(),
        uid: 1000,
        gid: 1000,
        ..Default::default()
    };
    assert_eq!(
        run(&t, &policy, "hostname; id -u; id -g").await,
        "box-7\n1000\n1000\n"
    );
}

#[tokio::test]
async fn network_none_has_only_loopback_and_host_sees_the_host() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let ifaces = "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '";
    assert_eq!(run(&t, &SandboxConfig::default(), ifaces).await, "lo ");
    let host = run(
        &t,
        &SandboxConfig {
            network: Network::Host,
            ..Default::default()
        },
        ifaces,
    )
    .await;
    let host_ifaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .skip(2)
        .count();
    assert_eq!(host.split_whitespace().count(), host_ifaces, "{host}");
}

#[tokio::test]
async fn readonly_and_writable_binds() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let ro = tempfile::tempdir().unwrap();
    let rw = tempfile::tempdir().unwrap();
    std::fs::write(ro.path().join("in.txt"), "input").unwrap();
    let policy = SandboxConfig {
        readonly_binds: vec![Bind::new(ro.path(), "/data")],
        writable_binds: vec![Bind::new(rw.path(), "/out")],
        ..Default::default()
    };
    let script = "cat /data/in.txt; echo; touch /data/x 2>/dev/null || echo ro-refused; cp /data/in.txt /out/copy.txt && echo copied";
    assert_eq!(
        run(&t, &policy, script).await,
        "input\nro-refused\ncopied\n"
    );
    assert_eq!(
        std::fs::read_to_string(rw.path().join("copy.txt")).unwrap(),
        "input"
    );
    assert!(!ro.path().join("x").exists());
}

#[tokio::test]
async fn spec_hook_edits_the_spec_before_it_is_written() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let mut c = t.sh("hostname");
    c.spec_hook = Some(SpecHook::new(|s: &mut Spec| {
        s.set_hostname(Some("from-hook".into()));
    }));
    let out = t
        .sandbox
        .spawn(&c)
        .await
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    assert_eq!(out.stdout, b"from-hook\n");
}

#[tokio::test]
async fn capabilities_are_dropped_and_no_new_privileges_is_set() {
    let t = TestSandbox::new(OciRuntime::Runc).await;
    let out = run(
        &t,
        &SandboxConfig::default(),
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status | tr -s '\\t' ' '",
    )
    .await;
    assert_eq!(
        out,
        "CapEff: 0000000000000000\nCapBnd: 0000000000000000\nNoNewPrivs: 1\n"
    );
}
