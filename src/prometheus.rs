//! Feature `prometheus`: [`RuntimeMetrics`] in Prometheus' text format, through
//! `prometheus-client`, for a `/metrics` endpoint (see `examples/metrics_server.rs`).
//!
//! Every figure is gathered first, asynchronously ([`NamespaceContainer::metrics`]); the
//! encoding then only formats that reading, so no file is read inside the encoder. A sandbox
//! closed since the last scrape is simply absent from the next one, which Prometheus marks
//! stale.
//!
//! Names follow Prometheus' conventions: the `oci_sandbox_` prefix, base units (`_seconds`,
//! `_bytes`), `_total` on counters. Per-sandbox series carry `runtime`, `sandbox` (its
//! container id) and `name` (a named sandbox's, else empty); its labels are on
//! `oci_sandbox_sandbox_info` as `label_<key>` (the key's characters outside `[a-zA-Z0-9_]`
//! made `_`), to be joined on `sandbox`, as kube-state-metrics does for pods' labels.
//!
//! [`NamespaceContainer::metrics`]: crate::NamespaceContainer::metrics

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::host::sessions::SandboxState;
use crate::sandbox::{RuntimeMetrics, SandboxMetrics, SandboxReading};

/// The `Content-Type` of [`encode_prometheus`]'s text (Prometheus' text format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

impl RuntimeMetrics {
    /// This reading in Prometheus' text format (see [`encode_prometheus`]).
    pub fn to_prometheus(&self) -> String {
        encode_prometheus(std::slice::from_ref(self))
    }
}

/// The readings of one or more runtimes in Prometheus' text format, one family per figure,
/// with a `runtime` label on every series (feature `prometheus`).
///
/// ```no_run
/// # async fn demo(runc: &oci_sandbox::NamespaceContainer, runsc: &oci_sandbox::NamespaceContainer) {
/// let (a, b) = futures::join!(runc.metrics(), runsc.metrics());
/// let body = oci_sandbox::encode_prometheus(&[a, b]);
/// // Serve `body` at /metrics with Content-Type oci_sandbox::PROMETHEUS_CONTENT_TYPE.
/// # }
/// ```
pub fn encode_prometheus(readings: &[RuntimeMetrics]) -> String {
    let mut registry = Registry::with_prefix("oci_sandbox");
    registry.register_collector(Box::new(Reading(readings.to_vec())));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("formatting into a String does not fail");
    text
}

/// One gathered reading, encoded as it is.
#[derive(Debug)]
struct Reading(Vec<RuntimeMetrics>);

type Labels = Vec<(String, String)>;

/// A per-sandbox figure: its name, help, type, and how to read it (`None`: not given).
type SandboxFigure = (
    &'static str,
    &'static str,
    MetricType,
    fn(&SandboxMetrics) -> Option<f64>,
);

const SANDBOX_FIGURES: &[SandboxFigure] = &[
    (
        "cpu_seconds",
        "CPU time the sandbox used.",
        MetricType::Counter,
        |m| m.cpu.map(|d| d.as_secs_f64()),
    ),
    (
        "cpu_limit_cores",
        "The sandbox's CPU limit, in cores.",
        MetricType::Gauge,
        |m| m.cpu_limit_cores,
    ),
    (
        "memory_bytes",
        "Memory the sandbox uses, page cache included.",
        MetricType::Gauge,
        |m| as_f64(m.memory_bytes),
    ),
    (
        "memory_limit_bytes",
        "The sandbox's memory limit.",
        MetricType::Gauge,
        |m| as_f64(m.memory_limit_bytes),
    ),
    (
        "memory_peak_bytes",
        "The most memory the sandbox used at once.",
        MetricType::Gauge,
        |m| as_f64(m.peak_memory_bytes),
    ),
    (
        "pids",
        "Processes and threads in the sandbox.",
        MetricType::Gauge,
        |m| as_f64(m.pids),
    ),
    (
        "pids_limit",
        "The sandbox's pids limit.",
        MetricType::Gauge,
        |m| as_f64(m.pids_limit),
    ),
    (
        "oom_kills",
        "Processes the OOM killer killed in the sandbox's container.",
        MetricType::Counter,
        |m| as_f64(m.oom_kills),
    ),
    (
        "disk_bytes",
        "Disk the sandbox's writable state takes on the host.",
        MetricType::Gauge,
        |m| as_f64(m.disk_bytes),
    ),
    (
        "execs_started",
        "Commands started in the sandbox.",
        MetricType::Counter,
        |m| Some(m.execs_started as f64),
    ),
    (
        "execs_running",
        "Commands running in the sandbox.",
        MetricType::Gauge,
        |m| Some(m.execs_running as f64),
    ),
    (
        "egress_connections_open",
        "Connections open through the sandbox's egress proxy.",
        MetricType::Gauge,
        |m| m.egress.map(|e| e.open as f64),
    ),
    (
        "egress_sent_bytes",
        "Bytes the sandbox sent through its egress proxy.",
        MetricType::Counter,
        |m| m.egress.map(|e| e.bytes_sent as f64),
    ),
    (
        "egress_received_bytes",
        "Bytes the sandbox received through its egress proxy.",
        MetricType::Counter,
        |m| m.egress.map(|e| e.bytes_received as f64),
    ),
];

fn as_f64(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

/// `key` as a Prometheus label name's tail.
fn label_name(key: &str) -> String {
    let tail: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("label_{tail}")
}

fn state_name(state: SandboxState) -> &'static str {
    match state {
        SandboxState::Running => "running",
        SandboxState::Paused => "paused",
        SandboxState::Hibernated => "hibernated",
        _ => "other",
    }
}

impl Reading {
    /// Each sandbox with its identifying labels.
    fn sandboxes(&self) -> impl Iterator<Item = (Labels, &SandboxReading)> + '_ {
        self.0.iter().flat_map(|r| {
            r.sandboxes.iter().map(move |s| {
                let labels = vec![
                    ("runtime".to_owned(), r.runtime.to_string()),
                    ("sandbox".to_owned(), s.id.clone()),
                    ("name".to_owned(), s.name.clone().unwrap_or_default()),
                ];
                (labels, s)
            })
        })
    }

    /// One value per runtime, labelled by it.
    fn per_runtime<'a>(
        &'a self,
        value: impl Fn(&RuntimeMetrics) -> f64 + 'a,
    ) -> impl Iterator<Item = (Labels, f64)> + 'a {
        self.0.iter().map(move |r| (runtime_labels(r), value(r)))
    }
}

/// A per-runtime gauge: its name, help, and how to read it.
type RuntimeFigure = (&'static str, &'static str, fn(&RuntimeMetrics) -> f64);

fn runtime_labels(r: &RuntimeMetrics) -> Labels {
    vec![("runtime".to_owned(), r.runtime.to_string())]
}

/// `labels` and one more.
fn with(labels: &Labels, key: &str, value: &str) -> Labels {
    let mut l = labels.clone();
    l.push((key.to_owned(), value.to_owned()));
    l
}

/// A family `name` of `samples` (nothing when there are none).
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut samples = samples.into_iter().peekable();
    if samples.peek().is_none() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let mut m = family.encode_family(&labels)?;
        match kind {
            MetricType::Counter => m.encode_counter::<NoLabelSet, f64, f64>(&value, None)?,
            _ => m.encode_gauge(&value)?,
        }
    }
    Ok(())
}

impl Collector for Reading {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        for (name, help, kind, read) in SANDBOX_FIGURES {
            let samples = self
                .sandboxes()
                .filter_map(|(labels, s)| Some((labels, read(&s.metrics)?)));
            family(e, name, help, *kind, samples)?;
        }
        let by_decision = self.sandboxes().flat_map(|(labels, s)| {
            let counts = s.metrics.egress.map(|c| {
                [
                    ("allowed", c.allowed),
                    ("denied", c.denied),
                    ("failed", c.failed),
                ]
            });
            counts
                .into_iter()
                .flatten()
                .map(move |(decision, n)| (with(&labels, "decision", decision), n as f64))
        });
        let help = "Connections through the sandbox's egress proxy, by decision.";
        family(e, "egress_connections", help, Counter, by_decision)?;
        let one_hot = self.sandboxes().flat_map(|(labels, s)| {
            [
                SandboxState::Running,
                SandboxState::Paused,
                SandboxState::Hibernated,
            ]
            .map(|state| {
                let on = if s.metrics.state == state { 1.0 } else { 0.0 };
                (with(&labels, "state", state_name(state)), on)
            })
        });
        let help = "1 for the sandbox's state (running, paused, hibernated).";
        family(e, "sandbox_state", help, Gauge, one_hot)?;
        let info = self.sandboxes().map(|(mut l, s)| {
            for (k, v) in &s.labels {
                let key = label_name(k);
                // `label_` keys never meet ours; two keys made alike keep the first.
                if !l.iter().any(|(n, _)| *n == key) {
                    l.push((key, v.clone()));
                }
            }
            (l, 1.0)
        });
        let help = "1 per open sandbox, with its labels as label_<key>.";
        family(e, "sandbox_info", help, Gauge, info)?;
        // The library's own.
        let open = self.per_runtime(|r| r.sandboxes.len() as f64);
        family(
            e,
            "open_sandboxes",
            "Long-lived sandboxes open.",
            Gauge,
            open,
        )?;
        let spawns = self.0.iter().flat_map(|r| {
            [("cold", r.spawns_cold), ("warm", r.spawns_warm)]
                .map(|(mode, n)| (with(&runtime_labels(r), "mode", mode), n as f64))
        });
        let help = "Spawns that started, by where they ran.";
        family(e, "spawns", help, Counter, spawns)?;
        let started = self.per_runtime(|r| r.sandboxes_started as f64);
        let help = "Long-lived sandboxes started.";
        family(e, "sandboxes_started", help, Counter, started)?;
        let failures = self.0.iter().flat_map(|r| {
            r.failures
                .iter()
                .map(move |(kind, n)| (with(&runtime_labels(r), "kind", kind), *n as f64))
        });
        let help = "Spawns and starts that failed, by error kind.";
        family(e, "failures", help, Counter, failures)?;
        let mut teardowns = e.encode_descriptor(
            "teardown_seconds",
            "Container teardowns, from the kill (or the init's end) to the removal.",
            None,
            MetricType::Histogram,
        )?;
        for r in &self.0 {
            let h = &r.teardowns;
            let mut below = 0;
            let buckets: Vec<(f64, u64)> = h
                .buckets
                .iter()
                .map(|(bound, cumulative)| {
                    // Cumulative counts never fall; a caller's reading might.
                    let here = cumulative.saturating_sub(below);
                    below = below.max(*cumulative);
                    (bound.as_secs_f64(), here)
                })
                .collect();
            teardowns
                .encode_family(&runtime_labels(r))?
                .encode_histogram::<NoLabelSet>(h.sum.as_secs_f64(), h.count, &buckets, None)?;
        }
        let stores: [RuntimeFigure; 6] = [
            ("image_layers", "Image layers unpacked in the store.", |r| {
                r.image_layers as f64
            }),
            ("image_bytes", "Disk the image store's layers take.", |r| {
                r.image_bytes as f64
            }),
            ("snapshots", "Snapshots kept in the state dir.", |r| {
                r.snapshots as f64
            }),
            ("snapshot_bytes", "Disk the kept snapshots take.", |r| {
                r.snapshot_bytes as f64
            }),
            (
                "warm_ready",
                "Warm containers ready, over every pool.",
                |r| r.warm_pools.iter().map(|p| p.ready).sum::<usize>() as f64,
            ),
            (
                "warm_target",
                "Warm containers asked for, over every pool.",
                |r| r.warm_pools.iter().map(|p| p.target).sum::<usize>() as f64,
            ),
        ];
        for (name, help, read) in stores {
            family(e, name, help, Gauge, self.per_runtime(read))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_become_prometheus_names() {
        assert_eq!(label_name("team"), "label_team");
        assert_eq!(
            label_name("app.kubernetes.io/name"),
            "label_app_kubernetes_io_name"
        );
    }
}
