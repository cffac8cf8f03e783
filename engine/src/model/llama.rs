//! Llama-family causal decoder (Llama 2/3, SmolLM, Qwen2): RMSNorm, RoPE, grouped-query
//! attention through libtorch's `scaled_dot_product_attention`, SwiGLU MLP, optional q/k/v
//! bias, tied or separate `lm_head`. Mirrors transformers' `modeling_llama.py`; parameter
//! paths are the HF checkpoint keys (`model.layers.{i}.self_attn.q_proj.weight`), so loading
//! is by name.
//!
//! Optional LoRA adapters (Hu et al. 2021, PEFT naming: `{proj}.lora_A.weight` `[r, in]`,
//! `{proj}.lora_B.weight` `[out, r]`, output `W x + (alpha / r) B A dropout(x)`) can sit on any
//! projection; one shared switch turns them off (the frozen base is the reference model).
//!
//! With autograd off on f32 CPU tensors, each layer's `forward` first tries the matching fast
//! path in [`crate::kernels`] (one call per op) and runs the libtorch ops written here otherwise.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

use super::config::{LayerType, ModelConfig};
use super::kv_cache::KvCache;
use super::rope::Rope;
use crate::kernels::{decode_attention, decode_linear, fused};

/// Root-mean-square layer norm, computed in f32 like transformers' `LlamaRMSNorm`, or in
/// Gemma's form `x̂·(1 + w)`, scaled in f32 before the cast back.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    gemma: bool,
}

impl RmsNorm {
    /// A norm over the last dimension of width `dim`.
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.ones("weight", &[dim]),
            eps,
            gemma: false,
        }
    }

    /// The norm `cfg`'s architecture uses (Gemma's stores `w` where Llama's stores `1 + w`).
    fn of(p: nn::Path, dim: i64, cfg: &ModelConfig) -> Self {
        let gemma = cfg.architecture().is_some_and(|a| a.is_gemma());
        Self {
            weight: if gemma {
                p.zeros("weight", &[dim])
            } else {
                p.ones("weight", &[dim])
            },
            eps: cfg.rms_norm_eps,
            gemma,
        }
    }

    /// Normalises `x` (`[.., dim]`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        // The fast path is f32 only, where scaling before or after the cast is the same.
        let fast = match self.gemma {
            true if x.kind() == Kind::Float && !x.requires_grad() => {
                fused::rms_norm(x, &(&self.weight + 1.0), self.eps)
            }
            true => None,
            false => fused::rms_norm(x, &self.weight, self.eps),
        };
        fast.unwrap_or_else(|| self.forward_torch(x))
    }

    fn forward_torch(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x32 * (var + self.eps).rsqrt();
        if self.gemma {
            (normed * (self.weight.to_kind(Kind::Float) + 1.0)).to_kind(kind)
        } else {
            &self.weight * normed.to_kind(kind)
        }
    }
}

/// Which projections get LoRA adapters, and their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// Rank.
    pub r: i64,
    /// Scale numerator: the update is `alpha / r * B A`.
    pub alpha: f64,
    /// Dropout on the adapter input while training.
    pub dropout: f64,
    /// Projection names (`q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`,
    /// `down_proj`).
    pub target_modules: Vec<String>,
}

/// Switches shared by all adapters of one model.
#[derive(Debug, Default)]
pub struct AdapterSwitch {
    disabled: AtomicBool,
    training: AtomicBool,
}

#[derive(Debug)]
struct Lora {
    a: Tensor,
    b: Tensor,
    scaling: f64,
    dropout: f64,
    switch: Arc<AdapterSwitch>,
}

/// A linear projection, optionally with a LoRA adapter.
#[derive(Debug)]
pub struct Linear {
    base: nn::Linear,
    lora: Option<Lora>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = match decode_linear::linear(x, &self.base.ws) {
            Some(y) => match &self.base.bs {
                Some(bias) => y + bias,
                None => y,
            },
            None => self.base.forward(x),
        };
        match &self.lora {
            Some(l) if !l.switch.disabled.load(Ordering::Relaxed) => {
                let train = l.switch.training.load(Ordering::Relaxed);
                let h = if l.dropout > 0.0 && train {
                    x.dropout(l.dropout, true)
                } else {
                    x.shallow_clone()
                };
                y + h.linear::<Tensor>(&l.a, None).linear::<Tensor>(&l.b, None) * l.scaling
            }
            _ => y,
        }
    }
}

/// What building a layer needs besides the config: the adapters to create, if any.
#[derive(Debug, Clone, Copy)]
struct Build<'a> {
    lora: Option<(&'a LoraSpec, &'a Arc<AdapterSwitch>)>,
}

fn linear(
    p: &nn::Path,
    name: &str,
    input: usize,
    output: usize,
    bias: bool,
    build: Build,
) -> Linear {
    let cfg = nn::LinearConfig {
        bias,
        ..Default::default()
    };
    let base = nn::linear(p / name, input as i64, output as i64, cfg);
    let lora = build.lora.and_then(|(spec, switch)| {
        if !spec.target_modules.iter().any(|m| m == name) {
            return None;
        }
        let bound = 1.0 / (input as f64).sqrt(); // PEFT: kaiming_uniform(a = sqrt(5))
        let a = (p / name / "lora_A").uniform("weight", &[spec.r, input as i64], -bound, bound);
        let b = (p / name / "lora_B").zeros("weight", &[output as i64, spec.r]);
        Some(Lora {
            a,
            b,
            scaling: spec.alpha / spec.r as f64,
            dropout: spec.dropout,
            switch: Arc::clone(switch),
        })
    });
    Linear { base, lora }
}

/// Grouped-query self-attention, with the options of the supported architectures: per-head
/// RMSNorm on queries and keys, a score scale other than `head_dim^-1/2`, soft-capped scores.
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    /// Multiplies the queries so that the usual `head_dim^-1/2` gives the model's scale.
    query_scale: Option<f64>,
    softcap: Option<f64>,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// The `self_attn` block at `p`.
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        Self::build(p, cfg, Build { lora: None })
    }

    fn build(p: nn::Path, cfg: &ModelConfig, b: Build) -> Self {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_kv_heads());
        Self {
            q_proj: linear(&p, "q_proj", h, nq * hd, cfg.qkv_bias(), b),
            k_proj: linear(&p, "k_proj", h, nkv * hd, cfg.qkv_bias(), b),
            v_proj: linear(&p, "v_proj", h, nkv * hd, cfg.qkv_bias(), b),
            o_proj: linear(&p, "o_proj", nq * hd, h, cfg.o_bias(), b),
            qk_norm: cfg.qk_norm().then(|| {
                let norm = |name: &str| RmsNorm::of(&p / name, hd as i64, cfg);
                (norm("q_norm"), norm("k_norm"))
            }),
            query_scale: Some(cfg.attention_scale() * (hd as f64).sqrt())
                .filter(|s| (s - 1.0).abs() > 1e-12),
            softcap: cfg.attention_softcap(),
            num_heads: nq as i64,
            num_kv_heads: nkv as i64,
            head_dim: hd as i64,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`, `positions`: `[batch, seq]`
    /// - `mask`: `None` for plain causal attention, else bool `[batch, 1, seq, keys]`
    ///   (true = may attend)
    fn forward(&self, x: &Tensor, ctx: &mut LayerContext) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input is [batch, seq, hidden]");
        let hd = self.head_dim;
        let heads = |y: Tensor, n: i64| y.view([b, t, n, hd]).transpose(1, 2);
        let rotated = |proj: &Linear, norm: Option<&RmsNorm>, n: i64| {
            let mut y = proj.forward(x);
            if let Some(norm) = norm {
                y = norm.forward(&y.view([b, t, n, hd])).view([b, t, n * hd]);
            }
            if fused::rope_in_place(&y, ctx.cos, ctx.sin) {
                heads(y, n)
            } else {
                Rope::rotate(&heads(y, n), ctx.cos, ctx.sin)
            }
        };
        let (q_norm, k_norm) = self.qk_norm.as_ref().map(|(q, k)| (q, k)).unzip();
        let mut q = rotated(&self.q_proj, q_norm, self.num_heads);
        if let Some(scale) = self.query_scale {
            q *= scale;
        }
        let k = rotated(&self.k_proj, k_norm, self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let (k, v) = match ctx.cache.as_deref_mut() {
            Some(cache) => cache.append(ctx.layer, k, v),
            None => (k, v),
        };
        let out = match self.softcap {
            Some(cap) => softcapped_attention(&q, &k, &v, ctx.mask, cap),
            None => {
                let is_causal = ctx.mask.is_none() && t > 1;
                let gqa = self.num_heads != self.num_kv_heads;
                decode_attention::attend(&q, &k, &v, ctx.mask).unwrap_or_else(|| {
                    Tensor::scaled_dot_product_attention(
                        &q, &k, &v, ctx.mask, 0.0, is_causal, None, gqa,
                    )
                })
            }
        };
        self.o_proj.forward(
            &out.transpose(1, 2)
                .reshape([b, t, self.num_heads * self.head_dim]),
        )
    }
}

/// Attention with `cap * tanh(scores / cap)` on the scores (Gemma), written out as
/// transformers' eager attention is: scores in the inputs' dtype, softmax in f32. `mask` must
/// be given whenever a query may not see every key (the model always builds one here).
fn softcapped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    cap: f64,
) -> Tensor {
    let groups = q.size()[1] / k.size()[1];
    let repeat = |x: &Tensor| x.repeat_interleave_self_int(groups, Some(1), None);
    let (k, v) = (repeat(k), repeat(v));
    let d = *q.size().last().expect("head_dim") as f64;
    let scores = q.matmul(&k.transpose(-2, -1)) / d.sqrt();
    let mut scores = (scores / cap).tanh() * cap;
    if let Some(mask) = mask {
        // transformers' finite minimum: a fully masked (padding) query stays finite.
        scores = scores.masked_fill(&mask.logical_not(), f64::from(f32::MIN));
    }
    scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy)]
enum Activation {
    Silu,
    /// `gelu_pytorch_tanh`.
    GeluTanh,
}

/// Gated feed-forward block: `down(act(gate(x)) * up(x))` (SwiGLU, or GeGLU for Gemma).
#[derive(Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    /// The `mlp` block at `p`.
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        Self::build(p, cfg, Build { lora: None })
    }

    fn build(p: nn::Path, cfg: &ModelConfig, b: Build) -> Self {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias());
        Self {
            gate_proj: linear(&p, "gate_proj", h, i, bias, b),
            up_proj: linear(&p, "up_proj", h, i, bias, b),
            down_proj: linear(&p, "down_proj", i, h, bias, b),
            // validate() admits silu and the tanh GELUs only.
            activation: match cfg.activation() {
                "silu" => Activation::Silu,
                _ => Activation::GeluTanh,
            },
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (gate, up) = (self.gate_proj.forward(x), self.up_proj.forward(x));
        let hidden = match self.activation {
            Activation::Silu if fused::silu_mul_in_place(&gate, &up) => gate,
            Activation::Silu => gate.silu() * up,
            Activation::GeluTanh => gate.gelu("tanh") * up,
        };
        self.down_proj.forward(&hidden)
    }
}

/// A block's norms: Llama's two pre-norms, or Gemma's four (a norm before and after each of
/// attention and MLP; Gemma's `post_attention_layernorm` normalises the attention output,
/// where Llama's is the MLP's pre-norm).
#[derive(Debug)]
enum Norms {
    Pre {
        input_layernorm: RmsNorm,
        post_attention_layernorm: RmsNorm,
    },
    Sandwich {
        input_layernorm: RmsNorm,
        post_attention_layernorm: RmsNorm,
        pre_feedforward_layernorm: RmsNorm,
        post_feedforward_layernorm: RmsNorm,
    },
}

/// One transformer block and how it attends: its RoPE table and sliding window.
#[derive(Debug)]
pub struct DecoderLayer {
    norms: Norms,
    self_attn: Attention,
    mlp: Mlp,
    kind: LayerKind,
}

/// Which of a forward pass's RoPE tables and masks a layer uses.
#[derive(Debug, Clone, Copy)]
struct LayerKind {
    /// Index into [`Llama`]'s ropes (0 = full attention's, 1 = Gemma 3's local one).
    rope: usize,
    sliding: bool,
}

impl DecoderLayer {
    /// Layer `i` of `cfg` at `p` (`model.layers.{i}`).
    pub fn new(p: nn::Path, cfg: &ModelConfig, i: usize) -> Self {
        let kinds = layer_kinds(cfg);
        Self::build(p, cfg, Build { lora: None }, kinds[i])
    }

    fn build(p: nn::Path, cfg: &ModelConfig, b: Build, kind: LayerKind) -> Self {
        let norm = |name: &str| RmsNorm::of(&p / name, cfg.hidden_size as i64, cfg);
        let norms = if cfg.architecture().is_some_and(|a| a.is_gemma()) {
            Norms::Sandwich {
                input_layernorm: norm("input_layernorm"),
                post_attention_layernorm: norm("post_attention_layernorm"),
                pre_feedforward_layernorm: norm("pre_feedforward_layernorm"),
                post_feedforward_layernorm: norm("post_feedforward_layernorm"),
            }
        } else {
            Norms::Pre {
                input_layernorm: norm("input_layernorm"),
                post_attention_layernorm: norm("post_attention_layernorm"),
            }
        };
        Self {
            norms,
            self_attn: Attention::build(&p / "self_attn", cfg, b),
            mlp: Mlp::build(&p / "mlp", cfg, b),
            kind,
        }
    }

    fn forward(&self, x: Tensor, ctx: &mut LayerContext) -> Tensor {
        match &self.norms {
            Norms::Pre {
                input_layernorm,
                post_attention_layernorm,
            } => {
                let attn = self.self_attn.forward(&input_layernorm.forward(&x), ctx);
                let x = residual(x, &attn);
                let mlp = self.mlp.forward(&post_attention_layernorm.forward(&x));
                residual(x, &mlp)
            }
            Norms::Sandwich {
                input_layernorm,
                post_attention_layernorm,
                pre_feedforward_layernorm,
                post_feedforward_layernorm,
            } => {
                let attn = self.self_attn.forward(&input_layernorm.forward(&x), ctx);
                let x = residual(x, &post_attention_layernorm.forward(&attn));
                let mlp = self.mlp.forward(&pre_feedforward_layernorm.forward(&x));
                residual(x, &post_feedforward_layernorm.forward(&mlp))
            }
        }
    }
}

/// Each layer's RoPE table and window, from the config (validated: `layer_types` parses).
fn layer_kinds(cfg: &ModelConfig) -> Vec<LayerKind> {
    let types = cfg.layer_types().unwrap_or_default();
    let local_rope = cfg.rope_for(LayerType::Sliding) != cfg.rope_for(LayerType::Full);
    types
        .into_iter()
        .map(|t| LayerKind {
            rope: usize::from(local_rope && t == LayerType::Sliding),
            sliding: t == LayerType::Sliding,
        })
        .collect()
}

/// `x + y` for the residual stream, in place when no graph is recorded (`x` is the layer's own).
fn residual(x: Tensor, y: &Tensor) -> Tensor {
    if fused::add_in_place(&x, y) {
        x
    } else {
        x + y
    }
}

/// Masks and RoPE tables shared by every layer of one pass (see [`Llama::stack_context`]).
#[derive(Debug)]
pub(crate) struct StackContext {
    /// `(cos, sin)` per RoPE of the model.
    tables: Vec<(Tensor, Tensor)>,
    full_mask: Option<Tensor>,
    sliding_mask: Option<Tensor>,
}

/// What one layer of a forward pass sees.
struct LayerContext<'a> {
    /// The layer's RoPE tables for this call's positions (computed once per table).
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// Full or sliding-window mask, as the layer attends.
    mask: Option<&'a Tensor>,
    cache: Option<&'a mut KvCache>,
    layer: usize,
}

/// The full causal LM: embeddings, decoder stack, final norm, `lm_head`.
#[derive(Debug)]
pub struct Llama {
    cfg: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    /// The full-attention layers' RoPE, then (Gemma 3) the sliding layers'.
    ropes: Vec<Rope>,
    adapters: Option<Arc<AdapterSwitch>>,
    adapter_dropout: f64,
}

impl Llama {
    /// Creates the parameters under `root` (normally a `VarStore`'s root); with tied
    /// embeddings `lm_head` shares `model.embed_tokens.weight`.
    pub fn new(root: &nn::Path, cfg: &ModelConfig) -> Self {
        Self::with_lora(root, cfg, None)
    }

    /// Like [`new`](Self::new), with LoRA adapters on the projections `lora` names
    /// (`lora_B` starts at zero, so the model's outputs are unchanged until it is trained).
    pub fn with_lora(root: &nn::Path, cfg: &ModelConfig, lora: Option<&LoraSpec>) -> Self {
        let model = root / "model";
        let (vocab, h) = (cfg.vocab_size as i64, cfg.hidden_size as i64);
        let embed_tokens = (&model / "embed_tokens").randn("weight", &[vocab, h], 0.0, 0.02);
        let switch = lora.map(|_| Arc::new(AdapterSwitch::default()));
        let build = Build {
            lora: lora.zip(switch.as_ref()),
        };
        let layers = layer_kinds(cfg)
            .into_iter()
            .enumerate()
            .map(|(i, kind)| DecoderLayer::build(&model / "layers" / i, cfg, build, kind))
            .collect();
        let lm_head = if cfg.tied_embeddings() {
            embed_tokens.shallow_clone()
        } else {
            (root / "lm_head").randn("weight", &[vocab, h], 0.0, 0.02)
        };
        Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::of(&model / "norm", h, cfg),
            lm_head,
            ropes: [LayerType::Full, LayerType::Sliding]
                .map(|t| Rope::with(cfg.head_dim(), &cfg.rope_for(t), root.device()))
                .into(),
            adapters: switch,
            adapter_dropout: lora.map_or(0.0, |l| l.dropout),
        }
    }

    /// The adapters' dropout probability (0 without adapters).
    pub fn adapter_dropout(&self) -> f64 {
        self.adapter_dropout
    }

    /// Whether the model carries LoRA adapters.
    pub fn has_adapters(&self) -> bool {
        self.adapters.is_some()
    }

    /// Turns the adapters on or off (off = the frozen base model); no-op without adapters.
    pub fn set_adapters_enabled(&self, enabled: bool) {
        if let Some(s) = &self.adapters {
            s.disabled.store(!enabled, Ordering::Relaxed);
        }
    }

    /// Whether adapter dropout is active (training forward passes).
    pub fn set_training(&self, training: bool) {
        if let Some(s) = &self.adapters {
            s.training.store(training, Ordering::Relaxed);
        }
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    /// A fresh cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Final hidden states (after the last norm).
    ///
    /// `key_mask` marks which key positions are real tokens (false = padding); it covers the
    /// cached positions plus this call's, and may be omitted when nothing is padded.
    ///
    /// # Shapes
    /// - `tokens`, `positions`: int64 `[batch, seq]`
    /// - `key_mask`: bool `[batch, cached + seq]`
    /// - returns `[batch, seq, hidden]`
    pub fn forward_hidden(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let mut x = self.embed(tokens);
        let stack = self.stack_context(positions, past, key_mask, x.kind());
        for i in 0..self.layers.len() {
            x = self.run_layer(i, x, &stack, cache.as_deref_mut().map(|c| (c, i)));
        }
        self.final_norm(&x)
    }

    /// The number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings, scaled where the architecture scales them: the decoder stack's input.
    pub(crate) fn embed(&self, tokens: &Tensor) -> Tensor {
        let x = self.embed_tokens.embedding_lookup(tokens);
        match self.cfg.embedding_scale() {
            // transformers keeps the scale as an f32 tensor cast to the weights' dtype.
            Some(scale) => {
                let scale = Tensor::from(scale as f32).to_kind(x.kind());
                x * scale
            }
            None => x,
        }
    }

    /// The backward of [`embed`](Self::embed) written out: adds the embedding table's
    /// gradient for `grad` (on `embed(tokens)`) into the table's `grad_buffer`, in place, one
    /// row per token. Autograd's embedding backward first builds a dense `[vocab, hidden]`
    /// gradient and then adds it, 0.3-0.6 GB at Qwen's 151,936 tokens.
    pub(crate) fn embed_backward(&self, tokens: &Tensor, grad: &Tensor, grad_buffer: &mut Tensor) {
        tch::no_grad(|| {
            let mut grad = grad.to_kind(self.embed_tokens.kind());
            if let Some(scale) = self.cfg.embedding_scale() {
                // As autograd through `x * scale`: the product in the weights' dtype.
                grad *= Tensor::from(scale as f32).to_kind(grad.kind());
            }
            let h = grad.size()[grad.dim() - 1];
            let _ = grad_buffer.index_add_(0, &tokens.reshape([-1]), &grad.reshape([-1, h]));
        })
    }

    /// The embedding table (the head's weight too where they are tied).
    pub(crate) fn embed_weight(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// What every layer of one pass over `positions` (`[batch, seq]`, after `past` cached
    /// positions) shares: the masks and RoPE tables, built once.
    pub(crate) fn stack_context(
        &self,
        positions: &Tensor,
        past: i64,
        key_mask: Option<&Tensor>,
        kind: Kind,
    ) -> StackContext {
        let shape = MaskShape {
            past,
            t: positions.size()[1],
            // Soft-capped attention has no built-in causal flag.
            explicit: self.cfg.attention_softcap().is_some(),
        };
        let device = positions.device();
        let window = self.cfg.sliding_window().map(|w| w as i64);
        StackContext {
            tables: self
                .ropes
                .iter()
                .map(|rope| rope.cos_sin(positions, kind))
                .collect(),
            full_mask: shape.mask(key_mask, None, device),
            sliding_mask: match self.layers.iter().any(|l| l.kind.sliding) {
                true => shape.mask(key_mask, window, device),
                false => None,
            },
        }
    }

    /// Decoder layer `i` on `x`; `cache` is a cache and the slot this layer's keys and values
    /// go to (a layer recomputed on its own uses a one-layer cache).
    pub(crate) fn run_layer(
        &self,
        i: usize,
        x: Tensor,
        stack: &StackContext,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let layer = &self.layers[i];
        let (cos, sin) = &stack.tables[layer.kind.rope];
        let (cache, slot) = cache.unzip();
        let mut ctx = LayerContext {
            cos,
            sin,
            mask: if layer.kind.sliding {
                stack.sliding_mask.as_ref()
            } else {
                stack.full_mask.as_ref()
            },
            cache,
            layer: slot.unwrap_or(i),
        };
        layer.forward(x, &mut ctx)
    }

    /// The final norm, after the last layer.
    pub(crate) fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }

    /// The head's `[vocab, hidden]` weight (the embedding table when tied).
    pub fn head_weight(&self) -> &Tensor {
        &self.lm_head
    }

    /// Next-token logits from hidden states: `[.., hidden]` to `[.., vocab]` (soft-capped
    /// where the model says so).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        let logits = decode_linear::linear(hidden, &self.lm_head)
            .unwrap_or_else(|| hidden.linear::<Tensor>(&self.lm_head, None));
        match self.cfg.final_softcap() {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Next-token logits for every position: `[batch, seq, vocab]`. See
    /// [`forward_hidden`](Self::forward_hidden) for the arguments.
    pub fn forward(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        key_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        self.logits(&self.forward_hidden(tokens, positions, key_mask, cache))
    }
}

/// Embedding lookup that keeps the table's dtype.
trait EmbeddingLookup {
    fn embedding_lookup(&self, ids: &Tensor) -> Tensor;
}

impl EmbeddingLookup for Tensor {
    fn embedding_lookup(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(self, ids, -1, false, false)
    }
}

/// The queries and keys of one forward pass: `past` cached positions, then `t` new ones.
#[derive(Debug, Clone, Copy)]
struct MaskShape {
    past: i64,
    t: i64,
    /// Build the mask even where plain causal attention would do.
    explicit: bool,
}

impl MaskShape {
    /// The boolean attention mask `[batch, 1, seq, past + seq]` (true = may attend), or
    /// `None` when plain causal attention over a fresh sequence suffices. With a `window` a
    /// query sees only the last `window` keys, itself included, counted in cache slots as
    /// transformers does; every batch keeps a row's real tokens contiguous (padding only
    /// before or after them), so slots and positions count alike.
    fn mask(
        self,
        key_mask: Option<&Tensor>,
        window: Option<i64>,
        device: Device,
    ) -> Option<Tensor> {
        let (past, t) = (self.past, self.t);
        let window = window.filter(|&w| past + t > w);
        let trivial = past == 0 || t == 1;
        if key_mask.is_none() && window.is_none() && (trivial && !(self.explicit && t > 1)) {
            return None;
        }
        let keys = Tensor::arange(past + t, (Kind::Int64, device)).view([1, -1]);
        let queries = Tensor::arange_start(past, past + t, (Kind::Int64, device)).view([-1, 1]);
        let mut allowed = keys.le_tensor(&queries);
        if let Some(w) = window {
            allowed = allowed.logical_and(&keys.gt_tensor(&(&queries - w)));
        }
        let allowed = allowed.view([1, 1, t, past + t]);
        Some(match key_mask {
            Some(m) => allowed.logical_and(&m.to_kind(Kind::Bool).view([m.size()[0], 1, 1, -1])),
            None => allowed,
        })
    }
}
