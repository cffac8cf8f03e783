//! Every architecture variant oxrl supports, as a tiny random model, gives the same logits
//! as transformers loading the same HF directory.

use oxrl_tests::{hf_reference, tiny_model};
use serde_json::{json, Value};
use tch::{Kind, Tensor};

fn base(arch: &str) -> Value {
    json!({"architectures": [arch], "vocab_size": 97, "hidden_size": 32, "intermediate_size": 48,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "rms_norm_eps": 1e-5, "max_position_embeddings": 256})
}

fn with(mut cfg: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("object") {
        cfg[k] = v.clone();
    }
    cfg
}

fn variants() -> Vec<(&'static str, Value)> {
    vec![
        (
            "llama tied GQA",
            with(
                base("LlamaForCausalLM"),
                json!({"tie_word_embeddings": true, "rope_theta": 100000.0}),
            ),
        ),
        (
            "llama untied MHA llama3 rope, biases",
            with(
                base("LlamaForCausalLM"),
                json!({
            "num_key_value_heads": 4, "attention_bias": true, "mlp_bias": true,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
            ),
        ),
        (
            "llama linear rope (legacy keys), head_dim 16",
            with(
                base("LlamaForCausalLM"),
                json!({
            "head_dim": 16, "num_key_value_heads": 1, "rope_theta": 10000.0,
            "rope_scaling": {"type": "linear", "factor": 4.0}}),
            ),
        ),
        (
            "qwen2 q/k/v bias",
            with(
                base("Qwen2ForCausalLM"),
                json!({"tie_word_embeddings": false, "rope_theta": 1000000.0}),
            ),
        ),
        (
            "qwen2 sliding window from max_window_layers",
            with(
                base("Qwen2ForCausalLM"),
                json!({"use_sliding_window": true, "sliding_window": 6, "max_window_layers": 1}),
            ),
        ),
        (
            "qwen3 qk-norm, head_dim 16 != hidden/heads, tied",
            with(
                base("Qwen3ForCausalLM"),
                json!({"head_dim": 16, "tie_word_embeddings": true, "rope_theta": 1000000.0}),
            ),
        ),
        (
            "qwen3 attention bias, sliding layer_types",
            with(
                base("Qwen3ForCausalLM"),
                json!({"head_dim": 8, "attention_bias": true, "use_sliding_window": true,
                       "sliding_window": 5, "layer_types": ["sliding_attention", "full_attention"]}),
            ),
        ),
        (
            "mistral sliding window",
            with(base("MistralForCausalLM"), json!({"sliding_window": 7})),
        ),
        (
            "mistral without window (null)",
            with(
                base("MistralForCausalLM"),
                json!({"sliding_window": null, "head_dim": 16}),
            ),
        ),
        (
            "gemma3 legacy rope keys, 1:1 pattern, query_pre_attn_scalar",
            with(
                base("Gemma3ForCausalLM"),
                json!({"head_dim": 16, "sliding_window": 6, "sliding_window_pattern": 2,
                       "query_pre_attn_scalar": 24, "rope_theta": 100000.0,
                       "rope_local_base_freq": 1000.0, "hidden_activation": "gelu_pytorch_tanh"}),
            ),
        ),
        (
            "gemma3 per-type rope with linear scaling, final soft-capping, untied",
            with(
                base("Gemma3ForCausalLM"),
                json!({"head_dim": 8, "sliding_window": 5, "tie_word_embeddings": false,
                       "layer_types": ["full_attention", "sliding_attention"],
                       "query_pre_attn_scalar": 8, "final_logit_softcapping": 2.0,
                       "rope_parameters": {
                           "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 50000.0},
                           "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}}}),
            ),
        ),
        (
            "gemma2 default soft-capping, alternating windows",
            with(
                base("Gemma2ForCausalLM"),
                json!({"head_dim": 8, "sliding_window": 6, "query_pre_attn_scalar": 16}),
            ),
        ),
        (
            "gemma2 strong soft-capping",
            with(
                base("Gemma2ForCausalLM"),
                json!({"head_dim": 16, "sliding_window": 9, "attn_logit_softcapping": 0.5,
                       "final_logit_softcapping": 1.5}),
            ),
        ),
    ]
}

#[test]
fn tiny_models_match_transformers_logits() {
    let tokens: Vec<Vec<i64>> = vec![
        (0..40).map(|i| (i * 7 + 3) % 97).collect(),
        (0..40).map(|i| (i * i + 1) % 97).collect(),
    ];
    for (i, (name, cfg)) in variants().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, model) = tiny_model(&cfg, 100 + i as i64, dir.path());
        let ids = Tensor::from_slice2(&tokens);
        let positions = Tensor::arange(40, (Kind::Int64, tch::Device::Cpu))
            .unsqueeze(0)
            .expand([2, 40], false);
        let ours = tch::no_grad(|| model.forward(&ids, &positions, None, None));
        let reference =
            hf_reference(&json!({"op": "logits", "model": dir.path(), "tokens": tokens}));
        let theirs: Vec<Vec<Vec<f32>>> =
            serde_json::from_value(reference["logits"].clone()).unwrap();
        let flat: Vec<f32> = theirs.into_iter().flatten().flatten().collect();
        let theirs = Tensor::from_slice(&flat).view([2, 40, -1]);
        let diff = (ours - &theirs).abs().max().double_value(&[]);
        let scale = theirs.abs().max().double_value(&[]);
        assert!(
            diff < 1e-4,
            "{name}: max |logit diff| {diff} (logit scale {scale})"
        );
        assert!(scale > 0.1, "{name}: degenerate logits");
    }
}

/// Logits of `tokens` (`[1, n]`) fed through a cache: a prefill, a chunk, then one token at a
/// time, so the sliding windows are cut at every kind of boundary.
fn cached_logits(model: &oxrl::Llama, tokens: &[i64]) -> Tensor {
    let mut cache = model.new_cache();
    let mut pieces = Vec::new();
    let mut start = 0;
    for len in [17, 5].into_iter().chain(std::iter::repeat(1)) {
        if start >= tokens.len() {
            break;
        }
        let len = len.min(tokens.len() - start);
        let ids = Tensor::from_slice(&tokens[start..start + len]).unsqueeze(0);
        let positions = Tensor::arange_start(
            start as i64,
            (start + len) as i64,
            (Kind::Int64, tch::Device::Cpu),
        )
        .unsqueeze(0);
        pieces.push(model.forward(&ids, &positions, None, Some(&mut cache)));
        start += len;
    }
    Tensor::cat(&pieces, 1)
}

#[test]
fn cached_decoding_equals_the_full_forward_for_every_variant() {
    let tokens: Vec<i64> = (0..30).map(|i| (i * 11 + 5) % 97).collect();
    for (i, (name, cfg)) in variants().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, model) = tiny_model(&cfg, 200 + i as i64, dir.path());
        let (full, cached) = tch::no_grad(|| {
            let ids = Tensor::from_slice(&tokens).unsqueeze(0);
            let positions = Tensor::arange(30, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0);
            (
                model.forward(&ids, &positions, None, None),
                cached_logits(&model, &tokens),
            )
        });
        let diff = (full - cached).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{name}: cached vs full max |diff| {diff}");
    }
}

/// Sampling at temperature 1 with stop token 3: `n` completions of at most `max_tokens` per
/// prompt, drawn with `seed`.
fn sampled(
    prompts: Vec<Vec<u32>>,
    n: usize,
    max_tokens: usize,
    seed: u64,
) -> oxrl::rollout::GenerationRequest {
    use oxrl::rollout::{GenerationRequest, SamplingParams, StopConditions};
    GenerationRequest {
        prompts,
        n,
        sampling: SamplingParams {
            temperature: 1.0,
            ..Default::default()
        },
        max_tokens,
        stop: StopConditions {
            token_ids: vec![3],
            strings: vec![],
        },
        seed,
        prompt_offset: 0,
    }
}

#[test]
fn recorded_rollout_logprobs_equal_the_learners_for_every_variant() {
    use oxrl::rollout::generate_batch;
    use oxrl::rollout::logprobs::batch_completion_logprobs;
    // Prompts of different lengths: left-padded prefill, then windows cut inside the padding.
    let prompts: Vec<Vec<u32>> = vec![
        (0..3).map(|i| 5 + i).collect(),
        (0..11).map(|i| (i * 7 + 2) % 97).collect(),
        vec![40],
    ];
    for (i, (name, cfg)) in variants().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, model) = tiny_model(&cfg, 300 + i as i64, dir.path());
        let req = sampled(prompts.clone(), 2, 14, 7);
        let out = generate_batch(&model, &req, None).unwrap();
        let pairs: Vec<(&[u32], &[u32])> = out
            .iter()
            .map(|g| (req.prompts[g.prompt_index].as_slice(), g.tokens.as_slice()))
            .collect();
        let learner = batch_completion_logprobs(&model, &pairs, 1.0).unwrap();
        for (g, want) in out.iter().zip(&learner) {
            for (a, b) in g.logprobs.iter().zip(want) {
                assert!(
                    (a - b).abs() < 1e-4 * b.abs().max(1.0),
                    "{name}: sampler {a} vs learner {b}"
                );
            }
        }
    }
}

/// Three turns of an episode-like rollout: each completion's next prompt is its sequence plus
/// a few "environment" tokens. Continuing from the kept caches (ragged suffixes, a cache that
/// diverges from its prompt near the end, a prompt without one) samples what a fresh prefill
/// of the whole prompts samples, with the same logprobs, for every variant (the sliding
/// windows cross the cached/fed boundary).
#[test]
fn continuing_from_kept_caches_equals_a_fresh_prefill_for_every_variant() {
    use oxrl::rollout::{generate_batch, generate_continuing, SequenceCache};
    let request = |prompts: Vec<Vec<u32>>, n: usize, seed: u64| sampled(prompts, n, 9, seed);
    let first: Vec<Vec<u32>> = vec![vec![5, 6, 7], (0..11).map(|i| (i * 7 + 2) % 97).collect()];
    for (v, (name, cfg)) in variants().into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let (_vs, model) = tiny_model(&cfg, 400 + v as i64, dir.path());
        let (_other_vs, other) = tiny_model(&cfg, 900 + v as i64, dir.path());
        let mut out =
            generate_continuing(&model, &request(first.clone(), 2, 7), None, vec![]).unwrap();
        let mut prompts = first.clone();
        for turn in 1..=3u64 {
            let (mut next, mut caches): (Vec<Vec<u32>>, Vec<Option<SequenceCache>>) =
                (out.into_iter().enumerate())
                    .map(|(j, (g, cache))| {
                        let mut p = prompts[g.prompt_index].clone();
                        p.extend(&g.tokens);
                        p.extend((0..1 + 3 * j as u32).map(|k| (k * 13 + j as u32 + 20) % 97));
                        let cache = cache.expect("the engine keeps every completion's cache");
                        assert_eq!(cache.len(), p.len() - 2 - 3 * j, "{name}: cached positions");
                        (p, Some(cache))
                    })
                    .unzip();
            // The first prompt's sequence changes its last sampled token: only the tokens both
            // share are taken from the cache. The second has no cache at all.
            let last = next[0].len() - 2;
            next[0][last] = (next[0][last] + 1) % 97;
            caches[1] = None;
            let req = request(next.clone(), 1, 11 + turn);
            let fresh = generate_batch(&model, &req, None).unwrap();
            let continued = generate_continuing(&model, &req, None, caches).unwrap();
            for (f, (c, _)) in fresh.iter().zip(&continued) {
                assert_eq!(f.tokens, c.tokens, "{name}, turn {turn}: sampled tokens");
                for (a, b) in f.logprobs.iter().zip(&c.logprobs) {
                    assert!(
                        (a - b).abs() < 1e-4 * b.abs().max(1.0),
                        "{name}, turn {turn}: fresh {a} vs continued {b}"
                    );
                }
            }
            prompts = next;
            out = continued;
        }
        // Another model's caches change the logprobs: the caches are really read.
        let foreign =
            generate_continuing(&other, &request(first.clone(), 1, 5), None, vec![]).unwrap();
        let (prompts, caches): (Vec<Vec<u32>>, Vec<Option<SequenceCache>>) = (foreign.into_iter())
            .map(|(g, cache)| {
                let mut p = first[g.prompt_index].clone();
                p.extend(&g.tokens);
                p.push(42);
                (p, cache)
            })
            .unzip();
        let req = request(prompts, 1, 6);
        let fresh = generate_batch(&model, &req, None).unwrap();
        let poisoned = generate_continuing(&model, &req, None, caches).unwrap();
        let changed = fresh.iter().zip(&poisoned).any(|(f, (p, _))| {
            f.tokens != p.tokens || (f.logprobs[0] - p.logprobs[0]).abs() > 1e-3
        });
        assert!(changed, "{name}: another model's caches changed nothing");
    }
}
