//! An external environment process (examples/envs/guess_env.py, a real child process)
//! driven through the config path, with per-turn rewards and masks.

mod common;

use common::*;
use oxrl_envs::{EnvError, LoadedEnv, Message};
use serde_json::json;

fn external(data: serde_json::Value) -> serde_json::Value {
    json!({
        "task": "external",
        "data": data,
        "episode": { "max_turns": 8 },
        "external": { "command": ["python3", "examples/envs/guess_env.py"], "timeout_s": 20 }
    })
}

/// Binary search over 1..=64 that reads the process's higher/lower replies.
fn binary_search() -> impl FnMut(&[Message]) -> String {
    let (mut lo, mut hi, mut last) = (1, 64, 0);
    move |messages: &[Message]| {
        match messages.last().unwrap().content.as_str() {
            "higher" => lo = last + 1,
            "lower" => hi = last - 1,
            _ => {}
        }
        last = lo + (hi - lo) / 2;
        format!("I guess <guess>{last}</guess>")
    }
}

#[test]
fn python_environment_plays_a_full_game_per_row() {
    let env = load(external(json!({ "generate": 4, "seed": 11 })), &repo_root());
    assert!(env.is_multi_turn());
    for row in env.train().rows() {
        let mut ep = env.start_episode(row).unwrap();
        assert!(ep.prompt().contains("I picked an integer from 1 to 64"));
        ep.run(Some(STOP), binary_search()).unwrap();
        assert!(
            !ep.truncated(),
            "binary search needs at most 7 guesses for 1..64"
        );
        let (final_reward, wrong) = ep.rewards().split_last().unwrap();
        assert_eq!(*final_reward, 1.0);
        assert!(wrong.iter().all(|r| *r == -0.05), "{:?}", ep.rewards());
        let last = ep.messages().last().unwrap();
        assert!(last.role == "assistant" && last.content.starts_with("I guess <guess>"));

        let tok = ep.transcript().tokenize(tokenize);
        let trained = trained_text(&tok);
        assert_eq!(trained, ep.transcript().model_texts().concat());
        assert!(!trained.contains("higher") && !trained.contains("lower"));
    }
}

#[test]
fn rows_from_a_file_reach_the_process_and_required_fields_are_checked() {
    let dir = std::env::temp_dir().join(format!("oxrl-envs-ext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rows.jsonl");
    std::fs::write(&file, "{\"secret\": 17}\n{\"secret\": 40}\n").unwrap();
    let mut cfg = external(json!({ "path": file, "shuffle": false }));
    cfg["external"]["required_fields"] = json!(["secret"]);
    let env = load(cfg.clone(), &repo_root());
    let mut ep = env.start_episode(&env.train().rows()[0]).unwrap();
    ep.model_turn("<guess>17</guess>", Some(STOP), None)
        .unwrap();
    assert_eq!(ep.rewards(), &[1.0], "the process used the row's secret");

    std::fs::write(&file, "{\"secret\": 17}\n{\"seed\": 2}\n").unwrap();
    let err =
        LoadedEnv::from_config(&config(cfg), &repo_root(), Some(smollm2_template())).unwrap_err();
    assert!(
        matches!(err, EnvError::MissingField { line: 2, .. }),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn one_process_serves_successive_episodes() {
    let env = load(external(json!({ "generate": 3, "seed": 2 })), &repo_root());
    let mut process = env.task().environment().unwrap();
    for row in env.train().rows() {
        let mut ep = env.start_episode_in(process, row).unwrap();
        ep.run(Some(STOP), binary_search()).unwrap();
        assert_eq!(*ep.rewards().last().unwrap(), 1.0);
        process = ep.into_environment();
    }
}

/// The interpreter itself, not a launcher such as a pyenv shim that edits the environment.
fn real_python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn env_allowlist_passes_only_listed_variables() {
    std::env::set_var("OXRL_TEST_EXT_PASSED", "passed-value");
    std::env::set_var("OXRL_TEST_EXT_HIDDEN", "hidden-value");
    // Opens every episode with the environment it got, as JSON.
    let script = "import json, os, sys\nfor l in sys.stdin:\n    r = json.loads(l)\n    \
                  print(json.dumps({'request_id': r['request_id'], 'messages': \
                  [{'role': 'user', 'content': json.dumps(dict(os.environ))}]}), flush=True)";
    let env_of = |allow: Option<Vec<&str>>| -> serde_json::Map<String, serde_json::Value> {
        let mut cfg = external(json!({ "generate": 1, "seed": 1 }));
        cfg["external"]["command"] = json!([real_python(), "-c", script]);
        if let Some(allow) = allow {
            cfg["external"]["env"] = json!(allow);
        }
        let env = load(cfg, &repo_root());
        let mut process = env.task().environment().unwrap();
        let opening = process.reset(&env.train().rows()[0]).unwrap();
        serde_json::from_str(&opening[0].content).unwrap()
    };
    let inherited = env_of(None);
    assert_eq!(
        inherited["OXRL_TEST_EXT_HIDDEN"], "hidden-value",
        "default: inherit all"
    );
    let allowed = env_of(Some(vec!["OXRL_TEST_EXT_PASSED"]));
    assert_eq!(allowed["OXRL_TEST_EXT_PASSED"], "passed-value");
    assert!(!allowed.contains_key("OXRL_TEST_EXT_HIDDEN"), "{allowed:?}");
    // Python may add LC_CTYPE itself (PEP 538 locale coercion); nothing else gets through.
    let expected = [
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "LC_CTYPE",
        "OXRL_TEST_EXT_PASSED",
    ];
    for key in allowed.keys() {
        assert!(
            expected.contains(&key.as_str()),
            "{key} leaked: {allowed:?}"
        );
    }
}
