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

async fn host_etc_entries_are_copies_that_cannot_be_changed(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let bundle = "/etc/ssl/certs/ca-certificates.crt";
    let host = std::fs::read(bundle).expect("the host's CA bundle (ca-certificates)");
    let out = t.output(&SandboxConfig::default(), &["cat", bundle]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stdout == host,
        "the container's CA bundle differs from the host's"
    );
    let script = "[ -e /etc/ld.so.cache ] && echo cache; \
                  [ -e /etc/localtime ] && echo zone; \
                  echo x > /etc/ssl/certs/planted 2>/dev/null || echo refused; \
                  rm -f /etc/ld.so.cache 2>/dev/null || echo kept";
    assert_eq!(
        run(&t, &SandboxConfig::default(), script).await,
        "cache\nzone\nrefused\nkept\n"
    );
}

async fn cgroups_are_visible_only_when_asked_for(kind: OciRuntime) {
    let t = TestSandbox::new(kind).await;
    let list = "ls -A /sys/fs/cgroup 2>/dev/null | wc -l";
    assert_eq!(run(&t, &SandboxConfig::default(), list).await, "0\n");
    let viewing = SandboxConfig {
        cgroup_view: true,
        ..Default::default()
    };
    if kind == OciRuntime::Gvisor {
        let config = oci_sandbox::NamespaceContainer::build_config(&viewing, "true", vec![]);
        let refused = t.sandbox.spawn(&config).await;
        match refused {
            Err(oci_sandbox::SandboxError::InvalidConfig { field, .. }) => {
                assert_eq!(field, "cgroup_view")
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        return;
    }
    let limit = "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes; \
                 echo 1 > /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || echo refused";
    assert_eq!(
        run(&t, &viewing, limit).await,
        format!("{}\nrefused\n", viewing.memory_limit.unwrap())
    );
}

on_every_runtime!(
    host_etc_entries_are_copies_that_cannot_be_changed,
    cgroups_are_visible_only_when_asked_for,
    default_policy_hides_host_secrets_and_homes,
    hostname_uid_and_gid_are_applied,
    network_none_has_only_loopback_and_host_sees_the_host,
    readonly_and_writable_binds,
    spec_hook_edits_the_spec_before_it_is_written,
    capabilities_are_dropped_and_no_new_privileges_is_set,
);
