//! Weighted combination of named rewards. Each reward is reported separately (scores,
//! failures by kind, time taken) and failures are also counted over the whole run, for the
//! `oxrl_reward_failures_total{reward, kind}` metric.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rayon::prelude::*;

use crate::{Completion, FailureKind, Registry, Result, Reward, RewardSpec, Score};

/// Failures counted by kind.
pub type FailureCounts = BTreeMap<FailureKind, usize>;

struct Entry {
    name: String,
    weight: f64,
    failure_score: f64,
    reward: Arc<dyn Reward>,
}

/// A weighted sum of rewards.
pub struct WeightedRewards {
    entries: Vec<Entry>,
    totals: Mutex<BTreeMap<(String, FailureKind), u64>>,
}

/// One reward's part of a batch result.
#[derive(Debug, Clone)]
pub struct RewardReport {
    /// The name the reward was added under ([`RewardSpec::name`] with
    /// [`WeightedRewards::from_specs`]).
    pub name: String,
    /// Its weight in the total.
    pub weight: f64,
    /// Per-completion outcome.
    pub scores: Vec<Score>,
    /// Per-completion value used in the total (failures replaced by the failure score).
    pub values: Vec<f64>,
    /// This batch's failures by kind.
    pub failures: FailureCounts,
    /// Wall-clock seconds this reward took on the batch.
    pub seconds: f64,
}

impl RewardReport {
    /// Mean of `values` (0 for an empty batch).
    pub fn mean(&self) -> f64 {
        if self.values.is_empty() {
            0.0
        } else {
            self.values.iter().sum::<f64>() / self.values.len() as f64
        }
    }
}

/// The result of scoring a batch with a [`WeightedRewards`].
#[derive(Debug, Clone)]
pub struct CombinedScores {
    /// Per-completion weighted sum.
    pub total: Vec<f64>,
    /// One report per reward, in config order.
    pub rewards: Vec<RewardReport>,
}

impl WeightedRewards {
    /// An empty combination.
    pub fn new() -> Self {
        WeightedRewards {
            entries: Vec::new(),
            totals: Mutex::new(BTreeMap::new()),
        }
    }

    /// Builds every spec through the registry; each reward reports under its spec's `name`.
    pub fn from_specs(registry: &Registry, specs: &[RewardSpec]) -> Result<Self> {
        let mut w = WeightedRewards::new();
        for spec in specs {
            let reward = registry.build(spec)?;
            w.push(&spec.name, reward, spec.weight, spec.failure_score);
        }
        Ok(w)
    }

    /// Adds a reward that reports (in [`RewardReport::name`], [`WeightedRewards::names`] and
    /// [`WeightedRewards::failure_totals`]) under `name`.
    pub fn push(&mut self, name: &str, reward: Arc<dyn Reward>, weight: f64, failure_score: f64) {
        self.entries.push(Entry {
            name: name.to_string(),
            weight,
            failure_score,
            reward,
        });
    }

    /// Scores a batch with every reward (rewards run concurrently).
    pub fn score(&self, completions: &[Completion]) -> CombinedScores {
        let rewards: Vec<RewardReport> = self
            .entries
            .par_iter()
            .map(|e| {
                let t = Instant::now();
                let mut scores = e.reward.score_batch(completions);
                // A reward that returns the wrong count is a bug in it; report it per completion
                // instead of panicking.
                if scores.len() != completions.len() {
                    let msg = format!(
                        "reward returned {} scores for {} samples",
                        scores.len(),
                        completions.len()
                    );
                    scores = vec![Err(crate::RewardFailure::Crash(msg)); completions.len()];
                }
                let mut failures = FailureCounts::new();
                let values = scores
                    .iter()
                    .map(|s| match s {
                        Ok(v) if v.is_finite() => *v,
                        Ok(_) => {
                            *failures.entry(FailureKind::MalformedReply).or_default() += 1;
                            e.failure_score
                        }
                        Err(f) => {
                            *failures.entry(f.kind()).or_default() += 1;
                            e.failure_score
                        }
                    })
                    .collect();
                RewardReport {
                    name: e.name.clone(),
                    weight: e.weight,
                    scores,
                    values,
                    failures,
                    seconds: t.elapsed().as_secs_f64(),
                }
            })
            .collect();
        let mut total = vec![0.0; completions.len()];
        for r in &rewards {
            for (t, v) in total.iter_mut().zip(&r.values) {
                *t += r.weight * v;
            }
        }
        if let Ok(mut totals) = self.totals.lock() {
            for r in &rewards {
                for (kind, n) in &r.failures {
                    *totals.entry((r.name.clone(), *kind)).or_default() += *n as u64;
                }
            }
        }
        CombinedScores { total, rewards }
    }

    /// Failures counted since creation, by (reward name, kind).
    pub fn failure_totals(&self) -> BTreeMap<(String, FailureKind), u64> {
        self.totals.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Names of the rewards, in config order.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }
}

impl Default for WeightedRewards {
    fn default() -> Self {
        Self::new()
    }
}
