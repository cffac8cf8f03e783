//! Supervised fine-tuning: the negative log-likelihood of reference completions (a dataset's
//! solutions, `train::references`), the warm-up ReFT starts PPO from (Luong et al. 2024) and
//! the baseline RL runs are compared against. Every sample is trained, with TRL's
//! `SFTTrainer` loss (`completion_only_loss`): the token mean over the step's completion tokens.

use super::algorithm::{Algorithm, BatchContext, LossInput, LossOutput, Prepared};
use super::expert::token_mean_nll;
use super::metrics::Stats;
use crate::error::Result;
use crate::sample::Sample;

/// The SFT algorithm (no options: the optimiser's are in `[learner.optim]`).
#[derive(Debug, Clone, Default)]
pub struct Sft;

impl Algorithm for Sft {
    fn name(&self) -> &'static str {
        "sft"
    }

    fn needs_reference(&self) -> bool {
        false
    }

    fn prepare(
        &self,
        samples: &[Sample],
        _ctx: &BatchContext,
        _stats: &mut Stats,
    ) -> Result<Prepared> {
        Ok(Prepared::per_sample(
            samples,
            (0..samples.len()).collect(),
            |_| 1.0,
        ))
    }

    fn loss(&self, x: &LossInput) -> Result<LossOutput> {
        Ok(token_mean_nll(x))
    }
}
