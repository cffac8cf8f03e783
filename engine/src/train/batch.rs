//! A step's prompts and what generating them produced, as one typed value: the rows drawn
//! from the training split, the request made of them, the completions and the policy
//! version that generated them.

use oxrl_envs::{LoadedEnv, Row, Sampler};

use super::config::RunConfig;
use super::episodes::EpisodeOutcome;
use crate::learner::{GapMeter, LogprobGap};
use crate::rollout::{Generated, GenerationRequest};
use crate::tokenizer::Tokenizer;

/// The prompts of a step and their completions.
#[derive(Debug, Clone)]
pub struct RolloutBatch {
    /// The training rows (task data for the rewards), one per prompt.
    pub rows: Vec<Row>,
    /// Their prompts as token ids, with the sampling options.
    pub request: GenerationRequest,
    /// The completions, `request.n` per prompt.
    pub generated: Vec<Generated>,
    /// Version of the policy that generated them.
    pub policy_version: u64,
    /// Multi-turn tasks: each completion's episode (its loss mask, turns, tools), aligned
    /// with `generated`; empty for single-turn tasks.
    pub episodes: Vec<EpisodeOutcome>,
    /// Seconds the environments took (multi-turn tasks).
    pub env_seconds: f64,
}

impl RolloutBatch {
    /// The gap between the engine's logprobs and the learner's recomputed ones, over every
    /// completion that carries both (those another engine generated).
    pub fn recomputed_gap(&self) -> Option<LogprobGap> {
        let mut meter = GapMeter::default();
        for (i, g) in self.generated.iter().enumerate() {
            // An episode's environment tokens were not sampled.
            let mask = self.episodes.get(i).map(|e| e.loss_mask.as_slice());
            let learner = g.learner_logprobs.iter().flatten();
            for (t, (&engine, &learner)) in g.logprobs.iter().zip(learner).enumerate() {
                if mask.is_none_or(|m| m[t]) {
                    meter.add(learner, engine);
                }
            }
        }
        meter.finish()
    }

    /// Appends `other`'s prompts and completions after this batch's (dynamic sampling's
    /// refill), renumbering its prompts so every group stays distinct.
    pub fn append(&mut self, other: RolloutBatch) {
        let offset = self.rows.len();
        self.rows.extend(other.rows);
        self.request.prompts.extend(other.request.prompts);
        self.generated
            .extend(other.generated.into_iter().map(|mut g| {
                g.prompt_index += offset;
                g
            }));
        self.episodes.extend(other.episodes);
        self.env_seconds += other.env_seconds;
    }

    /// Keeps the completions of the prompts `keep` says yes to (and those prompts' rows),
    /// renumbering the prompts in order.
    pub fn retain_prompts(&mut self, keep: impl Fn(usize) -> bool) {
        let kept: Vec<usize> = (0..self.rows.len()).filter(|&p| keep(p)).collect();
        let mut new_index = vec![usize::MAX; self.rows.len()];
        for (new, &old) in kept.iter().enumerate() {
            new_index[old] = new;
        }
        fn take<T>(v: &mut Vec<T>, new_index: &[usize]) {
            let old = std::mem::take(v);
            *v = old
                .into_iter()
                .enumerate()
                .filter(|(i, _)| new_index[*i] != usize::MAX)
                .map(|(_, x)| x)
                .collect();
        }
        take(&mut self.rows, &new_index);
        take(&mut self.request.prompts, &new_index);
        if !self.episodes.is_empty() {
            let mut kept = self
                .generated
                .iter()
                .map(|g| new_index[g.prompt_index] != usize::MAX);
            self.episodes.retain(|_| kept.next().unwrap_or(false));
        }
        self.generated
            .retain(|g| new_index[g.prompt_index] != usize::MAX);
        for g in &mut self.generated {
            g.prompt_index = new_index[g.prompt_index];
        }
    }
}

/// What drawing a step's prompts reads: the run's options, its environment and tokenizer.
pub struct PromptSource<'a> {
    /// The run's config (`[rollout]`).
    pub cfg: &'a RunConfig,
    /// The environment whose training split is drawn from.
    pub env: &'a LoadedEnv,
    /// Encodes the prompts.
    pub tokenizer: &'a Tokenizer,
}

impl PromptSource<'_> {
    /// The next `rollout.prompts_per_step` rows of `sampler` and the request for them,
    /// sampled with `seed`.
    pub fn draw(
        &self,
        sampler: &mut Sampler,
        seed: u64,
    ) -> anyhow::Result<(Vec<Row>, GenerationRequest)> {
        let rollout = &self.cfg.rollout;
        let rows: Vec<Row> = sampler
            .next_indices(rollout.prompts_per_step)
            .into_iter()
            .map(|i| self.env.train().rows()[i].clone())
            .collect();
        let request = rollout.request(self.env, &rows, rollout.group_size, self.tokenizer, seed)?;
        Ok((rows, request))
    }
}
