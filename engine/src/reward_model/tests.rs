//! The `model` reward through the registry, on a tiny random classifier with a word-level
//! tokenizer written by the test. Parity with transformers and TRL is in
//! tests/reward_model.rs.

use std::path::Path;

use oxrl_rewards::{RewardSpec, WeightedRewards};
use serde_json::{json, Value};

use super::*;
use crate::model::ModelConfig;

const WORDS: [&str; 16] = [
    "<pad>",
    "<eos>",
    "<unk>",
    "user",
    "assistant",
    ":",
    ";",
    "what",
    "is",
    "two",
    "plus",
    "four",
    "yes",
    "no",
    "the",
    "answer",
];
/// Role, `:`, content, `;` per message: every piece a word of [`WORDS`].
const TEMPLATE: &str =
    "{% for m in messages %}{{ m.role }} : {{ m.content }} ; {% endfor %}{% if add_generation_prompt %}assistant :{% endif %}";

/// Ids of space-separated words, looked up by hand (not through the tokenizer under test).
fn ids(text: &str) -> Vec<i64> {
    text.split_whitespace()
        .map(|w| WORDS.iter().position(|x| *x == w).expect("known word") as i64)
        .collect()
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// A tiny random `Qwen2ForSequenceClassification` with two labels and a word-level tokenizer
/// (pad `<pad>` = 0; chat template [`TEMPLATE`] unless `chat` is false), in `dir`.
fn write_reward_model(dir: &Path, chat: bool) -> SequenceClassifier {
    let config: ModelConfig = serde_json::from_value(json!({
        "architectures": ["Qwen2ForCausalLM"], "vocab_size": WORDS.len(), "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "pad_token_id": 0
    }))
    .unwrap();
    let model = SequenceClassifier::random(&config, 2, 3, 0.3);
    model.save(dir).unwrap();
    let vocab: serde_json::Map<String, Value> = WORDS
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let special = |id: usize| {
        json!({"id": id, "content": WORDS[id], "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    write_json(
        &dir.join("tokenizer.json"),
        &json!({"version": "1.0", "truncation": null, "padding": null,
                "added_tokens": [special(0), special(1), special(2)], "normalizer": null,
                "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}}),
    );
    let mut tokenizer_config = json!({"pad_token": "<pad>", "eos_token": "<eos>"});
    if chat {
        tokenizer_config["chat_template"] = json!(TEMPLATE);
    }
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config);
    model
}

/// `[[rewards]]` entry `{name = "rm", type = "model", path = "rm", ...extra}`.
fn spec(extra: Value) -> RewardSpec {
    let mut table = json!({"name": "rm", "type": "model", "path": "rm"});
    for (k, v) in extra.as_object().unwrap() {
        table[k] = v.clone();
    }
    serde_json::from_value(table).unwrap()
}

fn build_error(base: &Path, spec: &RewardSpec) -> String {
    registry(base)
        .build(spec)
        .err()
        .expect("the spec is refused")
        .to_string()
}

#[test]
fn the_registry_builds_a_model_reward_that_reads_the_chat_rendering() {
    let base = tempfile::tempdir().unwrap();
    let model = write_reward_model(&base.path().join("rm"), true);
    let rewards = WeightedRewards::from_specs(
        &registry(base.path()),
        &[spec(json!({"label": 1, "batch_size": 2}))],
    )
    .unwrap();
    let completions = vec![
        Completion::new("four").with_prompt("what is two plus two"),
        Completion::new("the answer is four").with_prompt("what is two plus two"),
        Completion::new("no").with_prompt("is two four"),
    ];
    let report = &rewards.score(&completions).rewards[0];
    let expected = model
        .score_all(
            &[
                ids("user : what is two plus two ; assistant : four ;"),
                ids("user : what is two plus two ; assistant : the answer is four ;"),
                ids("user : is two four ; assistant : no ;"),
            ],
            1,
        )
        .unwrap();
    for (score, row) in report.scores.iter().zip(&expected) {
        let score = score.clone().unwrap();
        assert!(
            (score - f64::from(row[1])).abs() < 1e-6,
            "{score} vs {row:?}"
        );
    }
    assert_ne!(report.values[0], report.values[1]);
}

#[test]
fn plain_text_truncation_and_empty_inputs() {
    let base = tempfile::tempdir().unwrap();
    let model = write_reward_model(&base.path().join("rm"), false);
    let score = |extra: Value, completions: &[Completion]| {
        registry(base.path())
            .build(&spec(extra))
            .unwrap()
            .score_batch(completions)
    };
    let question = Completion::new("yes the answer is four").with_prompt("what is two plus two ");
    // No chat template: `auto` reads prompt + completion.
    let scores = score(json!({}), &[question.clone(), Completion::new("")]);
    let full = model
        .score_all(&[ids("what is two plus two yes the answer is four")], 1)
        .unwrap();
    assert!((scores[0].clone().unwrap() - f64::from(full[0][0])).abs() < 1e-6);
    assert!(
        matches!(&scores[1], Err(RewardFailure::Parse(m)) if m.contains("empty")),
        "{scores:?}"
    );
    // `max_length` keeps the end, where the score is read.
    let scores = score(json!({"max_length": 3}), &[question]);
    let tail = model.score_all(&[ids("answer is four")], 1).unwrap();
    assert!((scores[0].clone().unwrap() - f64::from(tail[0][0])).abs() < 1e-6);
}

#[test]
fn bad_options_are_clear_errors_naming_the_reward_or_path() {
    let base = tempfile::tempdir().unwrap();
    write_reward_model(&base.path().join("rm"), false);
    let base = base.path();
    let msg = build_error(base, &spec(json!({"batchsize": 4})));
    assert!(msg.contains("`rm`") && msg.contains("batchsize"), "{msg}");
    let msg = build_error(base, &spec(json!({"path": "nowhere"})));
    assert!(
        msg.contains("nowhere") && msg.contains("not a directory"),
        "{msg}"
    );
    let msg = build_error(base, &spec(json!({"label": 2})));
    assert!(
        msg.contains("label = 2") && msg.contains("2 label(s)"),
        "{msg}"
    );
    let msg = build_error(base, &spec(json!({"template": "chat"})));
    assert!(msg.contains("no chat template"), "{msg}");
    let msg = build_error(base, &spec(json!({"template": "jinja"})));
    assert!(msg.contains("jinja"), "{msg}");
    let msg = build_error(base, &spec(json!({"batch_size": 0})));
    assert!(msg.contains("batch_size"), "{msg}");
    let msg = build_error(base, &spec(json!({"device": "tpu"})));
    assert!(msg.contains("tpu"), "{msg}");
    let mut no_path = spec(json!({}));
    no_path.options.remove("path");
    let msg = build_error(base, &no_path);
    assert!(msg.contains("path"), "{msg}");
}

#[test]
fn one_reward_serves_several_threads() {
    let base = tempfile::tempdir().unwrap();
    write_reward_model(&base.path().join("rm"), true);
    let reward = registry(base.path()).build(&spec(json!({}))).unwrap();
    let batch: Vec<Completion> = ["yes", "no", "four", "the answer"]
        .iter()
        .map(|c| Completion::new(*c).with_prompt("what is two plus two"))
        .collect();
    let alone = reward.score_batch(&batch);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| reward.score_batch(&batch)))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), alone);
        }
    });
}
