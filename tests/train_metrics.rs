//! A live run serves `/metrics` (Prometheus text format), `/healthz` and `/status` while it
//! trains.

use std::time::{Duration, Instant};

use oxrl_tests::{http_get, is_eval_line, metrics_lines, smoke_train, terminate_cleanly};

/// The body of a GET that must succeed.
fn get_ok(addr: &str, path: &str) -> String {
    let (status, body) = http_get(addr, path).unwrap_or_else(|| panic!("GET {path} failed"));
    assert_eq!(status, 200, "{path}: {body}");
    body
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
    let mut child = smoke_train(
        out.path(),
        &[
            "steps=100000",
            "checkpoint.every=0",
            "eval.every=1",
            "env.data.eval_size=2",
        ],
    )
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
        let body = get_ok(&addr, "/metrics");
        if value(&body, "oxrl_steps_total").unwrap_or(0.0) >= 2.0 {
            assert_eq!(get_ok(&addr, "/healthz"), "ok");
            let status: serde_json::Value =
                serde_json::from_str(&get_ok(&addr, "/status")).unwrap();
            assert!(status["step"].as_u64().unwrap() >= 1, "{status}");
            assert!(status["metrics"]["reward"].is_number(), "{status}");
            let pass = status["eval"]["eval/pass_at_1"].as_f64();
            assert!(pass.is_some_and(|p| (0.0..=1.0).contains(&p)), "{status}");
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
        "oxrl_rollout_staleness 0",
        "oxrl_rollout_dropped_stale_samples_total 0",
        "oxrl_phase_duration_seconds_bucket{phase=\"eval\"",
        "process_resident_memory_bytes",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
    // Evaluated at steps 0 and 1 at least: held-out rates in [0, 1].
    for name in [
        "oxrl_eval_pass_at_1",
        "oxrl_eval_pass_at_k",
        "oxrl_eval_majority_vote",
    ] {
        let v = value(&metrics, &format!("{name} "));
        assert!(
            v.is_some_and(|v| (0.0..=1.0).contains(&v)),
            "{name}: {v:?} in:\n{metrics}"
        );
    }
    assert!(value(&metrics, "oxrl_eval_reward_mean ").is_some_and(f64::is_finite));
    let gap = value(&metrics, "oxrl_rollout_logprob_abs_diff_mean ");
    assert!(gap.is_some_and(|g| g < 1e-4), "{gap:?}");
    assert!(value(&metrics, "oxrl_eval_step ").is_some_and(|s| s >= 1.0));
    terminate_cleanly(child);
    // The native engine's behaviour logprobs against the learner's first forward pass of each
    // update: the same weights, different kernels (KV cache, fused decode), measured every
    // step and equal to float rounding.
    let steps: Vec<_> = metrics_lines(out.path())
        .into_iter()
        .filter(|l| !is_eval_line(l))
        .collect();
    assert!(!steps.is_empty());
    for line in steps {
        let mean = line["rollout/logprob_abs_diff_mean"].as_f64();
        let max = line["rollout/logprob_abs_diff_max"].as_f64();
        assert!(mean.is_some_and(|g| g < 1e-5), "{line}");
        assert!(max.is_some_and(|g| g < 1e-3), "{line}");
    }
}
