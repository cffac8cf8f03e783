//! Expert iteration (rejection-sampling fine-tuning) learns the toy task: keep the rewarded
//! samples, fine-tune on them, resample.

mod learner_support;

use learner_support::*;
use oxrl::learner::metrics as m;
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig};

#[test]
fn expert_iteration_raises_reward() {
    let _serial = serial();
    let (vs, model) = tiny(7);
    let before = mean_reward(&model, 32, 1000);
    let mut cfg = LearnerConfig {
        algorithm: AlgorithmKind::ExpertIteration,
        ..Default::default()
    };
    cfg.expert_iteration.min_reward = 0.3; // at least one of the three tokens right
    cfg.optim.lr = 1e-2;
    let mut learner = Learner::new(vs, model, cfg).unwrap();
    for step in 0..40 {
        let batch = rollout(learner.policy(), &all_digits(), 8, step);
        let metrics = learner.update(&batch).unwrap();
        let kept = metrics[m::SAMPLES] - metrics[m::DROPPED_SAMPLES];
        if step % 5 == 0 {
            eprintln!(
                "step {step}: reward {:.3} kept {kept}",
                metrics[m::REWARD_MEAN]
            );
        }
        if kept == 0.0 {
            assert_eq!(metrics[m::OPTIMIZER_STEPS], 0.0);
        }
    }
    let after = mean_reward(learner.policy(), 32, 2000);
    eprintln!("reward before {before:.3} after {after:.3}");
    assert!(after > before + 0.35, "reward {before:.3} -> {after:.3}");
}
