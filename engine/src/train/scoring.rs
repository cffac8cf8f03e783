//! Decoding a batch of completions and scoring them with the run's rewards: the one path that
//! training steps and evaluations share.

use oxrl_envs::Row;
use oxrl_rewards::{CombinedScores, WeightedRewards};

use super::batch::RolloutBatch;
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
    let texts = generated
        .iter()
        .map(|g| Ok(tokenizer.decode(&g.tokens, true)?))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let inputs = generated
        .iter()
        .zip(&texts)
        .map(|(g, text)| serde_json::from_value(rows[g.prompt_index].with_completion(text)))
        .collect::<Result<Vec<oxrl_rewards::Completion>, _>>()?;
    let scores = rewards.score(&inputs);
    Ok(ScoredBatch { texts, scores })
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
