//! Text to token ids and back (HF `tokenizers`), plus the model's chat template and the
//! special token ids generation needs.

use std::path::Path;

use oxrl_envs::{ChatTemplate, Message};
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// A tokenizer with its special tokens and optional chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<ChatTemplate>,
    eos_token_ids: Vec<u32>,
    pad_token_id: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.get_vocab_size(true))
            .field("eos_token_ids", &self.eos_token_ids)
            .finish()
    }
}

/// The `chat_template` entry may be one string or a list of named templates.
fn default_template(entry: &Json) -> Option<String> {
    match entry {
        Json::String(s) => Some(s.clone()),
        Json::Array(items) => items
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_owned),
        _ => None,
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_text(entry: &Json) -> Option<String> {
    entry
        .as_str()
        .or_else(|| entry["content"].as_str())
        .map(str::to_owned)
}

impl Tokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` and `chat_template.jinja` (if present)
    /// from an HF directory. `eos_ids` are the model's EOS ids (from `config.json`).
    pub fn from_dir(dir: &Path, eos_ids: &[i64]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let json = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Error::bad_file(&config_path, e.to_string()))?,
            Err(_) => Json::Null,
        };
        let jinja = dir.join("chat_template.jinja");
        let template = match std::fs::read_to_string(&jinja) {
            Ok(t) => Some(t),
            Err(_) => default_template(&config["chat_template"]),
        };
        Self::from_parts(&json, &config, template, eos_ids)
            .map_err(|e| Error::bad_file(dir, e.to_string()))
    }

    /// Builds a tokenizer from `tokenizer.json` bytes and the parsed `tokenizer_config.json`.
    pub fn from_parts(
        tokenizer_json: &[u8],
        config: &Json,
        chat_template: Option<String>,
        eos_ids: &[i64],
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Tokenizer(format!("invalid tokenizer.json: {e}")))?;
        let id_of = |key: &str| token_text(&config[key]).and_then(|t| inner.token_to_id(&t));
        let mut eos_token_ids: Vec<u32> = eos_ids.iter().map(|&i| i as u32).collect();
        if let Some(id) = id_of("eos_token") {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        let chat_template = chat_template
            .map(|src| {
                let bos = token_text(&config["bos_token"]).unwrap_or_default();
                let eos = token_text(&config["eos_token"]).unwrap_or_default();
                ChatTemplate::new(&src, bos, eos).map_err(|e| Error::Tokenizer(e.to_string()))
            })
            .transpose()?;
        Ok(Self {
            pad_token_id: id_of("pad_token"),
            inner,
            chat_template,
            eos_token_ids,
        })
    }

    /// Token ids of `text`; `add_special` applies the post-processor (e.g. a BOS token).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special)
            .map_err(|e| Error::Tokenizer(format!("cannot encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, optionally without special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(format!("cannot decode: {e}")))
    }

    /// Renders a conversation with the model's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| Error::Tokenizer("this model has no chat template".into()))?;
        template
            .render(messages, add_generation_prompt)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Ids that end a generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The padding id (falls back to the first EOS id).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id.or(self.eos_token_ids.first().copied())
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying HF tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
