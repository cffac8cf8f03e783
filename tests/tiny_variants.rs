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
