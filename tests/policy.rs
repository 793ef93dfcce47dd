//! What `SandboxConfig` options do inside a real container.

mod common;

use common::TestSandbox;
use oci_sandbox::{Bind, Network, OciRuntime, SandboxConfig, Spec, SpecHook};

async fn run(t: &TestSandbox, policy: &SandboxConfig, script: &str) -> String {
    let out = t.output(policy, &["sh", "-c", script]).await;
    assert!(
        out.status.success(),
        "{script}: {} / {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn default_policy_hides_host_secrets_and_homes(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let script = "for p in /etc/shadow /root /home /etc/ssh; do [ -e $p ] && echo present:$p; done; echo done";
    assert_eq!(run(&t, &SandboxConfig::default(), script).await, "done\n");
}

async fn hostname_uid_and_gid_are_applied(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
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

async fn network_none_has_only_loopback_and_host_sees_the_host(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
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

async fn readonly_and_writable_binds(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
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

async fn spec_hook_edits_the_spec_before_it_is_written(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
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

async fn capabilities_are_dropped_and_no_new_privileges_is_set(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let out = run(
        &t,
        &SandboxConfig::default(),
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status | tr -s '\\t' ' '",
    )
    .await;
    // Differs on gVisor: its /proc/self/status has no NoNewPrivs line (the flag is still set
    // on the sandbox; runsc applies it to the Sentry).
    let want = if kind == OciRuntime::Gvisor {
        "CapEff: 0000000000000000\nCapBnd: 0000000000000000\n"
    } else {
        "CapEff: 0000000000000000\nCapBnd: 0000000000000000\nNoNewPrivs: 1\n"
    };
    assert_eq!(out, want);
}

on_every_runtime!(
    default_policy_hides_host_secrets_and_homes,
    hostname_uid_and_gid_are_applied,
    network_none_has_only_loopback_and_host_sees_the_host,
    readonly_and_writable_binds,
    spec_hook_edits_the_spec_before_it_is_written,
    capabilities_are_dropped_and_no_new_privileges_is_set,
);
