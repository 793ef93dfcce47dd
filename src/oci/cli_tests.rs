//! Unit tests of the parent module (kept apart: the module stays short).

use super::*;

fn cli(kind: OciRuntime) -> RuntimeCli {
    RuntimeCli {
        kind,
        binary: PathBuf::from(kind.binary_name()),
        root: PathBuf::from("/run/oci-sandbox/r"),
        gvisor_platform: (kind == OciRuntime::Gvisor).then_some(GvisorPlatform::Ptrace),
        mount_ns: None,
    }
}

fn strs(v: Vec<OsString>) -> Vec<String> {
    v.into_iter().map(|s| s.into_string().unwrap()).collect()
}

#[test]
fn runc_run_has_root_log_and_bundle() {
    let log = Path::new("/b/runtime.log");
    let argv = cli(OciRuntime::Runc).argv(
        ContainerFlags {
            log: Some(log),
            host_network: false,
            memory_root: false,
        },
        Sub::Run {
            id: "c1",
            bundle: Path::new("/b"),
            detach: false,
            pid_file: None,
        },
    );
    assert_eq!(
        strs(argv),
        [
            "--root",
            "/run/oci-sandbox/r",
            "--log",
            "/b/runtime.log",
            "--log-format",
            "json",
            "run",
            "--bundle",
            "/b",
            "--no-new-keyring",
            "c1"
        ]
    );
}

#[test]
fn crun_log_uses_its_own_syntax() {
    let argv = cli(OciRuntime::Crun).argv(
        ContainerFlags {
            log: Some(Path::new("/b/l")),
            host_network: false,
            memory_root: false,
        },
        Sub::Delete {
            id: "c1",
            force: true,
        },
    );
    assert_eq!(
        strs(argv),
        [
            "--root",
            "/run/oci-sandbox/r",
            "--log=file:/b/l",
            "--log-format=json",
            "delete",
            "--force",
            "c1"
        ]
    );
}

#[test]
fn runsc_gets_network_and_platform_on_every_subcommand() {
    for host_network in [false, true] {
        let flags = ContainerFlags {
            log: None,
            host_network,
            memory_root: false,
        };
        let want = if host_network {
            "--network=host"
        } else {
            "--network=none"
        };
        for sub in [
            Sub::Kill {
                id: "c",
                signal: "KILL",
                all: true,
            },
            Sub::List,
            Sub::Delete {
                id: "c",
                force: true,
            },
        ] {
            let argv = strs(cli(OciRuntime::Gvisor).argv(flags, sub));
            assert_eq!(
                &argv[..5],
                ["--root", "/run/oci-sandbox/r", want, "--platform", "ptrace"]
            );
        }
    }
}

#[test]
fn kill_and_list_have_their_arguments() {
    let c = cli(OciRuntime::Runc);
    let f = ContainerFlags::default();
    assert_eq!(
        strs(c.argv(
            f,
            Sub::Kill {
                id: "c",
                signal: "TERM",
                all: false
            }
        ))[2..],
        ["kill", "c", "TERM"]
    );
    assert_eq!(strs(c.argv(f, Sub::List))[2..], ["list", "--format=json"]);
}

#[test]
fn runtime_message_prefers_error_lines() {
    let raw = br#"{"level":"warning","msg":"w","time":"t"}
{"level":"error","msg":"exec: \"x\": executable file not found in $PATH","time":"t"}
"#;
    assert_eq!(
        runtime_message(raw),
        "exec: \"x\": executable file not found in $PATH"
    );
    assert_eq!(runtime_message(b"plain failure\n"), "plain failure");
    assert_eq!(runtime_message(b""), NO_MESSAGE);
    let warned = b"{\"level\":\"info\",\"msg\":\"starting\"}\n{\"level\":\"warning\",\"msg\":\"sandbox died\"}\n";
    assert_eq!(runtime_message(warned), "starting; sandbox died");
}
