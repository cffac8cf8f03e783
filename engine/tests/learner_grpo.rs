//! GRPO learns the toy verifiable task on a tiny random model (CPU, fixed seeds): the
//! sampled reward rises well above its start. Also: gradient accumulation over token-budget
//! micro-batches gives the same loss and gradient norm as the whole batch.

mod learner_support;

use learner_support::*;
use oxrl::learner::algorithm::LossType;
use oxrl::learner::metrics as m;
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig};

fn grpo_config(loss_type: LossType) -> LearnerConfig {
    let mut cfg = LearnerConfig {
        algorithm: AlgorithmKind::Grpo,
        ..Default::default()
    };
    cfg.grpo.loss_type = loss_type;
    cfg.grpo.epsilon_high = Some(0.28);
    cfg.grpo.num_iterations = 2;
    cfg.optim.lr = 3e-3;
    cfg
}

fn train(cfg: LearnerConfig, steps: usize) -> (f64, f64) {
    let (vs, model) = tiny(7);
    let before = mean_reward(&model, 32, 1000);
    let mut learner = Learner::new(vs, model, cfg).unwrap();
    for step in 0..steps {
        let batch = rollout(learner.policy(), &all_digits(), 8, step as i64);
        let metrics = learner.update(&batch).unwrap();
        if step % 5 == 0 {
            eprintln!(
                "step {step}: reward {:.3} loss {:.4} kl {:?} clip {:?} grad_norm {:.3}",
                metrics[m::REWARD_MEAN],
                metrics[m::LOSS],
                metrics.get(m::KL),
                metrics.get(m::CLIP_FRACTION),
                metrics[m::GRAD_NORM]
            );
        }
        assert_eq!(metrics[m::OPTIMIZER_STEPS], 2.0);
    }
    let after = mean_reward(learner.policy(), 32, 2000);
    eprintln!("reward before {before:.3} after {after:.3}");
    (before, after)
}

#[test]
fn grpo_raises_reward() {
    let _serial = serial();
    let (before, after) = train(grpo_config(LossType::Grpo), 30);
    assert!(
        before < 0.15,
        "random policy should rarely answer: {before}"
    );
    assert!(after > before + 0.5, "reward {before:.3} -> {after:.3}");
}

#[test]
fn dapo_with_kl_and_sequence_ratio_raises_reward() {
    let _serial = serial();
    let mut cfg = grpo_config(LossType::Dapo);
    cfg.grpo.beta = 0.01;
    cfg.grpo.importance_sampling_level = oxrl::learner::grpo::ImportanceSamplingLevel::Sequence;
    cfg.grpo.dynamic_sampling = true;
    let (before, after) = train(cfg, 30);
    assert!(after > before + 0.5, "reward {before:.3} -> {after:.3}");
}

#[test]
fn micro_batches_accumulate_exactly() {
    let _serial = serial();
    let batch = {
        let (_vs, model) = tiny(3);
        rollout(&model, &all_digits(), 4, 5)
    };
    for loss_type in [LossType::Grpo, LossType::Dapo, LossType::DrGrpo] {
        let run = |budget: Option<usize>| {
            let (vs, model) = tiny(3);
            let mut cfg = grpo_config(loss_type);
            cfg.grpo.num_iterations = 1;
            cfg.grpo.beta = 0.05;
            cfg.max_tokens_per_micro_batch = budget;
            let mut learner = Learner::new(vs, model, cfg).unwrap();
            learner.update(&batch).unwrap()
        };
        let whole = run(None);
        let split = run(Some(15)); // 3 rows of 5 tokens per micro-batch
        for name in [m::LOSS, m::GRAD_NORM, m::KL, m::ENTROPY] {
            let (a, b) = (whole[name], split[name]);
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                "{loss_type:?} {name}: {a} vs {b}"
            );
        }
        assert!(whole[m::GRAD_NORM] > 0.0);
    }
}

#[test]
fn env_tokens_are_excluded_and_bad_samples_rejected() {
    let _serial = serial();
    let (vs, model) = tiny(3);
    let mut batch = rollout(&model, &all_digits(), 4, 5);
    // The middle token of each completion becomes an environment token; its recorded
    // logprob (0, as the rollout engine writes for env tokens) must not matter.
    for s in &mut batch {
        s.loss_mask[1] = false;
        s.behaviour_logprobs[1] = 0.0;
    }
    let mut cfg = grpo_config(LossType::Dapo);
    cfg.grpo.num_iterations = 1;
    let mut learner = Learner::new(vs, model, cfg).unwrap();
    let metrics = learner.update(&batch).unwrap();
    assert_eq!(metrics[m::TRAINED_TOKENS], (batch.len() * 2) as f64);
    // On-policy first step: the learner's logprobs equal the sampler's on trained tokens.
    assert!((metrics[m::RATIO_MEAN] - 1.0).abs() < 1e-4, "{metrics:?}");
    assert!(metrics[m::RATIO_MAX] < 1.0 + 1e-4 && metrics[m::RATIO_MIN] > 1.0 - 1e-4);
    let mut bad = batch[0].clone();
    bad.loss_mask.pop();
    assert!(learner.update(&[bad]).is_err());
    let mut bad = batch[0].clone();
    bad.reward = f64::NAN;
    assert!(learner.update(&[bad]).is_err());
}

#[test]
fn resumed_optimizer_continues_exactly() {
    let _serial = serial();
    let batches: Vec<_> = {
        let (_vs, model) = tiny(4);
        (0..3)
            .map(|i| rollout(&model, &all_digits(), 4, 40 + i))
            .collect()
    };
    let weights = |l: &Learner| {
        let mut v: Vec<(String, tch::Tensor)> = l.var_store().variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let mut cfg = grpo_config(LossType::Grpo);
    cfg.optim.weight_decay = 0.01;
    let (vs, model) = tiny(4);
    let mut a = Learner::new(vs, model, cfg.clone()).unwrap();
    a.update(&batches[0]).unwrap();
    a.update(&batches[1]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    a.save_optimizer(&path).unwrap();
    // B and C: the same weights (copied); B resumes the saved optimizer, C starts fresh.
    let copy_of_a = |a: &Learner| {
        let (mut vs, model) = tiny(99);
        vs.copy(a.var_store()).unwrap();
        Learner::new(vs, model, cfg.clone()).unwrap()
    };
    let mut b = copy_of_a(&a);
    let mut c = copy_of_a(&a);
    b.load_optimizer(&path).unwrap();
    assert_eq!(b.steps(), a.steps());
    a.update(&batches[2]).unwrap();
    b.update(&batches[2]).unwrap();
    c.update(&batches[2]).unwrap();
    let mut fresh_differs = false;
    for (((name, x), (_, y)), (_, z)) in weights(&a).iter().zip(weights(&b)).zip(weights(&c)) {
        let d = (x - &y).abs().max().double_value(&[]);
        assert!(d == 0.0, "{name} differs by {d} after resuming");
        fresh_differs |= (x - &z).abs().max().double_value(&[]) > 1e-6;
    }
    assert!(fresh_differs, "the saved moments made no difference");
}

#[test]
fn a_non_finite_loss_skips_the_step_and_leaves_the_weights_alone() {
    let _guard = serial();
    let (vs, model) = tiny(11);
    let mut learner = Learner::new(vs, model, grpo_config(LossType::Grpo)).unwrap();
    let mut batch = rollout(learner.policy(), &all_digits(), 8, 0);
    batch[0].behaviour_logprobs[0] = f32::NAN; // poisons the ratio, the loss and the gradients
    let before: Vec<(String, tch::Tensor)> = learner
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let metrics = learner.update(&batch).unwrap();
    assert!(metrics[m::SKIPPED_STEPS] >= 1.0, "{metrics:?}");
    let after = learner.var_store().variables();
    for (name, t) in &before {
        assert!(after[name].equal(t), "{name} changed in a skipped step");
    }
    batch[0].behaviour_logprobs[0] = -1.0;
    let metrics = learner.update(&batch).unwrap();
    assert_eq!(
        metrics[m::SKIPPED_STEPS],
        0.0,
        "a healthy batch updates again"
    );
}
