//! A live run serves `/metrics` (Prometheus text format), `/healthz` and `/status` while it
//! trains.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use oxrl_tests::oxrl_bin;

fn http_get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

fn value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_live_run_serves_metrics_health_and_status() {
    let out = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
    let mut child = Command::new(oxrl_bin())
        .arg("train")
        .arg(config)
        .args([
            "--set",
            "steps=100000",
            "--set",
            "checkpoint.every=0",
            "--set",
        ])
        .arg(format!("output_dir={}", out.path().display()))
        .spawn()
        .unwrap();
    let address_file = out.path().join("metrics_address");
    let start = Instant::now();
    let metrics = loop {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no metrics after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
        let Ok(addr) = std::fs::read_to_string(&address_file) else {
            continue;
        };
        let body = http_get(&addr, "/metrics");
        if value(&body, "oxrl_steps_total").unwrap_or(0.0) >= 2.0 {
            assert_eq!(http_get(&addr, "/healthz"), "ok");
            let status: serde_json::Value =
                serde_json::from_str(&http_get(&addr, "/status")).unwrap();
            assert!(status["step"].as_u64().unwrap() >= 1, "{status}");
            assert!(status["metrics"]["reward"].is_number(), "{status}");
            break body;
        }
    };
    for name in [
        "oxrl_reward ",
        "oxrl_reward_mean{reward=\"math\"}",
        "oxrl_reward_mean{reward=\"length\"}",
        "oxrl_completion_length_tokens_bucket",
        "oxrl_phase_duration_seconds_bucket{phase=\"generate\"",
        "oxrl_rollout_tokens_per_second",
        "oxrl_learner_grad_norm",
        "oxrl_learner_entropy",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM ends the run cleanly"
    );
}
