//! Checks of every `[learner]` option, run before anything loads (`oxrl config check`,
//! `RunConfig` parsing) and again by `Learner::new`: a value no formula accepts is an error
//! naming the option, never a failure after the model has loaded and a rollout has run.

use super::dpo::DpoLoss;
use super::topr::Baseline;
use super::LearnerConfig;
use crate::error::{Error, Result};

/// `Err` naming `option` and what it must be when `ok` is false.
fn require(ok: bool, option: &str, value: impl std::fmt::Display, must: &str) -> Result<()> {
    match ok {
        true => Ok(()),
        false => Err(Error::Invalid(format!(
            "learner.{option} = {value}: must be {must}"
        ))),
    }
}

fn finite_at_least(option: &str, v: f64, min: f64) -> Result<()> {
    require(
        v.is_finite() && v >= min,
        option,
        v,
        &format!("a number >= {min}"),
    )
}

fn unit_interval(option: &str, v: f64) -> Result<()> {
    require((0.0..=1.0).contains(&v), option, v, "in [0, 1]")
}

impl LearnerConfig {
    /// Checks every option of every algorithm's table (each table is checked whichever
    /// algorithm runs: a typo'd value in a table not used today still fails early).
    pub fn validate(&self) -> Result<()> {
        let g = &self.grpo;
        finite_at_least("grpo.epsilon", g.epsilon, 0.0)?;
        if let Some(high) = g.epsilon_high {
            finite_at_least("grpo.epsilon_high", high, 0.0)?;
        }
        finite_at_least("grpo.beta", g.beta, 0.0)?;
        require(
            g.num_iterations >= 1,
            "grpo.num_iterations",
            g.num_iterations,
            ">= 1",
        )?;
        if let Some(len) = g.max_completion_length {
            require(len >= 1, "grpo.max_completion_length", len, ">= 1")?;
        }
        let d = &self.dpo;
        require(
            d.beta.is_finite() && d.beta > 0.0,
            "dpo.beta",
            d.beta,
            "> 0",
        )?;
        require(
            (0.0..0.5).contains(&d.label_smoothing),
            "dpo.label_smoothing",
            d.label_smoothing,
            "in [0, 0.5)",
        )?;
        require(
            d.label_smoothing == 0.0 || d.loss_type == DpoLoss::Sigmoid,
            "dpo.label_smoothing",
            d.label_smoothing,
            "0 with loss_type = \"ipo\" (label smoothing is cDPO's, a sigmoid loss)",
        )?;
        finite_at_least("dpo.rpo_alpha", d.rpo_alpha, 0.0)?;
        require(
            d.num_iterations >= 1,
            "dpo.num_iterations",
            d.num_iterations,
            ">= 1",
        )?;
        if let Baseline::Constant(c) = self.topr.baseline {
            require(
                c.is_finite(),
                "topr.baseline",
                c,
                "a finite number or a named baseline",
            )?;
        }
        let e = &self.expert_iteration;
        require(
            e.min_reward.is_finite(),
            "expert_iteration.min_reward",
            e.min_reward,
            "finite",
        )?;
        require(
            e.num_iterations >= 1,
            "expert_iteration.num_iterations",
            e.num_iterations,
            ">= 1",
        )?;
        let p = &self.ppo;
        finite_at_least("ppo.kl_coef", p.kl_coef, 0.0)?;
        unit_interval("ppo.gamma", p.gamma)?;
        unit_interval("ppo.lam", p.lam)?;
        require(
            p.cliprange.is_finite() && p.cliprange > 0.0,
            "ppo.cliprange",
            p.cliprange,
            "> 0",
        )?;
        require(
            p.cliprange_value.is_finite() && p.cliprange_value > 0.0,
            "ppo.cliprange_value",
            p.cliprange_value,
            "> 0",
        )?;
        finite_at_least("ppo.vf_coef", p.vf_coef, 0.0)?;
        require(
            p.num_ppo_epochs >= 1,
            "ppo.num_ppo_epochs",
            p.num_ppo_epochs,
            ">= 1",
        )?;
        let c = &self.rollout_correction;
        require(
            c.tis_cap.is_finite() && c.tis_cap > 0.0,
            "rollout_correction.tis_cap",
            c.tis_cap,
            "> 0",
        )?;
        let o = &self.optim;
        require(
            o.lr.is_finite() && o.lr >= 0.0,
            "optim.lr",
            o.lr,
            "a number >= 0",
        )?;
        require(
            (0.0..1.0).contains(&o.adam_beta1),
            "optim.adam_beta1",
            o.adam_beta1,
            "in [0, 1)",
        )?;
        require(
            (0.0..1.0).contains(&o.adam_beta2),
            "optim.adam_beta2",
            o.adam_beta2,
            "in [0, 1)",
        )?;
        require(
            o.adam_epsilon.is_finite() && o.adam_epsilon > 0.0,
            "optim.adam_epsilon",
            o.adam_epsilon,
            "> 0",
        )?;
        finite_at_least("optim.weight_decay", o.weight_decay, 0.0)?;
        finite_at_least("optim.max_grad_norm", o.max_grad_norm, 0.0)?;
        if let Some(budget) = self.max_tokens_per_micro_batch {
            require(budget >= 1, "max_tokens_per_micro_batch", budget, ">= 1")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(toml: &str) -> String {
        let cfg: LearnerConfig = toml::from_str(toml).unwrap();
        cfg.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_pass_and_bad_values_are_named() {
        LearnerConfig::default().validate().unwrap();
        for (toml, option) in [
            ("[grpo]\nepsilon = -1.0", "learner.grpo.epsilon = -1"),
            ("[grpo]\nepsilon_high = -0.1", "learner.grpo.epsilon_high"),
            ("[grpo]\nbeta = nan", "learner.grpo.beta"),
            ("[dpo]\nbeta = 0.0", "learner.dpo.beta = 0"),
            (
                "[dpo]\nlabel_smoothing = 0.5",
                "learner.dpo.label_smoothing",
            ),
            ("[ppo]\ngamma = 1.5", "learner.ppo.gamma"),
            ("[ppo]\ncliprange = 0.0", "learner.ppo.cliprange"),
            ("[topr]\nbaseline = inf", "learner.topr.baseline"),
            ("[optim]\nlr = -1e-6", "learner.optim.lr"),
            ("[optim]\nadam_beta2 = 1.0", "learner.optim.adam_beta2"),
            (
                "max_tokens_per_micro_batch = 0",
                "learner.max_tokens_per_micro_batch",
            ),
        ] {
            let e = error(toml);
            assert!(e.contains(option), "{toml}: {e}");
        }
    }
}
