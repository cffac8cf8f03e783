//! `learner.algorithm = "sft"`: the trainer fine-tunes on each row's reference solution
//! (generated GSM8K-style word problems with worked steps) through the usual loop, without
//! generating, and a config that would make SFT generate is refused by name.

use std::path::Path;
use std::process::Output;

use oxrl_tests::{smoke_train, training_lines};

const SFT: [&str; 7] = [
    "learner.algorithm=\"sft\"",
    "rollout.source=\"dataset\"",
    "rollout.group_size=1",
    "rollout.prompts_per_step=4",
    "rollout.max_tokens=256",
    "env.task=\"gsm8k\"",
    "learner.optim.lr=1e-2",
];

fn sft(out: &Path, sets: &[&str]) -> Output {
    let all: Vec<&str> = SFT.iter().copied().chain(sets.iter().copied()).collect();
    smoke_train(out, &all).output().unwrap()
}

#[test]
fn sft_lowers_the_nll_of_reference_solutions_without_generating() {
    let out = tempfile::tempdir().unwrap();
    let run = sft(out.path(), &["steps=20"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = training_lines(out.path());
    assert_eq!(lines.len(), 20);
    for line in &lines {
        assert_eq!(line["oxrl_learner_samples"], 4.0, "{line}");
        // The references are right: the math verifier agrees with the generator.
        assert_eq!(line["rewards/math/mean"], 1.0, "{line}");
        assert!(
            line.get("rollout/tokens_per_second").is_none(),
            "nothing generated"
        );
        assert!(
            line["oxrl_learner_trained_tokens"].as_f64().unwrap() > 40.0,
            "{line}"
        );
    }
    let loss = |i: usize| lines[i]["oxrl_learner_loss"].as_f64().unwrap();
    // A random model starts near ln(vocab) = 10.8 nats per token; fitting the shared wording
    // of the worked solutions takes it well below.
    assert!(loss(0) > 9.0, "first loss {}", loss(0));
    assert!(loss(19) < 0.7 * loss(0), "loss {} -> {}", loss(0), loss(19));
}

#[test]
fn sft_that_would_generate_is_refused_by_name() {
    let out = tempfile::tempdir().unwrap();
    let run = sft(out.path(), &["rollout.source=\"policy\""]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("rollout.source = \"dataset\""), "{stderr}");
    let run = sft(out.path(), &["rollout.group_size=2"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.contains("rollout.group_size = 1"), "{stderr}");
}
