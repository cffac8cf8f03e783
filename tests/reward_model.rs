//! Trained reward models (`[[rewards]] type = "model"`) score as transformers does: tiny random
//! `*ForSequenceClassification` directories give transformers' outputs within 1e-4, from token
//! ids and through TRL's text path (the bundled model's tokenizer and chat template), and a
//! training run reports the reward.

use std::path::Path;

use oxrl::device::test_device;
use oxrl::gguf::{to_hf_tokenizer, GgufFile};
use oxrl::reward_model::{registry, SequenceClassifier};
use oxrl::{LoadOptions, ModelConfig};
use oxrl_rewards::{Completion, RewardSpec};
use oxrl_tests::{hf_reference, oxrl_bin, smoke_train, smollm2_gguf, training_lines};
use serde_json::{json, Value};
use tch::Kind;

const TOLERANCE: f64 = 1e-4;

/// A tiny random classifier with an `arch` trunk (`…ForCausalLM`), saved in `dir`.
fn classifier(arch: &str, extra: Value, labels: i64, seed: i64, dir: &Path) -> SequenceClassifier {
    let mut config = json!({"architectures": [arch], "vocab_size": 97, "hidden_size": 32,
        "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 256,
        "pad_token_id": 0});
    for (k, v) in extra.as_object().expect("object") {
        config[k] = v.clone();
    }
    let config: ModelConfig = serde_json::from_value(config).expect("valid config");
    let model = SequenceClassifier::random(&config, labels, seed, 0.2);
    model.save(dir).expect("saving the classifier");
    model
}

/// The largest difference between our rows and transformers' `scores`.
fn max_diff(ours: &[Vec<f32>], theirs: &Value) -> f64 {
    let theirs: Vec<Vec<f64>> = serde_json::from_value(theirs.clone()).expect("rows of numbers");
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(&theirs)
        .flat_map(|(a, b)| {
            assert_eq!(a.len(), b.len());
            a.iter().zip(b).map(|(x, y)| (f64::from(*x) - y).abs())
        })
        .fold(0.0, f64::max)
}

#[test]
fn scores_equal_transformers_from_token_ids() {
    // Lengths differ (right padding), pad ids sit inside and at the end of real sequences
    // (the rightmost non-pad rule skips only the trailing ones), one is all pad ids.
    let tokens = vec![
        vec![5, 17, 30, 41, 52, 63, 74, 85, 96, 3],
        vec![11, 0, 22, 33],
        vec![44, 55, 0, 0],
        vec![66],
        vec![0, 0],
        vec![7, 8, 9, 10, 11, 12],
    ];
    let cases = [
        ("LlamaForCausalLM", json!({"rope_theta": 100000.0}), 2),
        ("Qwen2ForCausalLM", json!({"rope_theta": 1000000.0}), 1),
        ("Qwen3ForCausalLM", json!({"head_dim": 16}), 1),
        ("MistralForCausalLM", json!({"sliding_window": 4}), 3),
        (
            "Gemma2ForCausalLM",
            json!({"sliding_window": 4, "head_dim": 8}),
            1,
        ),
        (
            "Gemma3ForCausalLM",
            json!({"sliding_window": 4, "head_dim": 8, "sliding_window_pattern": 2}),
            2,
        ),
    ];
    for (i, (arch, extra, labels)) in cases.into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        classifier(arch, extra, labels, 10 + i as i64, dir.path());
        // Loaded back as the reward loads it, on the test device (CUDA on a GPU host).
        let load = LoadOptions {
            device: test_device(),
            kind: Kind::Float,
        };
        let ours = SequenceClassifier::load(dir.path(), load)
            .unwrap()
            .score_all(&tokens, 4)
            .unwrap();
        let theirs = hf_reference(&json!({"op": "seq_cls_scores", "model": dir.path(),
            "tokens": tokens, "pad_token_id": 0}));
        let diff = max_diff(&ours, &theirs["scores"]);
        eprintln!("{arch} trunk, {labels} label(s): max |oxrl - transformers| = {diff:.2e}");
        assert!(diff < TOLERANCE, "{arch}: {diff}");
    }
}

/// A Qwen2 classifier over the bundled model's vocabulary, with its tokenizer files (and chat
/// template), in `dir`.
fn bundled_tokenizer_classifier(dir: &Path) {
    let (config, tokenizer_json, tokenizer_config) =
        to_hf_tokenizer(&GgufFile::open(&smollm2_gguf()).unwrap()).unwrap();
    classifier(
        "Qwen2ForCausalLM",
        json!({"vocab_size": config.vocab_size, "pad_token_id": config.pad_token_id}),
        1,
        5,
        dir,
    );
    for (name, value) in [
        ("tokenizer.json", &tokenizer_json),
        ("tokenizer_config.json", &tokenizer_config),
    ] {
        std::fs::write(dir.join(name), value.to_string()).unwrap();
    }
    assert!(tokenizer_config["chat_template"].is_string());
}

fn spec(path: &Path, extra: Value) -> RewardSpec {
    let mut table = json!({"name": "rm", "type": "model", "path": path, "batch_size": 2});
    for (k, v) in extra.as_object().unwrap() {
        table[k] = v.clone();
    }
    serde_json::from_value(table).unwrap()
}

#[test]
fn the_model_reward_equals_trls_reward_model_path() {
    let dir = tempfile::tempdir().unwrap();
    bundled_tokenizer_classifier(dir.path());
    let pairs = [
        ("What is 2 + 2?", "4"),
        (
            "What is 2 + 2?",
            "The answer is 4, since two plus two makes four.",
        ),
        ("Name a colour.", "Blue — like the sky 🌤"),
        ("", "Nothing was asked."),
        ("Say nothing.", ""),
    ];
    let completions: Vec<Completion> = pairs
        .iter()
        .map(|(p, c)| Completion::new(*c).with_prompt(*p))
        .collect();
    for (template, key) in [("auto", "chat"), ("plain", "plain")] {
        let reward = registry(Path::new("/"))
            .build(&spec(dir.path(), json!({"template": template})))
            .unwrap();
        let ours: Vec<Vec<f32>> = reward
            .score_batch(&completions)
            .into_iter()
            .map(|s| vec![s.unwrap() as f32])
            .collect();
        let theirs =
            hf_reference(&json!({"op": "seq_cls_scores", "model": dir.path(), key: pairs}));
        let diff = max_diff(&ours, &theirs["scores"]);
        eprintln!("{template}: max |oxrl - TRL| = {diff:.2e}");
        assert!(diff < TOLERANCE, "{template}: {diff}");
    }
}

#[test]
fn a_training_run_reports_the_model_reward() {
    let dir = tempfile::tempdir().unwrap();
    let rm = dir.path().join("rm");
    bundled_tokenizer_classifier(&rm);
    let out = dir.path().join("run");
    let rewards = format!(
        "rewards=[{{name = \"math\"}}, {{name = \"rm\", type = \"model\", path = \"{}\", weight = 0.5}}]",
        rm.display()
    );
    let status = smoke_train(&out, &[&rewards, "steps=1"]).status().unwrap();
    assert!(status.success());
    let line = &training_lines(&out)[0];
    let mean = line["rewards/rm/mean"]
        .as_f64()
        .expect("the reward is logged");
    assert!(mean.is_finite() && mean != 0.0, "{line}");
}

#[test]
fn oxrl_reward_scores_jsonl_with_a_configured_model() {
    let dir = tempfile::tempdir().unwrap();
    bundled_tokenizer_classifier(&dir.path().join("rm"));
    // `path` is relative to the config file's folder, as in `oxrl train`.
    let config = dir.path().join("rewards.toml");
    std::fs::write(
        &config,
        "[[rewards]]\nname = \"rm\"\ntype = \"model\"\npath = \"rm\"\n",
    )
    .unwrap();
    let input = dir.path().join("samples.jsonl");
    let lines = [
        json!({"prompt": "What is 2 + 2?", "completion": "4"}),
        json!({"prompt": "What is 2 + 2?", "completion": "five"}),
    ];
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&input, text.join("\n")).unwrap();
    let out = std::process::Command::new(oxrl_bin())
        .args(["reward", "--reward", "rm", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scores: Vec<f64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["score"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let completions: Vec<Completion> = lines
        .iter()
        .map(|l| serde_json::from_value(l.clone()).unwrap())
        .collect();
    let reward = registry(dir.path())
        .build(&spec(Path::new("rm"), json!({})))
        .unwrap();
    let expected: Vec<f64> = reward
        .score_batch(&completions)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(scores.len(), 2);
    for (a, b) in scores.iter().zip(&expected) {
        assert!((a - b).abs() < 1e-6, "{scores:?} vs {expected:?}");
    }
}
