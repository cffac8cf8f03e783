//! The rollout engine on the bundled SmolLM2: greedy batched generation equals `oxrl
//! generate`, recorded logprobs equal the learner's full forward, and a stop string spanning a
//! token boundary ends the completion at the token that completes it.

use oxrl::rollout::logprobs::batch_completion_logprobs;
use oxrl::rollout::single::{generate, SamplingConfig};
use oxrl::rollout::{generate_batch, GenerationRequest, SamplingParams, StopConditions};
use oxrl::sample::FinishReason;
use oxrl::{LoadOptions, Pretrained};
use oxrl_tests::smollm2_gguf;

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def add(a, b):\n",
    "List three colors:",
];

fn request(model: &Pretrained, sampling: SamplingParams, n: usize) -> GenerationRequest {
    GenerationRequest {
        prompts: PROMPTS
            .iter()
            .map(|p| model.tokenizer.encode(p, false).unwrap())
            .collect(),
        n,
        sampling,
        max_tokens: 24,
        stop: StopConditions::default(),
        seed: 3,
        prompt_offset: 0,
    }
}

#[test]
fn batched_rollouts_on_smollm2() {
    let model = Pretrained::load(&smollm2_gguf(), LoadOptions::default()).unwrap();
    let greedy = request(
        &model,
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        1,
    );
    let out = generate_batch(&model.model, &greedy, None).unwrap();
    let cfg = SamplingConfig {
        temperature: 0.0,
        max_tokens: 24,
        seed: 0,
    };
    for g in &out {
        let single = generate(&model.model, &greedy.prompts[g.prompt_index], &cfg, &[]).unwrap();
        assert_eq!(
            g.tokens, single,
            "batched greedy vs oxrl generate for {:?}",
            PROMPTS[g.prompt_index]
        );
    }

    let sampled = request(
        &model,
        SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            ..Default::default()
        },
        2,
    );
    let out = generate_batch(&model.model, &sampled, None).unwrap();
    let pairs: Vec<(&[u32], &[u32])> = out
        .iter()
        .map(|g| {
            (
                sampled.prompts[g.prompt_index].as_slice(),
                g.tokens.as_slice(),
            )
        })
        .collect();
    let learner = batch_completion_logprobs(&model.model, &pairs, 0.9).unwrap();
    let worst = out
        .iter()
        .zip(&learner)
        .flat_map(|(g, l)| g.logprobs.iter().zip(l).map(|(a, b)| (a - b).abs()))
        .fold(0f32, f32::max);
    eprintln!("SmolLM2 sampler vs learner logprobs: max |diff| {worst:.2e}");
    assert!(
        worst < 1e-4,
        "sampler vs learner logprobs differ by {worst}"
    );

    check_stop_string_across_tokens(&model, &greedy.prompts[0]);
}

fn check_stop_string_across_tokens(model: &Pretrained, prompt: &[u32]) {
    let mut req = request(
        model,
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        1,
    );
    req.prompts = vec![prompt.to_vec()];
    let free = generate_batch(&model.model, &req, None).unwrap().remove(0);
    let pieces: Vec<String> = free
        .tokens
        .iter()
        .map(|&t| model.tokenizer.decode(&[t], false).unwrap())
        .collect();
    // The first boundary between two tokens that both carry text: stop on the last character
    // of the one and the first of the next.
    let i = (2..pieces.len() - 1)
        .find(|&i| pieces[i].chars().count() >= 2 && pieces[i + 1].trim().chars().count() >= 2)
        .expect("a boundary between two multi-character tokens");
    let stop = format!(
        "{}{}",
        pieces[i].chars().last().unwrap(),
        pieces[i + 1].chars().next().unwrap()
    );
    let text_before: String = pieces[..=i].concat();
    assert!(
        !text_before.contains(&stop),
        "pick a stop string that first appears across the boundary"
    );
    req.stop.strings = vec![stop.clone()];
    let stopped = generate_batch(&model.model, &req, Some(&model.tokenizer))
        .unwrap()
        .remove(0);
    assert_eq!(
        stopped.finish_reason,
        FinishReason::StopString,
        "stop {stop:?}"
    );
    assert_eq!(
        stopped.tokens,
        free.tokens[..i + 2],
        "stops at the token completing {stop:?}"
    );
}
