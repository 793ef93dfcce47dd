//! A real Prometheus (Debian's `prometheus`, started here on 127.0.0.1) scrapes
//! `examples/metrics_server.rs` (feature `prometheus`) every second; its HTTP API then has
//! each sandbox's memory and CPU series, the burner's CPU counter rising at about its half
//! core while the idle one's stands, the labels on the info series, and the burner's series
//! gone (stale) once it is closed, while the idle one's stay. (In the metrics test binary:
//! it waits on scrapes, and the other metrics tests run beside it.)

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// Prometheus on a free port of 127.0.0.1, scraping `target` every second, its data in a
/// temp dir; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!("Debian's `prometheus` is not installed: `make deps` installs it")
        });
        let data = tempfile::Builder::new()
            .prefix("osb-test-prometheus-")
            .tempdir()
            .unwrap();
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: oci-sandbox\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = crate::common::free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                data.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("starting prometheus");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _data: data,
        }
    }

    /// Kills it and waits for its end (before its data dir goes).
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// The result vector of instant query `q` (empty while Prometheus is not up yet).
    async fn query(&self, q: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query", self.url);
        let Ok(answer) = reqwest::Client::new()
            .get(url)
            .query(&[("query", q)])
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value =
            serde_json::from_str(&answer.text().await.unwrap_or_default()).unwrap_or(Value::Null);
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The series of `q` once `done` holds of them, polled every 250 ms for up to `within`.
    async fn until(
        &self,
        q: &str,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let series = self.query(q).await;
            if done(&series) {
                return series;
            }
            assert!(
                Instant::now() < deadline,
                "{q}: not as expected within {within:?}; last answer: {series:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The series' `sandbox` labels.
fn sandboxes(series: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = series
        .iter()
        .filter_map(|s| s["metric"]["sandbox"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The value of the series of sandbox `id`.
fn value_of(series: &[Value], id: &str) -> Option<f64> {
    series
        .iter()
        .find(|s| s["metric"]["sandbox"] == id)
        .and_then(|s| s["value"][1].as_str()?.parse().ok())
}

/// The example's next stdout line that starts with `prefix`, without it.
async fn line_after(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> String {
    let read = async {
        loop {
            let line = lines.next_line().await.unwrap().expect("the example ended");
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.trim().to_owned();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .unwrap_or_else(|_| panic!("no {prefix:?} line from the example within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_sandbox_and_drops_a_closed_one() {
    let binary = crate::common::example_binary("metrics_server");
    let mut example = Command::new(binary)
        .args(["--port", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(example.stdout.take().unwrap()).lines();
    let endpoint = line_after(&mut lines, "listening http://").await;
    let target = endpoint.trim_end_matches("/metrics").to_owned();
    let burner = line_after(&mut lines, "burner ").await;
    let idle = line_after(&mut lines, "idle ").await;
    let mut both = vec![burner.clone(), idle.clone()];
    both.sort();

    // Another Host (a DNS-rebound page's) is refused.
    let foreign = reqwest::Client::new()
        .get(format!("http://{target}/metrics"))
        .header("host", "rebound.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let prometheus = Prometheus::start(&target).await;
    let long = Duration::from_secs(60);
    // Each sandbox's memory and CPU series, with its limit.
    prometheus
        .until("oci_sandbox_memory_bytes", long, |s| sandboxes(s) == both)
        .await;
    let limits = prometheus
        .until("oci_sandbox_memory_limit_bytes", long, |s| {
            sandboxes(s) == both
        })
        .await;
    assert_eq!(value_of(&limits, &burner), Some(f64::from(256u32 << 20)));
    let info = prometheus
        .until("oci_sandbox_sandbox_info{label_role='burner'}", long, |s| {
            !s.is_empty()
        })
        .await;
    assert_eq!(sandboxes(&info), vec![burner.clone()]);
    // The burner's counter rises at about its half core; the idle one's stands.
    let rates = prometheus
        .until("rate(oci_sandbox_cpu_seconds_total[5s])", long, |s| {
            value_of(s, &burner).is_some_and(|r| r > 0.3) && value_of(s, &idle).is_some()
        })
        .await;
    let (hot, cold) = (
        value_of(&rates, &burner).unwrap(),
        value_of(&rates, &idle).unwrap(),
    );
    assert!(hot < 0.65, "the burner used {hot} cores of its 0.5");
    assert!(cold < 0.05, "the idle sandbox used {cold} cores");
    let first = value_of(
        &prometheus.query("oci_sandbox_cpu_seconds_total").await,
        &burner,
    )
    .expect("the burner's CPU series");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = value_of(
        &prometheus.query("oci_sandbox_cpu_seconds_total").await,
        &burner,
    )
    .expect("the burner's CPU series");
    assert!(later > first, "the burner's CPU time stood at {first}");

    // Closed, the burner's series go stale: gone from instant queries, the idle one's kept.
    let mut stdin = example.stdin.take().unwrap();
    stdin.write_all(b"close\n").await.unwrap();
    line_after(&mut lines, "closed burner").await;
    let closed_at = Instant::now();
    for metric in ["oci_sandbox_memory_bytes", "oci_sandbox_cpu_seconds_total"] {
        prometheus
            .until(metric, Duration::from_secs(15), |s| {
                sandboxes(s) == vec![idle.clone()]
            })
            .await;
    }
    eprintln!(
        "the closed sandbox's series went stale in {:?}",
        closed_at.elapsed()
    );
    let started = prometheus
        .until("oci_sandbox_sandboxes_started_total", long, |s| {
            !s.is_empty()
        })
        .await;
    assert_eq!(started[0]["value"][1], "2");
    let teardowns = prometheus
        .until("oci_sandbox_teardown_seconds_count", long, |s| {
            s.first().is_some_and(|s| s["value"][1] == "1")
        })
        .await;
    assert_eq!(teardowns.len(), 1);

    drop(stdin);
    let ended = tokio::time::timeout(Duration::from_secs(30), example.wait())
        .await
        .expect("the example ends with its stdin")
        .unwrap();
    assert!(ended.success(), "{ended}");
    prometheus.stop().await;
}
