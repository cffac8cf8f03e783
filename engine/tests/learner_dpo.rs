//! DPO on a tiny random model: offline from JSONL preference pairs (sigmoid, cDPO and IPO)
//! the preference accuracy on held-out pairs and the sampled reward rise; online, pairs
//! ranked by the verifiable reward from the policy's own samples raise the reward.

mod learner_support;

use learner_support::*;
use oxrl::learner::data::read_preference_jsonl;
use oxrl::learner::dpo::{pair_samples, DpoLoss};
use oxrl::learner::metrics as m;
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig};
use oxrl::Sample;
use serde::Serialize;

/// One line of the offline preference file (token ids; text lines need a tokenizer).
#[derive(Serialize)]
struct Pair {
    prompt_ids: Vec<u32>,
    chosen_ids: Vec<u32>,
    rejected_ids: Vec<u32>,
}

/// Deterministic pseudo-random wrong completions.
fn wrong(d: u32, k: u32) -> Vec<u32> {
    (0..COMPLETION as u32)
        .map(|j| {
            let mut t = 2 + (d * 7 + k * 13 + j * 5) % (VOCAB as u32 - 2);
            if t == target(d) {
                t = 2 + (t - 1) % (VOCAB as u32 - 2);
            }
            t
        })
        .collect()
}

fn pairs(range: std::ops::Range<u32>) -> Vec<Pair> {
    all_digits()
        .into_iter()
        .flat_map(|d| {
            range.clone().map(move |k| Pair {
                prompt_ids: prompt(d),
                chosen_ids: vec![target(d); COMPLETION],
                rejected_ids: wrong(d, k),
            })
        })
        .collect()
}

fn to_samples(pairs: &[Pair]) -> Vec<Sample> {
    pairs
        .iter()
        .enumerate()
        .flat_map(|(i, p)| pair_samples(&p.prompt_ids, &p.chosen_ids, &p.rejected_ids, i as u64))
        .collect()
}

/// Fraction of pairs where the policy gives the chosen completion more log-probability.
fn preference_accuracy(learner: &Learner, samples: &[Sample]) -> f64 {
    let lp = learner.logprobs(samples).unwrap();
    let total = |v: &Vec<f32>| v.iter().sum::<f32>();
    let wins = lp.chunks(2).filter(|c| total(&c[0]) > total(&c[1])).count();
    wins as f64 / (lp.len() / 2) as f64
}

fn offline(loss_type: DpoLoss, beta: f64, label_smoothing: f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pairs.jsonl");
    let text: String = pairs(0..8)
        .iter()
        .map(|p| serde_json::to_string(p).unwrap() + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    let train = read_preference_jsonl(&path, None).unwrap();
    assert_eq!(train.len(), 2 * 8 * DIGITS as usize);
    let held_out = to_samples(&pairs(100..104));

    let (vs, model) = tiny(7);
    let mut cfg = LearnerConfig {
        algorithm: AlgorithmKind::Dpo,
        ..Default::default()
    };
    cfg.dpo.loss_type = loss_type;
    cfg.dpo.beta = beta;
    cfg.dpo.label_smoothing = label_smoothing;
    cfg.optim.lr = 3e-3;
    cfg.max_tokens_per_micro_batch = Some(40); // pairs stay together
    let mut learner = Learner::new(vs, model, cfg).unwrap();
    let acc_before = preference_accuracy(&learner, &held_out);
    let reward_before = mean_reward(learner.policy(), 32, 1000);
    for epoch in 0..10 {
        for chunk in train.chunks(24) {
            let metrics = learner.update(chunk).unwrap();
            if epoch % 3 == 0 && chunk.as_ptr() == train.as_ptr() {
                eprintln!(
                    "epoch {epoch}: loss {:.4} accuracy {:.2} margin {:.3}",
                    metrics[m::LOSS],
                    metrics[m::DPO_ACCURACY],
                    metrics[m::DPO_MARGIN]
                );
            }
        }
    }
    let acc_after = preference_accuracy(&learner, &held_out);
    let reward_after = mean_reward(learner.policy(), 32, 2000);
    eprintln!(
        "{loss_type:?}: held-out accuracy {acc_before:.2} -> {acc_after:.2}, reward {reward_before:.3} -> {reward_after:.3}"
    );
    assert!(acc_after >= 0.95, "accuracy {acc_before} -> {acc_after}");
    assert!(
        reward_after > reward_before + 0.3,
        "reward {reward_before:.3} -> {reward_after:.3}"
    );
}

#[test]
fn offline_dpo_sigmoid_learns_preferences() {
    let _serial = serial();
    offline(DpoLoss::Sigmoid, 0.1, 0.0);
}

#[test]
fn offline_cdpo_learns_preferences() {
    let _serial = serial();
    offline(DpoLoss::Sigmoid, 0.1, 0.1);
}

#[test]
fn offline_ipo_learns_preferences() {
    let _serial = serial();
    offline(DpoLoss::Ipo, 0.1, 0.0);
}

#[test]
fn online_dpo_raises_reward() {
    let _serial = serial();
    let (vs, model) = tiny(7);
    let before = mean_reward(&model, 32, 1000);
    let mut cfg = LearnerConfig {
        algorithm: AlgorithmKind::Dpo,
        ..Default::default()
    };
    cfg.dpo.beta = 0.1;
    cfg.optim.lr = 1e-2;
    let mut learner = Learner::new(vs, model, cfg).unwrap();
    for step in 0..40 {
        let batch = rollout(learner.policy(), &all_digits(), 8, step);
        let metrics = learner.update(&batch).unwrap();
        if step % 5 == 0 {
            eprintln!(
                "step {step}: reward {:.3} pairs {}",
                metrics[m::REWARD_MEAN],
                metrics[m::SAMPLES] / 2.0
            );
        }
    }
    let after = mean_reward(learner.policy(), 32, 2000);
    eprintln!("online DPO reward before {before:.3} after {after:.3}");
    assert!(after > before + 0.3, "reward {before:.3} -> {after:.3}");
}
