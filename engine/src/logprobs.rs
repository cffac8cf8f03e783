//! Per-token log-probabilities of a completion given a prompt, from one full forward pass —
//! the learner's view of a sample, which the sampler's recorded logprobs must equal.

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
