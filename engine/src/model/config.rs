//! Model configuration, deserialized straight from an HF `config.json`.
//!
//! Defaults follow transformers' `LlamaConfig` / `Qwen2Config` for keys a checkpoint omits.
//! RoPE settings are accepted both in the transformers 5 form (`rope_parameters`) and the
//! older one (top-level `rope_theta` plus `rope_scaling`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The architectures oxrl implements, chosen from `architectures[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM, TinyLlama, ...).
    Llama,
    /// `Qwen2ForCausalLM`: Llama with biases on q/k/v projections.
    Qwen2,
}

impl Architecture {
    const NAMES: [(&'static str, Architecture); 2] = [
        ("LlamaForCausalLM", Architecture::Llama),
        ("Qwen2ForCausalLM", Architecture::Qwen2),
    ];

    /// The HF class name.
    pub fn hf_name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or_default()
    }

    /// Looks up an HF class name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
    }

    /// transformers' `model_type` for this architecture.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// Comma-separated list of supported names, for error messages.
    pub fn supported() -> String {
        Self::NAMES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// RoPE frequency scaling as written by real checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeParameters {
    /// `default`, `linear` or `llama3` (older configs call it `type`).
    #[serde(alias = "type", default = "default_rope_type")]
    pub rope_type: String,
    /// Base of the rotary frequencies (transformers 5 keeps it here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Scaling factor (`linear`, `llama3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    /// llama3: wavelengths longer than `original / low_freq_factor` are scaled fully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    /// llama3: wavelengths shorter than `original / high_freq_factor` are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    /// llama3: the context length the model was pre-trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
}

fn default_rope_type() -> String {
    "default".into()
}

/// The subset of an HF `config.json` that defines a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// HF class names; the first selects the implementation.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Legacy location of the RoPE base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Legacy location of RoPE scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5 location of RoPE base and scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParameters>,
    /// Longest supported context.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o projections (Llama option); Qwen2 always has q/k/v bias.
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Beginning-of-sequence token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence token id(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// Padding token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    /// Activation; only `silu` is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// `model_type` as written by transformers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
}

/// One token id or several (e.g. Llama 3's several EOS ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// A single id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".into()
}

const DEFAULT_ROPE_THETA: f64 = 10_000.0;

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: ModelConfig = serde_json::from_str(&text)
            .map_err(|e| Error::bad_file(path, format!("invalid model config: {e}")))?;
        config
            .validate()
            .map_err(|msg| Error::bad_file(path, msg))?;
        Ok(config)
    }

    /// The architecture from `architectures[0]`; `None` if it is not supported.
    pub fn architecture(&self) -> Option<Architecture> {
        self.architectures
            .first()
            .and_then(|n| Architecture::from_hf_name(n))
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<(), String> {
        let arch = self
            .architectures
            .first()
            .ok_or("`architectures` is missing or empty")?;
        if Architecture::from_hf_name(arch).is_none() {
            return Err(format!(
                "unsupported architecture {arch:?} (supported: {})",
                Architecture::supported()
            ));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "unsupported hidden_act {:?} (only silu)",
                self.hidden_act
            ));
        }
        let (heads, kv) = (self.num_attention_heads, self.num_kv_heads());
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(heads) {
            return Err("hidden_size must be divisible by num_attention_heads".into());
        }
        let rope = self.rope();
        match rope.rope_type.as_str() {
            "default" => {}
            "linear" if rope.factor.is_some() => {}
            "llama3"
                if rope.factor.is_some()
                    && rope.low_freq_factor.is_some()
                    && rope.high_freq_factor.is_some()
                    && rope.original_max_position_embeddings.is_some() => {}
            "linear" | "llama3" => {
                return Err(format!(
                    "rope type {:?} is missing its parameters",
                    rope.rope_type
                ))
            }
            other => {
                return Err(format!(
                    "unsupported rope type {other:?} (default, linear, llama3)"
                ))
            }
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Whether q/k/v projections carry a bias.
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias || self.architecture() == Some(Architecture::Qwen2)
    }

    /// Whether the output projection carries a bias (Qwen2's does not).
    pub fn o_bias(&self) -> bool {
        self.attention_bias && self.architecture() != Some(Architecture::Qwen2)
    }

    /// RoPE settings merged from whichever keys the checkpoint used.
    pub fn rope(&self) -> RopeParameters {
        let mut rope = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or(RopeParameters {
                rope_type: default_rope_type(),
                rope_theta: None,
                factor: None,
                low_freq_factor: None,
                high_freq_factor: None,
                original_max_position_embeddings: None,
            });
        if rope.rope_theta.is_none() {
            rope.rope_theta = Some(self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA));
        }
        rope
    }

    /// The RoPE base.
    pub fn rope_theta(&self) -> f64 {
        self.rope().rope_theta.unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// The `config.json` transformers expects: `model_type` set, every derived size explicit,
    /// RoPE in the transformers 5 `rope_parameters` form (plus the legacy top-level
    /// `rope_theta`, which older readers use).
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut config = self.clone();
        if config.model_type.is_none() {
            config.model_type = config.architecture().map(|a| a.model_type().to_owned());
        }
        config.num_key_value_heads = Some(self.num_kv_heads());
        config.head_dim = Some(self.head_dim());
        config.rope_parameters = Some(self.rope());
        config.rope_theta = Some(self.rope_theta());
        config.rope_scaling = None;
        let mut json = serde_json::to_value(&config).expect("config serializes");
        json["torch_dtype"] = "float32".into();
        json
    }

    /// End-of-sequence ids (possibly several).
    pub fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> ModelConfig {
        let c: ModelConfig = serde_json::from_str(json).unwrap();
        c.validate().unwrap();
        c
    }

    #[test]
    fn defaults_match_transformers_llama_config() {
        let c = parse(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,
                "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#,
        );
        assert_eq!(c.num_kv_heads(), 2);
        assert_eq!(c.head_dim(), 4);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_theta(), 10_000.0);
        assert!(!c.tie_word_embeddings);
        assert!(!c.qkv_bias());
    }

    #[test]
    fn rope_theta_is_read_from_both_locations() {
        let old = parse(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,
                "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
                "rope_theta":100000.0}"#,
        );
        assert_eq!(old.rope_theta(), 100_000.0);
        let new = parse(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":8,
                "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,
                "rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,"factor":8.0,
                "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#,
        );
        assert_eq!(new.rope_theta(), 500_000.0);
        assert_eq!(new.rope().rope_type, "llama3");
    }

    #[test]
    fn qwen2_has_qkv_bias_but_no_o_bias() {
        let c = parse(
            r#"{"architectures":["Qwen2ForCausalLM"],"vocab_size":10,"hidden_size":8,
                "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#,
        );
        assert!(c.qkv_bias() && !c.o_bias());
    }

    #[test]
    fn invalid_configs_are_rejected_with_reasons() {
        let base =
            r#""vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1"#;
        let cases = [
            (
                format!(
                    r#"{{"architectures":["GPT2LMHeadModel"],{base},"num_attention_heads":2}}"#
                ),
                "unsupported architecture",
            ),
            (
                format!(
                    r#"{{"architectures":["LlamaForCausalLM"],{base},"num_attention_heads":3,"num_key_value_heads":2}}"#
                ),
                "multiple",
            ),
            (
                format!(
                    r#"{{"architectures":["LlamaForCausalLM"],{base},"num_attention_heads":2,"rope_scaling":{{"type":"yarn","factor":2.0}}}}"#
                ),
                "unsupported rope type",
            ),
            (
                format!(
                    r#"{{"architectures":["LlamaForCausalLM"],{base},"num_attention_heads":2,"rope_scaling":{{"type":"llama3","factor":2.0}}}}"#
                ),
                "missing its parameters",
            ),
        ];
        for (json, want) in cases {
            let c: ModelConfig = serde_json::from_str(&json).unwrap();
            let err = c.validate().unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
