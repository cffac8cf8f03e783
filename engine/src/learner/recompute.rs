//! Trading compute for memory in the learner's forward pass, with the same gradients:
//!
//! - **Gradient checkpointing** ([`CheckpointedStack`]): the forward keeps only each decoder
//!   layer's input; the backward recomputes one layer at a time from it and back-propagates
//!   through that layer alone. Activations cost one layer's worth instead of all layers'.
//! - **Chunked logprobs** ([`ChunkedHead`]): the head, log-softmax and gather run over token
//!   chunks, so `[tokens, vocab]` logits (600 MB per 1k tokens at Qwen's 151,936 in f32) exist
//!   one chunk at a time; the backward recomputes each chunk's logits and applies the
//!   log-softmax's gradient by hand (`onehot - softmax`), in place, adding the head weight's
//!   gradient into its `.grad` with one `addmm_` per chunk.
//!
//! tch has no custom autograd functions, so both work as a *staged backward*: the forward
//! hands the loss leaves (a detached copy that requires grad) instead of the real graph;
//! after `loss.backward()` has filled those leaves' gradients, [`Deferred::backward`] pushes
//! them through the recomputed pieces: the head by hand, the layers with
//! `(output * grad).sum().backward()`, which adds exactly `grad`'s vector-Jacobian product to
//! every parameter's gradient.

use tch::{Kind, Tensor};

use super::batch::{gather_predicting, Rows};
use crate::model::llama::StackContext;
use crate::model::{KvCache, Llama};

/// How the learner scores completions in a training forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreOptions {
    /// Logits are divided by this before the softmax: the rollout's sampling temperature, so
    /// that the policy, the old policy and the reference are the distributions sampled from.
    pub temperature: f64,
    /// Keep only each decoder layer's input; recompute the layer in the backward.
    pub checkpoint_layers: bool,
    /// Run head + log-softmax over chunks of this many tokens (recomputed in the backward).
    pub chunk_tokens: Option<usize>,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            checkpoint_layers: false,
            chunk_tokens: None,
        }
    }
}

/// `log pi(target)` and the entropy of each predicting position: `[B, T]` from `hidden`
/// `[B, T, H]`, computed in f32 at `temperature`.
pub fn head_logprobs(
    model: &Llama,
    hidden: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> (Tensor, Tensor) {
    let mut logits = model.logits(hidden).to_kind(Kind::Float);
    if temperature != 1.0 {
        logits /= temperature;
    }
    let logp_all = logits.log_softmax(-1, Kind::Float);
    let logp = logp_all
        .gather(2, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let entropy = tch::no_grad(|| {
        let lp = logp_all.detach();
        -(lp.exp() * &lp).sum_dim_intlist(-1, false, Kind::Float)
    });
    (logp, entropy)
}

/// [`head_logprobs`] over chunks of `chunk` predicting positions, without a graph: at most
/// two `[chunk, vocab]` f32 buffers exist at a time.
pub fn chunked_head_logprobs(
    model: &Llama,
    hidden: &Tensor,
    targets: &Tensor,
    temperature: f64,
    chunk: usize,
) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        let pieces: Vec<(Tensor, Tensor)> = token_chunks(hidden, chunk)
            .map(|(start, len)| {
                let logits = tempered_logits(model, &hidden.narrow(1, start, len), temperature);
                chunk_logprobs(logits, &targets.narrow(1, start, len))
            })
            .collect();
        let (logp, entropy): (Vec<Tensor>, Vec<Tensor>) = pieces.into_iter().unzip();
        (Tensor::cat(&logp, 1), Tensor::cat(&entropy, 1))
    })
}

/// `(start, len)` spans along the token axis of `[B, T, ..]` covering at most `chunk` tokens
/// (rows x positions) each, at least one position.
fn token_chunks(x: &Tensor, chunk: usize) -> impl Iterator<Item = (i64, i64)> {
    let (b, t) = (x.size()[0].max(1), x.size()[1]);
    let step = (chunk as i64 / b).max(1);
    (0..t)
        .step_by(step as usize)
        .map(move |start| (start, step.min(t - start)))
}

/// The f32 logits of `hidden` at `temperature`, in a fresh buffer the caller may overwrite.
fn tempered_logits(model: &Llama, hidden: &Tensor, temperature: f64) -> Tensor {
    let mut z = model.logits(hidden).to_kind(Kind::Float);
    if temperature != 1.0 {
        let _ = z.g_div_scalar_(temperature);
    }
    z
}

/// Turns logits `z` into `softmax(z)` in place; returns `logsumexp(z)` (`[.., 1]`).
fn softmax_in_place(z: &mut Tensor) -> Tensor {
    let max = z.amax(-1, true);
    let _ = z.g_sub_(&max).exp_();
    let sum = z.sum_dim_intlist(-1, true, Kind::Float);
    let _ = z.g_div_(&sum);
    max + sum.log()
}

/// `log softmax(z)[target]` and the entropy of `softmax(z)`, consuming the logits buffer `z`.
fn chunk_logprobs(mut z: Tensor, targets: &Tensor) -> (Tensor, Tensor) {
    let targets = targets.unsqueeze(-1);
    let picked = z.gather(-1, &targets, false);
    let lse = softmax_in_place(&mut z);
    let logp = (picked - lse).squeeze_dim(-1);
    // -sum p log p, with p log p computed over p's own buffer (xlogy: 0 where p = 0).
    let p = z.shallow_clone();
    let entropy = -z.xlogy_(&p).sum_dim_intlist(-1, false, Kind::Float);
    (logp, entropy)
}

/// The head of a chunked forward: the predicting hidden states, and the logprobs leaf the
/// loss saw.
#[derive(Debug)]
pub struct ChunkedHead {
    hidden: Tensor,
    logp: Tensor,
    chunk: usize,
    temperature: f64,
}

impl ChunkedHead {
    /// Chunked logprobs of `hidden` (with its graph, if any, kept by the caller): returns the
    /// head, the logprobs leaf (requires grad) and the entropy.
    pub fn forward(
        model: &Llama,
        hidden: &Tensor,
        targets: &Tensor,
        temperature: f64,
        chunk: usize,
    ) -> (Self, Tensor, Tensor) {
        let hidden = hidden.detach();
        let (logp, entropy) = chunked_head_logprobs(model, &hidden, targets, temperature, chunk);
        let logp = logp.set_requires_grad(true);
        let head = Self {
            hidden,
            logp: logp.shallow_clone(),
            chunk,
            temperature,
        };
        (head, logp, entropy)
    }

    /// Back-propagates the loss's gradient on the logprobs through each chunk's recomputed
    /// head, written out by hand rather than through autograd so that no chunk holds more
    /// than one `[chunk, vocab]` f32 buffer and the head weight's gradient is accumulated in
    /// place. Returns the gradient on the hidden states.
    fn backward(self, model: &Llama, targets: &Tensor) -> Option<Tensor> {
        let grad = defined(self.logp.grad())?;
        let weight = model.head_weight();
        let mut weight_grad = weight.requires_grad().then(|| grad_buffer(weight));
        tch::no_grad(|| {
            let hidden_grad = self.hidden.zeros_like();
            for (start, len) in token_chunks(&self.hidden, self.chunk) {
                let hidden = self.hidden.narrow(1, start, len);
                let d_logits = self.logits_grad(
                    model,
                    &hidden,
                    &targets.narrow(1, start, len),
                    &grad.narrow(1, start, len),
                );
                hidden_grad
                    .narrow(1, start, len)
                    .copy_(&d_logits.matmul(weight));
                if let Some(wg) = weight_grad.as_mut() {
                    let vocab = d_logits.size()[2];
                    let h = hidden.reshape([-1, hidden.size()[2]]);
                    let _ = wg.addmm_(&d_logits.reshape([-1, vocab]).tr(), &h);
                }
            }
            Some(hidden_grad)
        })
    }

    /// The gradient on one chunk's raw logits (before soft-capping and temperature), in the
    /// head's dtype: `d logp[y] / d z = onehot(y) - softmax(z)`, times `grad`.
    fn logits_grad(
        &self,
        model: &Llama,
        hidden: &Tensor,
        targets: &Tensor,
        grad: &Tensor,
    ) -> Tensor {
        let t = self.temperature;
        let mut z = tempered_logits(model, hidden, t);
        // Soft-capped logits `cap tanh(x / cap)` have derivative `1 - (z T / cap)^2`.
        let softcap_slope = model.config().final_softcap().map(|cap| {
            let mut slope = &z * (t / cap);
            let _ = slope.square_().neg_().g_add_scalar_(1.0);
            slope
        });
        let _ = softmax_in_place(&mut z);
        let g = grad.unsqueeze(-1);
        let _ = z.g_mul_(&-&g).scatter_add_(-1, &targets.unsqueeze(-1), &g);
        if t != 1.0 {
            let _ = z.g_div_scalar_(t);
        }
        if let Some(slope) = softcap_slope {
            let _ = z.g_mul_(&slope);
        }
        z.to_kind(model.head_weight().kind())
    }
}

/// `weight`'s gradient tensor, allocated (zeros) if no backward has written one yet: the
/// head adds its gradient into it in place. tch cannot assign `.grad`, so a backward through
/// a one-row slice makes autograd allocate it.
fn grad_buffer(weight: &Tensor) -> Tensor {
    let grad = weight.grad();
    if grad.defined() {
        return grad;
    }
    (weight.narrow(0, 0, 1).sum(Kind::Float) * 0.0).backward();
    weight.grad()
}

/// One run of the decoder stack kept for recomputation: its tokens, the context every layer
/// shares, each layer's input, and its output as a leaf.
#[derive(Debug)]
struct Segment {
    tokens: Tensor,
    stack: StackContext,
    inputs: Vec<Tensor>,
    output: Tensor,
}

/// A checkpointed decoder stack: the rows (or, when they share a prompt, the prompt once and
/// then the completions, which attend to its keys and values).
#[derive(Debug)]
pub struct CheckpointedStack {
    first: Segment,
    /// The completions of rows sharing `first` as their prompt, and the row count.
    completions: Option<(Segment, i64)>,
}

impl CheckpointedStack {
    /// Runs the stack without a graph, keeping each layer's input; returns the stack and the
    /// final hidden states at the predicting positions (`[B, T, H]`), whose graph starts at
    /// the stack's output leaves.
    pub fn forward(model: &Llama, rows: &Rows) -> (Self, Tensor) {
        let p = rows.shared_prompt;
        let (b, l) = rows.tokens.size2().expect("tokens are [B, L]");
        let stack = if p > 0 {
            let mut cache = model.new_cache();
            let first = Segment::run(model, rows, (0..1, 0..p), Some(&mut cache));
            let completions = (l > p).then(|| {
                let rows_of_prompt = Tensor::zeros([b], (Kind::Int64, rows.tokens.device()));
                cache.select_rows(&rows_of_prompt);
                (Segment::run(model, rows, (0..b, p..l), Some(&mut cache)), b)
            });
            Self { first, completions }
        } else {
            let first = Segment::run(model, rows, (0..b, 0..l), None);
            Self {
                first,
                completions: None,
            }
        };
        let first = model.final_norm(&stack.first.output);
        let hidden = match &stack.completions {
            Some((c, b)) => Tensor::cat(
                &[
                    first.expand([*b, p, first.size()[2]], false),
                    model.final_norm(&c.output),
                ],
                1,
            ),
            None if p > 0 => first.expand([b, p, first.size()[2]], false),
            None => first,
        };
        let picked = gather_predicting(&hidden, rows);
        (stack, picked)
    }

    /// Back-propagates the gradients the loss left on the stack's outputs, one recomputed
    /// layer at a time, into the layers' parameters and the embeddings.
    pub fn backward(self, model: &Llama) {
        let Self {
            mut first,
            mut completions,
        } = self;
        let mut grad_first = defined(first.output.grad());
        let mut grad_rest = completions
            .as_ref()
            .and_then(|(c, _)| defined(c.output.grad()));
        for i in (0..model.num_layers()).rev() {
            let x_first = leaf(first.inputs.pop().expect("one input per layer"));
            let mut cache = KvCache::new(1);
            let cached = completions.is_some().then_some(&mut cache);
            let y_first = model.run_layer(
                i,
                x_first.shallow_clone(),
                &first.stack,
                cached.map(|c| (c, 0)),
            );
            let mut outputs = vec![(y_first, grad_first.take())];
            let mut x_rest = None;
            if let Some((c, b)) = completions.as_mut() {
                cache.select_rows(&Tensor::zeros([*b], (Kind::Int64, c.tokens.device())));
                let x = leaf(c.inputs.pop().expect("one input per layer"));
                let y = model.run_layer(i, x.shallow_clone(), &c.stack, Some((&mut cache, 0)));
                outputs.push((y, grad_rest.take()));
                x_rest = Some(x);
            }
            backward_all(outputs);
            grad_first = defined(x_first.grad());
            grad_rest = x_rest.and_then(|x| defined(x.grad()));
        }
        let weight = model.embed_weight();
        if !weight.requires_grad() {
            return;
        }
        let rest = completions.as_ref().map(|(c, _)| &c.tokens);
        for (tokens, grad) in [(Some(&first.tokens), grad_first), (rest, grad_rest)] {
            if let (Some(tokens), Some(grad)) = (tokens, grad) {
                model.embed_backward(tokens, &grad, &mut grad_buffer(weight));
            }
        }
    }
}

impl Segment {
    /// Runs `rows.tokens[rows_range, cols]` through the stack without a graph (after what
    /// `cache` holds), keeping a copy of each layer's input: layers add their residual in
    /// place when no graph is recorded.
    fn run(
        model: &Llama,
        rows: &Rows,
        (r, cols): (std::ops::Range<i64>, std::ops::Range<i64>),
        mut cache: Option<&mut KvCache>,
    ) -> Self {
        let part = |x: &Tensor| {
            x.narrow(0, r.start, r.end - r.start)
                .narrow(1, cols.start, cols.end - cols.start)
        };
        let tokens = part(&rows.tokens);
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        tch::no_grad(|| {
            let mut x = model.embed(&tokens);
            let stack = model.stack_context(&part(&rows.positions), past, None, x.kind());
            let mut inputs = Vec::with_capacity(model.num_layers());
            for i in 0..model.num_layers() {
                inputs.push(x.copy());
                x = model.run_layer(i, x, &stack, cache.as_deref_mut().map(|c| (c, i)));
            }
            Self {
                tokens,
                stack,
                inputs,
                output: leaf(x),
            }
        })
    }
}

/// What a training forward pass left for after `loss.backward()`: the recomputed head and/or
/// stack, and the graph that joins them.
#[derive(Debug)]
pub struct Deferred {
    head: Option<ChunkedHead>,
    /// The predicting hidden states with their graph (into the model, or into `stack`'s
    /// leaves), when `head` detached them.
    hidden: Tensor,
    stack: Option<CheckpointedStack>,
}

impl Deferred {
    /// What is deferred, if anything.
    pub fn new(
        head: Option<ChunkedHead>,
        hidden: Tensor,
        stack: Option<CheckpointedStack>,
    ) -> Option<Self> {
        (head.is_some() || stack.is_some()).then_some(Self {
            head,
            hidden,
            stack,
        })
    }

    /// Completes the backward that `loss.backward()` began (call it right after, once).
    pub fn backward(self, model: &Llama, targets: &Tensor) {
        if let Some(head) = self.head {
            if let Some(grad) = head.backward(model, targets) {
                backward_all(vec![(self.hidden, Some(grad))]);
            }
        }
        if let Some(stack) = self.stack {
            stack.backward(model);
        }
    }
}

/// `sum_i (output_i * grad_i)`, back-propagated in one pass (outputs without a gradient, or
/// without a graph, contribute nothing).
fn backward_all(outputs: Vec<(Tensor, Option<Tensor>)>) {
    let terms: Vec<Tensor> = outputs
        .into_iter()
        .filter_map(|(y, g)| {
            let g = g?;
            y.requires_grad().then(|| (y * g).sum(Kind::Float))
        })
        .collect();
    if let Some(total) = terms.into_iter().reduce(|a, b| a + b) {
        total.backward();
    }
}

/// `x` as a fresh leaf that records gradients.
fn leaf(x: Tensor) -> Tensor {
    x.detach().set_requires_grad(true)
}

/// A gradient, if one was computed (tch returns an undefined tensor otherwise).
fn defined(grad: Tensor) -> Option<Tensor> {
    grad.defined().then_some(grad)
}
