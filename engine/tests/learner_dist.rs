//! Data-parallel learners (`Learner::join`, Gloo through c10d): two ranks, each training on
//! half of a batch's groups, take the optimizer steps one learner takes on the whole batch
//! (GRPO with its reference, and the batch-wide statistics of GRPO's batch scaling, PPO's
//! whitening with its critic and TOPR's batch-mean baseline, computed over both ranks);
//! they start from rank 0's weights whatever they were built with, end with the same
//! weights bit for bit, and a rank with nothing to train still steps with the others.

mod learner_support;

use std::thread;
use std::time::Duration;

use learner_support::*;
use oxrl::dist::{ProcessGroup, Rendezvous};
use oxrl::learner::advantages::ScaleRewards;
use oxrl::learner::metrics as m;
use oxrl::learner::topr::{Baseline, NamedBaseline};
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig};
use oxrl::Sample;
use tch::Tensor;

/// The learners compared: GRPO with a KL reference (broadcast too), and options whose
/// statistics span the whole batch, computed over both ranks: GRPO's batch-scaled rewards,
/// PPO's whitened advantages (with its critic), TOPR's batch-mean baseline.
#[derive(Debug, Clone, Copy)]
enum Variant {
    GrpoKl,
    GrpoBatchScaled,
    PpoWhitened,
    ToprBatchMean,
}

fn learner_config(variant: Variant) -> LearnerConfig {
    let algorithm = match variant {
        Variant::GrpoKl | Variant::GrpoBatchScaled => AlgorithmKind::Grpo,
        Variant::PpoWhitened => AlgorithmKind::Ppo,
        Variant::ToprBatchMean => AlgorithmKind::Topr,
    };
    let mut cfg = LearnerConfig {
        algorithm,
        ..Default::default()
    };
    match variant {
        Variant::GrpoKl => cfg.grpo.beta = 0.01,
        Variant::GrpoBatchScaled => cfg.grpo.scale_rewards = ScaleRewards::Batch,
        Variant::PpoWhitened => assert!(cfg.ppo.whiten_advantages),
        Variant::ToprBatchMean => cfg.topr.baseline = Baseline::Named(NamedBaseline::BatchMean),
    }
    cfg.optim.lr = 1e-3;
    cfg
}

/// The weights by name after some updates, and each update's loss.
type Trained = (Vec<(String, Tensor)>, Vec<f64>);

/// [`Trained`] after `updates` updates on `batch`.
fn train(
    learner: &mut Learner,
    batch: &[Sample],
    updates: usize,
) -> (Vec<(String, Tensor)>, Vec<f64>) {
    let losses = (0..updates)
        .map(|_| learner.train(batch).unwrap().metrics[m::LOSS])
        .collect();
    let mut weights: Vec<(String, Tensor)> = learner
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy()))
        .collect();
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    (weights, losses)
}

/// Two ranks (threads), rank r a learner built from seed `seeds[r]` that joined the group,
/// running `work(learner, shares[r])`; their results by rank.
fn on_two_ranks<T: Send + 'static>(
    variant: Variant,
    seeds: [i64; 2],
    shares: [Vec<Sample>; 2],
    work: impl Fn(&mut Learner, Vec<Sample>) -> T + Send + Copy + 'static,
) -> Vec<T> {
    let port = oxrl::rollout::vllm::free_port().unwrap();
    let ranks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(rank, share)| {
            let seed = seeds[rank];
            thread::spawn(move || {
                let place = Rendezvous {
                    rank,
                    world_size: 2,
                    local_rank: rank,
                    master_addr: "127.0.0.1".into(),
                    master_port: port,
                };
                let group = ProcessGroup::gloo(&place, Duration::from_secs(60)).unwrap();
                let (vs, model) = tiny(seed);
                let mut learner = Learner::new(vs, model, learner_config(variant)).unwrap();
                learner.join(group).unwrap();
                work(&mut learner, share)
            })
        })
        .collect();
    ranks.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Two ranks, rank r built from seed `seeds[r]` and trained on `shares[r]`.
fn two_ranks(
    variant: Variant,
    seeds: [i64; 2],
    shares: [Vec<Sample>; 2],
    updates: usize,
) -> Vec<Trained> {
    on_two_ranks(variant, seeds, shares, move |learner, share| {
        train(learner, &share, updates)
    })
}

fn max_diff(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((na, x), (nb, y))| {
            assert_eq!(na, nb);
            (x - y).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn one_process(variant: Variant, batch: &[Sample], updates: usize) -> Trained {
    let (vs, model) = tiny(3);
    let mut learner = Learner::new(vs, model, learner_config(variant)).unwrap();
    train(&mut learner, batch, updates)
}

#[test]
fn two_ranks_on_half_the_groups_each_take_the_one_process_steps() {
    let _serial = serial();
    let (_vs, model) = tiny(3);
    let batch = rollout(&model, &all_digits(), 4, 11);
    let half = batch.len() / 2;
    assert_eq!(
        batch[half - 1].group_id + 1,
        batch[half].group_id,
        "split between groups"
    );
    use Variant::*;
    for algorithm in [GrpoKl, GrpoBatchScaled, PpoWhitened, ToprBatchMean] {
        let (want, want_losses) = one_process(algorithm, &batch, 3);
        // Rank 1 is built from other weights: rank 0's reach it at `join`.
        let shares = [batch[..half].to_vec(), batch[half..].to_vec()];
        let ranks = two_ranks(algorithm, [3, 4], shares, 3);
        let moved = max_diff(&want, &one_process(algorithm, &batch, 0).0);
        assert!(
            moved > 1e-3,
            "{algorithm:?}: the updates should move the weights: {moved}"
        );
        for (rank, (weights, losses)) in ranks.iter().enumerate() {
            let d = max_diff(weights, &want);
            assert!(d < 1e-5, "{algorithm:?} rank {rank}: weights differ by {d}");
            for (a, b) in losses.iter().zip(&want_losses) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "{algorithm:?} rank {rank}: loss {a} vs {b}"
                );
            }
        }
        let d = max_diff(&ranks[0].0, &ranks[1].0);
        assert_eq!(d, 0.0, "{algorithm:?}: the ranks' weights are identical");
    }
}

#[test]
fn a_rank_with_nothing_to_train_still_steps_with_the_others() {
    let _serial = serial();
    let (_vs, model) = tiny(3);
    let batch = rollout(&model, &all_digits()[..4], 4, 12);
    let (want, _) = one_process(Variant::PpoWhitened, &batch, 2);
    let ranks = two_ranks(Variant::PpoWhitened, [3, 3], [batch.clone(), Vec::new()], 2);
    for (rank, (weights, _)) in ranks.iter().enumerate() {
        let d = max_diff(weights, &want);
        assert!(
            d < 1e-5,
            "rank {rank}: weights differ from one process's by {d}"
        );
    }
}

/// Ranks with unequal shares (three quarters of the groups and one quarter) report, once
/// combined (`job_learner_metrics`), the learner metrics one learner reports on the whole
/// batch: pooled means, summed counts, the pooled reward std, extremes.
#[test]
fn unequal_shares_report_the_metrics_of_one_learner() {
    use oxrl::train::data_parallel::job_learner_metrics;
    let _serial = serial();
    let (_vs, model) = tiny(3);
    let batch = rollout(&model, &all_digits(), 4, 11);
    let cut = batch.len() / 4 * 3 / 4 * 4;
    assert_ne!(
        batch[cut - 1].group_id,
        batch[cut].group_id,
        "split between groups"
    );
    for algorithm in [Variant::GrpoKl, Variant::PpoWhitened] {
        let (vs, model) = tiny(3);
        let mut one = Learner::new(vs, model, learner_config(algorithm)).unwrap();
        let want = one.train(&batch).unwrap().metrics;
        let shares = [batch[..cut].to_vec(), batch[cut..].to_vec()];
        let ranks = on_two_ranks(algorithm, [3, 3], shares, |learner, share| {
            let update = learner.train(&share).unwrap();
            let group = learner.process_group().unwrap();
            job_learner_metrics(group, &update.stats).unwrap()
        });
        for (rank, got) in ranks.into_iter().enumerate() {
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{algorithm:?} rank {rank}"
            );
            for (name, b) in &want {
                let a = got[name];
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{algorithm:?} rank {rank}: {name} {a} vs one learner's {b}"
                );
            }
        }
    }
}
