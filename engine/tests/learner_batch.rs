//! The learner's batched view of samples: right-padded rows of different prompt and
//! completion lengths give the same per-token logprobs as one sequence at a time
//! (`oxrl::rollout::logprobs::completion_logprobs`, the reference path), env tokens are masked
//! out, and micro-batches follow the token budget.

mod learner_support;

use learner_support::*;
use oxrl::learner::batch::{collate, micro_batches, prompt_micro_batches, token_logprobs};
use oxrl::rollout::logprobs::completion_logprobs;
use tch::{Kind, Tensor};

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
    let lp = tch::no_grad(|| token_logprobs(&model, &rows, Default::default()));
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

#[test]
fn rows_sharing_a_prompt_compute_it_once_with_the_same_logprobs_and_gradients() {
    let _serial = serial();
    let (vs, model) = tiny(4);
    let prompt = [1, 3, 5, 6, 2];
    let completions: [&[u32]; 4] = [&[7, 7, 3], &[8], &[9, 9, 9, 9], &[4, 2]];
    let samples: Vec<_> = completions
        .iter()
        .map(|c| sample(&prompt, c, vec![0.0; c.len()], 0))
        .collect();
    let refs: Vec<_> = samples.iter().collect();
    // Log-probabilities and the gradient of their masked sum, with and without sharing.
    let run = |share: bool| {
        let mut rows = collate(&refs, model.device()).unwrap();
        assert_eq!(rows.shared_prompt, prompt.len() as i64);
        if !share {
            rows.shared_prompt = 0;
        }
        for mut p in vs.trainable_variables() {
            p.zero_grad();
        }
        let lp = token_logprobs(&model, &rows, Default::default()).logp;
        (&lp * &rows.mask).sum(Kind::Float).backward();
        let grads: Vec<Tensor> = vs
            .trainable_variables()
            .iter()
            .map(|p| p.grad().copy())
            .collect();
        (lp.detach(), grads)
    };
    let (shared, shared_grads) = run(true);
    let (plain, plain_grads) = run(false);
    let diff = (&shared - &plain).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "logprobs differ by {diff}");
    for (a, b) in shared_grads.iter().zip(&plain_grads) {
        let scale = b.abs().max().double_value(&[]).max(1e-3);
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(
            diff < 1e-4 * scale,
            "gradients differ by {diff} at scale {scale}"
        );
    }
    // The prompt's parameters got gradient from every row through the shared keys/values.
    assert!(shared_grads
        .iter()
        .all(|g| g.abs().sum(Kind::Float).double_value(&[]) > 0.0));
}

#[test]
fn groups_of_several_rows_get_micro_batches_of_their_own() {
    // Each prompt is its own group, as the rollout numbers them.
    let s = |p: u32| sample(&[1, p], &[7, 7], vec![0.0; 2], p as u64);
    // Prompts A A A A B C C C C C D: the runs of 4 and 5 share; B and D batch together.
    let samples: Vec<_> = [2, 2, 2, 2, 3, 4, 4, 4, 4, 4, 5].map(s).into();
    let refs: Vec<_> = samples.iter().collect();
    assert_eq!(
        prompt_micro_batches(&refs, 1, None),
        vec![0..4, 4..5, 5..10, 10..11]
    );
    // The budget still splits a run (4 tokens a row, 12 per micro-batch: 3 rows).
    assert_eq!(
        prompt_micro_batches(&refs, 1, Some(12)),
        vec![0..3, 3..4, 4..5, 5..8, 8..10, 10..11]
    );
    // Pairs (DPO) with their own prompts stay batched together: runs of 2 are too short.
    let pairs: Vec<_> = [2, 2, 3, 3, 4, 4].map(s).into();
    let refs: Vec<_> = pairs.iter().collect();
    assert_eq!(prompt_micro_batches(&refs, 2, None), vec![0..6]);
    let rows = collate(&refs, tch::Device::Cpu).unwrap();
    assert_eq!(rows.shared_prompt, 0, "different prompts are not shared");
}
