//! The rollout engine on tiny random models: recorded behaviour logprobs equal the learner's
//! full-forward logprobs, sampling is reproducible and independent of batch composition,
//! greedy equals `generate`, groups and early stops behave, bad requests are explained.

use oxrl::device::test_device;
use oxrl::model::random::randomize;
use oxrl::rollout::logprobs::batch_completion_logprobs;
use oxrl::rollout::single::{generate, SamplingConfig};
use oxrl::rollout::{generate_batch, GenerationRequest, SamplingParams, StopConditions};
use oxrl::sample::FinishReason;
use oxrl::{Llama, ModelConfig};
use tch::nn::VarStore;

fn tiny(seed: i64) -> (VarStore, Llama) {
    let cfg: ModelConfig = serde_json::from_str(
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":50,"hidden_size":32,
            "intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"max_position_embeddings":64}"#,
    )
    .unwrap();
    let vs = VarStore::new(test_device());
    let model = Llama::new(&vs.root(), &cfg);
    randomize(&vs, seed, 0.3);
    (vs, model)
}

fn request(prompts: Vec<Vec<u32>>, n: usize, sampling: SamplingParams) -> GenerationRequest {
    GenerationRequest {
        prompts,
        n,
        sampling,
        max_tokens: 12,
        stop: StopConditions {
            token_ids: vec![3],
            strings: vec![],
        },
        seed: 42,
        prompt_offset: 0,
    }
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![5, 6, 7],
        vec![9, 10, 11, 12, 13, 14, 15, 16],
        vec![20],
        vec![30, 31, 32, 33, 34],
    ]
}

#[test]
fn recorded_logprobs_equal_full_forward_logprobs() {
    let (_vs, model) = tiny(1);
    for sampling in [
        SamplingParams {
            temperature: 0.8,
            ..Default::default()
        },
        SamplingParams {
            temperature: 1.3,
            top_p: 0.9,
            top_k: 20,
            ..Default::default()
        },
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
    ] {
        // A long prompt beside short ones: prefill runs the two lengths as separate groups.
        let mut prompts = prompts();
        prompts.push((0..40).map(|i| 10 + i % 30).collect());
        let req = request(prompts, 3, sampling.clone());
        let out = generate_batch(&model, &req, None).unwrap();
        assert_eq!(out.len(), 15);
        let pairs: Vec<(&[u32], &[u32])> = out
            .iter()
            .map(|g| (req.prompts[g.prompt_index].as_slice(), g.tokens.as_slice()))
            .collect();
        let learner =
            batch_completion_logprobs(&model, &pairs, sampling.logprob_temperature()).unwrap();
        // f32 rounding only: decode steps and the full forward multiply matrices of different
        // shapes, which sum in different orders (on CUDA, ~1e-5 at logprob -2).
        for (g, want) in out.iter().zip(&learner) {
            assert_eq!(g.logprobs.len(), want.len());
            for (a, b) in g.logprobs.iter().zip(want) {
                assert!(
                    (a - b).abs() < 1e-5 * b.abs().max(1.0),
                    "{sampling:?}: sampler {a} vs learner {b}"
                );
            }
        }
        // Early stops happened, so compaction and padding were both exercised.
        assert!(
            out.iter().any(|g| g.finish_reason == FinishReason::Stop)
                || sampling.temperature == 0.0
        );
        assert!(out.iter().any(|g| g.finish_reason == FinishReason::Length));
    }
}

#[test]
fn sampling_is_reproducible_and_independent_of_the_rest_of_the_batch() {
    let (_vs, model) = tiny(2);
    let sampling = SamplingParams {
        temperature: 1.0,
        ..Default::default()
    };
    let a = generate_batch(&model, &request(prompts(), 4, sampling.clone()), None).unwrap();
    let b = generate_batch(&model, &request(prompts(), 4, sampling.clone()), None).unwrap();
    assert_eq!(a, b);
    let first_only =
        generate_batch(&model, &request(prompts()[..1].to_vec(), 4, sampling), None).unwrap();
    // Same tokens; logprobs agree to float rounding (GEMM shapes differ with the batch).
    for (x, y) in first_only.iter().zip(&a[..4]) {
        assert_eq!((&x.tokens, x.finish_reason), (&y.tokens, y.finish_reason));
        assert!(x
            .logprobs
            .iter()
            .zip(&y.logprobs)
            .all(|(p, q)| (p - q).abs() < 1e-5));
    }
    // Members of a group differ from each other.
    let distinct: std::collections::BTreeSet<_> = a[..4].iter().map(|g| g.tokens.clone()).collect();
    assert!(distinct.len() > 1, "group completions should differ");
}

#[test]
fn greedy_matches_single_prompt_generate() {
    let (_vs, model) = tiny(3);
    let req = request(
        prompts(),
        2,
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
    );
    let out = generate_batch(&model, &req, None).unwrap();
    for g in &out {
        let cfg = SamplingConfig {
            temperature: 0.0,
            max_tokens: 12,
            seed: 0,
        };
        let mut single = generate(&model, &req.prompts[g.prompt_index], &cfg, &[3]).unwrap();
        if g.finish_reason == FinishReason::Stop {
            single.push(3); // the batch engine keeps the stop token; `generate` drops it
        }
        assert_eq!(g.tokens, single);
    }
}

#[test]
fn bad_requests_are_explained() {
    let (_vs, model) = tiny(4);
    let long = request(vec![vec![1; 64]], 1, SamplingParams::default());
    let err = generate_batch(&model, &long, None).unwrap_err().to_string();
    assert!(
        err.contains("prompt 0 has 64 tokens") && err.contains("context"),
        "{err}"
    );
    let mut strings = request(prompts(), 1, SamplingParams::default());
    strings.stop.strings = vec!["x".into()];
    assert!(generate_batch(&model, &strings, None)
        .unwrap_err()
        .to_string()
        .contains("tokenizer"));
}

#[test]
fn generation_stops_at_the_context_limit() {
    let (_vs, model) = tiny(5);
    let mut req = request(
        vec![vec![1; 60]],
        1,
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
    );
    req.stop.token_ids.clear();
    let out = generate_batch(&model, &req, None).unwrap();
    assert_eq!(out[0].tokens.len(), 4);
    assert_eq!(out[0].finish_reason, FinishReason::Length);
}

#[test]
fn a_share_of_the_prompts_draws_what_the_whole_batch_draws() {
    let (_vs, model) = tiny(1);
    let sampling = SamplingParams {
        temperature: 1.0,
        ..Default::default()
    };
    let whole = generate_batch(&model, &request(prompts(), 3, sampling.clone()), None).unwrap();
    let mut share = request(prompts()[2..].to_vec(), 3, sampling);
    share.prompt_offset = 2;
    let part = generate_batch(&model, &share, None).unwrap();
    let expected: Vec<_> = whole.iter().filter(|g| g.prompt_index >= 2).collect();
    assert_eq!(part.len(), expected.len());
    for (g, w) in part.iter().zip(expected) {
        assert_eq!(
            (g.prompt_index + 2, g.sample_index),
            (w.prompt_index, w.sample_index)
        );
        assert_eq!(
            g.tokens, w.tokens,
            "prompt {} sample {}",
            w.prompt_index, w.sample_index
        );
    }
    share.prompt_offset = 0;
    let unshifted = generate_batch(&model, &share, None).unwrap();
    assert_ne!(
        unshifted.iter().map(|g| &g.tokens).collect::<Vec<_>>(),
        part.iter().map(|g| &g.tokens).collect::<Vec<_>>(),
        "the offset selects other streams"
    );
}
