//! GRPO — Group Relative Policy Optimization (Shao et al. 2024, arXiv 2402.03300) with the
//! variants TRL's `GRPOTrainer` exposes: `scale_rewards` (Dr. GRPO, Liu et al. 2025), token-
//! or sequence-level importance ratio (GSPO, Zheng et al. 2025), asymmetric clipping and
//! dynamic sampling (DAPO, Yu et al. 2025), k3 KL to a reference, and the `grpo | bnpo |
//! dr_grpo | dapo` aggregations; and RLOO's leave-one-out baseline (`baseline`). Formulas: `docs/formulas.md` ("GRPO"), TRL
//! `grpo_trainer.py::_compute_loss`.

use serde::{Deserialize, Serialize};
use tch::Kind;

use super::advantages::{group_advantages_with, leave_one_out, Baseline, ScaleRewards};
use super::algorithm::{
    aggregate, mask_count, masked_sum, Algorithm, BatchContext, LossInput, LossOutput, LossType,
    Prepared,
};
use super::metrics::{self as m, Stats};
use crate::error::Result;
use crate::sample::Sample;

/// Where the importance ratio is taken (TRL `importance_sampling_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportanceSamplingLevel {
    /// `exp(logp_t - old_t)` per token (GRPO).
    #[default]
    Token,
    /// `exp(mean_t(logp - old))` per sequence, shared by its tokens (GSPO).
    Sequence,
}

/// GRPO options (TRL `GRPOConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// What is subtracted from each reward: the group's mean, or the others' (RLOO).
    pub baseline: Baseline,
    /// How centred rewards are scaled.
    pub scale_rewards: ScaleRewards,
    /// How per-token losses are reduced.
    pub loss_type: LossType,
    /// Token or sequence importance ratio.
    pub importance_sampling_level: ImportanceSamplingLevel,
    /// Lower clip: ratio >= 1 - epsilon.
    pub epsilon: f64,
    /// Upper clip: ratio <= 1 + epsilon_high (DAPO uses 0.28); defaults to `epsilon`.
    pub epsilon_high: Option<f64>,
    /// Weight of the k3 KL to the reference (0 = no reference needed).
    pub beta: f64,
    /// Optimisation passes over each batch of rollouts (mu in the GRPO paper).
    pub num_iterations: usize,
    /// Dr. GRPO's normaliser; the batch's longest completion when unset.
    pub max_completion_length: Option<usize>,
    /// DAPO dynamic sampling: groups whose rewards are all equal are dropped, and the
    /// trainer generates more prompts until the step has `rollout.prompts_per_step` groups
    /// whose rewards differ.
    pub dynamic_sampling: bool,
    /// Dynamic sampling: the most extra batches of prompts one step generates (verl
    /// `max_num_gen_batches`); past it the step trains on what it has.
    pub max_refill_batches: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            baseline: Baseline::GroupMean,
            scale_rewards: ScaleRewards::Group,
            loss_type: LossType::Dapo,
            importance_sampling_level: ImportanceSamplingLevel::Token,
            epsilon: 0.2,
            epsilon_high: None,
            beta: 0.0,
            num_iterations: 1,
            max_completion_length: None,
            dynamic_sampling: false,
            max_refill_batches: 10,
        }
    }
}

impl GrpoConfig {
    /// The upper clip epsilon.
    pub fn eps_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(self.epsilon)
    }
}

/// The GRPO algorithm.
#[derive(Debug, Clone)]
pub struct Grpo {
    /// Its options.
    pub cfg: GrpoConfig,
}

impl Algorithm for Grpo {
    fn name(&self) -> &'static str {
        "grpo"
    }

    fn needs_reference(&self) -> bool {
        self.cfg.beta != 0.0
    }

    fn passes(&self) -> usize {
        self.cfg.num_iterations.max(1)
    }

    fn max_completion_length(&self) -> Option<usize> {
        self.cfg.max_completion_length
    }

    fn prepare(
        &self,
        samples: &[Sample],
        ctx: &BatchContext,
        stats: &mut Stats,
    ) -> Result<Prepared> {
        let rewards: Vec<f64> = samples.iter().map(|s| s.reward).collect();
        let ids: Vec<u64> = samples.iter().map(|s| s.group_id).collect();
        let batch_std = match self.cfg.scale_rewards {
            ScaleRewards::Batch => ctx.mean_std(&rewards)?.1,
            _ => 0.0,
        };
        let mut adv = group_advantages_with(&rewards, &ids, self.cfg.scale_rewards, batch_std);
        if self.cfg.baseline == Baseline::LeaveOneOut {
            leave_one_out(&mut adv.advantages, &ids);
        }
        stats.set(m::FRAC_REWARD_ZERO_STD, adv.frac_zero_std);
        let order: Vec<usize> = (0..samples.len())
            .filter(|&i| !(self.cfg.dynamic_sampling && adv.zero_std[i]))
            .collect();
        stats.set(m::DROPPED_SAMPLES, (samples.len() - order.len()) as f64);
        Ok(Prepared::per_sample(samples, order, |i| {
            adv.advantages[i] as f32
        }))
    }

    fn loss(&self, input: &LossInput) -> Result<LossOutput> {
        grpo_loss(&self.cfg, input)
    }
}

/// The GRPO loss of one micro-batch.
///
/// `per_token = -w min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + beta * k3`, reduced by
/// `loss_type`; `w` is the rollout correction (1 without one), as in TRL.
///
/// # Shapes
/// inputs `[B, T]`; the loss is a scalar.
pub fn grpo_loss(cfg: &GrpoConfig, x: &LossInput) -> Result<LossOutput> {
    let mask = x.mask;
    let log_ratio = x.logp - x.old_logp;
    let log_iw = match cfg.importance_sampling_level {
        ImportanceSamplingLevel::Token => log_ratio,
        ImportanceSamplingLevel::Sequence => {
            let lens = mask.sum_dim_intlist(-1, true, None::<Kind>).clamp_min(1.0);
            (log_ratio * mask).sum_dim_intlist(-1, true, None::<Kind>) / lens
        }
    };
    let ratio = log_iw.exp();
    let (lo, hi) = (1.0 - cfg.epsilon, 1.0 + cfg.eps_high());
    let clipped = ratio.clamp(lo, hi);
    let a = x.advantages;
    let pg = x.corrected(-(&ratio * a).minimum(&(clipped * a)));
    let mut per_token = pg.shallow_clone();
    let mut stats = Stats::default();
    let tokens = mask_count(mask);
    if cfg.beta != 0.0 {
        let r = x.reference("grpo (beta != 0)")? - x.logp;
        let kl = r.exp() - &r - 1.0;
        stats.mean(m::KL, masked_sum(&kl, mask), tokens);
        per_token += kl * cfg.beta;
    }
    let loss = aggregate(&per_token, mask, cfg.loss_type, &x.scale);
    let policy_loss =
        tch::no_grad(|| aggregate(&pg, mask, cfg.loss_type, &x.scale)).double_value(&[]);
    tch::no_grad(|| {
        let ratio = ratio.expand_as(mask).detach();
        let low = ratio.lt(lo).logical_and(&a.lt(0.0)).to_kind(Kind::Float);
        let high = ratio.gt(hi).logical_and(&a.gt(0.0)).to_kind(Kind::Float);
        stats.mean(m::CLIP_FRACTION_LOW, masked_sum(&low, mask), tokens);
        stats.mean(m::CLIP_FRACTION_HIGH, masked_sum(&high, mask), tokens);
        stats.mean(m::CLIP_FRACTION, masked_sum(&(low + high), mask), tokens);
        stats.mean(m::RATIO_MEAN, masked_sum(&ratio, mask), tokens);
        stats.mean(m::ADVANTAGE_MEAN, masked_sum(a, mask), tokens);
        if tokens > 0.0 {
            let on = mask.gt(0.0);
            stats.min(
                m::RATIO_MIN,
                ratio.masked_select(&on).min().double_value(&[]),
            );
            stats.max(
                m::RATIO_MAX,
                ratio.masked_select(&on).max().double_value(&[]),
            );
        }
    });
    Ok(LossOutput {
        loss,
        policy_loss,
        stats,
    })
}
