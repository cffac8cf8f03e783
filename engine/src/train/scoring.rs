//! Decoding a batch of completions and scoring them with the run's rewards: the one path that
//! training steps and evaluations share.

use oxrl_envs::Row;
use oxrl_rewards::{CombinedScores, FailureKind, RewardFailure, RewardReport, WeightedRewards};

use super::batch::RolloutBatch;
use super::episodes::EpisodeOutcome;
use crate::rollout::Generated;
use crate::tokenizer::Tokenizer;

/// A batch's completions as text, with their scores (both in the order of `generated`).
#[derive(Debug)]
pub struct ScoredBatch {
    /// Each completion decoded (special tokens skipped).
    pub texts: Vec<String>,
    /// Each reward's scores and the weighted totals.
    pub scores: CombinedScores,
}

/// Decodes `generated` (completions of `rows`' prompts) and scores every completion with its
/// row's task data.
pub fn score_batch(
    rewards: &WeightedRewards,
    tokenizer: &Tokenizer,
    rows: &[Row],
    generated: &[Generated],
) -> anyhow::Result<ScoredBatch> {
    let texts = decoded(tokenizer, generated)?;
    let scores = rewards.score(&completions(rows, generated, &texts)?);
    Ok(ScoredBatch { texts, scores })
}

/// Each completion's text, special tokens skipped.
fn decoded(tokenizer: &Tokenizer, generated: &[Generated]) -> anyhow::Result<Vec<String>> {
    generated
        .iter()
        .map(|g| Ok(tokenizer.decode(&g.tokens, true)?))
        .collect()
}

/// The rewards' inputs: each text with its completion's row (the task data).
fn completions(
    rows: &[Row],
    generated: &[Generated],
    texts: &[impl AsRef<str>],
) -> anyhow::Result<Vec<oxrl_rewards::Completion>> {
    generated
        .iter()
        .zip(texts)
        .map(|(g, text)| {
            let row = rows[g.prompt_index].with_completion(text.as_ref());
            Ok(serde_json::from_value(row)?)
        })
        .collect()
}

/// The name the environment's rewards report under in a multi-turn run.
pub const ENVIRONMENT: &str = "environment";

/// Scores a multi-turn batch: each episode's return from its environment (reported as the
/// reward `environment`, an episode whose environment failed as a crash), plus `[[rewards]]`
/// on the episode's last model message with its row's task data, which the total adds to the
/// last turn. `texts` are the whole transcripts after the prompt.
pub fn score_episodes(
    rewards: &WeightedRewards,
    tokenizer: &Tokenizer,
    rows: &[Row],
    generated: &[Generated],
    episodes: &[EpisodeOutcome],
) -> anyhow::Result<ScoredBatch> {
    let texts = decoded(tokenizer, generated)?;
    let finals: Vec<&str> = episodes.iter().map(|e| e.final_message.as_str()).collect();
    let mut scores = rewards.score(&completions(rows, generated, &finals)?);
    let environment = environment_report(episodes);
    for (total, value) in scores.total.iter_mut().zip(&environment.values) {
        *total += value;
    }
    scores.rewards.insert(0, environment);
    Ok(ScoredBatch { texts, scores })
}

/// The environments' returns as one reward's report.
fn environment_report(episodes: &[EpisodeOutcome]) -> RewardReport {
    let scores: Vec<_> = episodes
        .iter()
        .map(|e| match &e.failure {
            Some(why) => Err(RewardFailure::Crash(why.clone())),
            None => Ok(e.env_return()),
        })
        .collect();
    let failures = scores.iter().filter(|s| s.is_err()).count();
    RewardReport {
        name: ENVIRONMENT.into(),
        weight: 1.0,
        values: episodes.iter().map(EpisodeOutcome::env_return).collect(),
        failures: match failures {
            0 => Default::default(),
            n => [(FailureKind::Crash, n)].into(),
        },
        scores,
        seconds: 0.0,
    }
}

impl ScoredBatch {
    /// Appends the scores of a batch generated after this one (dynamic sampling's refill).
    pub fn append(&mut self, other: ScoredBatch) {
        self.texts.extend(other.texts);
        self.scores.total.extend(other.scores.total);
        for (mine, theirs) in self.scores.rewards.iter_mut().zip(other.scores.rewards) {
            mine.scores.extend(theirs.scores);
            mine.values.extend(theirs.values);
            for (kind, count) in theirs.failures {
                *mine.failures.entry(kind).or_default() += count;
            }
            mine.seconds += theirs.seconds;
        }
    }

    /// Keeps the scores of the completions of `batch`'s prompts that `keep` says yes to
    /// (call before [`RolloutBatch::retain_prompts`] with the same `keep`).
    ///
    /// [`RolloutBatch::retain_prompts`]: super::batch::RolloutBatch::retain_prompts
    pub fn retain(&mut self, batch: &RolloutBatch, keep: impl Fn(usize) -> bool) {
        let kept: Vec<bool> = batch
            .generated
            .iter()
            .map(|g| keep(g.prompt_index))
            .collect();
        fn filter<T>(v: &mut Vec<T>, kept: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                kept[i - 1]
            });
        }
        filter(&mut self.texts, &kept);
        filter(&mut self.scores.total, &kept);
        for r in &mut self.scores.rewards {
            filter(&mut r.scores, &kept);
            filter(&mut r.values, &kept);
        }
    }
}
