//! `oxrl train` on multi-turn tasks (configs/smoke_tool.toml: a tiny random model playing
//! calculator episodes): GRPO and PPO train on the episodes' ledgers with the environment's
//! tokens masked, the learner's logprobs of the model's tokens equal the sampler's (token in,
//! token out), eval plays episodes, and an external environment that crashes is a counted
//! failure of its episode, not of the run.

use std::path::{Path, PathBuf};
use std::process::Command;

use oxrl_tests::{is_eval_line, metrics_lines, oxrl_bin, train_command, training_lines};
use serde_json::Value;

fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke_tool.toml")
}

fn train(out: &Path, sets: &[&str]) -> std::process::Output {
    let output = train_command(&config(), out, sets).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn number(line: &Value, key: &str) -> f64 {
    line[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} in {line}"))
}

#[test]
fn grpo_trains_on_calculator_episodes_with_environment_tokens_masked() {
    let out = tempfile::tempdir().unwrap();
    train(
        out.path(),
        &["eval.every=2", "env.data.eval_size=4", "eval.samples=2"],
    );
    let lines = training_lines(out.path());
    assert_eq!(lines.len(), 2);
    for line in &lines {
        // The policy never answers, so every episode runs to its token budget (64) over 2+
        // turns, the environment's reminders filling the gaps.
        assert!(number(line, "episodes/turns_mean") >= 2.0, "{line}");
        assert!(number(line, "episodes/env_tokens_mean") > 0.0, "{line}");
        let model = number(line, "episodes/model_tokens_mean");
        assert_eq!(
            number(line, "oxrl_learner_trained_tokens"),
            model * 8.0,
            "{line}"
        );
        assert_eq!(number(line, "episodes/env_failures"), 0.0);
        assert!(line["time/env_seconds"].is_number());
        assert_eq!(number(line, "rewards/environment/mean"), 0.0);
        // Before the update the learner scores exactly what the sampler drew, every turn's
        // tokens on the whole ledger: ratio 1.
        for key in ["oxrl_learner_ratio_max", "oxrl_learner_ratio_min"] {
            assert!((number(line, key) - 1.0).abs() < 1e-4, "{key}: {line}");
        }
        assert!(number(line, "oxrl_learner_grad_norm") > 0.0, "{line}");
    }
    let evals: Vec<Value> = metrics_lines(out.path())
        .into_iter()
        .filter(is_eval_line)
        .collect();
    assert_eq!(evals.len(), 2, "at start and after the last step");
    let samples = std::fs::read_to_string(out.path().join("samples.jsonl")).unwrap();
    assert!(
        samples.contains("No tool call or answer found"),
        "the environment's turns are in the logged episode"
    );
}

#[test]
fn ppo_trains_on_calculator_episodes() {
    let out = tempfile::tempdir().unwrap();
    train(out.path(), &["learner.algorithm=ppo"]);
    for line in training_lines(out.path()) {
        assert!(number(&line, "oxrl_learner_loss").is_finite(), "{line}");
        assert!(number(&line, "oxrl_learner_value_loss") > 0.0, "{line}");
    }
}

#[test]
fn topr_and_expert_iteration_train_on_calculator_episodes() {
    for (algorithm, extra) in [
        ("topr", "learner.topr.ratio=\"token\""),
        (
            "expert_iteration",
            "learner.expert_iteration.min_reward=-0.7",
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let set = format!("learner.algorithm=\"{algorithm}\"");
        train(out.path(), &[&set, extra]);
        for line in training_lines(out.path()) {
            assert!(
                number(&line, "oxrl_learner_loss").is_finite(),
                "{algorithm}: {line}"
            );
            if algorithm == "topr" {
                let ratio = number(&line, "oxrl_learner_ratio_max");
                assert!((ratio - 1.0).abs() < 1e-4, "{line}");
            } else {
                // Only the model's tokens of the kept episodes are trained.
                let kept = number(&line, "oxrl_learner_samples")
                    - number(&line, "oxrl_learner_dropped_samples");
                let model = number(&line, "episodes/model_tokens_mean");
                assert_eq!(
                    number(&line, "oxrl_learner_trained_tokens"),
                    kept * model,
                    "{line}"
                );
            }
        }
    }
}

/// An environment that crashes on a third of its model turns and hangs on some others (by the
/// action's length), and otherwise replies twice before ending the episode with a reward for
/// the action's length.
const CRASHING_ENV: &str = r#"
import json, sys, time
turns = 0
for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "reset":
        turns = 0
        print(json.dumps({"request_id": req["request_id"], "messages": [{"role": "user", "content": "Say something."}]}), flush=True)
        continue
    turns += 1
    if len(req["action"]) % 3 == 0:
        sys.exit(3)
    if len(req["action"]) % 7 == 1:
        time.sleep(30)
    reply = {"request_id": req["request_id"], "observation": [{"role": "user", "content": "More."}],
             "reward": len(req["action"]) / 100.0, "done": turns >= 2, "tool_calls": 1}
    print(json.dumps(reply), flush=True)
"#;

#[test]
fn crashing_and_hanging_external_environments_fail_their_episodes_not_the_run() {
    let out = tempfile::tempdir().unwrap();
    let script = out.path().join("env.py");
    std::fs::write(&script, CRASHING_ENV).unwrap();
    let python = oxrl_tests::python();
    let command = format!(
        "env.external.command=[\"{}\", \"{}\"]",
        python.display(),
        script.display()
    );
    let run = out.path().join("run");
    let output = train(
        &run,
        &[
            "env.task=\"external\"",
            &command,
            "env.external.timeout_s=2",
            "steps=3",
            "rollout.group_size=6",
        ],
    );
    let lines = training_lines(&run);
    assert_eq!(
        lines.len(),
        3,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let failures: f64 = lines
        .iter()
        .map(|l| number(l, "episodes/env_failures"))
        .sum();
    let calls: f64 = lines.iter().map(|l| number(l, "episodes/tool_calls")).sum();
    assert!(
        failures > 0.0,
        "some actions crash the environment: {lines:?}"
    );
    assert!(failures < 36.0 && calls > 0.0, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| number(l, "rewards/environment/failures") == number(l, "episodes/env_failures")));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for reason in ["exited", "no reply within"] {
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
}

#[test]
fn a_single_turn_task_with_tools_trains_as_episodes() {
    let out = tempfile::tempdir().unwrap();
    train(
        out.path(),
        &[
            "env.task=\"arithmetic\"",
            "env.tools.python.timeout_s=2",
            "env.tools.calculator=true",
        ],
    );
    for line in training_lines(out.path()) {
        // The random policy never calls a tool: its first turn is the answer.
        assert_eq!(number(&line, "episodes/turns_mean"), 1.0, "{line}");
        assert_eq!(number(&line, "episodes/env_tokens_mean"), 0.0, "{line}");
        assert!(line["rewards/environment/mean"].is_number(), "{line}");
    }
    let refused = Command::new(oxrl_bin())
        .args(["train", config().to_str().unwrap()])
        .args(["--set", "env.tools.calculator=true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("multi-turn already"),
        "tools on the calculator task: {stderr}"
    );
}

/// The final weights of a run.
fn final_weights(dir: &Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(dir.join("final/model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn a_multi_turn_run_resumes_to_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let straight = dir.path().join("straight");
    train(&straight, &["steps=3", "checkpoint.every=0"]);
    // The same run stopped after step 2 (its checkpoint), then continued to step 3.
    let resumed = dir.path().join("resumed");
    train(&resumed, &["steps=2", "checkpoint.every=0"]);
    let mut cmd = train_command(&config(), &resumed, &["steps=3"]);
    assert!(cmd.args(["--resume", "auto"]).status().unwrap().success());
    let (a, b) = (training_lines(&straight), training_lines(&resumed));
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    for key in ["reward", "episodes/env_tokens_mean", "oxrl_learner_loss"] {
        assert_eq!(a[2][key], b[2][key], "{key}");
    }
    for ((na, ta), (nb, tb)) in final_weights(&straight)
        .iter()
        .zip(&final_weights(&resumed))
    {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs after resume");
    }
}
