//! PPO with a critic (value head on a policy-shaped trunk) learns the toy task on a tiny
//! random model: the sampled reward rises well above its start; value loss and KL are
//! reported.

mod learner_support;

use learner_support::*;
use oxrl::learner::metrics as m;
use oxrl::learner::ppo::KlEstimator;
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig};

#[test]
fn ppo_raises_reward() {
    let _serial = serial();
    let (vs, model) = tiny(7);
    let before = mean_reward(&model, 32, 1000);
    let mut cfg = LearnerConfig {
        algorithm: AlgorithmKind::Ppo,
        ..Default::default()
    };
    cfg.ppo.kl_coef = 0.02;
    cfg.ppo.kl_estimator = KlEstimator::K3;
    cfg.ppo.num_ppo_epochs = 2;
    cfg.ppo.vf_coef = 0.5;
    cfg.mini_batches = 2;
    cfg.shuffle = true; // different mini-batches in each PPO epoch
    cfg.optim.lr = 3e-3;
    let mut learner = Learner::new(vs, model, cfg).unwrap();
    let mut first_vf = None;
    let mut last_vf = 0.0;
    for step in 0..30 {
        let batch = rollout(learner.policy(), &all_digits(), 8, step);
        let metrics = learner.update(&batch).unwrap();
        assert_eq!(metrics[m::OPTIMIZER_STEPS], 4.0);
        first_vf.get_or_insert(metrics[m::VALUE_LOSS]);
        last_vf = metrics[m::VALUE_LOSS];
        if step % 5 == 0 {
            eprintln!(
                "step {step}: reward {:.3} pg {:.4} vf {:.4} kl {:.4} clip {:.3}",
                metrics[m::REWARD_MEAN],
                metrics[m::POLICY_LOSS],
                metrics[m::VALUE_LOSS],
                metrics[m::KL],
                metrics[m::CLIP_FRACTION]
            );
        }
    }
    let after = mean_reward(learner.policy(), 32, 2000);
    eprintln!(
        "reward before {before:.3} after {after:.3}; value loss {first_vf:?} -> {last_vf:.4}"
    );
    assert!(after > before + 0.4, "reward {before:.3} -> {after:.3}");
}
