//! `oxrl eval`: the policy on the held-out split — pass@1, unbiased pass@k (Chen et al. 2021,
//! "Evaluating Large Language Models Trained on Code"), and majority-vote accuracy (the most
//! common extracted answer among the samples, as in self-consistency).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use oxrl_envs::LoadedEnv;
use oxrl_rewards::{Registry, WeightedRewards};
use serde::Serialize;

use super::config::RunConfig;
use crate::device::{parse_device, parse_kind};
use crate::pretrained::{LoadOptions, Pretrained};
use crate::rollout::{generate_batch, GenerationRequest, StopConditions};

/// Prompts generated for at once.
const PROMPTS_PER_BATCH: usize = 8;

/// What `oxrl eval` reports.
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

/// Evaluates the model of `cfg` (or `model_dir`, e.g. an exported checkpoint) on the eval
/// split. A completion is correct when its total reward is at least `threshold`.
pub fn evaluate(
    cfg: &RunConfig,
    model_dir: Option<&Path>,
    samples: usize,
    k: usize,
    threshold: f64,
) -> anyhow::Result<EvalReport> {
    if samples == 0 || k == 0 || k > samples {
        bail!("need 1 <= k <= samples (got k = {k}, samples = {samples})");
    }
    if cfg.model.random.is_some() && model_dir.is_none() {
        bail!("model.random: a random model has nothing to evaluate; pass --checkpoint");
    }
    let opts = LoadOptions {
        device: parse_device(&cfg.model.device)?,
        kind: parse_kind(&cfg.model.dtype)?,
    };
    let path = model_dir.unwrap_or(&cfg.model.path);
    let model =
        Pretrained::load(path, opts).with_context(|| format!("loading {}", path.display()))?;
    let template = model.tokenizer.chat_template().cloned();
    let env =
        LoadedEnv::from_config(&cfg.env, &cfg.base_dir, template).context("building [env]")?;
    let rewards = WeightedRewards::from_specs(&Registry::default(), &cfg.rewards)?;
    let rows = env.eval().rows();
    if rows.is_empty() {
        bail!("the eval split is empty: set env.data.eval_size (or eval_fraction, or eval_path)");
    }
    let (mut pass1, mut passk, mut majority, mut reward_sum) = (0.0, 0.0, 0.0, 0.0);
    for (chunk_index, chunk) in rows.chunks(PROMPTS_PER_BATCH).enumerate() {
        let prompts = chunk
            .iter()
            .map(|r| Ok(model.tokenizer.encode(&env.prompt(r)?, false)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let request = GenerationRequest {
            prompts,
            n: samples,
            sampling: cfg.rollout.sampling.clone(),
            max_tokens: cfg.rollout.max_tokens,
            stop: StopConditions {
                token_ids: model.tokenizer.eos_token_ids().to_vec(),
                strings: cfg.rollout.stop_strings.clone(),
            },
            seed: cfg.seed.wrapping_add(chunk_index as u64),
        };
        let generated = generate_batch(&model.model, &request, Some(&model.tokenizer))?;
        let texts = generated
            .iter()
            .map(|g| Ok(model.tokenizer.decode(&g.tokens, true)?))
            .collect::<anyhow::Result<Vec<String>>>()?;
        let scored = generated
            .iter()
            .zip(&texts)
            .map(|(g, t)| serde_json::from_value(chunk[g.prompt_index].with_completion(t)))
            .collect::<Result<Vec<oxrl_rewards::Sample>, _>>()?;
        let totals = rewards.score(&scored).total;
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
