//! A real Prometheus (the Debian package the set-up installs) scrapes a live smoke run, and
//! every PromQL expression of the shipped Grafana dashboard returns data from it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oxrl_tests::{http_get, smoke_train};
use serde_json::Value;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The result vector of an instant query (empty on any error).
fn query(prom: &str, q: &str) -> Vec<Value> {
    let body = http_get(prom, &format!("/api/v1/query?query={}", encode(q)))
        .map(|(_, b)| b)
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn dashboard_exprs() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards/oxrl.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn prometheus_scrapes_a_live_run_and_the_dashboard_queries_work() {
    let out = tempfile::tempdir().unwrap();
    let run = KillOnDrop(
        // Evaluating after every step (on two held-out prompts) fills the eval panels.
        smoke_train(
            out.path(),
            &[
                "steps=100000",
                "checkpoint.every=0",
                "eval.every=1",
                "env.data.eval_size=2",
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let address = out.path().join("metrics_address");
    wait_until("the run's metrics address", || address.exists());
    let target = std::fs::read_to_string(&address).unwrap();

    let prom_dir = tempfile::tempdir().unwrap();
    let yml = prom_dir.path().join("prometheus.yml");
    std::fs::write(
        &yml,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: oxrl\n    static_configs:\n      - targets: [\"{target}\"]\n"),
    )
    .unwrap();
    let prom = format!("127.0.0.1:{}", free_port());
    let _prometheus = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", yml.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is installed by scripts/setup.sh (Debian package `prometheus`)"),
    );
    wait_until("Prometheus to record two steps", || {
        query(&prom, "oxrl_steps_total")
            .first()
            .and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            >= Some(2.0)
    });
    assert_eq!(query(&prom, "up{job=\"oxrl\"}")[0]["value"][1], "1");
    // rate() needs two scrapes of a counter that moved; give it a few seconds.
    std::thread::sleep(Duration::from_secs(4));
    let empty: Vec<String> = dashboard_exprs()
        .into_iter()
        // Series that only exist once something goes wrong (failures), with KL (beta > 0), on
        // a GPU, when another engine (vLLM) sampled (the rollout correction), on several
        // ranks, or on multi-turn tasks (episodes).
        .filter(|e| {
            !e.contains("failures")
                && e != "oxrl_learner_kl"
                && !e.contains("gpu")
                && !e.contains("rollout_is_")
                && !e.contains("rank_phase")
                && !e.contains("episode")
        })
        .filter(|e| query(&prom, e).is_empty())
        .collect();
    assert!(
        empty.is_empty(),
        "dashboard expressions with no data: {empty:?}"
    );
    drop(run);
}
