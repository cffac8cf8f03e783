//! A run on N ranks (`oxrl train --nproc N`, or a launcher's environment): joining the job,
//! each rank's share of a step's prompts, and the step's statistics over the whole job.
//!
//! Every rank draws the same step batch from the same seeded data order (so the data cursor,
//! and with it resuming on any number of ranks, is the single-process one), then generates,
//! scores and trains on a contiguous share of its prompts: whole groups, never split. The
//! learner (`Learner::join`) normalises by the whole batch and sums the gradients, so the
//! ranks take the step one process would. Rank 0 alone writes logs, checkpoints and the
//! final model and serves `/metrics`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use oxrl_envs::Row;
use oxrl_rewards::{CombinedScores, FailureKind};

use super::config::{RolloutEngine, RolloutSource, RunConfig};
use super::episodes::EpisodeOutcome;
use super::step_record::{mean_std, CompletionStats, EpisodeStats, PhaseTimes, RewardStats};
use crate::device::parse_device;
use crate::dist::{ProcessGroup, ReduceOp, Rendezvous};
use crate::learner::metrics::{self as m, Acc, Metrics, Stats};
use crate::learner::rollout_correction::LogprobGap;
use crate::rollout::GenerationRequest;

/// This process's group when the environment makes it a rank of a job of two or more
/// (`WORLD_SIZE`); `None` for a single process. Options that need the whole batch in one
/// process, and backends not bound, are refused by name.
pub fn join(cfg: &RunConfig) -> anyhow::Result<Option<ProcessGroup>> {
    let Some(place) = Rendezvous::from_env()? else {
        return Ok(None);
    };
    if place.world_size == 1 {
        return Ok(None);
    }
    check_supported(cfg)?;
    Ok(Some(ProcessGroup::gloo(&place, cfg.dist.timeout())?))
}

/// Refuses, by name, what a data-parallel run does not implement yet.
fn check_supported(cfg: &RunConfig) -> anyhow::Result<()> {
    let refused = [
        (
            parse_device(&cfg.model.device)?.is_cuda(),
            "model.device on CUDA (Gloo here reduces CPU tensors; NCCL is not bound yet)",
        ),
        (
            cfg.rollout.engine == RolloutEngine::Vllm && cfg.rollout.async_,
            "rollout.async on vLLM (rank 0's weight sync would land in another rank's generation)",
        ),
        (
            cfg.rollout.samples_path.is_some(),
            "rollout.samples_path (logged samples)",
        ),
        (
            cfg.rollout.source == RolloutSource::Agents,
            "rollout.source = \"agents\"",
        ),
    ];
    let names: Vec<&str> = refused
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    if !names.is_empty() {
        bail!(
            "data-parallel runs (WORLD_SIZE > 1) do not support yet: {}",
            names.join("; ")
        );
    }
    Ok(())
}

/// Rank `rank` of `world`'s share of a step's prompts: a contiguous run of whole prompts,
/// with the request's `prompt_offset` moved so that it draws what one process would.
pub fn share(
    rows: Vec<Row>,
    mut request: GenerationRequest,
    rank: usize,
    world: usize,
) -> (Vec<Row>, GenerationRequest) {
    let n = rows.len();
    let (start, end) = (n * rank / world, n * (rank + 1) / world);
    request.prompts = request.prompts[start..end].to_vec();
    request.prompt_offset += start;
    (rows[start..end].to_vec(), request)
}

/// The engine/learner logprob gap over every rank's tokens (a rank without one, its batch
/// stale or not generated, adds nothing); `None` when no rank has one.
pub fn job_logprob_gap(
    group: &ProcessGroup,
    mine: Option<LogprobGap>,
) -> anyhow::Result<Option<LogprobGap>> {
    let row = match mine {
        Some(g) => {
            let n = g.tokens as f64;
            vec![n, g.mean_abs * n, g.max_abs, g.kl * n]
        }
        None => vec![0.0; 4],
    };
    let rows = group.all_gather(&row)?;
    let tokens: f64 = rows.iter().map(|r| r[0]).sum();
    if tokens == 0.0 {
        return Ok(None);
    }
    let sum = |i: usize| rows.iter().map(|r| r[i]).sum::<f64>();
    Ok(Some(LogprobGap {
        mean_abs: sum(1) / tokens,
        max_abs: rows.iter().map(|r| r[2]).fold(0.0, f64::max),
        kl: sum(3) / tokens,
        tokens: tokens as usize,
    }))
}

/// The value rank 0 set under `key` in the job's store, waiting up to `wait` for it.
pub fn fetch(group: &ProcessGroup, key: &str, wait: Duration) -> anyhow::Result<Vec<u8>> {
    let store = group.store();
    let deadline = Instant::now() + wait;
    loop {
        if let Some(value) = store.get(key)? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("rank 0 did not publish {key:?} within {wait:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Per-prompt flags of batches shared over the ranks (`parts`: this rank's flags of each
/// batch, its contiguous share, shares in rank order): the job's flags in one process's order
/// (batch after batch), and where this rank's prompts sit among them.
pub fn job_flags(
    group: &ProcessGroup,
    parts: &[&[bool]],
) -> anyhow::Result<(Vec<bool>, Vec<usize>)> {
    let (mut all, mut mine) = (Vec::new(), Vec::new());
    for part in parts {
        let counts = group.all_gather(&[part.len() as f64])?;
        let before: usize = counts[..group.rank()].iter().map(|c| c[0] as usize).sum();
        let start = all.len() + before;
        mine.extend(start..start + part.len());
        let flags: Vec<f64> = part.iter().map(|&f| f64::from(u8::from(f))).collect();
        all.extend(group.gather_values(&flags)?.into_iter().map(|f| f > 0.5));
    }
    Ok((all, mine))
}

/// The step's episode statistics over every rank's episodes (the slowest rank's environment
/// seconds).
pub fn job_episode_stats(
    group: &ProcessGroup,
    episodes: &[EpisodeOutcome],
    env_seconds: f64,
) -> anyhow::Result<EpisodeStats> {
    let mine = EpisodeStats::of(episodes, env_seconds);
    let count = episodes.len() as f64;
    let sums = group.all_reduce_values(
        &[
            count,
            mine.turns_mean * count,
            mine.model_tokens_mean * count,
            mine.env_tokens_mean * count,
            mine.tool_calls as f64,
            mine.tool_failures as f64,
            mine.env_failures as f64,
        ],
        ReduceOp::Sum,
    )?;
    let slowest = group.all_reduce_values(&[env_seconds], ReduceOp::Max)?[0];
    let total = sums[0].max(1.0);
    Ok(EpisodeStats {
        turns_mean: sums[1] / total,
        model_tokens_mean: sums[2] / total,
        env_tokens_mean: sums[3] / total,
        tool_calls: sums[4] as usize,
        tool_failures: sums[5] as usize,
        env_failures: sums[6] as usize,
        env_seconds: slowest,
    })
}

/// The step's reward and completion statistics over every rank's share.
pub fn job_stats(
    group: &ProcessGroup,
    scores: &CombinedScores,
    lengths: Vec<usize>,
    max_tokens: usize,
) -> anyhow::Result<(RewardStats, CompletionStats)> {
    let total = group.gather_values(&scores.total)?;
    let (mean, std) = mean_std(&total);
    let mut by_name = RewardStats::of(scores).by_name;
    for (named, report) in by_name.iter_mut().zip(&scores.rewards) {
        let values = group.gather_values(&report.values)?;
        named.mean = mean_std(&values).0;
        let counts: Vec<f64> = FailureKind::ALL
            .iter()
            .map(|k| report.failures.get(k).copied().unwrap_or(0) as f64)
            .collect();
        named.failures = FailureKind::ALL
            .iter()
            .zip(group.all_reduce_values(&counts, ReduceOp::Sum)?)
            .filter(|(_, n)| *n > 0.0)
            .map(|(k, n)| (k.as_str().to_owned(), n as usize))
            .collect();
    }
    let lengths: Vec<f64> = lengths.into_iter().map(|l| l as f64).collect();
    let lengths = group.gather_values(&lengths)?;
    let completions =
        CompletionStats::of(lengths.iter().map(|&l| l as usize).collect(), max_tokens);
    Ok((RewardStats { mean, std, by_name }, completions))
}

/// The update's learner metrics over the job, exact whatever the ranks' shares:
/// - weighted means (entropy, KL, clip fractions, ratios, advantages, DPO's implicit
///   rewards) pool every rank's sums and weights;
/// - extremes are taken over the ranks;
/// - counts (samples, dropped samples, trained tokens) are summed;
/// - the reward mean and the zero-std fraction are weighted by each rank's samples, the
///   reward std is pooled around the job's mean, PPO's KL is weighted by trained tokens;
/// - what is the job's already (loss, gradient norm, steps, learning rate, skipped steps)
///   is the same on every rank.
///
/// A rank without a metric sits it out.
pub fn job_learner_metrics(group: &ProcessGroup, local: &Stats) -> anyhow::Result<Metrics> {
    let mine: BTreeMap<&str, Acc> = local.accumulators().collect();
    let row: Vec<f64> = (m::ALL.iter())
        .flat_map(|(name, _)| encode(mine.get(name)))
        .collect();
    let rows = group.all_gather(&row)?;
    let metric = |name: &str| -> Vec<Option<Acc>> {
        let i = m::ALL
            .iter()
            .position(|(n, _)| *n == name)
            .expect("a learner metric");
        rows.iter().map(|r| decode(&r[3 * i..3 * i + 3])).collect()
    };
    let count =
        |name: &str| -> Vec<f64> { metric(name).iter().map(|a| a.map_or(0.0, value)).collect() };
    let (samples, tokens) = (count(m::SAMPLES), count(m::TRAINED_TOKENS));
    let mut out = Metrics::new();
    for (name, _) in m::ALL {
        let ranks = metric(name);
        let present: Vec<(usize, Acc)> = (ranks.iter().enumerate())
            .filter_map(|(r, a)| a.map(|a| (r, a)))
            .collect();
        let Some(&(_, kind)) = present.first() else {
            continue;
        };
        let values = present.iter().map(|&(_, a)| value(a));
        let combined = match kind {
            Acc::Mean { .. } => {
                let (sum, weight) = (present.iter()).fold((0.0, 0.0), |(s, w), (_, a)| match a {
                    Acc::Mean { sum, weight } => (s + sum, w + weight),
                    _ => (s, w),
                });
                if weight > 0.0 {
                    sum / weight
                } else {
                    0.0
                }
            }
            Acc::Min(_) => values.fold(f64::INFINITY, f64::min),
            Acc::Max(_) => values.fold(f64::NEG_INFINITY, f64::max),
            _ if SUMMED.contains(name) => values.sum(),
            _ if *name == m::REWARD_STD => pooled_std(&present, &metric(m::REWARD_MEAN), &samples),
            _ if *name == m::KL => weighted(&present, &tokens),
            _ if BY_SAMPLES.contains(name) => weighted(&present, &samples),
            // The job's already: the same on every rank.
            _ => values.fold(f64::NEG_INFINITY, f64::max),
        };
        out.insert(name, combined);
    }
    Ok(out)
}

/// Counts a job sums over its ranks.
const SUMMED: [&str; 3] = [m::TRAINED_TOKENS, m::SAMPLES, m::DROPPED_SAMPLES];

/// Per-batch values each rank sets for its own samples.
const BY_SAMPLES: [&str; 2] = [m::REWARD_MEAN, m::FRAC_REWARD_ZERO_STD];

/// A metric's accumulator as three numbers (kind, then two values) for an all-gather.
fn encode(acc: Option<&Acc>) -> [f64; 3] {
    match acc {
        None => [0.0, 0.0, 0.0],
        Some(Acc::Mean { sum, weight }) => [1.0, *sum, *weight],
        Some(Acc::Min(v)) => [2.0, *v, 0.0],
        Some(Acc::Max(v)) => [3.0, *v, 0.0],
        Some(Acc::Sum(v)) => [4.0, *v, 0.0],
        Some(Acc::Last(v)) => [5.0, *v, 0.0],
    }
}

/// The inverse of [`encode`].
fn decode(x: &[f64]) -> Option<Acc> {
    Some(match x[0] as u8 {
        1 => Acc::Mean {
            sum: x[1],
            weight: x[2],
        },
        2 => Acc::Min(x[1]),
        3 => Acc::Max(x[1]),
        4 => Acc::Sum(x[1]),
        5 => Acc::Last(x[1]),
        _ => return None,
    })
}

/// An accumulator's value (a mean's is its own mean).
fn value(acc: Acc) -> f64 {
    match acc {
        Acc::Mean { sum, weight } if weight > 0.0 => sum / weight,
        Acc::Mean { .. } => 0.0,
        Acc::Min(v) | Acc::Max(v) | Acc::Sum(v) | Acc::Last(v) => v,
    }
}

/// The ranks' values weighted by `weights` (by rank); their plain mean when no rank has
/// weight.
fn weighted(present: &[(usize, Acc)], weights: &[f64]) -> f64 {
    let total: f64 = present.iter().map(|&(r, _)| weights[r]).sum();
    if total == 0.0 {
        return present.iter().map(|&(_, a)| value(a)).sum::<f64>() / present.len() as f64;
    }
    present
        .iter()
        .map(|&(r, a)| value(a) * weights[r])
        .sum::<f64>()
        / total
}

/// The job's reward std from each rank's (population) std, mean and sample count.
fn pooled_std(stds: &[(usize, Acc)], means: &[Option<Acc>], samples: &[f64]) -> f64 {
    let mean_of = |r: usize| means[r].map_or(0.0, value);
    let n: f64 = stds.iter().map(|&(r, _)| samples[r]).sum();
    if n == 0.0 {
        return 0.0;
    }
    let mean = stds
        .iter()
        .map(|&(r, _)| samples[r] * mean_of(r))
        .sum::<f64>()
        / n;
    let var = (stds.iter())
        .map(|&(r, a)| samples[r] * (value(a).powi(2) + (mean_of(r) - mean).powi(2)))
        .sum::<f64>()
        / n;
    var.sqrt()
}

/// Every rank's phase times of this step, by rank.
pub fn rank_times(group: &ProcessGroup, mine: &PhaseTimes) -> anyhow::Result<Vec<PhaseTimes>> {
    let values: Vec<f64> = mine.phases().iter().map(|(_, s)| *s).collect();
    Ok(group
        .all_gather(&values)?
        .into_iter()
        .map(|v| PhaseTimes {
            generate: v[0],
            reward: v[1],
            update: v[2],
            step: v[3],
            sync: None,
        })
        .collect())
}

/// Whether any rank's `flag` is set (e.g. a signal that reached one rank): every rank then
/// acts on it at the same step.
pub fn any(group: &ProcessGroup, flag: bool) -> anyhow::Result<bool> {
    Ok(group.all_reduce_values(&[flag as u8 as f64], ReduceOp::Max)?[0] > 0.0)
}
