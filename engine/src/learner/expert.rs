//! Expert iteration / rejection-sampling fine-tuning (Anthony et al. 2017; RFT, Yuan et al.
//! 2023): keep only the samples whose reward reaches a threshold and take a supervised
//! (negative log-likelihood) step on their completion tokens — the baseline the Echo Chamber
//! study compares RL against.

use serde::{Deserialize, Serialize};

use super::algorithm::{
    aggregate, Algorithm, BatchContext, LossInput, LossOutput, LossType, Prepared,
};
use super::metrics::{self as m, Stats};
use crate::error::Result;
use crate::sample::Sample;

/// Expert-iteration options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExpertIterationConfig {
    /// Samples with `reward >= min_reward` are kept.
    pub min_reward: f64,
    /// Passes over the kept samples of each batch.
    pub num_iterations: usize,
}

impl Default for ExpertIterationConfig {
    fn default() -> Self {
        Self {
            min_reward: 1.0,
            num_iterations: 1,
        }
    }
}

/// The expert-iteration algorithm.
#[derive(Debug, Clone)]
pub struct ExpertIteration {
    /// Its options.
    pub cfg: ExpertIterationConfig,
}

impl Algorithm for ExpertIteration {
    fn name(&self) -> &'static str {
        "expert_iteration"
    }

    fn needs_reference(&self) -> bool {
        false
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
        let order: Vec<usize> = (0..samples.len())
            .filter(|&i| samples[i].reward >= self.cfg.min_reward)
            .collect();
        stats.set(m::DROPPED_SAMPLES, (samples.len() - order.len()) as f64);
        Ok(Prepared::per_sample(samples, order, |_| 1.0))
    }

    /// Token-mean negative log-likelihood over the step's kept tokens.
    fn loss(&self, x: &LossInput) -> Result<LossOutput> {
        let loss = aggregate(&(-x.logp), x.mask, LossType::Dapo, &x.scale);
        let policy_loss = loss.double_value(&[]);
        Ok(LossOutput {
            loss,
            policy_loss,
            stats: Stats::default(),
        })
    }
}
