//! GRPO end to end on the real vLLM CPU build (`make test` installs it; `OXRL_VLLM_PYTHON`
//! names its python): oxrl launches a server, trains on its completions, syncs the weights
//! after every update, logs the engine-vs-learner logprob gap, and stops the server with the
//! run. The model is `configs/smoke.toml`'s tiny random one (a 135M run's checkpoints and
//! weight copies take ~3 GB of disk); the bundled model against vLLM is `vllm_rollout.rs`;
//! `configs_run.rs` runs a step of `configs/grpo_vllm.toml`.

use oxrl_tests::{metrics_lines, smoke_train};

#[test]
fn grpo_trains_on_a_vllm_server_that_oxrl_launches() {
    assert!(
        std::env::var_os("OXRL_VLLM_PYTHON").is_some(),
        "OXRL_VLLM_PYTHON is not set: run `make test` (it runs scripts/setup_vllm.sh)"
    );
    let out = tempfile::tempdir().unwrap();
    // configs/smoke.toml (its length reward moves the weights every step) on vLLM, with one
    // attention head of 32: vLLM's CPU attention has no kernel for heads of 8.
    let output = smoke_train(
        out.path(),
        &[
            "rollout.engine=vllm",
            "model.random.num_attention_heads=1",
            "model.random.num_key_value_heads=1",
        ],
    )
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
        // The weights move every step (lr 1e-3) and the gap is measured against the
        // learner's after the previous update: it stays this small only because each update
        // reached the server.
        assert!(
            line["oxrl_learner_grad_norm"].as_f64().unwrap() > 0.0,
            "{line}"
        );
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
