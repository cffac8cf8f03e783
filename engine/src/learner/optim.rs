//! AdamW (Loshchilov & Hutter 2019) written over `tch` tensors to match
//! `torch.optim.AdamW`, with weight-decay groups (no decay on norms and biases, as HF
//! `Trainer`), learning-rate schedules (HF `get_{constant,linear,cosine}_schedule_with_warmup`)
//! and global-norm gradient clipping (`torch.nn.utils.clip_grad_norm_`). Under mixed
//! precision (`learner::precision`) it owns an f32 master copy of each bf16/f16 parameter:
//! the update is applied to the master, bit for bit as to an f32 parameter with the same
//! gradient, and the parameter is refreshed from it. With `optim = "adamw_8bit"` the moments
//! are stored in 8 bits per value, block-wise, as bitsandbytes' `AdamW8bit` (`quant8`).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::master::Master;
use super::precision::is_half;
use super::quant8::{Codebook, Quantized, BLOCK};
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

/// How AdamW stores its two moments (HF `optim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Optimizer {
    /// f32 moments (f64 for f64 parameters), as `torch.optim.AdamW`: 8 bytes per parameter.
    #[default]
    #[serde(rename = "adamw_torch")]
    AdamwTorch,
    /// Block-wise 8-bit moments, as bitsandbytes' `AdamW8bit` (HF `adamw_8bit`, also
    /// accepted as `adamw_bnb_8bit`): 2 bytes per parameter and 8 bytes per 256. Parameters of
    /// fewer than 4096 values keep f32 moments, as bitsandbytes does.
    #[serde(rename = "adamw_8bit", alias = "adamw_bnb_8bit")]
    Adamw8bit,
}

/// Parameters smaller than this keep f32 moments under `adamw_8bit` (bitsandbytes'
/// `min_8bit_size`): norms and biases, where 8 bits save little and cost accuracy.
const MIN_8BIT_SIZE: i64 = 4096;

/// Values updated at a time: the temporaries of one chunk (the upcast gradient, the update,
/// decoded 8-bit moments) stay a few MiB whatever the parameter's size.
const STEP_CHUNK: i64 = 1 << 20;

/// Optimizer and schedule options (TRL/HF `TrainingArguments` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// How the moments are stored: `adamw_torch` (f32, default) or `adamw_8bit`.
    pub optim: Optimizer,
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
            optim: Optimizer::AdamwTorch,
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
    /// Mixed precision: the f32 master the update is applied to (for bf16, the 16 bits
    /// `tensor` lacks); `tensor` is then refreshed from it. `None`: the update is applied to
    /// `tensor` in its own dtype.
    master: Option<Master>,
    decay: bool,
    moments: Moments,
}

/// AdamW's first and second moments of one parameter.
enum Moments {
    /// In f32 (f64 for f64 parameters), shaped as the parameter.
    Full { exp_avg: Tensor, exp_avg_sq: Tensor },
    /// Flat, 8 bits per value (`adamw_8bit`).
    Blockwise {
        exp_avg: Quantized,
        exp_avg_sq: Quantized,
    },
}

impl Param {
    /// State for `tensor`: zero moments and, with `master`, an f32 master when `tensor` is
    /// bf16/f16 (f32 and f64 parameters are their own master).
    fn new(
        name: &str,
        tensor: Tensor,
        master: bool,
        optim: Optimizer,
        books: &mut Codebooks,
    ) -> Self {
        let master = (master && is_half(tensor.kind())).then(|| Master::new(&tensor));
        Self {
            decay: decays(name),
            moments: Moments::new(&tensor, optim, books),
            master,
            tensor,
        }
    }

    /// One AdamW update with the gradient `g` times the clipping `scale`, taken in the
    /// moments' dtype (8-bit moments: f32) a [`STEP_CHUNK`] of values at a time: the chunk's
    /// weights (the master's where there is one), gradient and moments, updated and stored.
    fn update(&mut self, g: &Tensor, scale: f64, c: &StepConstants) {
        if !(self.tensor.is_contiguous() && self.moments.is_contiguous()) {
            return self.update_whole(g, scale, c);
        }
        let (flat, g) = (self.tensor.view([-1]), g.contiguous().view([-1]));
        let kind = self.moments.kind();
        for (start, len) in step_chunks(flat.size()[0]) {
            let mut w = match &self.master {
                Some(master) => master.read(&self.tensor, start, len),
                None => flat.narrow(0, start, len),
            };
            let g = upcast(&g.narrow(0, start, len), kind, scale);
            self.moments.update(&mut w, &g, (start, len), c, self.decay);
            if let Some(master) = &mut self.master {
                master.write(&self.tensor, start, &w);
            }
        }
    }

    /// [`update`](Self::update) of a non-contiguous parameter, whole: its moments are f32 and
    /// its master (if any) a whole f32 copy ([`Moments::new`], [`Master::new`]).
    fn update_whole(&mut self, g: &Tensor, scale: f64, c: &StepConstants) {
        let Moments::Full {
            exp_avg,
            exp_avg_sq,
        } = &mut self.moments
        else {
            unreachable!("8-bit moments are kept for contiguous parameters only")
        };
        let g = upcast(g, exp_avg.kind(), scale);
        let mut weights = match &self.master {
            Some(master) => master.value(&self.tensor),
            None => self.tensor.shallow_clone(),
        };
        adamw(&mut weights, exp_avg, exp_avg_sq, &g, c, self.decay);
        if let Some(master) = &mut self.master {
            master.set(&self.tensor, &weights);
        }
    }
}

/// The `(start, len)` ranges that cover `n` values a [`STEP_CHUNK`] at a time.
fn step_chunks(n: i64) -> impl Iterator<Item = (i64, i64)> {
    (0..n)
        .step_by(STEP_CHUNK as usize)
        .map(move |start| (start, STEP_CHUNK.min(n - start)))
}

/// One AdamW update of `weights` and its moments with the gradient `g`, in place, as torch's
/// single-tensor AdamW: at most one temporary of the weights' size lives at a time. Element
/// by element, so a chunk of a tensor is updated exactly as it would be within the whole.
fn adamw(
    weights: &mut Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    g: &Tensor,
    c: &StepConstants,
    decay: bool,
) {
    if decay && c.weight_decay != 0.0 {
        let _ = weights.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
    }
    let _ = exp_avg.lerp_(g, 1.0 - c.b1);
    let _ = exp_avg_sq
        .g_mul_scalar_(c.b2)
        .addcmul_(&(g * (1.0 - c.b2)), g);
    let mut denom = exp_avg_sq.sqrt();
    let _ = denom.g_div_scalar_(c.bc2.sqrt()).g_add_scalar_(c.eps);
    // `p += m / (denom / -step)` is `p -= step * m / denom` (tch's addcdiv_ has no `value`). A
    // bf16 parameter (pure precision) takes the f32 update rounded once: most of an lr-1e-6
    // update is below half an ulp and lost; a master takes it at f32.
    let _ = denom.g_div_scalar_(-c.lr / c.bc1);
    let _ = weights.addcdiv_(exp_avg, &denom);
}

impl Moments {
    /// One AdamW update of the weights `w` (the values `[start, start + len)` of the flattened
    /// parameter) and that part of the moments, with gradient `g`: 8-bit moments are decoded
    /// to f32, updated and coded again.
    fn update(
        &mut self,
        w: &mut Tensor,
        g: &Tensor,
        (start, len): (i64, i64),
        c: &StepConstants,
        decay: bool,
    ) {
        match self {
            Moments::Full {
                exp_avg,
                exp_avg_sq,
            } => {
                let part = |t: &Tensor| t.view([-1]).narrow(0, start, len);
                adamw(w, &mut part(exp_avg), &mut part(exp_avg_sq), g, c, decay);
            }
            Moments::Blockwise {
                exp_avg,
                exp_avg_sq,
            } => {
                let (mut m, mut v) = (exp_avg.read(start, len), exp_avg_sq.read(start, len));
                adamw(w, &mut m, &mut v, g, c, decay);
                exp_avg.write(start, &m);
                exp_avg_sq.write(start, &v);
            }
        }
    }

    /// The dtype the update is computed in.
    fn kind(&self) -> Kind {
        match self {
            Moments::Full { exp_avg, .. } => exp_avg.kind(),
            Moments::Blockwise { .. } => Kind::Float,
        }
    }

    /// Whether the moments can be updated as flat views (8-bit ones always are).
    fn is_contiguous(&self) -> bool {
        match self {
            Moments::Full {
                exp_avg,
                exp_avg_sq,
            } => exp_avg.is_contiguous() && exp_avg_sq.is_contiguous(),
            Moments::Blockwise { .. } => true,
        }
    }

    /// Zero moments for `tensor`: 8-bit under `adamw_8bit` for f32/bf16/f16 parameters of at
    /// least [`MIN_8BIT_SIZE`] values (contiguous: they are updated as flat views), in f32 (f64
    /// for f64 parameters) otherwise.
    fn new(tensor: &Tensor, optim: Optimizer, books: &mut Codebooks) -> Self {
        let n = tensor.numel() as i64;
        let kind = match tensor.kind() {
            Kind::Double => Kind::Double,
            _ => Kind::Float,
        };
        let coded = kind == Kind::Float && n >= MIN_8BIT_SIZE && tensor.is_contiguous();
        if optim == Optimizer::Adamw8bit && coded {
            let [first, second] = books.on(tensor.device());
            return Moments::Blockwise {
                exp_avg: Quantized::zeros(n, first),
                exp_avg_sq: Quantized::zeros(n, second),
            };
        }
        Moments::Full {
            exp_avg: tensor.zeros_like().to_kind(kind),
            exp_avg_sq: tensor.zeros_like().to_kind(kind),
        }
    }

    /// The checkpoint entries of the moments of parameter `name`, on the CPU:
    /// `{name}.exp_avg[_sq]`, or their `.codes` and `.absmax` when 8-bit.
    fn entries(&self, name: &str) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.to_device(tch::Device::Cpu);
        match self {
            Moments::Full {
                exp_avg,
                exp_avg_sq,
            } => vec![
                (format!("{name}.exp_avg"), cpu(exp_avg)),
                (format!("{name}.exp_avg_sq"), cpu(exp_avg_sq)),
            ],
            Moments::Blockwise {
                exp_avg,
                exp_avg_sq,
            } => [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)]
                .into_iter()
                .flat_map(|(key, q)| {
                    let (codes, absmax) = q.parts();
                    [
                        (format!("{name}.{key}.codes"), cpu(codes)),
                        (format!("{name}.{key}.absmax"), cpu(absmax)),
                    ]
                })
                .collect(),
        }
    }
}

/// The codebooks of the first and second moments per device, built once for all parameters.
#[derive(Default)]
struct Codebooks(Vec<(tch::Device, [Codebook; 2])>);

impl Codebooks {
    fn on(&mut self, device: tch::Device) -> &[Codebook; 2] {
        let at = match self.0.iter().position(|(d, _)| *d == device) {
            Some(at) => at,
            None => {
                let books = [true, false].map(|signed| Codebook::dynamic(signed, device));
                self.0.push((device, books));
                self.0.len() - 1
            }
        };
        &self.0[at].1
    }
}

/// One moment of one parameter as a checkpoint holds it.
enum Stored<'a> {
    Full(&'a Tensor),
    /// 8-bit codes and block maxima; `signed`: the first moment's map.
    Codes {
        codes: &'a Tensor,
        absmax: &'a Tensor,
        signed: bool,
    },
}

impl<'a> Stored<'a> {
    /// The entries of `key` (`{name}.exp_avg` or `{name}.exp_avg_sq`) in `file`.
    fn find(file: &'a HashMap<String, Tensor>, key: &str) -> Option<Self> {
        if let Some(t) = file.get(key) {
            return Some(Stored::Full(t));
        }
        Some(Stored::Codes {
            codes: file.get(&format!("{key}.codes"))?,
            absmax: file.get(&format!("{key}.absmax"))?,
            signed: key.ends_with(".exp_avg"),
        })
    }

    /// Whether it holds a moment of `param`: its shape, or its number of values when 8-bit.
    fn check(&self, param: &Tensor) -> std::result::Result<(), String> {
        let n = param.numel() as i64;
        let (got, want) = match self {
            Stored::Full(t) => (t.size(), param.size()),
            Stored::Codes { codes, absmax, .. } => (
                vec![codes.numel() as i64, absmax.numel() as i64],
                vec![n, (n + BLOCK - 1) / BLOCK],
            ),
        };
        match got == want {
            true => Ok(()),
            false => Err(format!("shape {got:?}, expected {want:?}")),
        }
    }

    /// Its values as `like`'s f32 (or f64) moment, decoding 8-bit codes.
    fn values(&self, like: &Tensor, books: &mut Codebooks) -> Tensor {
        let t = match self {
            Stored::Full(t) => t.shallow_clone(),
            Stored::Codes {
                codes,
                absmax,
                signed,
            } => {
                let n = codes.numel() as i64;
                let book = &books.on(tch::Device::Cpu)[usize::from(!signed)];
                Quantized::from_parts(codes, absmax, book)
                    .expect("checked by `check`")
                    .read(0, n)
            }
        };
        t.to_kind(like.kind())
            .to_device(like.device())
            .view(like.size().as_slice())
    }
}

impl Moments {
    /// Overwrites both moments with checked stored ones (`param`: the parameter they belong
    /// to), converting between 8-bit and full storage where the file has the other one.
    fn restore(&mut self, m: Stored, v: Stored, param: &Tensor, books: &mut Codebooks) {
        match self {
            Moments::Full {
                exp_avg,
                exp_avg_sq,
            } => {
                exp_avg.copy_(&m.values(exp_avg, books));
                exp_avg_sq.copy_(&v.values(exp_avg_sq, books));
            }
            Moments::Blockwise {
                exp_avg,
                exp_avg_sq,
            } => {
                for (q, stored) in [(exp_avg, m), (exp_avg_sq, v)] {
                    match stored {
                        Stored::Codes { codes, absmax, .. } => {
                            let device = param.device();
                            let _ = q.set_parts(
                                &codes.to_device(device).view([-1]),
                                &absmax.to_device(device).view([-1]),
                            );
                        }
                        Stored::Full(t) => q.write(
                            0,
                            &t.to_kind(Kind::Float).to_device(param.device()).view([-1]),
                        ),
                    }
                }
            }
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
        Self::build(params, false, Optimizer::AdamwTorch)
    }

    /// As [`new`](Self::new), with an f32 master copy of every bf16/f16 parameter
    /// (`precision = "bf16-mixed"`): updates are applied to the master, and the parameter is
    /// refreshed from it after each step. f32 parameters are tracked as by `new`.
    pub fn with_master_weights(params: Vec<(String, Tensor)>) -> Self {
        Self::build(params, true, Optimizer::AdamwTorch)
    }

    /// Tracks `params`, with f32 masters for the bf16/f16 ones when `master` is set, storing
    /// the moments as `optim` says.
    pub fn build(params: Vec<(String, Tensor)>, master: bool, optim: Optimizer) -> Self {
        let mut books = Codebooks::default();
        let mut params: Vec<(String, Param)> = params
            .into_iter()
            .map(|(name, tensor)| {
                let p = Param::new(&name, tensor, master, optim, &mut books);
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
                    master.set(&p.tensor, &p.tensor.to_kind(Kind::Float));
                }
            }
        });
    }

    /// The f32 master weights (name, values) kept under mixed precision; empty otherwise.
    pub fn master_weights(&self) -> impl Iterator<Item = (&str, Tensor)> {
        self.params.iter().filter_map(|(n, p)| {
            let master = p.master.as_ref()?;
            Some((n.as_str(), tch::no_grad(|| master.value(&p.tensor))))
        })
    }

    /// Writes the moments, the master weights (mixed precision) and the step count to a
    /// safetensors file (`{name}.exp_avg`, `{name}.exp_avg_sq` or, 8-bit, their `.codes` and
    /// `.absmax`; `{name}.master`; `step`), so a resumed run continues exactly.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> =
            vec![("step".to_string(), Tensor::from_slice(&[self.step as i64]))];
        for (name, p) in &self.params {
            tensors.extend(p.moments.entries(name));
            if let Some(master) = &p.master {
                let values = tch::no_grad(|| master.value(&p.tensor));
                tensors.push((format!("{name}.master"), values.to_device(tch::Device::Cpu)));
            }
        }
        Tensor::write_safetensors(&tensors, path)
            .map_err(|e| Error::bad_file(path, format!("cannot write: {e}")))
    }

    /// Restores what [`save`](Self::save) wrote; every tracked parameter's moments must be
    /// present with its shape, in either storage (a run may resume with the other `optim`:
    /// the moments are then quantized or decoded). Call it after the weights are loaded: a
    /// master the file lacks (it was written with `precision = "pure"`) is taken from the
    /// parameter, and masters in the file this optimizer does not keep are ignored. Nothing
    /// changes unless the whole file fits.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_file(path, format!("cannot read: {e}")))?
            .into_iter()
            .collect();
        let step = file
            .get("step")
            .ok_or_else(|| Error::bad_file(path, "missing step"))?
            .int64_value(&[0]);
        let mut found = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let moment = |key: &str| -> Result<Stored> {
                let stored = Stored::find(&file, &format!("{name}.{key}"))
                    .ok_or_else(|| Error::bad_file(path, format!("missing {name}.{key}")))?;
                stored
                    .check(&p.tensor)
                    .map_err(|why| Error::bad_file(path, format!("{name}.{key}: {why}")))?;
                Ok(stored)
            };
            let master = match &p.master {
                Some(_) => file
                    .get(&format!("{name}.master"))
                    .map(|m| match m.size() == p.tensor.size() {
                        true => Ok(m),
                        false => Err(Error::bad_file(
                            path,
                            format!(
                                "{name}.master: shape {:?}, expected {:?}",
                                m.size(),
                                p.tensor.size()
                            ),
                        )),
                    })
                    .transpose()?,
                None => None,
            };
            found.push((moment("exp_avg")?, moment("exp_avg_sq")?, master));
        }
        let mut books = Codebooks::default();
        tch::no_grad(|| {
            for ((_, p), (m, v, master)) in self.params.iter_mut().zip(found) {
                p.moments.restore(m, v, &p.tensor, &mut books);
                if let Some(own) = &mut p.master {
                    let values = master.unwrap_or(&p.tensor);
                    let values = values.to_device(p.tensor.device()).to_kind(Kind::Float);
                    own.set(&p.tensor, &values);
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
                .map(|g| f32_norm(&g))
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
                p.update(&g, scale, &c);
            }
        });
    }
}

/// The L2 norm of `g` in f32. A bf16/f16 tensor is upcast a chunk of [`STEP_CHUNK`] values at
/// a time (the norm of the chunks' norms), not whole: the whole copy of a 150k-vocabulary
/// embedding's gradient would cost 0.5 GB.
fn f32_norm(g: &Tensor) -> Tensor {
    let n = g.numel() as i64;
    if g.kind() == Kind::Float || n <= STEP_CHUNK {
        return g.to_kind(Kind::Float).norm();
    }
    let flat = g.reshape([-1]);
    let norms: Vec<Tensor> = step_chunks(n)
        .map(|(start, len)| flat.narrow(0, start, len).to_kind(Kind::Float).norm())
        .collect();
    Tensor::stack(&norms, 0).norm()
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

    fn leaf(values: Tensor) -> Tensor {
        values.set_requires_grad(true)
    }

    /// One step of `opt` with gradient `g` on its one parameter `w`.
    fn step_with(opt: &mut AdamW, w: &Tensor, g: &Tensor, cfg: &OptimConfig) {
        opt.zero_grad();
        (w * g).sum(Kind::Float).backward();
        opt.step(cfg.lr, cfg);
    }

    /// An 8-bit AdamW on the one parameter `w`, and its config (lr 1e-3).
    fn adamw_8bit_on(w: &Tensor) -> (AdamW, OptimConfig) {
        let cfg = OptimConfig {
            optim: Optimizer::Adamw8bit,
            lr: 1e-3,
            ..Default::default()
        };
        let opt = AdamW::build(vec![("w".into(), w.shallow_clone())], false, cfg.optim);
        (opt, cfg)
    }

    #[test]
    fn chunked_8bit_updates_code_each_block_as_one_piece_would() {
        // Two chunks and a partial block: the first step from zero moments stores
        // (1 - beta1) g, coded block by block exactly as a whole-tensor coding.
        let n = STEP_CHUNK + 300;
        tch::manual_seed(1);
        let w = leaf(Tensor::randn([n], (Kind::Float, tch::Device::Cpu)));
        let g = Tensor::randn([n], (Kind::Float, tch::Device::Cpu));
        let (mut opt, cfg) = adamw_8bit_on(&w);
        step_with(&mut opt, &w, &g, &cfg);
        let Moments::Blockwise { exp_avg, .. } = &opt.params[0].1.moments else {
            panic!("a parameter of {n} values keeps 8-bit moments")
        };
        let mut whole = Quantized::zeros(n, &Codebook::dynamic(true, tch::Device::Cpu));
        let mut m = g.zeros_like();
        let _ = m.lerp_(&g, 1.0 - cfg.adam_beta1);
        whole.write(0, &m);
        assert!(exp_avg.parts().0.equal(whole.parts().0));
        assert!(exp_avg.parts().1.equal(whole.parts().1));
    }

    #[test]
    fn master_updates_equal_one_whole_f32_update_bit_for_bit() {
        // bf16 over several chunks (2-byte masters), f16 (a whole f32 copy) and a transposed
        // bf16 weight (updated whole), with decay and clipping: each master equals `adamw`
        // applied to an f32 copy of the whole tensor.
        let cpu = tch::Device::Cpu;
        tch::manual_seed(2);
        let params = [
            Tensor::randn([STEP_CHUNK + 300], (Kind::BFloat16, cpu)),
            Tensor::randn([300], (Kind::Half, cpu)),
            Tensor::randn([48, 64], (Kind::BFloat16, cpu)).tr(),
        ];
        let cfg = OptimConfig {
            lr: 1e-3,
            weight_decay: 0.1,
            ..Default::default()
        };
        for w in params {
            let w = leaf(w.detach());
            let g = w.randn_like();
            let mut opt = AdamW::with_master_weights(vec![("w".into(), w.shallow_clone())]);
            let mut master = w.detach().to_kind(Kind::Float);
            let (mut m, mut v) = (master.zeros_like(), master.zeros_like());
            for step in 1..=2 {
                opt.zero_grad();
                (&w * &g).sum(Kind::Float).backward();
                let norm = opt.clip_grad_norm(1.0);
                opt.step(cfg.lr, &cfg);
                let c = StepConstants::new(cfg.lr, &cfg, step);
                let clipped = g.to_kind(Kind::Float) * (1.0 / (norm + 1e-6));
                adamw(&mut master, &mut m, &mut v, &clipped, &c, true);
                let (_, got) = opt.master_weights().next().unwrap();
                let context = format!("{:?} {:?}, step {step}", w.kind(), w.size());
                assert!(got.equal(&master), "{context}");
                let rounded = master.to_kind(w.kind());
                let ties = w.ne_tensor(&rounded).sum(Kind::Int64).int64_value(&[]);
                assert!(
                    ties <= 2,
                    "{context}: {ties} weights are not their master rounded"
                );
            }
        }
    }

    #[test]
    fn half_precision_norms_are_taken_in_f32_a_chunk_at_a_time() {
        tch::manual_seed(3);
        let g = Tensor::randn([2 * STEP_CHUNK + 7], (Kind::BFloat16, tch::Device::Cpu));
        // libtorch's own f32 norm of the whole tensor is off by ~5e-5 here; f64 is the truth.
        let want = g.to_kind(Kind::Double).norm().double_value(&[]);
        let got = f32_norm(&g).double_value(&[]);
        assert!((got - want).abs() < 1e-4 * want, "{got} vs {want}");
        assert_eq!(f32_norm(&g).kind(), Kind::Float);
    }

    #[test]
    fn a_tiny_gradient_beside_large_ones_never_divides_by_eps_alone() {
        // One value 1e-6 in a block of 1s: its second moment is 1e-12 of the block's, below
        // the map's smallest positive entry. Coded as 0, the next step (zero gradient) would
        // move it by lr * m / eps (about 40 lr); kept positive, it barely moves.
        let n = 2 * MIN_8BIT_SIZE;
        let w = leaf(Tensor::zeros([n], (Kind::Float, tch::Device::Cpu)));
        let g = Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
        let _ = g.narrow(0, 5, 1).fill_(1e-6);
        let (mut opt, cfg) = adamw_8bit_on(&w);
        step_with(&mut opt, &w, &g, &cfg);
        let before = w.double_value(&[5]);
        step_with(&mut opt, &w, &g.zeros_like(), &cfg);
        let moved = (w.double_value(&[5]) - before).abs();
        assert!(moved < 0.01 * cfg.lr, "moved {moved:e}");
        // The large values take their usual step (Adam's update is about lr).
        assert!(w.double_value(&[0]) < -1.5 * cfg.lr);
    }
}
