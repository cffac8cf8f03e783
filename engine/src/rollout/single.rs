//! The one-prompt reference path behind `oxrl generate`: generation with a KV cache, greedy at
//! temperature 0, otherwise sampling from `softmax(logits / temperature)`. The batched engine
//! is [`crate::rollout::generate`], built on the same model calls.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::Llama;

/// How to pick tokens.
#[derive(Debug, Clone, Copy)]
pub struct SamplingConfig {
    /// 0 = greedy.
    pub temperature: f64,
    /// Upper bound on new tokens.
    pub max_tokens: usize,
    /// Seed of the sampling RNG.
    pub seed: u64,
}

/// The prompt's continuation (without the stop token, if one ended it).
pub fn generate(
    model: &Llama,
    prompt: &[u32],
    cfg: &SamplingConfig,
    stop_ids: &[u32],
) -> Result<Vec<u32>> {
    let context = model.config().max_position_embeddings;
    if prompt.is_empty() || prompt.len() >= context {
        return Err(Error::Invalid(format!(
            "prompt has {} tokens; it must have between 1 and {} (the model's context)",
            prompt.len(),
            context - 1
        )));
    }
    let max_new = cfg.max_tokens.min(context - prompt.len());
    let device = model.device();
    tch::manual_seed(cfg.seed as i64);
    tch::no_grad(|| {
        let mut cache = model.new_cache();
        let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
        let tokens = Tensor::from_slice(&ids).to_device(device).unsqueeze(0);
        let positions = Tensor::arange(ids.len() as i64, (Kind::Int64, device)).unsqueeze(0);
        let mut logits = model
            .forward(&tokens, &positions, None, Some(&mut cache))
            .select(1, -1);
        let mut out = Vec::with_capacity(max_new);
        for step in 0..max_new {
            let next = pick(&logits, cfg.temperature);
            if stop_ids.contains(&next) {
                break;
            }
            out.push(next);
            let pos = (prompt.len() + step) as i64;
            let tokens = Tensor::from_slice(&[next as i64])
                .to_device(device)
                .view([1, 1]);
            let positions = Tensor::from_slice(&[pos]).to_device(device).view([1, 1]);
            logits = model
                .forward(&tokens, &positions, None, Some(&mut cache))
                .select(1, -1);
        }
        Ok(out)
    })
}

/// The token chosen from `logits` (`[1, vocab]`).
fn pick(logits: &Tensor, temperature: f64) -> u32 {
    let choice = if temperature <= 0.0 {
        logits.argmax(-1, false)
    } else {
        let probs = (logits.to_kind(Kind::Float) / temperature).softmax(-1, Kind::Float);
        probs.multinomial(1, false)
    };
    choice.int64_value(&[0]) as u32
}
