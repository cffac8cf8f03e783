//! The TOML configs shipped in examples/envs/ and the one in docs/envs.md parse into
//! `EnvConfig` and build working environments. TOML is read by Python's `tomllib` and handed
//! over as JSON (same serde data model as the engine's TOML parser), which keeps this crate
//! free of a TOML dependency.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use oxrl_envs::{EnvConfig, LoadedEnv};

fn toml_to_json(text: &str) -> serde_json::Value {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "invalid TOML:\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn env_section(text: &str) -> EnvConfig {
    serde_json::from_value(toml_to_json(text)["env"].clone()).unwrap()
}

#[test]
fn example_configs_build_environments() {
    let dir = repo_root().join("examples/envs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = env_section(&std::fs::read_to_string(&path).unwrap());
            let env = LoadedEnv::from_config(&cfg, &repo_root(), Some(smollm2_template())).unwrap();
            let row = &env.train().rows()[0];
            let mut episode = env.start_episode(row).unwrap();
            assert!(!episode.prompt().is_empty(), "{}", path.display());
            episode
                .model_turn("I am not sure.", Some(STOP), None)
                .unwrap();
            seen += 1;
        }
    }
    assert_eq!(seen, 4);
}

#[test]
fn documented_config_is_valid() {
    let doc = std::fs::read_to_string(repo_root().join("docs/envs.md")).unwrap();
    let block = doc
        .split("```toml\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let cfg = env_section(block);
    assert_eq!(cfg.data.generate, 1000);
    assert_eq!(cfg.prompt.examples.len(), 1);
    assert_eq!(
        cfg.data.fields.get("prompt").map(String::as_str),
        Some("question")
    );
    assert!(LoadedEnv::from_config(&cfg, &repo_root(), Some(smollm2_template())).is_ok());
    let unknown = toml_to_json("[env]\ntask = \"gsm8k\"\nmax_turns = 3\n");
    assert!(serde_json::from_value::<EnvConfig>(unknown["env"].clone()).is_err());
}

#[test]
fn arithmetic_section_shapes_the_task_and_belongs_to_it_only() {
    let text = "[env]\ntask = \"arithmetic\"\n[env.arithmetic]\nmax_terms = 2\nops = [\"+\"]\n";
    let env =
        LoadedEnv::from_config(&env_section(text), &repo_root(), Some(smollm2_template())).unwrap();
    for row in env.train().rows() {
        let prompt = row.require_str("arithmetic", "prompt").unwrap();
        assert_eq!(prompt.matches(" + ").count(), 1, "{prompt}");
        assert!(!prompt.contains(['-', '*']), "{prompt}");
    }
    let misplaced = env_section("[env]\ntask = \"gsm8k\"\n[env.arithmetic]\nmax_terms = 2\n");
    let err = LoadedEnv::from_config(&misplaced, &repo_root(), None).unwrap_err();
    assert!(err.to_string().contains("[env.arithmetic]"), "{err}");
    let invalid = env_section("[env]\ntask = \"arithmetic\"\n[env.arithmetic]\nmax_operand = 0\n");
    let err = LoadedEnv::from_config(&invalid, &repo_root(), None).unwrap_err();
    assert!(
        err.to_string().contains("env.arithmetic.max_operand"),
        "{err}"
    );
}
