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
    /// Which of those: every one (`all`), or the best-rewarded of each group (`best_per_group`,
    /// the first on a tie), one fine-tuning example per prompt.
    pub keep: Keep,
}

/// Which samples reaching `min_reward` expert iteration keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Every one.
    #[default]
    All,
    /// The best of each group.
    BestPerGroup,
}

impl Default for ExpertIterationConfig {
    fn default() -> Self {
        Self {
            min_reward: 1.0,
            num_iterations: 1,
            keep: Keep::All,
        }
    }
}

/// The samples expert iteration trains on, in batch order.
pub fn kept(samples: &[Sample], cfg: &ExpertIterationConfig) -> Vec<usize> {
    let above = (0..samples.len()).filter(|&i| samples[i].reward >= cfg.min_reward);
    match cfg.keep {
        Keep::All => above.collect(),
        Keep::BestPerGroup => {
            let mut best: std::collections::BTreeMap<u64, usize> = Default::default();
            for i in above {
                let b = best.entry(samples[i].group_id).or_insert(i);
                if samples[i].reward > samples[*b].reward {
                    *b = i;
                }
            }
            let mut order: Vec<usize> = best.into_values().collect();
            order.sort_unstable();
            order
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
        let order = kept(samples, &self.cfg);
        stats.set(m::DROPPED_SAMPLES, (samples.len() - order.len()) as f64);
        Ok(Prepared::per_sample(samples, order, |_| 1.0))
    }

    fn loss(&self, x: &LossInput) -> Result<LossOutput> {
        Ok(token_mean_nll(x))
    }
}

/// Token-mean negative log-likelihood over the step's trained tokens (TRL's SFT loss: the
/// summed NLL over the batch's completion tokens divided by their number).
pub(crate) fn token_mean_nll(x: &LossInput) -> LossOutput {
    let loss = aggregate(&(-x.logp), x.mask, LossType::Dapo, &x.scale);
    let policy_loss = loss.double_value(&[]);
    LossOutput {
        loss,
        policy_loss,
        stats: Stats::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_per_group_keeps_one_sample_of_each_group_above_the_threshold() {
        let batch: Vec<Sample> = [(0, 0.5), (0, 0.9), (0, 0.9), (1, 0.2), (2, 0.7), (2, 0.6)]
            .iter()
            .map(|&(g, r)| Sample::for_test(g, r))
            .collect();
        let all = ExpertIterationConfig {
            min_reward: 0.5,
            ..Default::default()
        };
        assert_eq!(kept(&batch, &all), [0, 1, 2, 4, 5]);
        let best = ExpertIterationConfig {
            keep: Keep::BestPerGroup,
            ..all
        };
        assert_eq!(kept(&batch, &best), [1, 4], "group 1 has none above 0.5");
    }
}
