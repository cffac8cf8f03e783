//! AdamW (Loshchilov & Hutter 2019) written over `tch` tensors to match
//! `torch.optim.AdamW`, with weight-decay groups (no decay on norms and biases, as HF
//! `Trainer`), learning-rate schedules (HF `get_{constant,linear,cosine}_schedule_with_warmup`)
//! and global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

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

struct Param {
    tensor: Tensor,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// AdamW over a fixed set of named parameters.
pub struct AdamW {
    params: Vec<(String, Param)>,
    step: usize,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("params", &self.params.len())
            .field("step", &self.step)
            .finish()
    }
}

impl AdamW {
    /// Tracks `params` (name, tensor); the name decides the decay group.
    pub fn new(params: Vec<(String, Tensor)>) -> Self {
        let mut params: Vec<(String, Param)> = params
            .into_iter()
            .map(|(name, tensor)| {
                // Moments in f32 (f64 for f64 parameters), whatever the parameter dtype.
                let kind = if tensor.kind() == Kind::Double {
                    Kind::Double
                } else {
                    Kind::Float
                };
                let p = Param {
                    decay: decays(&name),
                    exp_avg: tensor.zeros_like().to_kind(kind),
                    exp_avg_sq: tensor.zeros_like().to_kind(kind),
                    tensor,
                };
                (name, p)
            })
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self { params, step: 0 }
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// Names of the tracked parameters.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }

    /// Writes the moments and the step count to a safetensors file (`{name}.exp_avg`,
    /// `{name}.exp_avg_sq`, `step`), so a resumed run continues exactly.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> =
            vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        for (name, p) in &self.params {
            tensors.push((
                format!("{name}.exp_avg"),
                p.exp_avg.to_device(tch::Device::Cpu),
            ));
            tensors.push((
                format!("{name}.exp_avg_sq"),
                p.exp_avg_sq.to_device(tch::Device::Cpu),
            ));
        }
        Tensor::write_safetensors(&tensors, path)
            .map_err(|e| Error::bad_file(path, format!("cannot write: {e}")))
    }

    /// Restores what [`save`](Self::save) wrote; every tracked parameter must be present
    /// with its shape.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_file(path, format!("cannot read: {e}")))?
            .into_iter()
            .collect();
        let get = |key: &str, like: &Tensor| -> Result<Tensor> {
            let t = file
                .get(key)
                .ok_or_else(|| Error::bad_file(path, format!("missing {key}")))?;
            if t.size() != like.size() {
                return Err(Error::bad_file(
                    path,
                    format!("{key}: shape {:?}, expected {:?}", t.size(), like.size()),
                ));
            }
            Ok(t.to_kind(like.kind()).to_device(like.device()))
        };
        let step = file
            .get("step")
            .ok_or_else(|| Error::bad_file(path, "missing step"))?
            .int64_value(&[0]);
        let mut loaded = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            loaded.push((
                get(&format!("{name}.exp_avg"), &p.exp_avg)?,
                get(&format!("{name}.exp_avg_sq"), &p.exp_avg_sq)?,
            ));
        }
        tch::no_grad(|| {
            for ((_, p), (m, v)) in self.params.iter_mut().zip(loaded) {
                p.exp_avg.copy_(&m);
                p.exp_avg_sq.copy_(&v);
            }
        });
        self.step = step.max(0) as usize;
        Ok(())
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Global L2 norm of the gradients; scales them down to `max_norm` when it is exceeded
    /// and `max_norm > 0`. Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        tch::no_grad(|| {
            let norms: Vec<Tensor> = self
                .params
                .iter()
                .map(|(_, p)| p.tensor.grad())
                .filter(|g| g.defined())
                .map(|g| g.to_kind(Kind::Float).norm())
                .collect();
            if norms.is_empty() {
                return 0.0;
            }
            let total = Tensor::stack(&norms, 0).norm().double_value(&[]);
            let coef = max_norm / (total + 1e-6);
            if max_norm > 0.0 && coef < 1.0 {
                for (_, p) in &self.params {
                    let mut g = p.tensor.grad();
                    if g.defined() {
                        let _ = g.g_mul_scalar_(coef);
                    }
                }
            }
            total
        })
    }

    /// One AdamW update at learning rate `lr`, as `torch.optim.AdamW` (non-amsgrad):
    /// `p *= 1 - lr wd`; `m, v` EMAs; `p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)`.
    pub fn step(&mut self, lr: f64, cfg: &OptimConfig) {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (cfg.adam_beta1, cfg.adam_beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        tch::no_grad(|| {
            for (_, p) in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let g = g.to_kind(p.exp_avg.kind());
                if p.decay && cfg.weight_decay != 0.0 {
                    let _ = p.tensor.g_mul_scalar_(1.0 - lr * cfg.weight_decay);
                }
                let _ = p.exp_avg.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = p
                    .exp_avg_sq
                    .g_mul_scalar_(b2)
                    .g_add_(&(&g * &g * (1.0 - b2)));
                let denom = p.exp_avg_sq.sqrt() / bc2.sqrt() + cfg.adam_epsilon;
                let update = (&p.exp_avg / denom) * (lr / bc1);
                let kind = p.tensor.kind();
                let _ = p.tensor.g_sub_(&update.to_kind(kind));
            }
        });
    }
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
