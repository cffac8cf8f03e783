//! Trained reward models: `[[rewards]] type = "model"` scores each completion with an HF
//! `*ForSequenceClassification` directory ([`SequenceClassifier`]), as TRL's `GRPOTrainer`
//! scores with a reward model: the prompt and completion rendered with the reward model's own
//! chat template (or concatenated), tokenized by its own tokenizer without special tokens,
//! right-padded with its pad id, batched, and read at the last non-pad token.
//!
//! ```toml
//! [[rewards]]
//! name = "rm"
//! type = "model"
//! path = "models/my-reward-model"   # relative to the run config's folder
//! device = "cuda:1"                 # default "cpu"
//! ```
//!
//! The `oxrl-rewards` crate does not link libtorch, so this builder lives here and
//! [`registry`] adds it to the built-ins. Design notes: docs/rewards.md.

pub mod classifier;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use oxrl_envs::Message;
use oxrl_rewards::{Completion, Registry, Reward, RewardFailure, Score};
use serde::Deserialize;

pub use classifier::SequenceClassifier;

use crate::device::{parse_device, parse_kind};
use crate::error::{Error, Result};
use crate::pretrained::LoadOptions;
use crate::tokenizer::Tokenizer;

/// How a completion becomes the reward model's input text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateChoice {
    /// `chat` when the reward model's tokenizer has a chat template, else `plain`.
    #[default]
    Auto,
    /// `[{user: prompt}, {assistant: completion}]` through the reward model's chat template
    /// (TRL's path for conversational data).
    Chat,
    /// `prompt + completion` (TRL's path for plain-text data).
    Plain,
}

/// The options of a `type = "model"` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRewardOptions {
    /// The HF directory: `config.json` (`architectures[0]` a `…ForSequenceClassification`),
    /// safetensors weights, tokenizer files. Relative to the run config's folder.
    pub path: PathBuf,
    /// `cpu` (default), `cuda`, `cuda:N` or `auto`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32` (default), `bf16` or `f16`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Sequences per forward pass (default 8).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest input in tokens; longer ones keep their last `max_length` tokens (the score is
    /// read at the end). Default: no limit, as TRL.
    #[serde(default)]
    pub max_length: Option<usize>,
    /// Which output is the reward when the model has several labels (default 0, TRL's).
    #[serde(default)]
    pub label: usize,
    /// `auto` (default), `chat` or `plain`; see [`TemplateChoice`].
    #[serde(default)]
    pub template: TemplateChoice,
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}
fn default_batch_size() -> usize {
    8
}

/// A reward read from a trained reward model.
pub struct ModelReward {
    /// A `Mutex` because tch tensors are `Send` but not `Sync`; the lock is held for one
    /// batch's forward passes.
    model: Mutex<SequenceClassifier>,
    tokenizer: Tokenizer,
    chat: bool,
    batch_size: usize,
    max_length: Option<usize>,
    label: usize,
}

impl std::fmt::Debug for ModelReward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelReward")
            .field("chat", &self.chat)
            .field("batch_size", &self.batch_size)
            .field("max_length", &self.max_length)
            .field("label", &self.label)
            .finish()
    }
}

impl ModelReward {
    /// Loads the reward model `opts` names (a relative `path` is taken from `base_dir`) on its
    /// device, in its dtype, with its tokenizer, and checks the options against it.
    pub fn load(base_dir: &Path, opts: &ModelRewardOptions) -> Result<Self> {
        if opts.batch_size == 0 || opts.max_length == Some(0) {
            return Err(Error::Invalid(
                "batch_size and max_length must be at least 1".into(),
            ));
        }
        let dir = base_dir.join(&opts.path);
        let load = LoadOptions {
            device: parse_device(&opts.device)?,
            kind: parse_kind(&opts.dtype)?,
        };
        let mut model = SequenceClassifier::load(&dir, load)?;
        if opts.label >= model.num_labels() {
            return Err(Error::Invalid(format!(
                "label = {} but {} has {} label(s)",
                opts.label,
                dir.display(),
                model.num_labels()
            )));
        }
        // No model EOS ids: the pad id then falls back to the tokenizer's own `eos_token`,
        // as TRL does (`pad_token = eos_token` when the tokenizer has no pad token).
        let tokenizer = Tokenizer::from_dir(&dir, &[])?;
        let pad = tokenizer.pad_token_id().map(i64::from);
        model.set_pad_token_id(pad.or(model.pad_token_id()));
        let has_template = tokenizer.chat_template().is_some();
        let chat = match opts.template {
            TemplateChoice::Auto => has_template,
            TemplateChoice::Plain => false,
            TemplateChoice::Chat if has_template => true,
            TemplateChoice::Chat => {
                return Err(Error::bad_file(
                    &dir,
                    "template = \"chat\" but the tokenizer has no chat template",
                ))
            }
        };
        Ok(Self {
            model: Mutex::new(model),
            tokenizer,
            chat,
            batch_size: opts.batch_size,
            max_length: opts.max_length,
            label: opts.label,
        })
    }

    /// The text the reward model reads for `c`.
    fn text(&self, c: &Completion) -> std::result::Result<String, RewardFailure> {
        if !self.chat {
            return Ok(format!("{}{}", c.prompt, c.completion));
        }
        let messages = [
            Message::new("user", c.prompt.as_str()),
            Message::new("assistant", c.completion.as_str()),
        ];
        self.tokenizer
            .apply_chat_template(&messages, false)
            .map_err(|e| RewardFailure::Parse(format!("reward model chat template: {e}")))
    }

    /// The token ids the reward model reads for `c`: its text without special tokens (the
    /// chat template writes its own), the last `max_length` of them.
    fn input_ids(&self, c: &Completion) -> std::result::Result<Vec<i64>, RewardFailure> {
        let text = self.text(c)?;
        let ids = self
            .tokenizer
            .encode(&text, false)
            .map_err(|e| RewardFailure::Parse(e.to_string()))?;
        if ids.is_empty() {
            return Err(RewardFailure::Parse(
                "empty input: prompt and completion have no tokens".into(),
            ));
        }
        let start = self.max_length.map_or(0, |m| ids.len().saturating_sub(m));
        Ok(ids[start..].iter().map(|&id| i64::from(id)).collect())
    }

    /// The reward model's outputs for `sequences` (all labels), or why the forward failed.
    pub fn scores(
        &self,
        sequences: &[Vec<i64>],
    ) -> std::result::Result<Vec<Vec<f32>>, RewardFailure> {
        // A failed forward leaves the model as it was (it is only read), so a poisoned lock
        // is safe to take over.
        let model = self.model.lock().unwrap_or_else(PoisonError::into_inner);
        // libtorch errors inside the decoder (out of memory, a device fault) surface as
        // panics in tch's infallible ops; a reward must report them, not take the run down.
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            model.score_all(sequences, self.batch_size)
        }));
        match run {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(e)) => Err(RewardFailure::Crash(e.to_string())),
            Err(panic) => Err(RewardFailure::Crash(panic_message(panic.as_ref()))),
        }
    }
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "reward model forward panicked".into())
}

impl Reward for ModelReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        let inputs: Vec<std::result::Result<Vec<i64>, RewardFailure>> =
            completions.iter().map(|c| self.input_ids(c)).collect();
        let ready: Vec<Vec<i64>> = inputs.iter().filter_map(|i| i.clone().ok()).collect();
        let mut scored = match self.scores(&ready) {
            Ok(rows) => rows
                .into_iter()
                .map(|row| Ok(f64::from(row[self.label])))
                .collect(),
            Err(failure) => vec![Err(failure); ready.len()],
        }
        .into_iter();
        inputs
            .into_iter()
            .map(|input| match input {
                Ok(_) => scored
                    .next()
                    .unwrap_or_else(|| Err(RewardFailure::Crash("missing score".into()))),
                Err(failure) => Err(failure),
            })
            .collect()
    }
}

/// Adds the `model` builder to `registry`; relative `path`s are taken from `base_dir` (the run
/// config's folder).
pub fn register(registry: &mut Registry, base_dir: &Path) {
    let base = base_dir.to_owned();
    registry.register("model", move |name, options| {
        let opts: ModelRewardOptions = oxrl_rewards::registry::options(name, options)?;
        let reward = ModelReward::load(&base, &opts).map_err(|e| oxrl_rewards::Error::Config {
            name: name.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Arc::new(reward) as Arc<dyn Reward>)
    });
}

/// The built-in rewards plus `model`: what `[[rewards]]` are built with.
pub fn registry(base_dir: &Path) -> Registry {
    let mut registry = Registry::default();
    register(&mut registry, base_dir);
    registry
}

#[cfg(test)]
mod tests;
