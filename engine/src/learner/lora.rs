//! LoRA glue for the learner (Hu et al. 2021, arXiv 2106.09685; PEFT `LoraConfig` names):
//! build a policy with adapters, freeze everything else, re-initialise adapters PEFT-style,
//! and export a merged checkpoint (`W + alpha/r * B A`) that loads as a plain model. The
//! reference model of a LoRA run is the same model with adapters off: no second copy.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::llama::LoraSpec;
use crate::model::replica::replica;
use crate::model::{Llama, ModelConfig};
use crate::pretrained::save_model_dir;

/// The projections LoRA can target.
pub const PROJECTIONS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// LoRA options (PEFT `LoraConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank.
    pub r: i64,
    /// Scale numerator (`alpha / r`).
    pub lora_alpha: f64,
    /// Dropout on the adapter input while training.
    pub lora_dropout: f64,
    /// Projections to adapt; default all attention and MLP projections.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: PROJECTIONS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl LoraConfig {
    /// The model-side description, after checking the options.
    pub fn spec(&self) -> Result<LoraSpec> {
        if self.r < 1 {
            return Err(Error::Invalid(format!(
                "lora: r must be >= 1, got {}",
                self.r
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::Invalid(
                "lora: lora_dropout must be in [0, 1)".into(),
            ));
        }
        if let Some(bad) = self
            .target_modules
            .iter()
            .find(|m| !PROJECTIONS.contains(&m.as_str()))
        {
            return Err(Error::Invalid(format!(
                "lora: unknown target module {bad:?} (known: {})",
                PROJECTIONS.join(", ")
            )));
        }
        Ok(LoraSpec {
            r: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
        })
    }
}

/// True for adapter variables (`...lora_A.weight`, `...lora_B.weight`).
pub fn is_adapter(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// A policy with adapters: its base weights are copied by name from `base` (a plain model's
/// variables), and only the adapters stay trainable.
pub fn with_adapters(
    base: &VarStore,
    cfg: &ModelConfig,
    lora: &LoraConfig,
) -> Result<(VarStore, Llama)> {
    let spec = lora.spec()?;
    let (vs, model) = replica(
        base,
        |root| Llama::with_lora(root, cfg, Some(&spec)),
        is_adapter,
    )?;
    freeze_base(&vs);
    Ok((vs, model))
}

/// Stops gradients to every non-adapter variable.
pub fn freeze_base(vs: &VarStore) {
    for (name, t) in vs.variables() {
        if !is_adapter(&name) {
            let _ = t.set_requires_grad(false);
        }
    }
}

/// PEFT's initialisation: `lora_A` uniform in `+-1/sqrt(in)`, `lora_B` zero (the model's
/// outputs equal the base's). Seeded.
pub fn reset_adapters(vs: &VarStore, seed: i64) {
    tch::manual_seed(seed);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut t) in vars {
            if name.contains(".lora_A.") {
                let bound = 1.0 / (t.size()[1] as f64).sqrt();
                let _ = t.uniform_(-bound, bound);
            } else if name.contains(".lora_B.") {
                let _ = t.zero_();
            }
        }
    });
}

/// The base weights with the adapters merged in (`W + alpha/r * B A`), by HF name, adapter
/// variables left out.
pub fn merged_tensors(vs: &VarStore, lora: &LoraConfig) -> Vec<(String, Tensor)> {
    let vars = vs.variables();
    let scaling = lora.lora_alpha / lora.r as f64;
    tch::no_grad(|| {
        let mut out: Vec<(String, Tensor)> = vars
            .iter()
            .filter(|(n, _)| !is_adapter(n))
            .map(|(name, w)| {
                let stem = name.strip_suffix(".weight").unwrap_or(name);
                let a = vars.get(&format!("{stem}.lora_A.weight"));
                let b = vars.get(&format!("{stem}.lora_B.weight"));
                let merged = match (a, b) {
                    (Some(a), Some(b)) => {
                        let delta =
                            b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * scaling;
                        (w.to_kind(Kind::Float) + delta).to_kind(w.kind())
                    }
                    _ => w.detach().copy(),
                };
                (name.clone(), merged)
            })
            .collect();
        out.sort_by(|x, y| x.0.cmp(&y.0));
        out
    })
}

/// Writes the adapters of `vs` as a PEFT adapter directory (`adapter_config.json`,
/// `adapter_model.safetensors` with PEFT's `base_model.model.` prefix), which vLLM and PEFT
/// load on top of the base model.
pub fn save_adapter(vs: &VarStore, lora: &LoraConfig, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| is_adapter(name))
        .map(|(name, t)| {
            let t = t.detach().to_device(tch::Device::Cpu).contiguous();
            (format!("base_model.model.{name}"), t)
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&tensors, dir.join("adapter_model.safetensors"))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.r,
        "lora_alpha": lora.lora_alpha,
        "lora_dropout": lora.lora_dropout,
        "target_modules": lora.target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
    });
    let path = dir.join("adapter_config.json");
    std::fs::write(&path, format!("{config:#}")).map_err(|e| Error::io(&path, e))
}

/// Writes a plain HF model directory (no adapters) of the frozen base weights: what a vLLM
/// server serves under a LoRA run's adapters.
pub fn export_base(vs: &VarStore, cfg: &ModelConfig, dir: &Path, kind: Option<Kind>) -> Result<()> {
    let base: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| !is_adapter(name))
        .collect();
    export_tensors(&base, cfg, dir, kind)
}

/// Writes a plain HF model directory (no adapters) with the adapters merged in.
pub fn export_merged(
    vs: &VarStore,
    cfg: &ModelConfig,
    lora: &LoraConfig,
    dir: &Path,
    kind: Option<Kind>,
) -> Result<()> {
    export_tensors(&merged_tensors(vs, lora), cfg, dir, kind)
}

/// Writes `tensors` (a plain model's variables by HF name) as an HF model directory.
fn export_tensors(
    tensors: &[(String, Tensor)],
    cfg: &ModelConfig,
    dir: &Path,
    kind: Option<Kind>,
) -> Result<()> {
    let device = tensors
        .first()
        .map_or(tch::Device::Cpu, |(_, t)| t.device());
    let plain = VarStore::new(device);
    let _model = Llama::new(&plain.root(), cfg);
    let vars = plain.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in tensors {
            let mut dst = vars
                .get(name)
                .ok_or_else(|| Error::Invalid(format!("lora: unexpected variable {name}")))?
                .shallow_clone();
            dst.f_copy_(t)?;
        }
        Ok(())
    })?;
    save_model_dir(&plain, cfg, dir, kind)
}
