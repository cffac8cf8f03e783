//! `rollout.source = "dataset"`: configs/dpo_pairs.toml trains DPO on the shipped preference
//! pairs (a tiny random model in place of SmolLM2), and rows without a pair are rejected by
//! name before anything trains.

use std::path::Path;
use std::process::{Command, Output};

use oxrl_tests::{oxrl_bin, training_lines, TINY_MODEL};
use serde_json::json;

fn dpo_pairs(out: &Path, sets: &[&str]) -> Output {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/dpo_pairs.toml");
    let mut cmd = Command::new(oxrl_bin());
    cmd.arg("train").arg(config);
    let output_dir = format!("output_dir={}", out.display());
    let fixed = ["metrics.listen=\"\"", "eval.every=0", output_dir.as_str()];
    for set in TINY_MODEL.iter().chain(&fixed).chain(sets) {
        cmd.args(["--set", set]);
    }
    cmd.output().unwrap()
}

#[test]
fn dataset_pairs_train_dpo_without_generating() {
    let out = tempfile::tempdir().unwrap();
    // Plain DPO here (the config adds RPO's NLL term), so the first loss has a closed form.
    let run = dpo_pairs(out.path(), &["steps=3", "learner.dpo.rpo_alpha=0.0"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = training_lines(out.path());
    assert_eq!(lines.len(), 3);
    // Before the first update the policy is its own reference: the sigmoid DPO loss is
    // -log sigmoid(0) = ln 2 exactly (Rafailov et al. 2023, eq. 7).
    let loss = lines[0]["oxrl_learner_loss"].as_f64().unwrap();
    assert!((loss - std::f64::consts::LN_2).abs() < 1e-5, "loss {loss}");
    for line in &lines {
        // 8 pairs a step: each a right and a wrong answer, which the math reward confirms.
        assert_eq!(line["oxrl_learner_samples"], 16.0, "{line}");
        assert_eq!(line["rewards/math/mean"], 0.5, "{line}");
        assert!(line.get("oxrl_learner_dpo_rewards_accuracy").is_some());
        assert!(
            line.get("rollout/tokens_per_second").is_none(),
            "nothing generated"
        );
    }
    assert_ne!(lines[1]["oxrl_learner_loss"], lines[0]["oxrl_learner_loss"]);
}

#[test]
fn a_row_without_a_pair_is_named_before_training() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("pairs.jsonl");
    let ok = json!({"id": "ok", "prompt": "What is 1 + 1?", "answer": "#### 2",
                    "chosen": "#### 2", "rejected": "#### 3"});
    let half = json!({"id": "half", "prompt": "What is 2 + 2?", "answer": "#### 4",
                      "chosen": "#### 4"});
    std::fs::write(&data, format!("{ok}\n{half}\n")).unwrap();
    let path = format!("env.data.path=\"{}\"", data.display());
    let run = dpo_pairs(out.path(), &[&path, "env.data.eval_size=0"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("half") && stderr.contains("rejected"),
        "{stderr}"
    );
    let log = out.path().join("metrics.jsonl");
    assert!(
        !log.exists() || training_lines(out.path()).is_empty(),
        "nothing trained"
    );
}
