//! AdamW (Loshchilov & Hutter 2019) written over `tch` tensors to match
//! `torch.optim.AdamW`, with weight-decay groups (no decay on norms and biases, as HF
//! `Trainer`), learning-rate schedules (HF `get_{constant,linear,cosine}_schedule_with_warmup`)
//! and global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`). Under mixed
//! precision (`learner::precision`) it owns an f32 master copy of each bf16/f16 parameter:
//! the update is applied to the master, bit for bit as to an f32 parameter with the same
//! gradient, and the parameter is refreshed from it.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::precision::is_half;
use crate::error::{Error, Result};

/// Learning-rate schedule after warmup (HF `lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedulerType {
    /// Constant after warmup.
    #[default]
    Constant,
    /// Linear decay to 0 at `total_steps`.
    Linear,
    /// Half-cosine decay to 0 at `total_steps`.
    Cosine,
}

/// Optimizer and schedule options (TRL/HF `TrainingArguments` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    #[serde(alias = "learning_rate")]
    pub lr: f64,
    /// Adam beta1.
    pub adam_beta1: f64,
    /// Adam beta2.
    pub adam_beta2: f64,
    /// Adam epsilon.
    pub adam_epsilon: f64,
    /// Decoupled weight decay (not applied to norms and biases).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_grad_norm: f64,
    /// Linear warmup steps from 0 (HF: the first step has learning rate 0 when > 0).
    pub warmup_steps: usize,
    /// Schedule after warmup.
    pub lr_scheduler_type: LrSchedulerType,
    /// Optimizer steps the decaying schedules run over.
    pub total_steps: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 1e-6,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            warmup_steps: 0,
            lr_scheduler_type: LrSchedulerType::Constant,
            total_steps: 1000,
        }
    }
}

impl OptimConfig {
    /// Learning rate for optimizer step `step` (0-based), as HF's schedule lambdas.
    pub fn lr_at(&self, step: usize) -> f64 {
        let (s, w) = (step as f64, self.warmup_steps as f64);
        if step < self.warmup_steps {
            return self.lr * s / w.max(1.0);
        }
        let progress = (s - w) / ((self.total_steps as f64 - w).max(1.0));
        let factor = match self.lr_scheduler_type {
            LrSchedulerType::Constant => 1.0,
            LrSchedulerType::Linear => (1.0 - progress).max(0.0),
            LrSchedulerType::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())).max(0.0)
            }
        };
        self.lr * factor
    }
}

/// Whether a parameter named `name` gets weight decay: not norms, not biases.
pub fn decays(name: &str) -> bool {
    !(name.contains("norm") || name.ends_with("bias"))
}

/// One tracked parameter and its optimizer state.
struct Param {
    /// The model's parameter: what the forward reads and the backward writes a gradient to.
    tensor: Tensor,
    /// Mixed precision: the f32 master copy the update is applied to; `tensor` is then
    /// refreshed from it. `None`: the update is applied to `tensor` in its own dtype.
    master: Option<Tensor>,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

impl Param {
    /// State for `tensor`: zero moments and, with `master`, an f32 copy when `tensor` is
    /// bf16/f16 (f32 and f64 parameters are their own master).
    fn new(name: &str, tensor: Tensor, master: bool) -> Self {
        // Moments in f32 (f64 for f64 parameters), whatever the parameter dtype.
        let kind = match tensor.kind() {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        };
        let master = (master && is_half(tensor.kind()))
            .then(|| tch::no_grad(|| tensor.detach().to_kind(Kind::Float)));
        Self {
            decay: decays(name),
            exp_avg: tensor.zeros_like().to_kind(kind),
            exp_avg_sq: tensor.zeros_like().to_kind(kind),
            master,
            tensor,
        }
    }

    /// One AdamW update with the (upcast, clipped) gradient `g`, in the moments' dtype. In
    /// place, as torch's single-tensor AdamW: at most one temporary of the parameter's size
    /// lives at a time (the tied embedding of a 150k vocabulary is 0.5 GB).
    fn update(&mut self, g: &Tensor, c: &StepConstants) {
        let weights = self.master.as_mut().unwrap_or(&mut self.tensor);
        if self.decay && c.weight_decay != 0.0 {
            let _ = weights.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
        }
        let _ = self.exp_avg.lerp_(g, 1.0 - c.b1);
        let _ = self
            .exp_avg_sq
            .g_mul_scalar_(c.b2)
            .addcmul_(&(g * (1.0 - c.b2)), g);
        let mut denom = self.exp_avg_sq.sqrt();
        let _ = denom.g_div_scalar_(c.bc2.sqrt()).g_add_scalar_(c.eps);
        // `p += m / (denom / -step)` is `p -= step * m / denom` (tch's addcdiv_ has no
        // `value`). A bf16 parameter (pure precision) takes the f32 update rounded once:
        // most of an lr-1e-6 update is below half an ulp and lost; a master takes it at f32.
        let _ = denom.g_div_scalar_(-c.lr / c.bc1);
        let _ = weights.addcdiv_(&self.exp_avg, &denom);
        if let Some(master) = &self.master {
            // Round-to-nearest into the model's dtype: what the next forward sees.
            self.tensor.copy_(master);
        }
    }
}

/// The constants of one AdamW step.
struct StepConstants {
    lr: f64,
    b1: f64,
    b2: f64,
    /// Bias corrections `1 - beta^t`.
    bc1: f64,
    bc2: f64,
    eps: f64,
    weight_decay: f64,
}

impl StepConstants {
    fn new(lr: f64, cfg: &OptimConfig, step: usize) -> Self {
        let t = step as i32;
        let (b1, b2) = (cfg.adam_beta1, cfg.adam_beta2);
        Self {
            lr,
            b1,
            b2,
            bc1: 1.0 - b1.powi(t),
            bc2: 1.0 - b2.powi(t),
            eps: cfg.adam_epsilon,
            weight_decay: cfg.weight_decay,
        }
    }
}

/// AdamW over a fixed set of named parameters, optionally with f32 master weights for the
/// bf16/f16 ones (mixed precision, [`AdamW::with_master_weights`]).
pub struct AdamW {
    params: Vec<(String, Param)>,
    step: usize,
    /// The clipping coefficient [`clip_grad_norm`](Self::clip_grad_norm) chose, applied by
    /// the next [`step`](Self::step) to the upcast gradients.
    grad_scale: f64,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("params", &self.params.len())
            .field("master_weights", &self.master_weights().count())
            .field("step", &self.step)
            .finish()
    }
}

impl AdamW {
    /// Tracks `params` (name, tensor); the name decides the decay group. Updates are applied
    /// in each parameter's own dtype (`precision = "pure"`).
    pub fn new(params: Vec<(String, Tensor)>) -> Self {
        Self::build(params, false)
    }

    /// As [`new`](Self::new), with an f32 master copy of every bf16/f16 parameter
    /// (`precision = "bf16-mixed"`): updates are applied to the master, and the parameter is
    /// refreshed from it after each step. f32 parameters are tracked as by `new`.
    pub fn with_master_weights(params: Vec<(String, Tensor)>) -> Self {
        Self::build(params, true)
    }

    fn build(params: Vec<(String, Tensor)>, master: bool) -> Self {
        let mut params: Vec<(String, Param)> = params
            .into_iter()
            .map(|(name, tensor)| {
                let p = Param::new(&name, tensor, master);
                (name, p)
            })
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            params,
            step: 0,
            grad_scale: 1.0,
        }
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Names of the tracked parameters.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }

    /// The tracked parameters, in name order.
    pub fn parameters(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|(_, p)| &p.tensor)
    }

    /// The tracked parameters' gradients that backward has allocated, in name order.
    pub fn gradients(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| p.tensor.grad())
            .filter(Tensor::defined)
            .collect()
    }

    /// Sets every master weight to its parameter's current value (after the parameters were
    /// overwritten from outside, e.g. by another rank's broadcast).
    pub fn reset_masters(&mut self) {
        tch::no_grad(|| {
            for (_, p) in &mut self.params {
                if let Some(master) = &mut p.master {
                    master.copy_(&p.tensor);
                }
            }
        });
    }

    /// The f32 master weights (name, tensor) kept under mixed precision; empty otherwise.
    pub fn master_weights(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.params
            .iter()
            .filter_map(|(n, p)| p.master.as_ref().map(|m| (n.as_str(), m)))
    }

    /// Writes the moments, the master weights (mixed precision) and the step count to a
    /// safetensors file (`{name}.exp_avg`, `{name}.exp_avg_sq`, `{name}.master`, `step`), so a
    /// resumed run continues exactly.
    pub fn save(&self, path: &Path) -> Result<()> {
        let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu);
        let mut tensors: Vec<(String, Tensor)> =
            vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        for (name, p) in &self.params {
            tensors.push((format!("{name}.exp_avg"), cpu(&p.exp_avg)));
            tensors.push((format!("{name}.exp_avg_sq"), cpu(&p.exp_avg_sq)));
            if let Some(master) = &p.master {
                tensors.push((format!("{name}.master"), cpu(master)));
            }
        }
        Tensor::write_safetensors(&tensors, path)
            .map_err(|e| Error::bad_file(path, format!("cannot write: {e}")))
    }

    /// Restores what [`save`](Self::save) wrote; every tracked parameter's moments must be
    /// present with its shape. Call it after the weights are loaded: a master the file lacks
    /// (it was written with `precision = "pure"`) is taken from the parameter, and masters in
    /// the file this optimizer does not keep are ignored.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_file(path, format!("cannot read: {e}")))?
            .into_iter()
            .collect();
        let get = |key: &str, like: &Tensor| -> Result<Option<Tensor>> {
            let Some(t) = file.get(key) else {
                return Ok(None);
            };
            if t.size() != like.size() {
                return Err(Error::bad_file(
                    path,
                    format!("{key}: shape {:?}, expected {:?}", t.size(), like.size()),
                ));
            }
            Ok(Some(t.to_kind(like.kind()).to_device(like.device())))
        };
        let required = |key: String, like: &Tensor| -> Result<Tensor> {
            get(&key, like)?.ok_or_else(|| Error::bad_file(path, format!("missing {key}")))
        };
        let step = file
            .get("step")
            .ok_or_else(|| Error::bad_file(path, "missing step"))?
            .int64_value(&[0]);
        let mut loaded = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let master = match &p.master {
                Some(like) => get(&format!("{name}.master"), like)?,
                None => None,
            };
            loaded.push((
                required(format!("{name}.exp_avg"), &p.exp_avg)?,
                required(format!("{name}.exp_avg_sq"), &p.exp_avg_sq)?,
                master,
            ));
        }
        tch::no_grad(|| {
            for ((_, p), (m, v, master)) in self.params.iter_mut().zip(loaded) {
                p.exp_avg.copy_(&m);
                p.exp_avg_sq.copy_(&v);
                if let Some(own) = &mut p.master {
                    own.copy_(master.as_ref().unwrap_or(&p.tensor));
                }
            }
        });
        self.step = step.max(0) as usize;
        Ok(())
    }

    /// Clears the gradients (and any clipping chosen for them).
    pub fn zero_grad(&mut self) {
        self.grad_scale = 1.0;
        for (_, p) in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Global L2 norm of the gradients, computed in f32 over the upcast gradients; when it
    /// exceeds `max_norm > 0` the next [`step`](Self::step) scales them down to `max_norm`.
    /// Returns the norm before clipping.
    ///
    /// The scale is applied inside `step`: to an f32 `.grad()` in place, as
    /// `torch.nn.utils.clip_grad_norm_` does, and to a bf16/f16 gradient after upcasting it (in
    /// place it would be rounded to bf16 a second time).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let total = tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.tensor.grad())
                .filter(|g| g.defined())
                .map(|g| g.to_kind(Kind::Float).norm())
                .collect();
            match norms.is_empty() {
                true => 0.0,
                false => Tensor::stack(&norms, 0).norm().double_value(&[]),
            }
        });
        let coef = max_norm / (total + 1e-6);
        self.grad_scale = match max_norm > 0.0 && coef < 1.0 {
            true => coef,
            false => 1.0,
        };
        total
    }

    /// One AdamW update at learning rate `lr`, as `torch.optim.AdamW` (non-amsgrad):
    /// `p *= 1 - lr wd`; `m, v` EMAs; `p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)`, with `p`
    /// the master weight where there is one.
    pub fn step(&mut self, lr: f64, cfg: &OptimConfig) {
        self.step += 1;
        let c = StepConstants::new(lr, cfg, self.step);
        let scale = std::mem::replace(&mut self.grad_scale, 1.0);
        tch::no_grad(|| {
            for (_, p) in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let g = upcast(&g, p.exp_avg.kind(), scale);
                p.update(&g, &c);
            }
        });
    }
}

/// `g` in `kind` (the moments' dtype), times the clipping `scale`: an f32 gradient is scaled
/// in place, as `torch.nn.utils.clip_grad_norm_` does; a bf16/f16 one is upcast first (a
/// copy), so that it is rounded only once.
fn upcast(g: &Tensor, kind: Kind, scale: f64) -> Tensor {
    let mut g = match g.kind() == kind {
        true => g.shallow_clone(),
        false => g.to_kind(kind),
    };
    if scale != 1.0 {
        let _ = g.g_mul_scalar_(scale);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_hf_lambdas() {
        let mut c = OptimConfig {
            lr: 1.0,
            warmup_steps: 2,
            total_steps: 6,
            lr_scheduler_type: LrSchedulerType::Cosine,
            ..Default::default()
        };
        assert_eq!(c.lr_at(0), 0.0);
        assert_eq!(c.lr_at(1), 0.5);
        assert_eq!(c.lr_at(2), 1.0);
        assert!((c.lr_at(4) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(6).abs() < 1e-12);
        c.lr_scheduler_type = LrSchedulerType::Linear;
        assert!((c.lr_at(5) - 0.25).abs() < 1e-12);
        c.lr_scheduler_type = LrSchedulerType::Constant;
        assert_eq!(c.lr_at(100), 1.0);
        assert!(decays("model.layers.0.self_attn.q_proj.weight"));
        assert!(!decays("model.layers.0.input_layernorm.weight"));
        assert!(!decays("model.layers.0.self_attn.q_proj.bias"));
    }
}
