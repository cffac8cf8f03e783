//! Full-forward logprobs: per-token log-probabilities of a completion given a prompt, from one
//! full forward pass — the learner's view of a completion and the reference the recorded
//! behaviour logprobs of [`crate::rollout::generate`] must equal.

use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::Llama;

/// `log p(completion[i] | prompt, completion[..i])` for each completion token.
///
/// The prompt must hold at least one token (the first completion token needs a context).
pub fn completion_logprobs(model: &Llama, prompt: &[u32], completion: &[u32]) -> Result<Vec<f32>> {
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "the prompt must have at least one token".into(),
        ));
    }
    let total = prompt.len() + completion.len();
    let context = model.config().max_position_embeddings;
    if total > context {
        return Err(Error::Invalid(format!(
            "prompt + completion is {total} tokens, longer than the model's context ({context})"
        )));
    }
    if completion.is_empty() {
        return Ok(Vec::new());
    }
    let device = model.device();
    let ids: Vec<i64> = prompt.iter().chain(completion).map(|&t| t as i64).collect();
    tch::no_grad(|| {
        let tokens = Tensor::from_slice(&ids).to_device(device).unsqueeze(0);
        let positions = Tensor::arange(total as i64, (Kind::Int64, device)).unsqueeze(0);
        let hidden = model.forward_hidden(&tokens, &positions, None, None);
        // Only the positions that predict completion tokens need logits.
        let hidden = hidden.narrow(1, prompt.len() as i64 - 1, completion.len() as i64);
        let logp = model
            .logits(&hidden)
            .to_kind(Kind::Float)
            .log_softmax(-1, Kind::Float);
        let targets = tokens.narrow(1, prompt.len() as i64, completion.len() as i64);
        let picked = logp.gather(2, &targets.unsqueeze(-1), false).view([-1]);
        Ok(Vec::<f32>::try_from(picked.to_device(tch::Device::Cpu))?)
    })
}

/// `completion_logprobs` for a batch, at a sampling temperature: each row's completion tokens
/// scored under `log_softmax(logits / temperature)` (the distribution the rollout sampler
/// records). Rows are right-padded, so padding never precedes a real token and plain causal
/// attention suffices.
pub fn batch_completion_logprobs(
    model: &Llama,
    pairs: &[(&[u32], &[u32])],
    temperature: f64,
) -> Result<Vec<Vec<f32>>> {
    if pairs.iter().any(|(p, _)| p.is_empty()) {
        return Err(Error::Invalid(
            "every prompt must have at least one token".into(),
        ));
    }
    let longest = pairs
        .iter()
        .map(|(p, c)| p.len() + c.len())
        .max()
        .unwrap_or(0);
    if longest > model.config().max_position_embeddings {
        return Err(Error::Invalid(format!(
            "a prompt + completion of {longest} tokens is longer than the model's context"
        )));
    }
    let device = model.device();
    let mut ids = Vec::with_capacity(pairs.len() * longest);
    for (p, c) in pairs {
        let row = p.iter().chain(c.iter()).map(|&t| t as i64);
        ids.extend(row.chain(std::iter::repeat_n(0, longest - p.len() - c.len())));
    }
    let (b, l) = (pairs.len() as i64, longest as i64);
    tch::no_grad(|| {
        let tokens = Tensor::from_slice(&ids).view([b, l]).to_device(device);
        let positions = Tensor::arange(l, (Kind::Int64, device))
            .unsqueeze(0)
            .expand([b, l], false);
        let logits = model
            .forward(&tokens, &positions, None, None)
            .narrow(1, 0, l - 1);
        let logp = (logits.to_kind(Kind::Float) / temperature).log_softmax(-1, Kind::Float);
        let next = tokens.narrow(1, 1, l - 1).unsqueeze(-1);
        let picked = logp
            .gather(2, &next, false)
            .squeeze_dim(-1)
            .to_device(tch::Device::Cpu);
        pairs
            .iter()
            .enumerate()
            .map(|(i, (p, c))| {
                let row = picked
                    .get(i as i64)
                    .narrow(0, p.len() as i64 - 1, c.len() as i64);
                Ok(Vec::<f32>::try_from(row)?)
            })
            .collect()
    })
}
