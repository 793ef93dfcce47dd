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
use crate::sandbox::{RuntimeMetrics, SandboxMetrics};

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
    fn sandboxes(&self) -> impl Iterator<Item = (Labels, &SandboxMetrics)> + '_ {
        self.0.iter().flat_map(|r| {
            r.sandboxes.iter().map(move |s| {
                let labels = vec![
                    ("runtime".to_owned(), r.runtime.to_string()),
                    ("sandbox".to_owned(), s.id.clone()),
                    ("name".to_owned(), s.name.clone().unwrap_or_default()),
                ];
                (labels, &s.metrics)
            })
        })
    }

    /// A family of one value per runtime.
    fn per_runtime(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        kind: MetricType,
        value: impl Fn(&RuntimeMetrics) -> f64,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for r in &self.0 {
            let labels = vec![("runtime".to_owned(), r.runtime.to_string())];
            let mut m = family.encode_family(&labels)?;
            encode_value(&mut m, kind, value(r))?;
        }
        Ok(())
    }
}

fn encode_value(
    m: &mut prometheus_client::encoding::MetricEncoder,
    kind: MetricType,
    value: f64,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, f64, f64>(&value, None),
        _ => m.encode_gauge(&value),
    }
}

impl Collector for Reading {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, kind, read) in SANDBOX_FIGURES {
            let samples: Vec<(Labels, f64)> = self
                .sandboxes()
                .filter_map(|(labels, m)| Some((labels, read(m)?)))
                .collect();
            if samples.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, *kind)?;
            for (labels, value) in &samples {
                encode_value(&mut family.encode_family(labels)?, *kind, *value)?;
            }
        }
        // Egress connections by decision, state as a one-hot gauge, and the labels.
        let mut family = encoder.encode_descriptor(
            "egress_connections",
            "Connections through the sandbox's egress proxy, by decision.",
            None,
            MetricType::Counter,
        )?;
        for (labels, m) in self.sandboxes() {
            let Some(e) = m.egress else { continue };
            for (decision, n) in [
                ("allowed", e.allowed),
                ("denied", e.denied),
                ("failed", e.failed),
            ] {
                let mut l = labels.clone();
                l.push(("decision".to_owned(), decision.to_owned()));
                encode_value(
                    &mut family.encode_family(&l)?,
                    MetricType::Counter,
                    n as f64,
                )?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sandbox_state",
            "1 for the sandbox's state (running, paused, hibernated).",
            None,
            MetricType::Gauge,
        )?;
        for (labels, m) in self.sandboxes() {
            for state in [
                SandboxState::Running,
                SandboxState::Paused,
                SandboxState::Hibernated,
            ] {
                let mut l = labels.clone();
                l.push(("state".to_owned(), state_name(state).to_owned()));
                let on = if m.state == state { 1.0 } else { 0.0 };
                encode_value(&mut family.encode_family(&l)?, MetricType::Gauge, on)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sandbox_info",
            "1 per open sandbox, with its labels as label_<key>.",
            None,
            MetricType::Gauge,
        )?;
        for r in &self.0 {
            for s in &r.sandboxes {
                let mut l = vec![
                    ("runtime".to_owned(), r.runtime.to_string()),
                    ("sandbox".to_owned(), s.id.clone()),
                    ("name".to_owned(), s.name.clone().unwrap_or_default()),
                ];
                let reserved = ["runtime", "sandbox", "name"];
                for (k, v) in &s.labels {
                    let key = label_name(k);
                    if !reserved.contains(&key.as_str()) && !l.iter().any(|(n, _)| *n == key) {
                        l.push((key, v.clone()));
                    }
                }
                encode_value(&mut family.encode_family(&l)?, MetricType::Gauge, 1.0)?;
            }
        }
        // The library's own.
        self.per_runtime(
            &mut encoder,
            "open_sandboxes",
            "Long-lived sandboxes open.",
            MetricType::Gauge,
            |r| r.sandboxes.len() as f64,
        )?;
        let mut family = encoder.encode_descriptor(
            "spawns",
            "Spawns that started, by where they ran.",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (mode, n) in [("cold", r.spawns_cold), ("warm", r.spawns_warm)] {
                let l = vec![
                    ("runtime".to_owned(), r.runtime.to_string()),
                    ("mode".to_owned(), mode.to_owned()),
                ];
                encode_value(
                    &mut family.encode_family(&l)?,
                    MetricType::Counter,
                    n as f64,
                )?;
            }
        }
        self.per_runtime(
            &mut encoder,
            "sandboxes_started",
            "Long-lived sandboxes started.",
            MetricType::Counter,
            |r| r.sandboxes_started as f64,
        )?;
        let mut family = encoder.encode_descriptor(
            "failures",
            "Spawns and starts that failed, by error kind.",
            None,
            MetricType::Counter,
        )?;
        for r in &self.0 {
            for (kind, n) in &r.failures {
                let l = vec![
                    ("runtime".to_owned(), r.runtime.to_string()),
                    ("kind".to_owned(), kind.clone()),
                ];
                encode_value(
                    &mut family.encode_family(&l)?,
                    MetricType::Counter,
                    *n as f64,
                )?;
            }
        }
        let mut family = encoder.encode_descriptor(
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
            let l = vec![("runtime".to_owned(), r.runtime.to_string())];
            family.encode_family(&l)?.encode_histogram::<NoLabelSet>(
                h.sum.as_secs_f64(),
                h.count,
                &buckets,
                None,
            )?;
        }
        self.per_runtime(
            &mut encoder,
            "image_layers",
            "Image layers unpacked in the store.",
            MetricType::Gauge,
            |r| r.image_layers as f64,
        )?;
        self.per_runtime(
            &mut encoder,
            "image_bytes",
            "Disk the image store's layers take.",
            MetricType::Gauge,
            |r| r.image_bytes as f64,
        )?;
        self.per_runtime(
            &mut encoder,
            "snapshots",
            "Snapshots kept in the state dir.",
            MetricType::Gauge,
            |r| r.snapshots as f64,
        )?;
        self.per_runtime(
            &mut encoder,
            "snapshot_bytes",
            "Disk the kept snapshots take.",
            MetricType::Gauge,
            |r| r.snapshot_bytes as f64,
        )?;
        self.per_runtime(
            &mut encoder,
            "warm_ready",
            "Warm containers ready, over every pool.",
            MetricType::Gauge,
            |r| r.warm_pools.iter().map(|p| p.ready).sum::<usize>() as f64,
        )?;
        self.per_runtime(
            &mut encoder,
            "warm_target",
            "Warm containers asked for, over every pool.",
            MetricType::Gauge,
            |r| r.warm_pools.iter().map(|p| p.target).sum::<usize>() as f64,
        )?;
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
