//! What one training step reports, as one typed value: built by the trainer where each value
//! happens, written to `metrics.jsonl` (its [`Serialize`] form, keys from
//! `telemetry::names`), and read field by field by `RunMetrics::observe_step`. A renamed
//! field fails to compile in both places instead of silently reading 0.

use std::collections::BTreeMap;

use oxrl_rewards::CombinedScores;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Map, Value};

use super::episodes::EpisodeOutcome;
use crate::learner::metrics as learner;
use crate::learner::{LogprobGap, Metrics};
use crate::sample::Sample;
use crate::telemetry::names as n;

/// One step's results.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    /// 0-based step.
    pub step: usize,
    /// Policy version after the step's update.
    pub policy_version: u64,
    /// The scores of the completions trained on.
    pub rewards: RewardStats,
    /// Their lengths.
    pub completions: CompletionStats,
    /// How the batch was generated.
    pub rollout: RolloutStats,
    /// Multi-turn tasks: what the episodes did (`None` for single-turn tasks).
    pub episodes: Option<EpisodeStats>,
    /// Seconds per phase.
    pub time: PhaseTimes,
    /// Data-parallel runs: each rank's seconds per phase, by rank (empty for one process).
    pub rank_times: Vec<PhaseTimes>,
    /// The learner's metrics (names and help in `learner::metrics`).
    pub learner: Metrics,
}

/// Reward statistics of a step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RewardStats {
    /// Mean total (weighted) reward.
    pub mean: f64,
    /// Standard deviation of the total reward.
    pub std: f64,
    /// Each reward function's mean and failures, in the config's order.
    pub by_name: Vec<NamedRewardStats>,
}

/// One reward function's share of a step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NamedRewardStats {
    /// The reward's name in the config.
    pub name: String,
    /// Its mean score.
    pub mean: f64,
    /// Failures by kind (timeout, crash, ...).
    pub failures: BTreeMap<String, usize>,
}

impl RewardStats {
    /// The statistics of `scores`.
    pub fn of(scores: &CombinedScores) -> Self {
        let (mean, std) = mean_std(&scores.total);
        let by_name = scores
            .rewards
            .iter()
            .map(|r| NamedRewardStats {
                name: r.name.clone(),
                mean: r.mean(),
                failures: r
                    .failures
                    .iter()
                    .map(|(kind, count)| (kind.as_str().to_owned(), *count))
                    .collect(),
            })
            .collect();
        Self { mean, std, by_name }
    }
}

impl RewardStats {
    /// The statistics of logged samples' rewards (`rollout.samples_path`).
    pub fn of_samples(samples: &[Sample]) -> Self {
        let totals: Vec<f64> = samples.iter().map(|s| s.reward).collect();
        let (mean, std) = mean_std(&totals);
        let mut by_name: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for s in samples {
            for (name, v) in &s.rewards {
                by_name.entry(name).or_default().push(*v);
            }
        }
        let by_name = by_name
            .into_iter()
            .map(|(name, values)| NamedRewardStats {
                name: name.to_owned(),
                mean: mean_std(&values).0,
                failures: BTreeMap::new(),
            })
            .collect();
        Self { mean, std, by_name }
    }
}

/// Completion lengths of a step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompletionStats {
    /// Every completion's length in tokens.
    pub lengths: Vec<usize>,
    /// Fraction cut at `max_tokens`.
    pub clipped_ratio: f64,
}

impl CompletionStats {
    /// The statistics of completions of `lengths` tokens, generated with `max_tokens`.
    pub fn of(lengths: Vec<usize>, max_tokens: usize) -> Self {
        let clipped = lengths.iter().filter(|&&l| l >= max_tokens).count();
        let clipped_ratio = clipped as f64 / lengths.len().max(1) as f64;
        Self {
            lengths,
            clipped_ratio,
        }
    }

    /// Mean length (0 when there are none).
    pub fn mean_length(&self) -> f64 {
        self.lengths.iter().sum::<usize>() as f64 / self.lengths.len().max(1) as f64
    }

    /// Longest completion.
    pub fn max_length(&self) -> usize {
        self.lengths.iter().copied().max().unwrap_or(0)
    }

    /// Tokens generated in all.
    pub fn tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// How a step's batch came to be.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RolloutStats {
    /// Generated tokens per second; `None` when dataset rows stood in for generations.
    pub tokens_per_second: Option<f64>,
    /// Policy versions the batch's generator was behind the learner.
    pub staleness: u64,
    /// Async runs: the run's running total of samples dropped as too stale.
    pub dropped_stale_samples: Option<u64>,
    /// Dynamic sampling: extra batches generated to refill the step (`None` when off).
    pub refill_batches: Option<usize>,
    /// How far the engine's behaviour logprobs are from the learner's for the same tokens
    /// and weights: vLLM's against the learner's recomputation over the whole batch, the
    /// native engine's against the learner's first optimizer step. `None` when the batch was
    /// stale (async) or not generated.
    pub mismatch: Option<LogprobGap>,
}

/// What a step's episodes did (multi-turn tasks).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpisodeStats {
    /// Mean model turns per episode.
    pub turns_mean: f64,
    /// Tool calls the environments answered.
    pub tool_calls: usize,
    /// Tool calls answered with an error.
    pub tool_failures: usize,
    /// Episodes whose environment failed (crashed, hung, refused a turn).
    pub env_failures: usize,
    /// Mean tokens per episode the model generated, and the environments added.
    pub model_tokens_mean: f64,
    /// See `model_tokens_mean`.
    pub env_tokens_mean: f64,
    /// Seconds spent in the environments (part of the generate phase).
    pub env_seconds: f64,
}

impl EpisodeStats {
    /// The statistics of `episodes`, which took `env_seconds` in their environments.
    pub fn of(episodes: &[EpisodeOutcome], env_seconds: f64) -> Self {
        let count = episodes.len().max(1) as f64;
        let mean =
            |f: fn(&EpisodeOutcome) -> usize| episodes.iter().map(f).sum::<usize>() as f64 / count;
        Self {
            turns_mean: mean(EpisodeOutcome::turns),
            tool_calls: episodes.iter().map(|e| e.tool_calls).sum(),
            tool_failures: episodes.iter().map(|e| e.tool_failures).sum(),
            env_failures: episodes.iter().filter(|e| e.failure.is_some()).count(),
            model_tokens_mean: mean(EpisodeOutcome::model_tokens),
            env_tokens_mean: mean(EpisodeOutcome::env_tokens),
            env_seconds,
        }
    }
}

/// Seconds per phase of a step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PhaseTimes {
    /// Generating (async: waiting for the prefetched batch).
    pub generate: f64,
    /// Scoring.
    pub reward: f64,
    /// The learner update.
    pub update: f64,
    /// The whole step.
    pub step: f64,
    /// Seconds syncing the new weights to the rollout engine's servers (vLLM).
    pub sync: Option<f64>,
}

impl PhaseTimes {
    /// The phases every step has, by name: generate, reward, update, step.
    pub fn phases(&self) -> [(&'static str, f64); 4] {
        [
            ("generate", self.generate),
            ("reward", self.reward),
            ("update", self.update),
            ("step", self.step),
        ]
    }
}

impl StepRecord {
    /// Optimizer steps of this update skipped for a NaN/inf loss or gradient.
    pub fn skipped_steps(&self) -> f64 {
        self.learner_metric(learner::SKIPPED_STEPS)
    }

    /// Samples the algorithm dropped in this update.
    pub fn dropped_samples(&self) -> f64 {
        self.learner_metric(learner::DROPPED_SAMPLES)
    }

    /// Trained tokens per second of the update (0 when nothing was trained).
    pub fn learner_tokens_per_second(&self) -> f64 {
        let trained = self.learner_metric(learner::TRAINED_TOKENS);
        match self.time.update > 0.0 {
            true => trained / self.time.update,
            false => 0.0,
        }
    }

    fn learner_metric(&self, name: &str) -> f64 {
        self.learner.get(name).copied().unwrap_or(0.0)
    }

    /// The `metrics.jsonl` line.
    pub fn to_json(&self) -> Value {
        Value::Object(self.line())
    }

    fn line(&self) -> Map<String, Value> {
        let mut line = Map::new();
        let mut put = |k: &str, v: Value| line.insert(k.to_owned(), v);
        put(n::STEP_KEY, json!(self.step));
        put(n::REWARD_KEY, json!(self.rewards.mean));
        put(n::REWARD_STD_KEY, json!(self.rewards.std));
        for r in &self.rewards.by_name {
            put(&n::reward_mean_key(&r.name), json!(r.mean));
            let failures: usize = r.failures.values().sum();
            put(&n::reward_failures_key(&r.name), json!(failures));
        }
        let c = &self.completions;
        put(n::MEAN_LENGTH_KEY, json!(c.mean_length()));
        put(n::MAX_LENGTH_KEY, json!(c.max_length() as f64));
        put(n::CLIPPED_RATIO_KEY, json!(c.clipped_ratio));
        let r = &self.rollout;
        if let Some(tps) = r.tokens_per_second {
            put(n::ROLLOUT_TOKENS_PER_SECOND_KEY, json!(tps));
        }
        put(n::STALENESS_KEY, json!(r.staleness));
        if let Some(dropped) = r.dropped_stale_samples {
            put(n::DROPPED_STALE_SAMPLES_KEY, json!(dropped));
        }
        if let Some(refills) = r.refill_batches {
            put(n::REFILL_BATCHES_KEY, json!(refills));
        }
        if let Some(m) = &r.mismatch {
            put(n::LOGPROB_ABS_DIFF_MEAN_KEY, json!(m.mean_abs));
            put(n::LOGPROB_ABS_DIFF_MAX_KEY, json!(m.max_abs));
            put(n::LOGPROB_KL_KEY, json!(m.kl));
        }
        if let Some(e) = &self.episodes {
            put(n::EPISODE_TURNS_MEAN_KEY, json!(e.turns_mean));
            put(n::EPISODE_TOOL_CALLS_KEY, json!(e.tool_calls));
            put(n::EPISODE_TOOL_FAILURES_KEY, json!(e.tool_failures));
            put(n::EPISODE_ENV_FAILURES_KEY, json!(e.env_failures));
            put(n::EPISODE_MODEL_TOKENS_MEAN_KEY, json!(e.model_tokens_mean));
            put(n::EPISODE_ENV_TOKENS_MEAN_KEY, json!(e.env_tokens_mean));
            put(n::ENV_SECONDS_KEY, json!(e.env_seconds));
        }
        if let Some(sync) = self.time.sync {
            put(n::SYNC_SECONDS_KEY, json!(sync));
        }
        put(n::GENERATE_SECONDS_KEY, json!(self.time.generate));
        put(n::REWARD_SECONDS_KEY, json!(self.time.reward));
        put(n::UPDATE_SECONDS_KEY, json!(self.time.update));
        put(n::STEP_SECONDS_KEY, json!(self.time.step));
        for (rank, t) in self.rank_times.iter().enumerate() {
            for (phase, seconds) in t.phases() {
                put(&format!("time/rank{rank}/{phase}_seconds"), json!(seconds));
            }
        }
        for (k, v) in &self.learner {
            put(k, json!(v));
        }
        line
    }
}

impl Serialize for StepRecord {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let line = self.line();
        let mut map = serializer.serialize_map(Some(line.len()))?;
        for (k, v) in &line {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Mean and (population) standard deviation; zeros for no values.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}
