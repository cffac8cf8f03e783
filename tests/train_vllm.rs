//! `oxrl train configs/grpo_vllm.toml` end to end on the real vLLM CPU build (`make test`
//! installs it; `OXRL_VLLM_PYTHON` names its python): oxrl launches a server with the bundled
//! model, trains GRPO steps on its completions, syncs the weights after every update, logs
//! the engine-vs-learner logprob gap, and stops the server with the run.

use std::path::Path;

use oxrl_tests::{metrics_lines, oxrl_bin};

#[test]
fn grpo_trains_on_a_vllm_server_that_oxrl_launches() {
    assert!(
        std::env::var_os("OXRL_VLLM_PYTHON").is_some(),
        "OXRL_VLLM_PYTHON is not set: run `make test` (it runs scripts/setup_vllm.sh)"
    );
    let out = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/grpo_vllm.toml");
    let output = std::process::Command::new(oxrl_bin())
        .arg("train")
        .arg(&config)
        .args(["--set", "steps=3", "--set", "rollout.max_tokens=32"])
        .args(["--set", "metrics.listen=127.0.0.1:0", "--set"])
        .arg(format!("output_dir={}", out.path().display()))
        .output()
        .unwrap();
    let log = std::fs::read_to_string(out.path().join("vllm/server-0.log")).unwrap_or_default();
    assert!(
        output.status.success(),
        "{}\nserver log:\n{log}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = metrics_lines(out.path());
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 3, "one line per step");
    for line in &lines {
        for key in ["reward", "oxrl_learner_loss", "time/sync_seconds"] {
            assert!(line[key].is_number(), "{key} missing: {line}");
        }
        // f32 on both sides: the engine's logprobs are the learner's to ~1e-5.
        let mean = line["rollout/logprob_abs_diff_mean"].as_f64().unwrap();
        let max = line["rollout/logprob_abs_diff_max"].as_f64().unwrap();
        let kl = line["rollout/logprob_kl"].as_f64().unwrap();
        assert!(
            mean < 1e-3 && max < 5e-2 && (0.0..1e-4).contains(&kl),
            "{line}"
        );
        // The gap is measured against the learner's weights after the previous update: it
        // stays this small only because the servers got them (`vllm_rollout.rs` checks a
        // sync directly), and the first-pass ratio is 1.
        let ratio = line["oxrl_learner_ratio_max"].as_f64().unwrap();
        assert!(
            (ratio - 1.0).abs() < 0.05,
            "ratio {ratio}: vLLM is off-policy: {line}"
        );
    }
    let synced: Vec<_> = std::fs::read_dir(out.path().join("vllm/sync"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(synced.len(), 1, "only the newest synced weights are kept");
    assert!(out.path().join("final/model.safetensors").exists());
    let left = std::process::Command::new("pgrep")
        .args(["-f", &out.path().join("vllm/model").display().to_string()])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the vLLM server outlived the run");
}
