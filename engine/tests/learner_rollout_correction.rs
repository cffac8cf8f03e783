//! The learner's side of sampling on another engine: the gap between behaviour logprobs and
//! the learner's own, measured for free by an update's first optimizer step; and the rollout
//! correction, which starts the ratios from the learner's recomputed logprobs and weights
//! each token by `pi_old / mu`.

mod learner_support;

use learner_support::*;
use oxrl::learner::metrics as m;
use oxrl::learner::{AlgorithmKind, CorrectionMode, Learner, LearnerConfig};
use oxrl::Sample;

fn grpo() -> LearnerConfig {
    let mut cfg = LearnerConfig {
        algorithm: AlgorithmKind::Grpo,
        ..Default::default()
    };
    cfg.optim.lr = 1e-3;
    cfg
}

fn batch() -> Vec<Sample> {
    let (_vs, model) = tiny(3);
    rollout(&model, &all_digits(), 4, 11)
}

/// Every sample's behaviour logprobs moved by `shift`.
fn shifted(samples: &[Sample], shift: f32) -> Vec<Sample> {
    let mut out = samples.to_vec();
    for s in &mut out {
        s.behaviour_logprobs.iter_mut().for_each(|l| *l += shift);
    }
    out
}

#[test]
fn the_first_optimizer_step_measures_the_gap_to_the_behaviour_logprobs() {
    let _serial = serial();
    let samples = batch();
    let tokens: usize = samples.iter().map(Sample::trained_tokens).sum();
    let (vs, model) = tiny(3);
    let mut learner = Learner::new(vs, model, grpo()).unwrap();
    let exact = learner.train(&samples).unwrap().behaviour_gap.unwrap();
    // The sampler computed them with the same weights: equal up to float rounding.
    assert!(exact.mean_abs < 1e-5 && exact.max_abs < 1e-4, "{exact:?}");
    assert_eq!(
        exact.tokens, tokens,
        "every trained token of the first step"
    );

    let (vs, model) = tiny(3);
    let mut learner = Learner::new(vs, model, grpo()).unwrap();
    let off = learner
        .train(&shifted(&samples, 0.25))
        .unwrap()
        .behaviour_gap
        .unwrap();
    assert!((off.mean_abs - 0.25).abs() < 1e-4, "{off:?}");
    // k3 of r = -0.25: exp(r) - 1 - r.
    let k3 = (-0.25f64).exp() - 1.0 + 0.25;
    assert!((off.kl - k3).abs() < 1e-4, "{off:?} vs {k3}");
}

#[test]
fn learner_logprobs_equal_to_the_behaviour_change_nothing() {
    let _serial = serial();
    let plain = batch();
    let mut recomputed = plain.clone();
    for s in &mut recomputed {
        s.learner_logprobs = Some(s.behaviour_logprobs.clone());
    }
    let run = |samples: &[Sample]| {
        let (vs, model) = tiny(3);
        let mut learner = Learner::new(vs, model, grpo()).unwrap();
        let metrics = learner.update(samples).unwrap();
        (metrics, learner.logprobs(&plain).unwrap())
    };
    let (a, logp_a) = run(&plain);
    let (b, logp_b) = run(&recomputed);
    assert_eq!(a[m::LOSS], b[m::LOSS]);
    assert_eq!(logp_a, logp_b, "the same update");
    assert_eq!(b[m::ROLLOUT_IS_WEIGHT_MEAN], 1.0);
    assert_eq!(b[m::ROLLOUT_IS_CLIPPED_FRACTION], 0.0);
    assert!(
        !a.contains_key(m::ROLLOUT_IS_WEIGHT_MEAN),
        "no engine, no weight"
    );
}

/// The engine's logprobs are ln 2 above the learner's: every weight is 1/2, so the gradient
/// is half that of the same batch without correction, whose ratios start from the same
/// learner logprobs (the first step's ratios are 1, where GRPO's policy loss is about 0, so
/// the gradient norm is what shows it). Raised by ln 4 over a cap of 3 instead, `token_mask` drops every token.
#[test]
fn the_correction_weights_each_token_by_pi_old_over_mu() {
    let _serial = serial();
    let learner_side = batch();
    let engine_side = |gap: f32| -> Vec<Sample> {
        let mut out = shifted(&learner_side, gap);
        for (s, l) in out.iter_mut().zip(&learner_side) {
            s.learner_logprobs = Some(l.behaviour_logprobs.clone());
        }
        out
    };
    let run = |cfg: LearnerConfig, samples: &[Sample]| {
        let (vs, model) = tiny(3);
        let mut learner = Learner::new(vs, model, cfg).unwrap();
        learner.update(samples).unwrap()
    };
    let reference = run(grpo(), &learner_side);
    let halved = run(grpo(), &engine_side(std::f32::consts::LN_2));
    let ratio = halved[m::GRAD_NORM] / reference[m::GRAD_NORM];
    assert!(reference[m::GRAD_NORM] > 1e-3, "{reference:?}");
    assert!((ratio - 0.5).abs() < 1e-4, "gradient norm ratio {ratio}");
    assert!((halved[m::ROLLOUT_IS_WEIGHT_MEAN] - 0.5).abs() < 1e-5);

    let mut masked = grpo();
    masked.rollout_correction.mode = CorrectionMode::TokenMask;
    let below = engine_side(-(4f32.ln()));
    let dropped = run(masked.clone(), &below);
    assert_eq!(dropped[m::ROLLOUT_IS_CLIPPED_FRACTION], 1.0);
    assert_eq!(dropped[m::GRAD_NORM], 0.0);
    masked.rollout_correction.mode = CorrectionMode::Off;
    let off = run(masked, &below);
    assert_eq!(off[m::GRAD_NORM], reference[m::GRAD_NORM]);
}
