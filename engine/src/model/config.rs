//! Model configuration, deserialized straight from an HF `config.json`.
//!
//! Defaults follow transformers' `LlamaConfig` / `Qwen2Config` for keys a checkpoint omits.
//! RoPE settings are accepted both in the transformers 5 form (`rope_parameters`) and the
//! older one (top-level `rope_theta` plus `rope_scaling`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The architectures oxrl implements, chosen from `architectures[0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3, SmolLM, TinyLlama, ...).
    Llama,
    /// `Qwen2ForCausalLM`: Llama with biases on q/k/v projections, optional sliding window.
    Qwen2,
    /// `Qwen3ForCausalLM`: Llama with per-head RMSNorm on queries and keys (before RoPE).
    Qwen3,
    /// `MistralForCausalLM`: Llama with a sliding window on every layer (when set).
    Mistral,
    /// `Gemma2ForCausalLM`: four norms per layer as `x̂·(1+w)`, GELU-tanh, scaled embeddings,
    /// alternating sliding-window layers, attention and final logit soft-capping.
    Gemma2,
    /// `Gemma3ForCausalLM` (text): Gemma 2 plus QK-norm, a 5:1 local:global layer pattern
    /// and a RoPE base per layer type.
    Gemma3,
}

impl Architecture {
    const NAMES: [(&'static str, Architecture); 6] = [
        ("LlamaForCausalLM", Architecture::Llama),
        ("Qwen2ForCausalLM", Architecture::Qwen2),
        ("Qwen3ForCausalLM", Architecture::Qwen3),
        ("MistralForCausalLM", Architecture::Mistral),
        ("Gemma2ForCausalLM", Architecture::Gemma2),
        ("Gemma3ForCausalLM", Architecture::Gemma3),
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
            Architecture::Qwen3 => "qwen3",
            Architecture::Mistral => "mistral",
            Architecture::Gemma2 => "gemma2",
            Architecture::Gemma3 => "gemma3_text",
        }
    }

    /// Whether this is a Gemma (norms as `x̂·(1+w)`, four per layer, scaled embeddings).
    pub fn is_gemma(self) -> bool {
        matches!(self, Architecture::Gemma2 | Architecture::Gemma3)
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
    /// transformers 5 location of RoPE base and scaling: one set, or (Gemma 3) one per layer
    /// type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeConfig>,
    /// Longest supported context.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix (default: Gemma yes, others no; see
    /// [`tied_embeddings`](Self::tied_embeddings)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
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
    /// Gemma's activation key (`gelu_pytorch_tanh`); Gemma ignores `hidden_act`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden_activation: Option<String>,
    /// Attention span of sliding-window layers; absent and `null` differ (Mistral and Gemma
    /// default an absent key to 4096), hence the double option.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub sliding_window: Option<Option<usize>>,
    /// Qwen2/Qwen3: whether `sliding_window` applies at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_sliding_window: Option<bool>,
    /// Qwen2/Qwen3 without `layer_types`: layers from this index on slide (default 28).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_window_layers: Option<usize>,
    /// Per layer, `full_attention` or `sliding_attention` (Qwen2/Qwen3/Gemma).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3 without `layer_types`: every n-th layer is global (default 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma 3 legacy key: RoPE base of the sliding layers (default 10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-1/2`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "whole_as_integer"
    )]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma: `cap * tanh(scores / cap)` on attention scores (Gemma 2 defaults to 50).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub attn_logit_softcapping: Option<Option<f64>>,
    /// Gemma: `cap * tanh(logits / cap)` on the output logits (Gemma 2 defaults to 30).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub final_logit_softcapping: Option<Option<f64>>,
    /// Every other key, checked by [`validate`](Self::validate): known to have no effect on
    /// the logits, or refused by name.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// RoPE settings: one set for all layers, or one per layer type (Gemma 3's
/// `{"full_attention": {...}, "sliding_attention": {...}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RopeConfig {
    /// Keyed by layer type; tried first, since any map would also parse as one set.
    PerLayerType(BTreeMap<String, RopeParameters>),
    /// The same for every layer.
    Shared(RopeParameters),
}

/// Whether a layer attends to every earlier token or to the last `sliding_window` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerType {
    /// `full_attention`.
    Full,
    /// `sliding_attention`.
    Sliding,
}

impl LayerType {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "full_attention" => Some(LayerType::Full),
            "sliding_attention" => Some(LayerType::Sliding),
            _ => None,
        }
    }

    /// transformers' name.
    pub fn hf_name(self) -> &'static str {
        match self {
            LayerType::Full => "full_attention",
            LayerType::Sliding => "sliding_attention",
        }
    }
}

/// Writes a whole number as an integer: transformers' strict configs type
/// `query_pre_attn_scalar` as `int` and refuse `256.0`.
fn whole_as_integer<S: serde::Serializer>(
    v: &Option<f64>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => s.serialize_i64(*x as i64),
        Some(x) => s.serialize_f64(*x),
        None => s.serialize_none(),
    }
}

/// Deserializes a present key (even `null`) as `Some`, so an absent one stays `None`.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
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
const GEMMA3_GLOBAL_ROPE_THETA: f64 = 1_000_000.0;
/// transformers' names for the tanh approximation of GELU (Gemma's MLP).
const GEMMA_ACTIVATIONS: [&str; 2] = ["gelu_pytorch_tanh", "gelu_tanh"];

fn default_rope() -> RopeParameters {
    RopeParameters {
        rope_type: default_rope_type(),
        rope_theta: None,
        factor: None,
        low_freq_factor: None,
        high_freq_factor: None,
        original_max_position_embeddings: None,
    }
}

fn validate_rope(rope: &RopeParameters) -> Result<(), String> {
    match rope.rope_type.as_str() {
        "default" => Ok(()),
        "linear" if rope.factor.is_some() => Ok(()),
        "llama3"
            if rope.factor.is_some()
                && rope.low_freq_factor.is_some()
                && rope.high_freq_factor.is_some()
                && rope.original_max_position_embeddings.is_some() =>
        {
            Ok(())
        }
        "linear" | "llama3" => Err(format!(
            "rope type {:?} is missing its parameters",
            rope.rope_type
        )),
        other => Err(format!(
            "unsupported rope type {other:?} (default, linear, llama3)"
        )),
    }
}

/// Keys transformers reads for the supported architectures that change what the model
/// computes, with the only value oxrl implements (`None`: any value is refused). Every other
/// key oxrl does not parse changes nothing in transformers either (generation defaults,
/// bookkeeping such as `transformers_version`, `use_cache`, `initializer_range`).
const UNIMPLEMENTED: [(&str, Option<&str>); 4] = [
    ("attention_dropout", Some("0")),
    ("use_bidirectional_attention", Some("false")),
    ("quantization_config", None),
    ("partial_rotary_factor", Some("1")),
];

fn check_unimplemented(key: &str, value: &serde_json::Value) -> Result<(), String> {
    let Some((_, accepted)) = UNIMPLEMENTED.iter().find(|(k, _)| *k == key) else {
        return Ok(());
    };
    let inert = value.is_null()
        || accepted.is_some_and(|ok| match value {
            serde_json::Value::Number(n) => n.as_f64() == ok.parse::<f64>().ok(),
            serde_json::Value::Bool(b) => ok == b.to_string(),
            _ => false,
        });
    if inert {
        return Ok(());
    }
    Err(match accepted {
        Some(ok) => format!("`{key}` = {value} is not implemented (only {ok})"),
        None => format!("`{key}` is not implemented (load an unquantized checkpoint)"),
    })
}

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

    /// Checks the invariants the model relies on, and refuses every key whose value asks
    /// for something oxrl does not implement (rather than giving logits that differ from
    /// transformers').
    pub fn validate(&self) -> Result<(), String> {
        let name = self
            .architectures
            .first()
            .ok_or("`architectures` is missing or empty")?;
        let arch = Architecture::from_hf_name(name).ok_or_else(|| {
            format!(
                "unsupported architecture {name:?} (supported: {})",
                Architecture::supported()
            )
        })?;
        let act = self.activation();
        let supported = if arch.is_gemma() {
            GEMMA_ACTIVATIONS.as_slice()
        } else {
            ["silu"].as_slice()
        };
        if !supported.contains(&act) {
            return Err(format!(
                "unsupported {} {act:?} for {name} (supported: {})",
                if arch.is_gemma() {
                    "hidden_activation"
                } else {
                    "hidden_act"
                },
                supported.join(", ")
            ));
        }
        let (heads, kv) = (self.num_attention_heads, self.num_kv_heads());
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return Err(format!(
                "num_attention_heads ({heads}) must be a positive multiple of num_key_value_heads ({kv})"
            ));
        }
        if self.head_dim.is_none()
            && matches!(
                self.arch(),
                Architecture::Llama | Architecture::Qwen2 | Architecture::Mistral
            )
            && !self.hidden_size.is_multiple_of(heads)
        {
            return Err("hidden_size must be divisible by num_attention_heads".into());
        }
        if arch == Architecture::Gemma3 && self.attn_logit_softcapping.flatten().is_some() {
            // transformers' Gemma 3 never passes it to attention; vLLM applies it.
            return Err(
                "`attn_logit_softcapping` is not implemented for Gemma3ForCausalLM \
                 (transformers ignores it, vLLM applies it: the two would disagree)"
                    .into(),
            );
        }
        self.layer_types()?;
        for layer_type in [LayerType::Full, LayerType::Sliding] {
            validate_rope(&self.rope_for(layer_type))?;
        }
        for (key, value) in &self.other {
            check_unimplemented(key, value)?;
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width; an absent key means 128 for Qwen3 and 256 for Gemma (their config
    /// classes' defaults), `hidden_size / num_attention_heads` elsewhere.
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(match self.arch() {
            Architecture::Qwen3 => 128,
            Architecture::Gemma2 | Architecture::Gemma3 => 256,
            _ => self.hidden_size / self.num_attention_heads,
        })
    }

    fn arch(&self) -> Architecture {
        self.architecture().unwrap_or(Architecture::Llama)
    }

    /// The MLP's activation: Gemma's `hidden_activation`, everyone else's `hidden_act`.
    pub fn activation(&self) -> &str {
        match (self.arch().is_gemma(), &self.hidden_activation) {
            (true, Some(act)) => act,
            (true, None) => "gelu_pytorch_tanh",
            (false, _) => &self.hidden_act,
        }
    }

    /// Whether `lm_head` is the embedding matrix (an absent key: Gemma yes, others no).
    pub fn tied_embeddings(&self) -> bool {
        self.tie_word_embeddings
            .unwrap_or_else(|| self.arch().is_gemma())
    }

    /// Whether q/k/v projections carry a bias (Qwen2 always; Mistral never).
    pub fn qkv_bias(&self) -> bool {
        match self.arch() {
            Architecture::Qwen2 => true,
            Architecture::Mistral => false,
            _ => self.attention_bias,
        }
    }

    /// Whether the output projection carries a bias (only where `attention_bias` covers it).
    pub fn o_bias(&self) -> bool {
        match self.arch() {
            Architecture::Qwen2 | Architecture::Mistral => false,
            _ => self.attention_bias,
        }
    }

    /// Whether MLP projections carry a bias (only Llama reads `mlp_bias`).
    pub fn mlp_bias(&self) -> bool {
        self.arch() == Architecture::Llama && self.mlp_bias
    }

    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3, Gemma 3).
    pub fn qk_norm(&self) -> bool {
        matches!(self.arch(), Architecture::Qwen3 | Architecture::Gemma3)
    }

    /// The multiplier of `q·k`: `query_pre_attn_scalar^-1/2` for Gemma, else `head_dim^-1/2`.
    pub fn attention_scale(&self) -> f64 {
        let scalar = match self.arch().is_gemma() {
            true => self.query_pre_attn_scalar.unwrap_or(256.0),
            false => self.head_dim() as f64,
        };
        scalar.powf(-0.5)
    }

    /// Gemma 2's soft-capping of attention scores (default 50).
    pub fn attention_softcap(&self) -> Option<f64> {
        match self.arch() {
            Architecture::Gemma2 => self.attn_logit_softcapping.unwrap_or(Some(50.0)),
            _ => None, // Gemma 3 refuses it (validate)
        }
    }

    /// Gemma's soft-capping of output logits (Gemma 2 defaults to 30).
    pub fn final_softcap(&self) -> Option<f64> {
        match self.arch() {
            Architecture::Gemma2 => self.final_logit_softcapping.unwrap_or(Some(30.0)),
            Architecture::Gemma3 => self.final_logit_softcapping.flatten(),
            _ => None,
        }
    }

    /// Gemma multiplies embeddings by `sqrt(hidden_size)`.
    pub fn embedding_scale(&self) -> Option<f64> {
        self.arch()
            .is_gemma()
            .then(|| (self.hidden_size as f64).sqrt())
    }

    /// The span of sliding-window layers, `None` when no layer slides. transformers' rules:
    /// Mistral and Gemma read `sliding_window` (an absent key means 4096), Qwen only with
    /// `use_sliding_window`.
    pub fn sliding_window(&self) -> Option<usize> {
        let window = self.sliding_window.unwrap_or(Some(4096));
        match self.arch() {
            Architecture::Llama => None,
            Architecture::Qwen2 | Architecture::Qwen3 => {
                window.filter(|_| self.use_sliding_window == Some(true))
            }
            Architecture::Mistral | Architecture::Gemma2 | Architecture::Gemma3 => window,
        }
    }

    /// Each layer's attention type, from `layer_types` or the architecture's default pattern.
    pub fn layer_types(&self) -> Result<Vec<LayerType>, String> {
        let n = self.num_hidden_layers;
        let arch = self.arch();
        let explicit = match (&self.layer_types, arch) {
            (Some(names), Architecture::Qwen2 | Architecture::Qwen3)
            | (Some(names), Architecture::Gemma2 | Architecture::Gemma3) => Some(names),
            _ => None, // Llama and Mistral do not read `layer_types`
        };
        let types: Vec<LayerType> = match explicit {
            Some(names) => {
                if names.len() != n {
                    return Err(format!(
                        "layer_types has {} entries for {n} layers",
                        names.len()
                    ));
                }
                names
                    .iter()
                    .map(|t| {
                        LayerType::parse(t).ok_or_else(|| {
                            format!(
                                "unsupported layer type {t:?} (full_attention, sliding_attention)"
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            }
            None => (0..n).map(|i| self.default_layer_type(i)).collect(),
        };
        let slides = types.contains(&LayerType::Sliding);
        if slides && self.sliding_window().is_none() {
            return Err(match arch {
                Architecture::Qwen2 | Architecture::Qwen3 => {
                    "layer_types has sliding_attention layers but use_sliding_window is not true"
                        .into()
                }
                _ => "layer_types has sliding_attention layers but sliding_window is null".into(),
            });
        }
        if self.sliding_window() == Some(0) {
            return Err("sliding_window must be at least 1".into());
        }
        Ok(types)
    }

    fn default_layer_type(&self, layer: usize) -> LayerType {
        let sliding = match self.arch() {
            Architecture::Llama => false,
            Architecture::Mistral => self.sliding_window().is_some(),
            Architecture::Qwen2 | Architecture::Qwen3 => {
                self.sliding_window().is_some() && layer >= self.max_window_layers.unwrap_or(28)
            }
            Architecture::Gemma2 => !(layer + 1).is_multiple_of(2),
            Architecture::Gemma3 => {
                !(layer + 1).is_multiple_of(self.sliding_window_pattern.unwrap_or(6))
            }
        };
        if sliding {
            LayerType::Sliding
        } else {
            LayerType::Full
        }
    }

    /// RoPE settings merged from whichever keys the checkpoint used.
    pub fn rope(&self) -> RopeParameters {
        self.rope_for(LayerType::Full)
    }

    /// RoPE settings of one layer type. Only Gemma 3 gives sliding layers their own: the
    /// `sliding_attention` entry, or the legacy `rope_local_base_freq` (default 10,000); its
    /// global layers default to a base of 1,000,000.
    pub fn rope_for(&self, layer_type: LayerType) -> RopeParameters {
        let gemma3 = self.arch() == Architecture::Gemma3;
        let local = gemma3 && layer_type == LayerType::Sliding;
        let given = match &self.rope_parameters {
            Some(RopeConfig::PerLayerType(by_type)) => by_type.get(layer_type.hf_name()).cloned(),
            Some(RopeConfig::Shared(rope)) if !local => Some(rope.clone()),
            _ if !local => self.rope_scaling.clone(),
            _ => None,
        };
        let mut rope = given.unwrap_or_else(default_rope);
        if rope.rope_theta.is_none() {
            rope.rope_theta = Some(match (gemma3, local) {
                (true, true) => self.rope_local_base_freq.unwrap_or(DEFAULT_ROPE_THETA),
                (true, false) => self.rope_theta.unwrap_or(GEMMA3_GLOBAL_ROPE_THETA),
                _ => self.rope_theta.unwrap_or(DEFAULT_ROPE_THETA),
            });
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
        config.tie_word_embeddings = Some(self.tied_embeddings());
        config.rope_parameters = Some(if self.arch() == Architecture::Gemma3 {
            RopeConfig::PerLayerType(
                [LayerType::Full, LayerType::Sliding]
                    .map(|t| (t.hf_name().to_owned(), self.rope_for(t)))
                    .into(),
            )
        } else {
            RopeConfig::Shared(self.rope())
        });
        config.rope_theta = Some(self.rope_theta());
        config.rope_scaling = None;
        config.rope_local_base_freq = None;
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
        assert!(!c.tied_embeddings());
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

    fn config(arch: &str, extra: &str) -> ModelConfig {
        let json = format!(
            r#"{{"architectures":["{arch}"],"vocab_size":10,"hidden_size":8,
                "intermediate_size":16,"num_hidden_layers":2,"num_attention_heads":2{extra}}}"#
        );
        serde_json::from_str(&json).unwrap()
    }

    #[test]
    fn options_oxrl_does_not_implement_are_refused_by_name() {
        let cases = [
            (
                "LlamaForCausalLM",
                r#","attention_dropout":0.1"#,
                "`attention_dropout`",
            ),
            (
                "Gemma3ForCausalLM",
                r#","use_bidirectional_attention":true"#,
                "`use_bidirectional_attention`",
            ),
            (
                "Gemma3ForCausalLM",
                r#","attn_logit_softcapping":50.0"#,
                "`attn_logit_softcapping`",
            ),
            (
                "Qwen2ForCausalLM",
                r#","quantization_config":{"quant_method":"gptq"}"#,
                "`quantization_config`",
            ),
            (
                "Gemma3ForCausalLM",
                r#","hidden_activation":"relu""#,
                "hidden_activation",
            ),
            (
                "MistralForCausalLM",
                r#","hidden_act":"gelu""#,
                "hidden_act",
            ),
            (
                "Qwen3ForCausalLM",
                r#","use_sliding_window":true,"layer_types":["full_attention","chunked_attention"]"#,
                "chunked_attention",
            ),
            (
                "Qwen3ForCausalLM",
                r#","layer_types":["full_attention"]"#,
                "1 entries for 2 layers",
            ),
            (
                "Qwen2ForCausalLM",
                r#","layer_types":["sliding_attention","full_attention"]"#,
                "use_sliding_window",
            ),
            ("MistralForCausalLM", r#","sliding_window":0"#, "at least 1"),
            (
                "Gemma3ForCausalLM",
                r#","rope_parameters":{"full_attention":{"rope_type":"yarn","factor":2.0}}"#,
                "yarn",
            ),
        ];
        for (arch, extra, want) in cases {
            let err = config(arch, extra).validate().unwrap_err();
            assert!(err.contains(want), "{arch}{extra}: {err}");
        }
        // The inert values of the same keys load.
        config(
            "LlamaForCausalLM",
            r#","attention_dropout":0.0,"use_cache":true,"transformers_version":"5.0""#,
        )
        .validate()
        .unwrap();
    }

    #[test]
    fn per_architecture_defaults_follow_transformers() {
        let mistral = config("MistralForCausalLM", "");
        assert_eq!(mistral.sliding_window(), Some(4096));
        assert_eq!(mistral.layer_types().unwrap(), [LayerType::Sliding; 2]);
        let unwindowed = config("MistralForCausalLM", r#","sliding_window":null"#);
        assert_eq!(unwindowed.sliding_window(), None);
        let qwen = config("Qwen2ForCausalLM", r#","sliding_window":4"#);
        assert_eq!(qwen.sliding_window(), None, "Qwen needs use_sliding_window");
        let qwen = config(
            "Qwen3ForCausalLM",
            r#","use_sliding_window":true,"max_window_layers":1"#,
        );
        assert_eq!(
            qwen.layer_types().unwrap(),
            [LayerType::Full, LayerType::Sliding]
        );
        assert!(qwen.qk_norm() && !qwen.qkv_bias());
        let gemma2 = config("Gemma2ForCausalLM", "");
        assert!(gemma2.tied_embeddings());
        assert_eq!(
            (gemma2.attention_softcap(), gemma2.final_softcap()),
            (Some(50.0), Some(30.0))
        );
        assert_eq!(
            gemma2.layer_types().unwrap(),
            [LayerType::Sliding, LayerType::Full]
        );
        let mut gemma3 = config("Gemma3ForCausalLM", "");
        gemma3.num_hidden_layers = 6;
        assert_eq!(gemma3.final_softcap(), None);
        let types = gemma3.layer_types().unwrap();
        assert_eq!(types.iter().filter(|t| **t == LayerType::Full).count(), 1);
        assert_eq!(types[5], LayerType::Full);
        assert_eq!(gemma3.rope_for(LayerType::Full).rope_theta, Some(1e6));
        assert_eq!(gemma3.rope_for(LayerType::Sliding).rope_theta, Some(1e4));
        assert_eq!(gemma3.attention_scale(), 1.0 / 16.0);
        assert_eq!(gemma3.activation(), "gelu_pytorch_tanh");
    }

    #[test]
    fn hf_json_round_trips_the_resolved_config() {
        let gemma3 = config(
            "Gemma3ForCausalLM",
            r#","rope_local_base_freq":500.0,"query_pre_attn_scalar":64,"sliding_window":8"#,
        );
        let json = gemma3.to_hf_json();
        assert_eq!(json["query_pre_attn_scalar"], serde_json::json!(64));
        assert_eq!(json["model_type"], "gemma3_text");
        let back: ModelConfig = serde_json::from_value(json).unwrap();
        back.validate().unwrap();
        for t in [LayerType::Full, LayerType::Sliding] {
            assert_eq!(back.rope_for(t), gemma3.rope_for(t));
        }
        assert_eq!(back.sliding_window(), Some(8));
        assert!(back.tied_embeddings());
    }
}
