//! Training from logged samples: a run with `log.samples = "all"` writes every trained sample
//! to `replay.jsonl`, and `rollout.source = "dataset"` with `rollout.samples_path` trains on
//! them. A tiny random model's own logged GRPO samples train an offline TOPR run whose reward
//! on held-out prompts rises; expert iteration and DPO read the same file; a malformed line is
//! reported with its number.
//!
//! The task: one-token answers rewarded when the token starts with a space (about two thirds
//! of the bundled tokenizer's first tokens do), a preference a tiny model can learn from a
//! few hundred samples.

use std::path::{Path, PathBuf};
use std::process::Output;

use oxrl_tests::{is_eval_line, metrics_lines, smoke_config, train_command, training_lines};
use serde_json::Value;

/// configs/smoke.toml with one reward: the completion starts with a space.
fn config(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(smoke_config()).unwrap();
    let (head, rest) = text.split_once("[[rewards]]").unwrap();
    let rollout = &rest[rest.find("[rollout]").unwrap()..];
    let rewards = "[[rewards]]\nname = \"space\"\ntype = \"format\"\npattern = \"^ \"\n\n";
    let path = dir.join("space.toml");
    std::fs::write(&path, format!("{head}{rewards}{rollout}")).unwrap();
    path
}

fn train(config: &Path, out: &Path, sets: &[&str]) -> Output {
    let short = ["rollout.max_tokens=1", "rollout.prompts_per_step=8"];
    let sets: Vec<&str> = short.iter().chain(sets).copied().collect();
    train_command(config, out, &sets).output().unwrap()
}

fn succeeded(output: Output) -> Output {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn eval_rewards(out: &Path) -> Vec<f64> {
    metrics_lines(out)
        .iter()
        .filter(|l| is_eval_line(l))
        .map(|l| l["eval/reward_mean"].as_f64().unwrap())
        .collect()
}

#[test]
fn logged_samples_train_offline_topr_expert_iteration_and_dpo() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let logged = dir.path().join("logged");
    succeeded(train(&config, &logged, &["steps=8", "log.samples=\"all\""]));
    let replay = logged.join("replay.jsonl");
    let lines: Vec<Value> = std::fs::read_to_string(&replay)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8 * 8 * 4, "every trained sample");
    for line in &lines {
        for key in [
            "prompt_ids",
            "completion_ids",
            "behaviour_logprobs",
            "loss_mask",
        ] {
            assert!(line[key].is_array(), "{key}: {line}");
        }
        assert!(line["policy_version"].is_u64() && line["group_id"].is_u64());
        assert!(line["rewards"]["space"].is_number() && line["step"].is_u64());
    }

    let source = format!("rollout.samples_path=\"{}\"", replay.display());
    let offline = [
        "rollout.source=\"dataset\"",
        source.as_str(),
        "learner.optim.lr=3e-2",
        "eval.every=16",
        "eval.temperature=1.0",
        "eval.samples=8",
        "env.data.eval_size=32",
    ];
    let topr = dir.path().join("topr");
    let mut sets = offline.to_vec();
    sets.extend([
        "steps=16",
        "learner.algorithm=\"topr\"",
        "learner.topr.baseline=\"group_mean\"",
    ]);
    succeeded(train(&config, &topr, &sets));
    let rewards = eval_rewards(&topr);
    assert_eq!(rewards.len(), 2, "at start and at the end");
    assert!(
        rewards[1] > rewards[0] + 0.15,
        "held-out reward {} -> {}",
        rewards[0],
        rewards[1]
    );
    let steps = training_lines(&topr);
    assert_eq!(steps.len(), 16);
    // The first step replays the logging run's first groups, drawn by the same initial
    // policy: ratio 1.
    let ratio = steps[0]["oxrl_learner_ratio_max"].as_f64().unwrap();
    assert!((ratio - 1.0).abs() < 1e-4, "{ratio}");

    for algorithm in ["expert_iteration", "dpo"] {
        let out = dir.path().join(algorithm);
        let mut sets = offline.to_vec();
        let name = format!("learner.algorithm=\"{algorithm}\"");
        sets.extend(["steps=2", "eval.every=0", name.as_str()]);
        if algorithm == "expert_iteration" {
            sets.push("learner.expert_iteration.keep=\"best_per_group\"");
        }
        succeeded(train(&config, &out, &sets));
        for line in training_lines(&out) {
            assert!(
                line["oxrl_learner_loss"].as_f64().unwrap().is_finite(),
                "{line}"
            );
            if algorithm == "expert_iteration" {
                // At most the best sample of each of the step's 8 groups is kept.
                let samples = line["oxrl_learner_samples"].as_f64().unwrap();
                let dropped = line["oxrl_learner_dropped_samples"].as_f64().unwrap();
                assert!((1.0..=8.0).contains(&(samples - dropped)), "{line}");
            }
        }
    }

    // GRPO learns from its own rollouts: refused by name.
    let grpo = train(&config, &dir.path().join("grpo"), &offline[..2]);
    let stderr = String::from_utf8_lossy(&grpo.stderr);
    assert!(
        !grpo.status.success() && stderr.contains("topr, expert_iteration or dpo"),
        "{stderr}"
    );

    // A line whose logprobs do not match its tokens is reported by number.
    let mut text = std::fs::read_to_string(&replay).unwrap();
    let mut bad: Value = lines[2].clone();
    bad["behaviour_logprobs"] = serde_json::json!([]);
    let at = text.match_indices('\n').nth(1).unwrap().0 + 1;
    text.insert_str(at, &format!("{bad}\n"));
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, text).unwrap();
    let source = format!("rollout.samples_path=\"{}\"", broken.display());
    let failed = train(
        &config,
        &dir.path().join("broken"),
        &[
            "rollout.source=\"dataset\"",
            &source,
            "learner.algorithm=\"topr\"",
        ],
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("broken.jsonl") && stderr.contains("line 3"),
        "{stderr}"
    );
}
