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

use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::rope::Rope;
use crate::kernels::{decode_attention, decode_linear, fused};

/// Root-mean-square layer norm, computed in f32 like transformers' `LlamaRMSNorm`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A norm over the last dimension of width `dim`.
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        Self {
            weight: p.ones("weight", &[dim]),
            eps,
        }
    }

    /// Normalises `x` (`[.., dim]`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        fused::rms_norm(x, &self.weight, self.eps).unwrap_or_else(|| self.forward_torch(x))
    }

    fn forward_torch(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = (x32 * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
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

/// Grouped-query self-attention.
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
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
        let heads = |y: Tensor, n: i64| y.view([b, t, n, self.head_dim]).transpose(1, 2);
        let rotated = |proj: &Linear, n: i64| {
            let y = proj.forward(x);
            if fused::rope_in_place(&y, ctx.cos, ctx.sin) {
                heads(y, n)
            } else {
                Rope::rotate(&heads(y, n), ctx.cos, ctx.sin)
            }
        };
        let q = rotated(&self.q_proj, self.num_heads);
        let k = rotated(&self.k_proj, self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let (k, v) = match ctx.cache.as_deref_mut() {
            Some(cache) => cache.append(ctx.layer, k, v),
            None => (k, v),
        };
        let is_causal = ctx.mask.is_none() && t > 1;
        let gqa = self.num_heads != self.num_kv_heads;
        let out = decode_attention::attend(&q, &k, &v, ctx.mask).unwrap_or_else(|| {
            Tensor::scaled_dot_product_attention(&q, &k, &v, ctx.mask, 0.0, is_causal, None, gqa)
        });
        self.o_proj.forward(
            &out.transpose(1, 2)
                .reshape([b, t, self.num_heads * self.head_dim]),
        )
    }
}

/// SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// The `mlp` block at `p`.
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        Self::build(p, cfg, Build { lora: None })
    }

    fn build(p: nn::Path, cfg: &ModelConfig, b: Build) -> Self {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Self {
            gate_proj: linear(&p, "gate_proj", h, i, bias, b),
            up_proj: linear(&p, "up_proj", h, i, bias, b),
            down_proj: linear(&p, "down_proj", i, h, bias, b),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (gate, up) = (self.gate_proj.forward(x), self.up_proj.forward(x));
        let hidden = if fused::silu_mul_in_place(&gate, &up) {
            gate
        } else {
            gate.silu() * up
        };
        self.down_proj.forward(&hidden)
    }
}

/// One pre-norm transformer block.
#[derive(Debug)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// The layer at `p` (`model.layers.{i}`).
    pub fn new(p: nn::Path, cfg: &ModelConfig) -> Self {
        Self::build(p, cfg, Build { lora: None })
    }

    fn build(p: nn::Path, cfg: &ModelConfig, b: Build) -> Self {
        let h = cfg.hidden_size as i64;
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", h, cfg.rms_norm_eps),
            self_attn: Attention::build(&p / "self_attn", cfg, b),
            post_attention_layernorm: RmsNorm::new(
                &p / "post_attention_layernorm",
                h,
                cfg.rms_norm_eps,
            ),
            mlp: Mlp::build(&p / "mlp", cfg, b),
        }
    }

    fn forward(&self, x: Tensor, ctx: &mut LayerContext) -> Tensor {
        let attn = self
            .self_attn
            .forward(&self.input_layernorm.forward(&x), ctx);
        let x = residual(x, &attn);
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        residual(x, &mlp)
    }
}

/// `x + y` for the residual stream, in place when no graph is recorded (`x` is the layer's own).
fn residual(x: Tensor, y: &Tensor) -> Tensor {
    if fused::add_in_place(&x, y) {
        x
    } else {
        x + y
    }
}

/// What every layer of one forward pass shares.
struct LayerContext<'a> {
    /// RoPE tables for this call's positions, computed once for all layers.
    cos: &'a Tensor,
    sin: &'a Tensor,
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
    rope: Rope,
    adapters: Option<Arc<AdapterSwitch>>,
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
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::build(&model / "layers" / i, cfg, build))
            .collect();
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            (root / "lm_head").randn("weight", &[vocab, h], 0.0, 0.02)
        };
        Self {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::new(&model / "norm", h, cfg.rms_norm_eps),
            lm_head,
            rope: Rope::new(cfg, root.device()),
            adapters: switch,
        }
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
        let t = tokens.size()[1];
        let mask = attention_mask(past, t, key_mask, tokens.device());
        let mut x = self.embed_tokens.embedding_lookup(tokens);
        let (cos, sin) = self.rope.cos_sin(positions, x.kind());
        for (i, layer) in self.layers.iter().enumerate() {
            let mut ctx = LayerContext {
                cos: &cos,
                sin: &sin,
                mask: mask.as_ref(),
                cache: cache.as_deref_mut(),
                layer: i,
            };
            x = layer.forward(x, &mut ctx);
        }
        self.norm.forward(&x)
    }

    /// Next-token logits from hidden states: `[.., hidden]` to `[.., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        decode_linear::linear(hidden, &self.lm_head)
            .unwrap_or_else(|| hidden.linear::<Tensor>(&self.lm_head, None))
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

/// The boolean attention mask `[batch, 1, seq, past + seq]` (true = may attend), or `None`
/// when plain causal attention over a fresh sequence suffices.
fn attention_mask(past: i64, t: i64, key_mask: Option<&Tensor>, device: Device) -> Option<Tensor> {
    if key_mask.is_none() && (past == 0 || t == 1) {
        return None;
    }
    let keys = Tensor::arange(past + t, (Kind::Int64, device)).view([1, -1]);
    let queries = Tensor::arange_start(past, past + t, (Kind::Int64, device)).view([-1, 1]);
    let causal = keys.le_tensor(&queries).view([1, 1, t, past + t]);
    Some(match key_mask {
        Some(m) => causal.logical_and(&m.to_kind(Kind::Bool).view([m.size()[0], 1, 1, -1])),
        None => causal,
    })
}
