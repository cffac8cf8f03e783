//! Prompt formatting through the real chat template of the default model, checked against
//! transformers' renderer (goldens in fixtures/conversations.json), and JSONL loading through
//! the config path.

mod common;

use common::*;
use oxrl_envs::{EnvConfig, EnvError, LoadedEnv};
use serde_json::json;

#[test]
fn real_template_renders_like_transformers() {
    let template = smollm2_template();
    for case in ["gsm8k_few_shot", "no_system_prompt", "calculator_episode"] {
        let (messages, add_generation_prompt, expected) = golden(case);
        assert_eq!(
            template.render(&messages, add_generation_prompt).unwrap(),
            expected,
            "{case}"
        );
    }
}

fn gsm8k_file_config(on_bad_row: &str) -> serde_json::Value {
    json!({
        "task": "gsm8k",
        "data": {
            "path": "gsm8k_sample.jsonl",
            "fields": { "prompt": "question" },
            "on_bad_row": on_bad_row,
            "shuffle": false
        },
        "prompt": {
            "system": SYSTEM,
            "examples": [{ "user": "What is 2 + 3?", "assistant": "2 + 3 = 5\n#### 5" }]
        }
    })
}

#[test]
fn jsonl_row_with_system_and_few_shot_renders_the_golden_prompt() {
    let env = load(gsm8k_file_config("skip"), &fixtures());
    assert_eq!(env.train().len(), 4, "line 3 lacks `answer` and is skipped");
    let skipped: Vec<String> = env.skipped().iter().map(ToString::to_string).collect();
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0].contains("gsm8k_sample.jsonl:3") && skipped[0].contains("`answer`"),
        "{skipped:?}"
    );

    let row = &env.train().rows()[0];
    let (messages, _, expected) = golden("gsm8k_few_shot");
    assert_eq!(env.messages(row).unwrap(), messages);
    assert_eq!(env.prompt(row).unwrap(), expected);
    // The row keeps the GSM8K answer for the math reward, under the canonical names.
    assert!(row
        .get("answer")
        .unwrap()
        .as_str()
        .unwrap()
        .ends_with("#### 31"));
    assert!(row.get("question").is_none());
    assert_eq!(env.task().score(row, "so 31\n#### 31").unwrap(), 1.0);
}

#[test]
fn stop_policy_fails_the_load_at_the_bad_line() {
    let cfg = config(gsm8k_file_config("stop"));
    let err = LoadedEnv::from_config(&cfg, &fixtures(), Some(smollm2_template())).unwrap_err();
    assert!(
        matches!(err, EnvError::MissingField { line: 3, .. }),
        "{err}"
    );
}

#[test]
fn generated_few_shot_examples_are_solved_items_outside_the_training_set() {
    let env = load(
        json!({ "task": "arithmetic", "data": { "generate": 50 }, "prompt": { "generated_examples": 2 } }),
        &fixtures(),
    );
    let row = &env.train().rows()[0];
    let messages = env.messages(row).unwrap();
    let roles: Vec<&str> = messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant", "user"]);
    let train_prompts: Vec<&str> = env
        .train()
        .rows()
        .iter()
        .map(|r| r.get("prompt").unwrap().as_str().unwrap())
        .collect();
    for pair in messages[..4].chunks(2) {
        assert!(!train_prompts.contains(&pair[0].content.as_str()));
        assert!(pair[1].content.contains("####"), "{pair:?}");
    }
    let prompt = env.prompt(row).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    assert!(prompt.ends_with("<|im_start|>assistant\n"));
}

#[test]
fn plain_format_needs_no_chat_template() {
    let cfg = config(json!({
        "task": "countdown",
        "data": { "generate": 5 },
        "prompt": { "format": "plain", "instruction": "" }
    }));
    let env = LoadedEnv::from_config(&cfg, &fixtures(), None).unwrap();
    let row = &env.train().rows()[0];
    let prompt = env.prompt(row).unwrap();
    let question = row.get("prompt").unwrap().as_str().unwrap();
    assert_eq!(prompt, format!("Question: {question}\nAnswer:"));
    assert!(
        env.start_episode(row).is_err(),
        "episodes need a chat template"
    );
}

#[test]
fn config_rejects_unknown_keys_and_inconsistent_values() {
    let unknown =
        serde_json::from_value::<EnvConfig>(json!({ "task": "gsm8k", "data": { "pathh": "x" } }));
    assert!(unknown.is_err());
    let bad_task = serde_json::from_value::<EnvConfig>(json!({ "task": "chess" }));
    assert!(bad_task.is_err());
    for bad in [
        json!({ "task": "gsm8k", "data": { "eval_size": 5, "eval_fraction": 0.1 } }),
        json!({ "task": "external" }),
        json!({ "task": "gsm8k", "external": { "command": ["x"] } }),
        json!({ "task": "gsm8k", "data": { "generate": 0 } }),
        json!({ "task": "gsm8k", "episode": { "max_turns": 0 } }),
        json!({ "task": "guessing", "prompt": { "generated_examples": 2 } }),
    ] {
        let cfg = config(bad.clone());
        assert!(
            LoadedEnv::from_config(&cfg, &fixtures(), Some(smollm2_template())).is_err(),
            "{bad}"
        );
    }
    let multi_turn_without_template = config(json!({ "task": "guessing" }));
    assert!(LoadedEnv::from_config(&multi_turn_without_template, &fixtures(), None).is_err());
}
