//! TOPR learns the toy task on fresh rollouts, and fully offline from a fixed set of scored
//! samples with their behaviour logprobs (drawn once from the initial policy, written to and
//! read back from JSONL), on a tiny random model with fixed seeds.

mod learner_support;

use learner_support::*;
use oxrl::learner::data::read_samples_jsonl;
use oxrl::learner::metrics as m;
use oxrl::learner::topr::{Baseline, NamedBaseline};
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig};

fn topr_config(baseline: Baseline) -> LearnerConfig {
    let mut cfg = LearnerConfig {
        algorithm: AlgorithmKind::Topr,
        ..Default::default()
    };
    cfg.topr.baseline = baseline;
    cfg.optim.lr = 1e-2;
    cfg
}

#[test]
fn topr_raises_reward_on_fresh_rollouts() {
    let _serial = serial();
    let (vs, model) = tiny(7);
    let before = mean_reward(&model, 32, 1000);
    let mut learner = Learner::new(
        vs,
        model,
        topr_config(Baseline::Named(NamedBaseline::GroupMean)),
    )
    .unwrap();
    for step in 0..30 {
        let batch = rollout(learner.policy(), &all_digits(), 8, step);
        let metrics = learner.update(&batch).unwrap();
        if step % 5 == 0 {
            eprintln!(
                "step {step}: reward {:.3} positive {:.2}",
                metrics[m::REWARD_MEAN],
                metrics[m::TOPR_POSITIVE_FRACTION]
            );
        }
    }
    let after = mean_reward(learner.policy(), 32, 2000);
    eprintln!("reward before {before:.3} after {after:.3}");
    assert!(before < 0.15);
    assert!(after > before + 0.4, "reward {before:.3} -> {after:.3}");
}

#[test]
fn topr_learns_fully_offline_from_jsonl() {
    let _serial = serial();
    let (vs, model) = tiny(7);
    let before = mean_reward(&model, 32, 1000);
    // A fixed dataset from the initial policy: 128 samples per digit, scored.
    let data = rollout(&model, &all_digits(), 128, 99);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scored.jsonl");
    let text: String = data
        .iter()
        .map(|s| serde_json::to_string(s).unwrap() + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    let data = read_samples_jsonl(&path).unwrap();
    let hits = data.iter().filter(|s| s.reward > 0.0).count();
    eprintln!(
        "offline data: {} samples, {hits} with reward > 0",
        data.len()
    );
    // Baseline 0.1: misses get R = -0.1 (their weight truncated as the policy moves away),
    // hits keep weight 1 however unlikely they become.
    let mut learner = Learner::new(vs, model, topr_config(Baseline::Constant(0.1))).unwrap();
    for epoch in 0..10 {
        for chunk in data.chunks(192) {
            let metrics = learner.update(chunk).unwrap();
            assert!(metrics[m::RATIO_MAX].is_finite());
        }
        if epoch % 3 == 0 {
            eprintln!(
                "epoch {epoch}: reward {:.3}",
                mean_reward(learner.policy(), 16, 3000)
            );
        }
    }
    let after = mean_reward(learner.policy(), 32, 2000);
    eprintln!("offline reward before {before:.3} after {after:.3}");
    assert!(after > before + 0.25, "reward {before:.3} -> {after:.3}");
}
