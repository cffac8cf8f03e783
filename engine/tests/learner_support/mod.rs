//! Shared by the learner tests: a tiny random policy, a toy verifiable task and a batched
//! sampler that records exact behaviour logprobs (the rollout engine's contract).
//!
//! Task: the prompt is `[1, d]` with `d` in `2..2 + DIGITS`; the answer token is
//! `target(d) = d + 5`. A completion is `COMPLETION` tokens; its reward is the fraction of
//! them equal to the answer token. A random policy over `VOCAB` tokens scores about 1/VOCAB.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use oxrl::device::test_device;
use oxrl::model::random::randomize;
use oxrl::{FinishReason, Llama, ModelConfig, Sample};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

pub const VOCAB: usize = 24;
pub const DIGITS: u32 = 6;
pub const COMPLETION: usize = 3;

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests in one binary run on parallel threads but share libtorch's global RNG; each test
/// holds this guard so seeded sampling stays deterministic.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn config() -> ModelConfig {
    serde_json::from_str(&format!(
        r#"{{"architectures":["LlamaForCausalLM"],"vocab_size":{VOCAB},"hidden_size":32,
            "intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"rope_theta":10000.0,"tie_word_embeddings":true,
            "max_position_embeddings":64}}"#
    ))
    .unwrap()
}

pub fn tiny(seed: i64) -> (VarStore, Llama) {
    let vs = VarStore::new(test_device());
    let model = Llama::new(&vs.root(), &config());
    randomize(&vs, seed, 0.1);
    (vs, model)
}

pub fn target(d: u32) -> u32 {
    d + 5
}

pub fn prompt(d: u32) -> Vec<u32> {
    vec![1, d]
}

pub fn reward(prompt: &[u32], completion: &[u32]) -> f64 {
    let t = target(prompt[1]);
    completion.iter().filter(|&&c| c == t).count() as f64 / completion.len().max(1) as f64
}

/// Samples `group` completions for each digit in `digits` (temperature 1), scored.
pub fn rollout(model: &Llama, digits: &[u32], group: usize, seed: i64) -> Vec<Sample> {
    tch::manual_seed(seed);
    let prompts: Vec<Vec<u32>> = digits
        .iter()
        .flat_map(|&d| std::iter::repeat_n(prompt(d), group))
        .collect();
    let b = prompts.len() as i64;
    let flat: Vec<i64> = prompts.iter().flatten().map(|&t| t as i64).collect();
    let mut tokens = Tensor::from_slice(&flat)
        .view([b, -1])
        .to_device(model.device());
    let mut logps: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
    tch::no_grad(|| {
        for _ in 0..COMPLETION {
            let t = tokens.size()[1];
            let positions = Tensor::arange(t, (Kind::Int64, model.device()))
                .unsqueeze(0)
                .expand([b, t], false);
            let logits = model.forward(&tokens, &positions, None, None).select(1, -1);
            let lp = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
            let next = lp.exp().multinomial(1, false);
            let picked = Vec::<f32>::try_from(lp.gather(1, &next, false).view([-1])).unwrap();
            for (row, v) in logps.iter_mut().zip(picked) {
                row.push(v);
            }
            tokens = Tensor::cat(&[&tokens, &next], 1);
        }
    });
    let all: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(&tokens).unwrap();
    prompts
        .iter()
        .zip(all)
        .zip(logps)
        .enumerate()
        .map(|(i, ((p, row), lp))| {
            let completion: Vec<u32> = row[p.len()..].iter().map(|&t| t as u32).collect();
            sample(p, &completion, lp, (i / group) as u64)
        })
        .collect()
}

pub fn sample(prompt: &[u32], completion: &[u32], logps: Vec<f32>, group: u64) -> Sample {
    let r = reward(prompt, completion);
    Sample {
        prompt_ids: prompt.to_vec(),
        completion_ids: completion.to_vec(),
        loss_mask: vec![true; completion.len()],
        behaviour_logprobs: logps,
        learner_logprobs: None,
        policy_version: 0,
        group_id: group,
        finish_reason: FinishReason::Length,
        reward: r,
        rewards: BTreeMap::from([("exact".to_string(), r)]),
        turn_rewards: Vec::new(),
    }
}

pub fn all_digits() -> Vec<u32> {
    (2..2 + DIGITS).collect()
}

/// Mean reward of `n` sampled completions per digit.
pub fn mean_reward(model: &Llama, n: usize, seed: i64) -> f64 {
    let s = rollout(model, &all_digits(), n, seed);
    s.iter().map(|s| s.reward).sum::<f64>() / s.len() as f64
}
