//! Shared helpers for the integration tests: fixtures, the real SmolLM2 chat template, a toy
//! tokenizer, and configs built from JSON (the same serde path a TOML run config takes).
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use oxrl_envs::{ChatTemplate, EnvConfig, LoadedEnv, Message, TokenizedTranscript};
use serde_json::Value;

pub const IM_START: u32 = 1;
pub const IM_END: u32 = 2;
pub const STOP: &str = "<|im_end|>";
pub const SYSTEM: &str = "You are a careful assistant.";

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chat template of the bundled default model (extracted by fixtures/make_fixtures.py).
pub fn smollm2_template() -> ChatTemplate {
    let source = std::fs::read_to_string(fixtures().join("smollm2_chat_template.jinja")).unwrap();
    ChatTemplate::new(&source, "<|im_start|>", STOP).unwrap()
}

/// A golden case from fixtures/conversations.json: (messages, add_generation_prompt, text).
pub fn golden(name: &str) -> (Vec<Message>, bool, String) {
    let text = std::fs::read_to_string(fixtures().join("conversations.json")).unwrap();
    let all: Value = serde_json::from_str(&text).unwrap();
    let case = &all[name];
    (
        serde_json::from_value(case["messages"].clone()).unwrap(),
        case["add_generation_prompt"].as_bool().unwrap(),
        case["rendered"].as_str().unwrap().to_owned(),
    )
}

/// ChatML special tokens as single ids, every other byte as `256 + byte`.
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("<|im_start|>") {
            ids.push(IM_START);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(STOP) {
            ids.push(IM_END);
            rest = r;
        } else {
            let c = rest.chars().next().unwrap();
            let mut buf = [0u8; 4];
            ids.extend(c.encode_utf8(&mut buf).bytes().map(|b| 256 + u32::from(b)));
            rest = &rest[c.len_utf8()..];
        }
    }
    ids
}

/// Inverse of [`tokenize`].
pub fn detokenize(ids: &[u32]) -> String {
    let mut bytes = Vec::new();
    for &id in ids {
        match id {
            IM_START => bytes.extend_from_slice(b"<|im_start|>"),
            IM_END => bytes.extend_from_slice(STOP.as_bytes()),
            _ => bytes.push((id - 256) as u8),
        }
    }
    String::from_utf8(bytes).unwrap()
}

/// The text of the tokens the mask trains.
pub fn trained_text(tok: &TokenizedTranscript) -> String {
    let ids: Vec<u32> = tok
        .ids
        .iter()
        .zip(&tok.mask)
        .filter(|(_, m)| **m == 1)
        .map(|(i, _)| *i)
        .collect();
    detokenize(&ids)
}

pub fn config(json: Value) -> EnvConfig {
    serde_json::from_value(json).unwrap()
}

pub fn load(json: Value, base: &Path) -> LoadedEnv {
    LoadedEnv::from_config(&config(json), base, Some(smollm2_template())).unwrap()
}
