//! DPO — Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), with cDPO
//! label smoothing (Mitchell 2023) and IPO (Azar et al. 2023, arXiv 2310.12036). Follows
//! TRL `dpo_trainer.py::dpo_loss`; IPO uses length-averaged log-probabilities as TRL does.
//! `rpo_alpha` adds the chosen completion's NLL (RPO, Pang et al. 2024, arXiv 2404.19733; TRL
//! `rpo_alpha`), which keeps the chosen likelihood from falling along with the rejected one.
//!
//! Pairs are samples sharing a `group_id`: the highest reward is chosen, the lowest rejected.
//! Offline pairs are built with [`pair_samples`] (reward 1 and 0); online, a group of the
//! policy's own samples scored by the configured reward or judge gives its best and worst.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::algorithm::{Algorithm, BatchContext, LossInput, LossOutput, Prepared};
use super::metrics::{self as m, Stats};
use crate::error::Result;
use crate::sample::{FinishReason, Sample};

/// Which preference loss (TRL `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpoLoss {
    /// `-log sigmoid(beta d)`, with optional label smoothing (cDPO).
    #[default]
    Sigmoid,
    /// `(d - 1/(2 beta))^2` on length-averaged log-ratios.
    Ipo,
}

/// DPO options (TRL `DPOConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpoConfig {
    /// Inverse temperature of the implicit reward.
    pub beta: f64,
    /// Sigmoid or IPO.
    pub loss_type: DpoLoss,
    /// cDPO: probability that a label is flipped (sigmoid loss only).
    pub label_smoothing: f64,
    /// Passes over each batch.
    pub num_iterations: usize,
    /// Weight of the chosen completion's mean token NLL in each pair's loss (0 = plain DPO).
    /// Per-sequence mean where TRL takes the batch's token mean, so micro-batches add up.
    pub rpo_alpha: f64,
}

impl Default for DpoConfig {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss_type: DpoLoss::Sigmoid,
            label_smoothing: 0.0,
            num_iterations: 1,
            rpo_alpha: 0.0,
        }
    }
}

/// The DPO algorithm.
#[derive(Debug, Clone)]
pub struct Dpo {
    /// Its options.
    pub cfg: DpoConfig,
}

/// An offline preference pair as two samples (chosen: reward 1, rejected: reward 0) sharing
/// `group_id`. The behaviour logprobs are zeros: DPO does not use them.
pub fn pair_samples(
    prompt: &[u32],
    chosen: &[u32],
    rejected: &[u32],
    group_id: u64,
) -> [Sample; 2] {
    let make = |completion: &[u32], reward: f64| Sample {
        prompt_ids: prompt.to_vec(),
        completion_ids: completion.to_vec(),
        loss_mask: vec![true; completion.len()],
        behaviour_logprobs: vec![0.0; completion.len()],
        learner_logprobs: None,
        policy_version: 0,
        group_id,
        finish_reason: FinishReason::Stop,
        reward,
        rewards: BTreeMap::new(),
        turn_rewards: Vec::new(),
    };
    [make(chosen, 1.0), make(rejected, 0.0)]
}

impl Algorithm for Dpo {
    fn name(&self) -> &'static str {
        "dpo"
    }

    fn needs_reference(&self) -> bool {
        true
    }

    fn unit(&self) -> usize {
        2
    }

    fn passes(&self) -> usize {
        self.cfg.num_iterations.max(1)
    }

    fn prepare(
        &self,
        samples: &[Sample],
        _ctx: &BatchContext,
        stats: &mut Stats,
    ) -> Result<Prepared> {
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, s) in samples.iter().enumerate() {
            groups.entry(s.group_id).or_default().push(i);
        }
        let mut order = Vec::new();
        for members in groups.values() {
            // First best and first worst, so ties keep input order.
            let best = members.iter().copied().reduce(|a, b| {
                if samples[b].reward > samples[a].reward {
                    b
                } else {
                    a
                }
            });
            let worst = members.iter().copied().reduce(|a, b| {
                if samples[b].reward < samples[a].reward {
                    b
                } else {
                    a
                }
            });
            if let (Some(c), Some(r)) = (best, worst) {
                if samples[c].reward > samples[r].reward {
                    order.extend([c, r]);
                }
            }
        }
        stats.set(m::SAMPLES, order.len() as f64);
        stats.set(m::DROPPED_SAMPLES, (samples.len() - order.len()) as f64);
        Ok(Prepared::per_sample(samples, order, |_| 0.0))
    }

    fn loss(&self, input: &LossInput) -> Result<LossOutput> {
        dpo_loss(&self.cfg, input)
    }
}

/// The DPO/IPO loss of one micro-batch of pairs (rows `2k` chosen, `2k + 1` rejected),
/// divided by the step's number of pairs.
///
/// # Shapes
/// inputs `[2P, T]`; the loss is a scalar.
pub fn dpo_loss(cfg: &DpoConfig, x: &LossInput) -> Result<LossOutput> {
    let mask = x.mask;
    let reference = x.reference("dpo")?;
    let mut logratio = ((x.logp - reference) * mask).sum_dim_intlist(-1, false, None::<Kind>);
    if cfg.loss_type == DpoLoss::Ipo {
        logratio /= mask.sum_dim_intlist(-1, false, None::<Kind>).clamp_min(1.0);
    }
    let pairs = logratio.view([-1, 2]);
    let (c, r) = (pairs.select(1, 0), pairs.select(1, 1));
    let d = &c - &r;
    let per_pair = match cfg.loss_type {
        DpoLoss::Sigmoid => {
            let eps = cfg.label_smoothing;
            -(&d * cfg.beta).log_sigmoid() * (1.0 - eps) - (-&d * cfg.beta).log_sigmoid() * eps
        }
        DpoLoss::Ipo => (&d - 1.0 / (2.0 * cfg.beta)).pow_tensor_scalar(2),
    };
    let per_pair = match cfg.rpo_alpha {
        0.0 => per_pair,
        alpha => {
            let tokens = mask.sum_dim_intlist(-1, false, None::<Kind>).clamp_min(1.0);
            let nll = -(x.logp * mask).sum_dim_intlist(-1, false, None::<Kind>) / tokens;
            per_pair + nll.view([-1, 2]).select(1, 0) * alpha
        }
    };
    let n_pairs = (x.scale.sequences / 2).max(1) as f64;
    let loss = per_pair.sum(per_pair.kind()) / n_pairs;
    let mut stats = Stats::default();
    tch::no_grad(|| {
        let k = c.size()[0] as f64;
        let sum = |t: &Tensor| t.detach().sum(None::<Kind>).double_value(&[]);
        let (rc, rr) = (c.detach() * cfg.beta, r.detach() * cfg.beta);
        stats.mean(m::DPO_REWARD_CHOSEN, sum(&rc), k);
        stats.mean(m::DPO_REWARD_REJECTED, sum(&rr), k);
        stats.mean(
            m::DPO_ACCURACY,
            sum(&rc.gt_tensor(&rr).to_kind(Kind::Float)),
            k,
        );
        stats.mean(m::DPO_MARGIN, sum(&(&rc - &rr)), k);
    });
    let policy_loss = loss.double_value(&[]);
    Ok(LossOutput {
        loss,
        policy_loss,
        stats,
    })
}
