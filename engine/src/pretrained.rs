//! Loading a pretrained model and its tokenizer from an HF directory or a GGUF file, and
//! writing an HF directory (`oxrl import`).

use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Device, Kind};

use crate::error::{Error, Result};
use crate::gguf::{self, GgufFile, HfModel};
use crate::model::{Llama, ModelConfig};
use crate::tokenizer::Tokenizer;
use crate::weights::{self, LoadReport};

/// A loaded model: parameters, the module built on them, and the tokenizer.
#[derive(Debug)]
pub struct Pretrained {
    /// The parameters, named by HF keys.
    pub vs: VarStore,
    /// The network.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Where it was loaded from.
    pub source: PathBuf,
}

/// Where and in which precision to load.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Target device.
    pub device: Device,
    /// Parameter dtype (f32, bf16 or f16).
    pub kind: Kind,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            kind: Kind::Float,
        }
    }
}

impl Pretrained {
    /// Loads `path`: a directory with `config.json` or a `.gguf` file.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self> {
        if !path.exists() {
            return Err(Error::io(path, std::io::ErrorKind::NotFound.into()));
        }
        if path.is_dir() {
            Self::load_dir(path, opts)
        } else {
            Self::load_gguf(path, opts)
        }
    }

    /// The tokenizer (with its chat template) of `path`, a directory or a `.gguf` file,
    /// without loading any weights.
    pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
        if path.is_dir() {
            let config = ModelConfig::from_file(&path.join("config.json"))?;
            return Tokenizer::from_dir(path, &config.eos_token_ids());
        }
        let (config, json, tokenizer_config) = gguf::to_hf_tokenizer(&GgufFile::open(path)?)?;
        tokenizer_from_gguf(path, &config, &json, &tokenizer_config)
    }

    fn load_dir(dir: &Path, opts: LoadOptions) -> Result<Self> {
        let (vs, model) = load_model_dir(dir, opts)?;
        let tokenizer = Tokenizer::from_dir(dir, &model.config().eos_token_ids())?;
        Ok(Self {
            vs,
            model,
            tokenizer,
            source: dir.to_owned(),
        })
    }

    fn load_gguf(path: &Path, opts: LoadOptions) -> Result<Self> {
        let hf = gguf::to_hf(&GgufFile::open(path)?)?;
        let tokenizer =
            tokenizer_from_gguf(path, &hf.config, &hf.tokenizer_json, &hf.tokenizer_config)?;
        let (vs, model) = build(&hf.config, hf.tensors, path, opts)?;
        Ok(Self {
            vs,
            model,
            tokenizer,
            source: path.to_owned(),
        })
    }
}

/// The tokenizer of GGUF file `path` from its converted tokenizer files.
fn tokenizer_from_gguf(
    path: &Path,
    config: &ModelConfig,
    json: &serde_json::Value,
    tokenizer_config: &serde_json::Value,
) -> Result<Tokenizer> {
    let template = tokenizer_config["chat_template"]
        .as_str()
        .map(str::to_owned);
    Tokenizer::from_parts(
        json.to_string().as_bytes(),
        tokenizer_config,
        template,
        &config.eos_token_ids(),
    )
    .map_err(|e| Error::bad_file(path, e.to_string()))
}

/// Loads the model (no tokenizer) of an HF directory: `config.json` plus safetensors weights.
pub fn load_model_dir(dir: &Path, opts: LoadOptions) -> Result<(VarStore, Llama)> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let (weights_path, tensors) = weights::read_checkpoint_dir(dir)?;
    build(&config, tensors, &weights_path, opts)
}

/// Builds the model for `config` and loads `tensors` into it, failing with a per-tensor
/// report if any parameter is missing or mis-shaped. Unexpected tensors are warned about.
pub fn build(
    config: &ModelConfig,
    tensors: Vec<(String, tch::Tensor)>,
    weights_path: &Path,
    opts: LoadOptions,
) -> Result<(VarStore, Llama)> {
    let mut vs = VarStore::new(opts.device);
    let model = Llama::new(&vs.root(), config);
    let report: LoadReport = weights::load_into(&vs, tensors);
    if !report.is_complete() {
        return Err(Error::WeightMismatch {
            path: weights_path.to_owned(),
            report: report.describe(),
        });
    }
    for name in &report.unexpected {
        eprintln!("warning: {}: unused tensor {name}", weights_path.display());
    }
    if opts.kind != Kind::Float {
        vs.set_kind(opts.kind);
    }
    Ok((vs, model))
}

/// Writes a model's `config.json` and `model.safetensors` (weights in `kind` if given) to
/// `dir`, as transformers' `save_pretrained` would.
pub fn save_model_dir(
    vs: &VarStore,
    config: &ModelConfig,
    dir: &Path,
    kind: Option<Kind>,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config.to_hf_json()).expect("JSON serializes");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    weights::save_safetensors(vs, &dir.join("model.safetensors"), kind)
}

/// Writes `hf` as an HF directory: `config.json`, `model.safetensors`, `tokenizer.json`,
/// `tokenizer_config.json`, `chat_template.jinja`, `generation_config.json`.
pub fn write_hf_dir(hf: &HfModel, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let write_json = |name: &str, value: &serde_json::Value| -> Result<()> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value).expect("JSON values always serialize");
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    write_json("config.json", &hf.config.to_hf_json())?;
    write_json("tokenizer.json", &hf.tokenizer_json)?;
    write_json("tokenizer_config.json", &hf.tokenizer_config)?;
    write_json(
        "generation_config.json",
        &serde_json::json!({
            "bos_token_id": hf.config.bos_token_id,
            "eos_token_id": hf.config.eos_token_id,
            "pad_token_id": hf.config.pad_token_id,
        }),
    )?;
    if let Some(template) = hf.tokenizer_config["chat_template"].as_str() {
        let path = dir.join("chat_template.jinja");
        std::fs::write(&path, template).map_err(|e| Error::io(&path, e))?;
    }
    let path = dir.join("model.safetensors");
    tch::Tensor::write_safetensors(&hf.tensors, &path)
        .map_err(|e| Error::bad_file(&path, format!("cannot write: {e}")))
}
