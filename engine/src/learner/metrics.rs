//! Metric names every update reports (Prometheus conventions of `docs/formulas.md` "Metrics":
//! prefix `oxrl_`, base units in the name) and the small accumulator that averages them over
//! micro-batches. TRL/verl names are given beside each constant.

use std::collections::BTreeMap;

/// Declares each metric name as a constant documented by its help text, and [`ALL`] with
/// every (name, help) pair, so no metric can exist without a help text for its gauge.
macro_rules! learner_metrics {
    ($($konst:ident = $name:literal: $help:literal;)*) => {
        $(#[doc = $help] pub const $konst: &str = $name;)*
        /// Every learner metric with its help text (the `/metrics` gauges' help).
        pub const ALL: &[(&str, &str)] = &[$(($name, $help)),*];
    };
}

learner_metrics! {
    LOSS = "oxrl_learner_loss": "Total loss that was back-propagated (TRL `loss`).";
    POLICY_LOSS = "oxrl_learner_policy_loss": "Policy-gradient part of the loss (verl `actor/pg_loss`).";
    VALUE_LOSS = "oxrl_learner_value_loss": "Critic loss (verl `critic/vf_loss`); PPO only.";
    KL = "oxrl_learner_kl": "Mean per-token KL to the reference (TRL `kl`), k3 estimator unless the algorithm says.";
    ENTROPY = "oxrl_learner_entropy": "Mean per-token entropy of the policy on trained tokens (TRL `entropy`).";
    CLIP_FRACTION_LOW = "oxrl_learner_clip_fraction_low": "Fraction of tokens clipped at `1 - eps_low` with negative advantage (TRL `clip_ratio/low_mean`).";
    CLIP_FRACTION_HIGH = "oxrl_learner_clip_fraction_high": "Fraction of tokens clipped at `1 + eps_high` with positive advantage (TRL `clip_ratio/high_mean`).";
    CLIP_FRACTION = "oxrl_learner_clip_fraction": "Fraction of tokens clipped either way (TRL `clip_ratio/region_mean`, verl `actor/pg_clipfrac`).";
    VALUE_CLIP_FRACTION = "oxrl_learner_value_clip_fraction": "Fraction of value predictions clipped (verl `critic/vf_clipfrac`); PPO only.";
    RATIO_MEAN = "oxrl_learner_ratio_mean": "Mean importance ratio pi/mu over trained tokens.";
    RATIO_MIN = "oxrl_learner_ratio_min": "Smallest importance ratio seen.";
    RATIO_MAX = "oxrl_learner_ratio_max": "Largest importance ratio seen.";
    GRAD_NORM = "oxrl_learner_grad_norm": "Global gradient L2 norm before clipping (TRL `grad_norm`), mean over optimizer steps.";
    LEARNING_RATE = "oxrl_learner_learning_rate": "Learning rate of the last optimizer step (TRL `learning_rate`).";
    TRAINED_TOKENS = "oxrl_learner_trained_tokens": "Completion tokens that counted in the loss in this update (one pass).";
    OPTIMIZER_STEPS = "oxrl_learner_optimizer_steps": "Optimizer steps taken in this update.";
    SAMPLES = "oxrl_learner_samples": "Samples used by this update.";
    REWARD_MEAN = "oxrl_learner_reward_mean": "Mean reward of the batch (TRL `reward`).";
    REWARD_STD = "oxrl_learner_reward_std": "Standard deviation of the batch rewards (TRL `reward_std`).";
    FRAC_REWARD_ZERO_STD = "oxrl_learner_frac_reward_zero_std": "Fraction of groups whose rewards are all equal (TRL `frac_reward_zero_std`).";
    ADVANTAGE_MEAN = "oxrl_learner_advantage_mean": "Mean advantage over trained tokens.";
    DROPPED_SAMPLES = "oxrl_learner_dropped_samples": "Samples dropped by dynamic sampling or filtering in this update.";
    DPO_REWARD_CHOSEN = "oxrl_learner_dpo_rewards_chosen": "DPO: mean `beta * (logp - ref)` of the chosen completions (TRL `rewards/chosen`).";
    DPO_REWARD_REJECTED = "oxrl_learner_dpo_rewards_rejected": "DPO: mean `beta * (logp - ref)` of the rejected completions (TRL `rewards/rejected`).";
    DPO_ACCURACY = "oxrl_learner_dpo_rewards_accuracy": "DPO: fraction of pairs whose chosen implicit reward beats the rejected (TRL `rewards/accuracies`).";
    DPO_MARGIN = "oxrl_learner_dpo_rewards_margin": "DPO: mean chosen minus rejected implicit reward (TRL `rewards/margins`).";
    TOPR_POSITIVE_FRACTION = "oxrl_learner_topr_positive_fraction": "TOPR: fraction of trajectories in the positive (untruncated) set.";
    SKIPPED_STEPS = "oxrl_learner_skipped_steps": "Optimizer steps skipped because the loss or a gradient was NaN/inf.";
    ROLLOUT_IS_WEIGHT_MEAN = "oxrl_learner_rollout_is_weight_mean": "Rollout correction: mean importance weight pi_old/mu (after truncation or masking) over trained tokens, or sequences in the sequence modes; only when another engine (vLLM) sampled.";
    ROLLOUT_IS_CLIPPED_FRACTION = "oxrl_learner_rollout_is_clipped_fraction": "Rollout correction: fraction of trained tokens (or sequences) whose weight exceeded `tis_cap` and was truncated or masked.";
}

/// Named metric values of one update.
pub type Metrics = BTreeMap<&'static str, f64>;

/// How one metric combines across micro-batches (and, for a data-parallel job, ranks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Acc {
    /// A weighted mean: the sum of the values and their weight (tokens, pairs, steps).
    Mean {
        /// Sum of the values.
        sum: f64,
        /// Their weight.
        weight: f64,
    },
    /// The smallest value.
    Min(f64),
    /// The largest value.
    Max(f64),
    /// A total.
    Sum(f64),
    /// The value last set.
    Last(f64),
}

/// Accumulates metrics over micro-batches and optimizer steps.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Stats {
    values: BTreeMap<&'static str, Acc>,
}

impl Stats {
    /// Adds `sum` over `weight` items to a weighted mean.
    pub fn mean(&mut self, name: &'static str, sum: f64, weight: f64) {
        let e = self.values.entry(name).or_insert(Acc::Mean {
            sum: 0.0,
            weight: 0.0,
        });
        if let Acc::Mean { sum: s, weight: w } = e {
            *s += sum;
            *w += weight;
        }
    }

    /// Keeps the smallest value.
    pub fn min(&mut self, name: &'static str, v: f64) {
        let e = self.values.entry(name).or_insert(Acc::Min(f64::INFINITY));
        if let Acc::Min(m) = e {
            *m = m.min(v);
        }
    }

    /// Keeps the largest value.
    pub fn max(&mut self, name: &'static str, v: f64) {
        let e = self
            .values
            .entry(name)
            .or_insert(Acc::Max(f64::NEG_INFINITY));
        if let Acc::Max(m) = e {
            *m = m.max(v);
        }
    }

    /// Adds to a total.
    pub fn sum(&mut self, name: &'static str, v: f64) {
        let e = self.values.entry(name).or_insert(Acc::Sum(0.0));
        if let Acc::Sum(m) = e {
            *m += v;
        }
    }

    /// Overwrites the value.
    pub fn set(&mut self, name: &'static str, v: f64) {
        self.values.insert(name, Acc::Last(v));
    }

    /// Merges another accumulator into this one.
    pub fn merge(&mut self, other: &Stats) {
        for (&name, acc) in &other.values {
            match *acc {
                Acc::Mean { sum, weight } => self.mean(name, sum, weight),
                Acc::Min(v) => self.min(name, v),
                Acc::Max(v) => self.max(name, v),
                Acc::Sum(v) => self.sum(name, v),
                Acc::Last(v) => self.set(name, v),
            }
        }
    }

    /// Every metric's accumulator.
    pub fn accumulators(&self) -> impl Iterator<Item = (&'static str, Acc)> + '_ {
        self.values.iter().map(|(&name, &acc)| (name, acc))
    }

    /// The final values (means with zero weight report 0; empty min/max are left out).
    pub fn finish(&self) -> Metrics {
        self.values
            .iter()
            .filter_map(|(&name, acc)| {
                let v = match *acc {
                    Acc::Mean { sum, weight } => {
                        if weight > 0.0 {
                            sum / weight
                        } else {
                            0.0
                        }
                    }
                    Acc::Min(v) | Acc::Max(v) if !v.is_finite() => return None,
                    Acc::Min(v) | Acc::Max(v) | Acc::Sum(v) | Acc::Last(v) => v,
                };
                Some((name, v))
            })
            .collect()
    }
}
