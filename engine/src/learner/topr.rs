//! TOPR — Tapered Off-Policy REINFORCE (Le Roux et al. 2025, arXiv 2503.14286).
//!
//! Per trajectory, with `R = reward - baseline`:
//! `loss = -sg(alpha) * R * log pi(tau)`, `alpha = 1` if `R >= 0`, else
//! `clip(pi(tau) / mu(tau), 0, 1)`; the batch loss is the mean over trajectories. The ratio
//! is the paper's trajectory ratio, `exp(sum_t (logp_t - mu_t))` over trained tokens (some
//! implementations clamp per token instead; see docs/learner.md). No KL, no critic, no clip
//! epsilon; `mu` is the behaviour policy recorded in each sample, so it runs on fresh
//! rollouts and fully offline on scored samples with their behaviour logprobs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::algorithm::{Algorithm, BatchContext, LossInput, LossOutput, Prepared};
use super::metrics::{self as m, Stats};
use crate::error::Result;
use crate::sample::Sample;

/// A named baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedBaseline {
    /// The mean reward of the sample's group.
    GroupMean,
    /// The mean reward of the batch.
    BatchMean,
}

/// The baseline subtracted from rewards: a number (`baseline = 0.5`) or a name
/// (`baseline = "group_mean"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Baseline {
    /// A constant.
    Constant(f64),
    /// Computed from the batch.
    Named(NamedBaseline),
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline::Constant(0.0)
    }
}

/// TOPR options.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToprConfig {
    /// Subtracted from each reward; sets the effective share of positive examples.
    pub baseline: Baseline,
    /// The ratio that tapers a negative trajectory's gradient: the paper's trajectory ratio
    /// (`sequence`, default) or each token's own (`token`, as ROLL implements TOPR).
    pub ratio: TaperRatio,
}

/// Which importance ratio tapers negative trajectories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaperRatio {
    /// `clip(pi(tau) / mu(tau), 0, 1)` for the whole trajectory (the paper).
    #[default]
    Sequence,
    /// `clip(pi_t / mu_t, 0, 1)` per token (ROLL's `use_topr_neg_loss_coef`).
    Token,
}

/// The TOPR algorithm.
#[derive(Debug, Clone)]
pub struct Topr {
    /// Its options.
    pub cfg: ToprConfig,
}

/// `reward - baseline` per sample.
pub fn centred_rewards(samples: &[Sample], baseline: Baseline) -> Vec<f64> {
    match baseline {
        Baseline::Constant(c) => samples.iter().map(|s| s.reward - c).collect(),
        Baseline::Named(NamedBaseline::BatchMean) => {
            let mean = samples.iter().map(|s| s.reward).sum::<f64>() / samples.len().max(1) as f64;
            samples.iter().map(|s| s.reward - mean).collect()
        }
        Baseline::Named(NamedBaseline::GroupMean) => {
            let mut groups: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
            for s in samples {
                let e = groups.entry(s.group_id).or_default();
                e.0 += s.reward;
                e.1 += 1.0;
            }
            samples
                .iter()
                .map(|s| {
                    let (sum, n) = groups[&s.group_id];
                    s.reward - sum / n
                })
                .collect()
        }
    }
}

impl Algorithm for Topr {
    fn name(&self) -> &'static str {
        "topr"
    }

    fn needs_reference(&self) -> bool {
        false
    }

    fn prepare(
        &self,
        samples: &[Sample],
        ctx: &BatchContext,
        _stats: &mut Stats,
    ) -> Result<Prepared> {
        let r = match self.cfg.baseline {
            // The whole batch's mean, over every rank of a data-parallel job.
            Baseline::Named(NamedBaseline::BatchMean) => {
                let rewards: Vec<f64> = samples.iter().map(|s| s.reward).collect();
                let (m, _) = ctx.mean_std(&rewards)?;
                rewards.iter().map(|r| r - m).collect()
            }
            baseline => centred_rewards(samples, baseline),
        };
        Ok(Prepared::per_sample(
            samples,
            (0..samples.len()).collect(),
            |i| r[i] as f32,
        ))
    }

    fn loss(&self, input: &LossInput) -> Result<LossOutput> {
        Ok(topr_loss(input, self.cfg.ratio))
    }
}

/// The TOPR loss of one micro-batch: sum over its trajectories of
/// `-sg(alpha) R log pi(tau)`, divided by the step's number of trajectories; with
/// [`TaperRatio::Token`], `-R sum_t sg(alpha_t) log pi_t` instead.
/// `input.advantages` holds `R` repeated over each row's tokens.
///
/// # Shapes
/// inputs `[B, T]`; the loss is a scalar.
pub fn topr_loss(x: &LossInput, taper: TaperRatio) -> LossOutput {
    let mask = x.mask;
    // With a rollout correction, each token's log pi carries its weight.
    let token_logp = x.corrected(x.logp * mask);
    let r = x.advantages.select(1, 0);
    let (alpha, ratio) = tch::no_grad(|| {
        let log_ratio = (x.logp.detach() - x.old_logp) * mask;
        let ratio = log_ratio.sum_dim_intlist(-1, false, None::<Kind>).exp();
        let negative = r.lt(0.0).unsqueeze(-1);
        let taper = match taper {
            TaperRatio::Sequence => ratio.clamp(0.0, 1.0).unsqueeze(-1),
            TaperRatio::Token => log_ratio.exp().clamp(0.0, 1.0),
        };
        let ones = Tensor::ones_like(x.logp);
        (taper.expand_as(&ones).where_self(&negative, &ones), ratio)
    });
    let per_seq = -(&r * (&alpha * &token_logp).sum_dim_intlist(-1, false, None::<Kind>));
    let n = x.scale.sequences.max(1) as f64;
    let loss = per_seq.sum(per_seq.kind()) / n;
    let mut stats = Stats::default();
    let rows = r.size()[0] as f64;
    tch::no_grad(|| {
        let pos = r.ge(0.0).to_kind(Kind::Float);
        stats.mean(
            m::TOPR_POSITIVE_FRACTION,
            pos.sum(None::<Kind>).double_value(&[]),
            rows,
        );
        stats.mean(
            m::RATIO_MEAN,
            ratio.sum(None::<Kind>).double_value(&[]),
            rows,
        );
        stats.min(m::RATIO_MIN, ratio.min().double_value(&[]));
        stats.max(m::RATIO_MAX, ratio.max().double_value(&[]));
        stats.mean(
            m::ADVANTAGE_MEAN,
            r.sum(None::<Kind>).double_value(&[]),
            rows,
        );
    });
    let policy_loss = loss.double_value(&[]);
    LossOutput {
        loss,
        policy_loss,
        stats,
    }
}
