//! What each part of the library's default spec costs a cold `run` of `/bin/true`: the raw
//! runtime CLI runs the spec the library renders, whole, with one part removed at a time, or with
//! one opt-in or former part added,
//! and a minimal spec (the runtime's default mounts and `/usr`, no user namespace, seccomp,
//! limits or masks) as the floor. Variants are run in rotation, so each round pays the same machine weather; the
//! table is each variant's median over the whole spec's.
//!
//! `make bench` runs this; `OSB_BENCH_RUNTIMES=runc,crun,runsc` picks the runtimes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use raw_cli::{median, runtimes, timed};
use serde_json::Value;

#[path = "support/raw_cli.rs"]
mod raw_cli;
use oci_sandbox::NamespaceContainer;

/// One way of changing the library's spec.
struct Variant {
    name: &'static str,
    change: fn(&mut Value),
}

/// Mounts whose destination satisfies `drop` are removed.
fn drop_mounts(spec: &mut Value, drop: impl Fn(&str, &Value) -> bool) {
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.retain(|m| !drop(m["destination"].as_str().unwrap_or(""), m));
    }
}

/// Appends `extra` to the spec's mounts.
fn add_mounts(spec: &mut Value, extra: &[Value]) {
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.extend(extra.iter().cloned());
    }
}

/// The cgroupfs mount of `SandboxConfig::cgroup_view` (the OCI default mount).
fn cgroup_mount() -> Value {
    serde_json::json!({
        "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
    })
}

/// The host `/etc` entries that were bind-mounted into every container before they were
/// copied into the shared rootfs.
const OLD_ETC_BINDS: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
];

const VARIANTS: &[Variant] = &[
    Variant {
        name: "whole spec",
        change: |_| {},
    },
    Variant {
        name: "with the /sys/fs/cgroup mount (cgroup_view: true)",
        change: |s| add_mounts(s, &[cgroup_mount()]),
    },
    Variant {
        name: "with the host /etc entries bound per container (before: copied once)",
        change: |s| {
            let binds: Vec<Value> = OLD_ETC_BINDS
                .iter()
                .filter(|p| Path::new(p).exists())
                .map(|p| {
                    serde_json::json!({
                        "destination": p, "type": "bind", "source": p,
                        "options": ["rbind", "ro", "nosuid", "nodev"],
                    })
                })
                .collect();
            add_mounts(s, &binds)
        },
    },
    Variant {
        name: "without masked and read-only paths",
        change: |s| {
            s["linux"]["maskedPaths"] = Value::Array(vec![]);
            s["linux"]["readonlyPaths"] = Value::Array(vec![]);
        },
    },
    Variant {
        name: "without seccomp",
        change: |s| {
            if let Some(linux) = s["linux"].as_object_mut() {
                linux.remove("seccomp");
            }
        },
    },
    Variant {
        name: "without the user namespace",
        change: |s| {
            if let Some(linux) = s["linux"].as_object_mut() {
                linux.remove("uidMappings");
                linux.remove("gidMappings");
                if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
                    ns.retain(|n| n["type"] != "user");
                }
            }
        },
    },
    Variant {
        name: "without cgroup limits",
        change: |s| {
            if let Some(linux) = s["linux"].as_object_mut() {
                linux.remove("resources");
            }
        },
    },
    Variant {
        name: "minimal (the runtime's default mounts and /usr only)",
        change: |s| {
            // The same root (a host `/` fails runc's pivot_root here), `/usr` for the
            // command, nothing else of the library's.
            drop_mounts(s, |d, m| {
                (m["type"] == "bind" && d != "/usr") || d == "/tmp" || d == "/sys/fs/cgroup"
            });
            if let Some(linux) = s["linux"].as_object_mut() {
                for key in ["seccomp", "resources", "uidMappings", "gidMappings"] {
                    linux.remove(key);
                }
                linux.insert("maskedPaths".into(), Value::Array(vec![]));
                linux.insert("readonlyPaths".into(), Value::Array(vec![]));
                if let Some(ns) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
                    ns.retain(|n| n["type"] != "user");
                }
            }
        },
    },
];

/// A bundle of one variant, written once.
fn write_bundle(dir: &Path, spec: &Value) {
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(spec).unwrap()).unwrap();
}

fn spec_parts(_c: &mut Criterion) {
    let rounds = raw_cli::rounds(60);
    let rt = raw_cli::tokio_runtime();
    for kind in runtimes() {
        rt.block_on(async {
            let runtime = NamespaceContainer::with_runtime(kind).await.unwrap();
            let config = raw_cli::quiet_true();
            let whole = serde_json::to_value(runtime.render_spec(&config).unwrap()).unwrap();
            let dir = tempfile::Builder::new()
                .prefix("osb-spec-cost-")
                .tempdir_in("/tmp")
                .unwrap();
            let root = dir.path().join("state");
            let bundles: Vec<_> = VARIANTS
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let mut spec = whole.clone();
                    (v.change)(&mut spec);
                    let bundle = dir.path().join(format!("v{i}"));
                    write_bundle(&bundle, &spec);
                    bundle
                })
                .collect();
            static SEQ: AtomicU64 = AtomicU64::new(0);
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
            for round in 0..rounds {
                // Rotated: each variant goes first as often as the others.
                for k in 0..VARIANTS.len() {
                    let i = (round + k) % VARIANTS.len();
                    let id = format!("osb-bench-cost-{}", SEQ.fetch_add(1, Ordering::Relaxed));
                    let mut cmd = raw_cli::command(kind, &root);
                    cmd.args(["run", "--bundle"]).arg(&bundles[i]).arg(&id);
                    times[i].push(timed(raw_cli::run_quietly(cmd)).await);
                }
            }
            let whole_ms = median(&mut times[0].clone());
            for (v, t) in VARIANTS.iter().zip(times.iter_mut()) {
                let m = median(t);
                println!(
                    "spec-cost {kind} {}: raw run {m:.2} ms, {:.3} of the whole spec ({whole_ms:.2} ms), {rounds} rounds",
                    v.name,
                    m / whole_ms
                );
            }
            runtime.close().await;
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = spec_parts
}
criterion_main!(benches);
