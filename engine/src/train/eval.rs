//! Evaluation on the held-out split — pass@1, unbiased pass@k (Chen et al. 2021, "Evaluating
//! Large Language Models Trained on Code"), and majority-vote accuracy (the most common
//! extracted answer among the samples, as in self-consistency). [`Evaluator`] runs on a model
//! already in memory: the trainer's current policy (`[eval]`) and `oxrl eval`'s loaded
//! checkpoint ([`evaluate`]) both go through it.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use oxrl_envs::{LoadedEnv, Row};
use oxrl_rewards::{CombinedScores, WeightedRewards};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::config::{EvalSection, RolloutSection, RunConfig};
use super::episodes::EpisodeRunner;
use super::scoring::{score_batch, score_episodes};
use crate::device::{parse_device, parse_kind};
use crate::dist::{ProcessGroup, ReduceOp};
use crate::model::Llama;
use crate::pretrained::{LoadOptions, Pretrained};
use crate::rollout::{generate_batch, generate_continuing, Generated, GenerationRequest};
use crate::telemetry::names as n;
use crate::tokenizer::Tokenizer;

/// Prompts generated for at once.
const PROMPTS_PER_BATCH: usize = 8;

/// What an evaluation reports (`oxrl eval` prints it as JSON).
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Held-out prompts evaluated.
    pub prompts: usize,
    /// Completions sampled per prompt.
    pub samples_per_prompt: usize,
    /// The k of pass@k.
    pub k: usize,
    /// Mean fraction of correct completions.
    pub pass_at_1: f64,
    /// Unbiased pass@k.
    pub pass_at_k: f64,
    /// Fraction of prompts whose most common answer is correct.
    pub majority_vote: f64,
    /// Mean total reward.
    pub reward_mean: f64,
}

impl EvalReport {
    /// The `metrics.jsonl` line of an evaluation of the policy after `step` updates.
    pub fn line(&self, step: usize, seconds: f64) -> Map<String, Value> {
        let mut line = Map::new();
        let mut put = |k: &str, v: Value| line.insert(k.to_owned(), v);
        put(n::STEP_KEY, json!(step));
        put(n::EVAL_PASS_AT_1_KEY, json!(self.pass_at_1));
        put(n::EVAL_PASS_AT_K_KEY, json!(self.pass_at_k));
        put(n::EVAL_MAJORITY_VOTE_KEY, json!(self.majority_vote));
        put(n::EVAL_REWARD_MEAN_KEY, json!(self.reward_mean));
        put(n::EVAL_PROMPTS_KEY, json!(self.prompts));
        put(n::EVAL_SAMPLES_KEY, json!(self.samples_per_prompt));
        put(n::EVAL_K_KEY, json!(self.k));
        put(n::EVAL_SECONDS_KEY, json!(seconds));
        line
    }
}

/// Unbiased pass@k from `n` samples of which `c` are correct: `1 - C(n-c, k) / C(n, k)`.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// The answer a completion commits to, for majority voting: the math reward's extraction
/// when it finds one, else the trimmed text.
fn answer_key(completion: &str) -> String {
    oxrl_rewards::math::extract::candidates(completion)
        .into_iter()
        .next()
        .unwrap_or_else(|| completion.trim().to_owned())
}

/// A model in memory and what scoring it on the eval split needs.
pub struct Evaluator<'a> {
    /// The policy (generation runs under `no_grad` and leaves it unchanged).
    pub model: &'a Llama,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The environment whose eval split is used.
    pub env: &'a LoadedEnv,
    /// The run's rewards.
    pub rewards: &'a WeightedRewards,
    /// Sampling options (besides the temperature), `max_tokens`, stop strings.
    pub rollout: &'a RolloutSection,
    /// Plays a multi-turn task's episodes (`None` for single-turn tasks).
    pub episodes: Option<&'a EpisodeRunner>,
    /// A data-parallel run's group: this rank evaluates every `world_size`-th batch of
    /// prompts and the ranks' sums are added, so every rank gets the one-process report.
    pub group: Option<&'a ProcessGroup>,
}

impl Evaluator<'_> {
    /// Samples `opts.samples` completions for each of the first `opts.max_prompts` eval
    /// prompts (all when 0) at `opts.temperature` and scores them; a completion is correct
    /// when its total reward is at least `opts.threshold`. Batch i of prompts samples with
    /// seed `seed + i`; no other random state is read or advanced. With a `group`, every rank
    /// must call it.
    pub fn run(&self, opts: &EvalSection, seed: u64) -> anyhow::Result<EvalReport> {
        opts.validate()?;
        let all = self.env.eval().rows();
        if all.is_empty() {
            bail!(
                "the eval split is empty: set env.data.eval_size (or eval_fraction, or eval_path)"
            );
        }
        let rows = match opts.max_prompts {
            0 => all,
            m => &all[..m.min(all.len())],
        };
        let (samples, k, threshold) = (opts.samples, opts.k, opts.threshold);
        let (mut pass1, mut passk, mut majority, mut reward_sum) = (0.0, 0.0, 0.0, 0.0);
        let mine = |i: &usize| self.group.is_none_or(|g| i % g.world_size() == g.rank());
        for (chunk_index, chunk) in rows.chunks(PROMPTS_PER_BATCH).enumerate() {
            if !mine(&chunk_index) {
                continue;
            }
            let mut request = self.rollout.request(
                self.env,
                chunk,
                samples,
                self.tokenizer,
                seed.wrapping_add(chunk_index as u64),
            )?;
            request.sampling.temperature = opts.temperature;
            let (generated, texts, scores) = self.sample(chunk, request)?;
            let totals = scores.total;
            reward_sum += totals.iter().sum::<f64>();
            for p in 0..chunk.len() {
                let idx: Vec<usize> = (0..generated.len())
                    .filter(|&i| generated[i].prompt_index == p)
                    .collect();
                let correct = idx.iter().filter(|&&i| totals[i] >= threshold).count();
                pass1 += correct as f64 / samples as f64;
                passk += pass_at_k(samples, correct, k);
                majority += f64::from(u8::from(majority_is_correct(
                    &idx, &texts, &totals, threshold,
                )));
            }
        }
        if let Some(group) = self.group {
            let sums = [pass1, passk, majority, reward_sum];
            let sums = group.all_reduce_values(&sums, ReduceOp::Sum)?;
            [pass1, passk, majority, reward_sum] = [sums[0], sums[1], sums[2], sums[3]];
        }
        let n = rows.len() as f64;
        Ok(EvalReport {
            prompts: rows.len(),
            samples_per_prompt: samples,
            k,
            pass_at_1: pass1 / n,
            pass_at_k: passk / n,
            majority_vote: majority / n,
            reward_mean: reward_sum / (n * samples as f64),
        })
    }
}

impl Evaluator<'_> {
    /// The completions of `request` (episodes, for a multi-turn task), the texts majority
    /// voting reads (an episode's last model message) and their scores.
    fn sample(
        &self,
        rows: &[Row],
        request: GenerationRequest,
    ) -> anyhow::Result<(Vec<Generated>, Vec<String>, CombinedScores)> {
        let Some(runner) = self.episodes else {
            let generated = generate_batch(self.model, &request, Some(self.tokenizer))?;
            let scored = score_batch(self.rewards, self.tokenizer, rows, &generated)?;
            return Ok((generated, scored.texts, scored.scores));
        };
        let turn = |r: &GenerationRequest, prefixes| {
            Ok(generate_continuing(
                self.model,
                r,
                Some(self.tokenizer),
                prefixes,
            )?)
        };
        let played = runner.run(self.env, self.tokenizer, rows, request, turn)?;
        let scored = score_episodes(
            self.rewards,
            self.tokenizer,
            rows,
            &played.generated,
            &played.episodes,
        )?;
        let answers = played
            .episodes
            .into_iter()
            .map(|e| e.final_message)
            .collect();
        Ok((played.generated, answers, scored.scores))
    }
}

/// `oxrl eval`: loads the model of `cfg` (or `model_dir`, e.g. an exported checkpoint), its
/// environment and rewards, and evaluates it with `opts`, seeded by the run's seed.
pub fn evaluate(
    cfg: &RunConfig,
    model_dir: Option<&Path>,
    opts: &EvalSection,
) -> anyhow::Result<EvalReport> {
    opts.validate()?;
    cfg.runtime.apply_threads();
    if cfg.model.random.is_some() && model_dir.is_none() {
        bail!("model.random: a random model has nothing to evaluate; pass --checkpoint");
    }
    let load = LoadOptions {
        device: parse_device(&cfg.model.device)?,
        kind: parse_kind(&cfg.model.dtype)?,
    };
    let path = model_dir.unwrap_or(&cfg.model.path);
    let model =
        Pretrained::load(path, load).with_context(|| format!("loading {}", path.display()))?;
    let template = model.tokenizer.chat_template().cloned();
    let env =
        LoadedEnv::from_config(&cfg.env, &cfg.base_dir, template).context("building [env]")?;
    let rewards = cfg.build_rewards()?;
    let runner = EpisodeRunner::new(cfg.env.episode.max_tokens);
    Evaluator {
        episodes: env.is_multi_turn().then_some(&runner),
        group: None,
        model: &model.model,
        tokenizer: &model.tokenizer,
        env: &env,
        rewards: &rewards,
        rollout: &cfg.rollout,
    }
    .run(opts, cfg.seed)
}

/// Whether the most common answer among a prompt's samples (ties: the first seen) is correct.
fn majority_is_correct(idx: &[usize], texts: &[String], totals: &[f64], threshold: f64) -> bool {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new(); // key -> (count, first index)
    for &i in idx {
        let entry = counts.entry(answer_key(&texts[i])).or_insert((0, i));
        entry.0 += 1;
    }
    let best = counts
        .values()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    best.is_some_and(|&(_, i)| totals[i] >= threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_at_k_matches_the_combinatorial_formula() {
        assert!((pass_at_k(5, 2, 1) - 0.4).abs() < 1e-12);
        assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12); // 1 - C(3,2)/C(5,2)
        assert_eq!(pass_at_k(5, 0, 3), 0.0);
        assert_eq!(pass_at_k(5, 3, 3), 1.0); // fewer than k wrong ones
    }

    #[test]
    fn majority_vote_picks_the_most_common_answer() {
        let texts: Vec<String> = ["#### 7", "the answer is 7", "#### 8"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(majority_is_correct(
            &[0, 1, 2],
            &texts,
            &[1.0, 1.0, 0.0],
            1.0
        ));
        assert!(!majority_is_correct(
            &[0, 1, 2],
            &texts,
            &[0.0, 0.0, 1.0],
            1.0
        ));
    }
}
