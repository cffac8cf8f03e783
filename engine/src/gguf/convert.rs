//! GGUF to Hugging Face: the model config from `{arch}.*` metadata, tensors renamed to HF
//! keys and dequantized to f32 (with llama.cpp's q/k row permutation undone, as transformers'
//! `reverse_permute_weights` does), and a `tokenizer.json` built from `tokenizer.ggml.*`
//! with the pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre`.

use serde_json::{json, Value as Json};
use tch::Tensor;

use super::dequant::GgmlType;
use super::reader::{GgufFile, TensorInfo, Value};
use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, RopeConfig, RopeParameters, TokenIds};

/// A GGUF model in Hugging Face form, ready to load or to write as an HF directory.
#[derive(Debug)]
pub struct HfModel {
    /// `config.json`.
    pub config: ModelConfig,
    /// Tensors by HF key, f32.
    pub tensors: Vec<(String, Tensor)>,
    /// `tokenizer.json`.
    pub tokenizer_json: Json,
    /// `tokenizer_config.json` (special tokens and chat template).
    pub tokenizer_config: Json,
}

/// Converts an open GGUF file.
pub fn to_hf(gguf: &GgufFile) -> Result<HfModel> {
    let config = model_config(gguf)?;
    let tensors = gguf
        .tensors
        .iter()
        .map(|info| hf_tensor(gguf, info, &config))
        .collect::<Result<Vec<_>>>()?;
    let (tokenizer_json, tokenizer_config) = tokenizer(gguf, &config)?;
    Ok(HfModel {
        config,
        tensors,
        tokenizer_json,
        tokenizer_config,
    })
}

/// The model config and tokenizer files of an open GGUF file, without converting a single
/// tensor (what reading a model's tokenizer needs).
pub fn to_hf_tokenizer(gguf: &GgufFile) -> Result<(ModelConfig, Json, Json)> {
    let config = model_config(gguf)?;
    let (tokenizer_json, tokenizer_config) = tokenizer(gguf, &config)?;
    Ok((config, tokenizer_json, tokenizer_config))
}

fn arch(gguf: &GgufFile) -> Result<String> {
    let arch = gguf
        .require("general.architecture")?
        .as_str()
        .unwrap_or_default();
    match arch {
        "llama" | "qwen2" => Ok(arch.to_owned()),
        other => Err(Error::UnsupportedArchitecture {
            path: gguf.path().to_owned(),
            arch: other.to_owned(),
            supported: "llama, qwen2".into(),
        }),
    }
}

fn meta_u64(gguf: &GgufFile, key: &str) -> Result<usize> {
    gguf.require(key)?
        .as_u64()
        .map(|v| v as usize)
        .ok_or_else(|| Error::bad_file(gguf.path(), format!("metadata {key} is not an integer")))
}

fn token_id(gguf: &GgufFile, key: &str) -> Option<i64> {
    gguf.get(key).and_then(Value::as_u64).map(|v| v as i64)
}

fn model_config(gguf: &GgufFile) -> Result<ModelConfig> {
    let arch = arch(gguf)?;
    let key = |k: &str| format!("{arch}.{k}");
    if gguf.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(Error::bad_file(
            gguf.path(),
            "per-frequency RoPE factors (rope_freqs.weight) are not supported",
        ));
    }
    let heads = meta_u64(gguf, &key("attention.head_count"))?;
    let hidden = meta_u64(gguf, &key("embedding_length"))?;
    let head_dim = gguf
        .get(&key("attention.key_length"))
        .and_then(Value::as_u64);
    let n_tokens = match gguf.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => Some(t.len()),
        _ => None,
    };
    let vocab = gguf
        .get(&key("vocab_size"))
        .and_then(Value::as_u64)
        .map(|v| v as usize);
    let rope_theta = gguf
        .get(&key("rope.freq_base"))
        .and_then(Value::as_f64)
        .unwrap_or(10_000.0);
    let config = ModelConfig {
        architectures: vec![if arch == "qwen2" {
            "Qwen2ForCausalLM"
        } else {
            "LlamaForCausalLM"
        }
        .into()],
        model_type: Some(arch.clone()),
        vocab_size: vocab.or(n_tokens).ok_or_else(|| {
            Error::bad_file(
                gguf.path(),
                format!(
                    "neither {} nor tokenizer.ggml.tokens is present",
                    key("vocab_size")
                ),
            )
        })?,
        hidden_size: hidden,
        intermediate_size: meta_u64(gguf, &key("feed_forward_length"))?,
        num_hidden_layers: meta_u64(gguf, &key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: Some(
            gguf.get(&key("attention.head_count_kv"))
                .and_then(Value::as_u64)
                .map_or(heads, |v| v as usize),
        ),
        head_dim: head_dim
            .map(|d| d as usize)
            .filter(|&d| d != hidden / heads),
        rms_norm_eps: gguf
            .get(&key("attention.layer_norm_rms_epsilon"))
            .and_then(Value::as_f64)
            .map_or(1e-6, round_f32),
        rope_theta: Some(rope_theta),
        rope_scaling: None,
        rope_parameters: Some(RopeConfig::Shared(rope_parameters(gguf, &arch, rope_theta))),
        max_position_embeddings: gguf
            .get(&key("context_length"))
            .and_then(Value::as_u64)
            .map_or(2048, |v| v as usize),
        tie_word_embeddings: Some(!gguf.tensors.iter().any(|t| t.name == "output.weight")),
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: token_id(gguf, "tokenizer.ggml.bos_token_id"),
        eos_token_id: token_id(gguf, "tokenizer.ggml.eos_token_id").map(TokenIds::One),
        pad_token_id: token_id(gguf, "tokenizer.ggml.padding_token_id"),
        hidden_act: "silu".into(),
        hidden_activation: None,
        sliding_window: None,
        use_sliding_window: None,
        max_window_layers: None,
        layer_types: None,
        sliding_window_pattern: None,
        rope_local_base_freq: None,
        query_pre_attn_scalar: None,
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
        other: Default::default(),
    };
    config
        .validate()
        .map_err(|msg| Error::bad_file(gguf.path(), msg))?;
    Ok(config)
}

/// GGUF stores f32; print the shortest decimal that round-trips (9.999999747e-06 -> 1e-05).
fn round_f32(v: f64) -> f64 {
    format!("{}", v as f32).parse().unwrap_or(v)
}

fn rope_parameters(gguf: &GgufFile, arch: &str, theta: f64) -> RopeParameters {
    let scaling = gguf
        .get(&format!("{arch}.rope.scaling.type"))
        .and_then(Value::as_str);
    let factor = gguf
        .get(&format!("{arch}.rope.scaling.factor"))
        .and_then(Value::as_f64);
    let linear = scaling == Some("linear") && factor.is_some();
    RopeParameters {
        rope_type: if linear { "linear" } else { "default" }.into(),
        rope_theta: Some(theta),
        factor: if linear { factor } else { None },
        low_freq_factor: None,
        high_freq_factor: None,
        original_max_position_embeddings: None,
    }
}

/// The HF key for a GGUF tensor name.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, suffix) = rest.split_once('.')?;
    let hf_part = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf_part}.{suffix}"))
}

fn hf_tensor(gguf: &GgufFile, info: &TensorInfo, cfg: &ModelConfig) -> Result<(String, Tensor)> {
    let bad = |msg: String| Error::bad_file(gguf.path(), format!("tensor {}: {msg}", info.name));
    let name = hf_name(&info.name).ok_or_else(|| bad("no Hugging Face equivalent".into()))?;
    let ty = GgmlType::from_id(info.ggml_type)
        .ok_or_else(|| bad(format!("unsupported ggml type {}", info.ggml_type)))?;
    let numel = info.numel() as usize;
    let len = ty.byte_len(numel).ok_or_else(|| {
        bad(format!(
            "{numel} elements is not a whole number of {} blocks",
            ty.name
        ))
    })?;
    let values = ty.dequantize(gguf.tensor_bytes(info, len)?);
    let tensor = Tensor::from_slice(&values).view(info.torch_shape().as_slice());
    // llama.cpp interleaves the rotary halves of q/k rows for Llama; Qwen2 is stored as is.
    let llama = cfg.model_type.as_deref() == Some("llama");
    let tensor = match (llama, name.contains("q_proj"), name.contains("k_proj")) {
        (true, true, _) => unpermute_rows(&tensor, cfg.num_attention_heads),
        (true, _, true) => unpermute_rows(&tensor, cfg.num_kv_heads()),
        _ => tensor,
    };
    Ok((name, tensor))
}

/// Undoes llama.cpp's `permute`: within each head, rows stored as `[half, 2]` pairs go back
/// to the `[2, half]` "rotate half" layout.
fn unpermute_rows(w: &Tensor, heads: usize) -> Tensor {
    let shape = w.size();
    let rows = shape[0];
    let mut grouped = vec![heads as i64, rows / heads as i64 / 2, 2];
    grouped.extend(&shape[1..]);
    w.view(grouped.as_slice())
        .transpose(1, 2)
        .reshape(shape.as_slice())
}

/// The pre-tokenizer llama.cpp applies for `tokenizer.ggml.pre`, as tokenizers JSON.
fn pre_tokenizer(pre: &str) -> Option<Json> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2), byte_level(false)]}),
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3), byte_level(false)]})
        }
        _ => return None,
    })
}

fn string_array(gguf: &GgufFile, key: &str) -> Result<Vec<String>> {
    match gguf.require(key)? {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::bad_file(gguf.path(), format!("{key} must hold strings"))),
        _ => Err(Error::bad_file(
            gguf.path(),
            format!("{key} must be an array"),
        )),
    }
}

/// ggml token types: 3 = control (special), 4 = user-defined (added, not special).
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

fn tokenizer(gguf: &GgufFile, cfg: &ModelConfig) -> Result<(Json, Json)> {
    let model = gguf
        .require("tokenizer.ggml.model")?
        .as_str()
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(Error::bad_file(
            gguf.path(),
            format!("tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")"),
        ));
    }
    let pre_name = gguf
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        Error::bad_file(
            gguf.path(),
            format!("unsupported pre-tokenizer {pre_name:?}"),
        )
    })?;
    let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
    let merges = string_array(gguf, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match gguf.get("tokenizer.ggml.token_type") {
        Some(Value::Array(t)) => t.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let added: Vec<Json> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED)
        .map(|(id, (content, &ty))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": ty == CONTROL})
        })
        .collect();
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let add_bos = gguf.get("tokenizer.ggml.add_bos_token") == Some(&Value::Bool(true));
    let token = |id: Option<i64>| id.and_then(|i| tokens.get(i as usize)).cloned();
    let bos = token(cfg.bos_token_id);
    let byte_level_post = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true});
    let post = match (&bos, add_bos) {
        (Some(bos), true) => json!({"type": "Sequence", "processors": [byte_level_post, {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [cfg.bos_token_id], "tokens": [bos]}}}]}),
        _ => byte_level_post,
    };
    let tokenizer_json = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": if pre_name == "qwen2" { json!({"type": "NFC"}) } else { Json::Null },
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": token(cfg.eos_token_ids().first().copied()),
        "pad_token": token(cfg.pad_token_id),
        "unk_token": token(token_id(gguf, "tokenizer.ggml.unknown_token_id")),
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": cfg.max_position_embeddings,
        "chat_template": gguf.get("tokenizer.chat_template").and_then(Value::as_str),
    });
    Ok((tokenizer_json, tokenizer_config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf_keys() {
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(
            hf_name("blk.12.attn_q.bias").unwrap(),
            "model.layers.12.self_attn.q_proj.bias"
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").unwrap(),
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("blk.0.unknown.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, half, in).swapaxes(1, 2).reshape(w.shape)
        let (heads, head_dim, inp) = (3, 4, 5);
        let w = Tensor::randn(
            [heads * head_dim, inp],
            (tch::Kind::Float, tch::Device::Cpu),
        );
        let permuted = w
            .view([heads, 2, head_dim / 2, inp])
            .transpose(1, 2)
            .reshape([heads * head_dim, inp]);
        let back = unpermute_rows(&permuted, heads as usize);
        assert!(back.equal(&w));
    }

    #[test]
    fn unknown_pre_tokenizer_is_none() {
        assert!(pre_tokenizer("smollm").is_some());
        assert!(pre_tokenizer("made-up").is_none());
    }
}
