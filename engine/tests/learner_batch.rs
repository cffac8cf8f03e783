//! The learner's batched view of samples: right-padded rows of different prompt and
//! completion lengths give the same per-token logprobs as one sequence at a time
//! (`oxrl::logprobs::completion_logprobs`, the reference path), env tokens are masked out,
//! and micro-batches follow the token budget.

mod learner_support;

use learner_support::*;
use oxrl::learner::batch::{collate, micro_batches, token_logprobs};
use oxrl::logprobs::completion_logprobs;
use tch::Kind;

#[test]
fn padded_rows_match_single_sequence_logprobs() {
    let _serial = serial();
    let (_vs, model) = tiny(2);
    let mut samples = [
        sample(&[1, 2], &[7, 7, 3, 9, 4], vec![0.0; 5], 0),
        sample(&[1, 3, 5, 6, 2], &[8], vec![0.0; 1], 0),
        sample(&[1, 4, 4], &[9, 9, 9], vec![0.0; 3], 1),
    ];
    samples[0].loss_mask[2] = false; // an environment token
    let refs: Vec<_> = samples.iter().collect();
    let rows = collate(&refs, model.device()).unwrap();
    assert_eq!(rows.tokens.size(), [3, 7]);
    assert_eq!(rows.mask.size(), [3, 5]);
    let mask: Vec<Vec<f32>> = Vec::try_from(&rows.mask).unwrap();
    assert_eq!(mask[0], [1.0, 1.0, 0.0, 1.0, 1.0]);
    assert_eq!(mask[1], [1.0, 0.0, 0.0, 0.0, 0.0]);
    let lp = tch::no_grad(|| token_logprobs(&model, &rows));
    let lp: Vec<Vec<f32>> = Vec::try_from(&lp.logp.to_kind(Kind::Float)).unwrap();
    for (i, s) in samples.iter().enumerate() {
        let want = completion_logprobs(&model, &s.prompt_ids, &s.completion_ids).unwrap();
        for (t, w) in want.iter().enumerate() {
            assert!(
                (lp[i][t] - w).abs() < 1e-5,
                "row {i} token {t}: {} vs {w}",
                lp[i][t]
            );
        }
    }
}

#[test]
fn micro_batches_keep_pairs_and_budget() {
    // lengths 7, 2, 6, 5: budget 12 -> [7], [2, 6]? 2 x 6 = 12 fits, [5]
    assert_eq!(
        micro_batches(&[7, 2, 6, 5], 1, Some(12)),
        vec![0..1, 1..3, 3..4]
    );
    // In pairs, a pair that alone exceeds the budget still gets its own micro-batch.
    assert_eq!(micro_batches(&[7, 2, 6, 5], 2, Some(8)), vec![0..2, 2..4]);
}
