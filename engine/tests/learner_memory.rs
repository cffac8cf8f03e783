//! Trading compute for memory gives the same gradients: gradient checkpointing (each layer
//! recomputed in the backward) and chunked logprobs (head + log-softmax per token chunk),
//! alone and together, on rows that share a prompt and rows that do not, for a plain Llama
//! and for architectures with sliding windows, QK-norm and Gemma's norms. And the learner
//! scores at the sampling temperature: samples drawn at T = 0.7 are exactly on-policy.

mod learner_support;

use learner_support::*;
use oxrl::learner::batch::{collate, token_logprobs, Rows};
use oxrl::learner::lora::{reset_adapters, with_adapters, LoraConfig};
use oxrl::learner::recompute::ScoreOptions;
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig};
use oxrl::model::random::randomize;
use oxrl::rollout::{generate_batch, GenerationRequest, SamplingParams, StopConditions};
use oxrl::{Llama, ModelConfig, Sample};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

fn model_of(json: &str, seed: i64) -> (VarStore, Llama) {
    let cfg: ModelConfig = serde_json::from_str(json).unwrap();
    cfg.validate().unwrap();
    let vs = VarStore::new(tch::Device::Cpu);
    let model = Llama::new(&vs.root(), &cfg);
    randomize(&vs, seed, 0.2);
    (vs, model)
}

fn models() -> Vec<(&'static str, (VarStore, Llama))> {
    let shape = r#""vocab_size":24,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":3,
        "num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":64"#;
    vec![
        ("llama", tiny(5)),
        (
            "qwen3 sliding",
            model_of(
                &format!(
                    r#"{{"architectures":["Qwen3ForCausalLM"],{shape},"head_dim":8,
                    "use_sliding_window":true,"sliding_window":3,"max_window_layers":1}}"#
                ),
                6,
            ),
        ),
        (
            "gemma3",
            model_of(
                &format!(
                    r#"{{"architectures":["Gemma3ForCausalLM"],{shape},"head_dim":8,
                    "sliding_window":3,"sliding_window_pattern":2,"final_logit_softcapping":3.0}}"#
                ),
                7,
            ),
        ),
    ]
}

/// Rows of one group (their prompt runs once) and rows of several groups.
fn batches() -> Vec<Vec<Sample>> {
    let (_vs, model) = tiny(3);
    let samples = rollout(&model, &all_digits(), 4, 11);
    vec![samples[..4].to_vec(), samples[2..8].to_vec()]
}

/// Gradients of a nonlinear function of the logprobs, by parameter name.
fn gradients(
    vs: &VarStore,
    model: &Llama,
    rows: &Rows,
    opts: ScoreOptions,
) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in &mut vars {
        v.zero_grad();
    }
    let tl = token_logprobs(model, rows, opts);
    let weights = Tensor::linspace(
        -1.0,
        1.0,
        tl.logp.numel() as i64,
        (Kind::Float, tch::Device::Cpu),
    )
    .view(tl.logp.size().as_slice());
    let loss = (tl.logp.exp() * weights).sum(Kind::Float) + tl.logp.square().sum(Kind::Float) * 0.1;
    loss.backward();
    tl.finish_backward(model, rows);
    vars.into_iter()
        .map(|(name, v)| (name, v.grad().copy()))
        .collect()
}

#[test]
fn checkpointing_and_chunked_logprobs_give_the_plain_gradients() {
    let variants = [
        ("checkpointing", true, None),
        ("chunks of 5 tokens", false, Some(5)),
        ("both, chunks of 7", true, Some(7)),
    ];
    for (arch, (vs, model)) in models() {
        for samples in batches() {
            let refs: Vec<&Sample> = samples.iter().collect();
            let rows = collate(&refs, tch::Device::Cpu).unwrap();
            let plain = ScoreOptions {
                temperature: 0.8,
                ..Default::default()
            };
            let want = gradients(&vs, &model, &rows, plain);
            for (name, checkpoint_layers, chunk_tokens) in variants {
                let opts = ScoreOptions {
                    checkpoint_layers,
                    chunk_tokens,
                    ..plain
                };
                let got = gradients(&vs, &model, &rows, opts);
                let context = format!("{arch}, shared prompt {}, {name}", rows.shared_prompt);
                assert_same_gradients(&want, &got, &context);
            }
        }
    }
}

/// Every gradient of `got` equals `want`'s within float tolerance of the largest.
fn assert_same_gradients(want: &[(String, Tensor)], got: &[(String, Tensor)], context: &str) {
    let scale = want
        .iter()
        .map(|(_, g)| g.abs().max().double_value(&[]))
        .fold(0.0, f64::max);
    assert!(scale > 1e-3, "{context}: degenerate gradients");
    assert_eq!(want.len(), got.len());
    for ((param, a), (_, b)) in want.iter().zip(got) {
        let diff = (a - b).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5 * scale.max(1.0),
            "{context}: {param} differs by {diff} (scale {scale})"
        );
    }
}

#[test]
fn memory_options_give_the_plain_gradients_with_an_untied_or_a_frozen_head() {
    let untied = model_of(
        r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":24,"hidden_size":32,
        "intermediate_size":48,"num_hidden_layers":2,"num_attention_heads":4,
        "num_key_value_heads":2,"max_position_embeddings":64,"tie_word_embeddings":false}"#,
        8,
    );
    let (base_vs, _base) = tiny(9);
    let lora = with_adapters(&base_vs, &config(), &LoraConfig::default()).unwrap();
    reset_adapters(&lora.0, 12);
    assert!(!lora.1.head_weight().requires_grad());
    for (name, (vs, model)) in [("untied head", untied), ("LoRA, frozen head", lora)] {
        for samples in batches() {
            let refs: Vec<&Sample> = samples.iter().collect();
            let rows = collate(&refs, tch::Device::Cpu).unwrap();
            let plain = ScoreOptions {
                temperature: 1.3,
                ..Default::default()
            };
            let want = gradients(&vs, &model, &rows, plain);
            // Checkpointing writes the embedding table's gradient by hand: an untied table
            // takes it alone, a frozen one none.
            for (options, checkpoint_layers) in [("chunks of 5", false), ("both", true)] {
                let opts = ScoreOptions {
                    chunk_tokens: Some(5),
                    checkpoint_layers,
                    ..plain
                };
                let got = gradients(&vs, &model, &rows, opts);
                let context = format!("{name}, shared prompt {}, {options}", rows.shared_prompt);
                assert_same_gradients(&want, &got, &context);
            }
        }
    }
}

#[test]
fn chunked_logprobs_without_a_graph_equal_the_plain_ones() {
    let (_vs, model) = tiny(5);
    for samples in batches() {
        let refs: Vec<&Sample> = samples.iter().collect();
        let rows = collate(&refs, tch::Device::Cpu).unwrap();
        let (plain, chunked) = tch::no_grad(|| {
            let plain = token_logprobs(&model, &rows, ScoreOptions::default());
            let opts = ScoreOptions {
                chunk_tokens: Some(3),
                ..Default::default()
            };
            (plain, token_logprobs(&model, &rows, opts))
        });
        assert!(plain.logp.allclose(&chunked.logp, 1e-6, 1e-6, false));
        assert!(plain.entropy.allclose(&chunked.entropy, 1e-6, 1e-6, false));
    }
}

/// Samples drawn by the rollout engine at `temperature`.
fn sampled_at(model: &Llama, temperature: f64) -> Vec<Sample> {
    let prompts: Vec<Vec<u32>> = all_digits().iter().map(|&d| prompt(d)).collect();
    let req = GenerationRequest {
        prompts: prompts.clone(),
        n: 4,
        sampling: SamplingParams {
            temperature,
            ..Default::default()
        },
        max_tokens: COMPLETION,
        stop: StopConditions::default(),
        seed: 5,
        prompt_offset: 0,
    };
    generate_batch(model, &req, None)
        .unwrap()
        .into_iter()
        .map(|g| {
            let p = &prompts[g.prompt_index];
            sample(p, &g.tokens, g.logprobs, g.prompt_index as u64)
        })
        .collect()
}

#[test]
fn the_learner_scores_at_the_sampling_temperature() {
    let _serial = serial();
    let (_vs, model) = tiny(3);
    let samples = sampled_at(&model, 0.7);
    let gap_at = |temperature: Option<f64>| {
        let (vs, model) = tiny(3);
        let cfg = LearnerConfig {
            algorithm: AlgorithmKind::Grpo,
            temperature,
            ..Default::default()
        };
        let mut learner = Learner::new(vs, model, cfg).unwrap();
        learner.train(&samples).unwrap().behaviour_gap.unwrap()
    };
    // The first pass is exactly on-policy: ratio 1 up to float rounding.
    let tempered = gap_at(Some(0.7));
    assert!(tempered.max_abs < 1e-5, "{tempered:?}");
    // Scoring at T = 1 instead would make every ratio off-policy.
    let untempered = gap_at(None);
    assert!(untempered.mean_abs > 1e-2, "{untempered:?}");
}

#[test]
fn whole_updates_with_memory_options_match_plain_ones_for_grpo_and_ppo_with_its_critic() {
    use oxrl::learner::metrics as m;
    let _serial = serial();
    let (_vs, model) = tiny(3);
    let samples = rollout(&model, &all_digits(), 4, 11);
    for algorithm in [AlgorithmKind::Grpo, AlgorithmKind::Ppo] {
        let update = |gradient_checkpointing: bool, logprob_chunk_tokens: Option<usize>| {
            let (vs, model) = tiny(3);
            let mut cfg = LearnerConfig {
                algorithm,
                gradient_checkpointing,
                logprob_chunk_tokens,
                ..Default::default()
            };
            cfg.optim.lr = 1e-3;
            let mut learner = Learner::new(vs, model, cfg).unwrap();
            learner.train(&samples).unwrap().metrics
        };
        let plain = update(false, None);
        let saving = update(true, Some(4));
        for key in [m::LOSS, m::GRAD_NORM, m::ENTROPY] {
            let (a, b) = (plain[key], saving[key]);
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "{algorithm:?} {key}: plain {a} vs checkpointed + chunked {b}"
            );
        }
        if algorithm == AlgorithmKind::Ppo {
            let (a, b) = (plain[m::VALUE_LOSS], saving[m::VALUE_LOSS]);
            assert!(
                (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                "value loss {a} vs {b}"
            );
        }
    }
}
