//! Registry, weighted combination and the JSONL entry point.

use std::sync::Arc;

use oxrl_rewards::jsonl::{load_spec, score_jsonl_with};
use oxrl_rewards::{
    score_jsonl, Completion, FailureKind, Registry, Reward, RewardFailure, RewardSpec, Score,
    WeightedRewards,
};
use serde::Deserialize;

/// A user reward implemented in Rust: completion length in words, capped.
struct WordCount {
    cap: f64,
}

impl Reward for WordCount {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        completions
            .iter()
            .map(|s| {
                let n = s.completion.split_whitespace().count() as f64;
                if n == 0.0 {
                    Err(RewardFailure::Parse("empty".into()))
                } else {
                    Ok(n.min(self.cap))
                }
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct RunConfig {
    rewards: Vec<RewardSpec>,
}

#[test]
fn registry_builds_from_toml_and_combines() {
    let cfg: RunConfig = toml::from_str(
        r#"
        [[rewards]]
        name = "math"
        weight = 1.0

        [[rewards]]
        name = "think_format"
        type = "format"
        weight = 0.5
        tags = ["think", "answer"]

        [[rewards]]
        name = "words"
        weight = 0.1
        failure_score = -1.0
        cap = 3.0
        "#,
    )
    .unwrap();
    let mut reg = Registry::default();
    reg.register("words", |_name, opts| {
        let cap = opts.get("cap").and_then(|v| v.as_f64()).unwrap_or(10.0);
        Ok(Arc::new(WordCount { cap }))
    });
    let w = WeightedRewards::from_specs(&reg, &cfg.rewards).unwrap();
    assert_eq!(w.names(), ["math", "think_format", "words"]);
    let completions = [
        Completion::new("<think>2+2</think><answer>\\boxed{4}</answer>").with("answer", "4"),
        Completion::new("").with("answer", "4"),
    ];
    let out = w.score(&completions);
    // 1*1 + 0.5*1 + 0.1*min(2 words... "<think>2+2</think><answer>\boxed{4}</answer>" is 1 word)
    assert!(
        (out.total[0] - (1.0 + 0.5 + 0.1)).abs() < 1e-9,
        "{:?}",
        out.total
    );
    // empty: math parse failure (0), format 0, words failure -> -1 * 0.1
    assert!((out.total[1] - (-0.1)).abs() < 1e-9, "{:?}", out.total);
    let math = &out.rewards[0];
    assert_eq!(math.failures.get(&FailureKind::Parse), Some(&1));
    assert_eq!(out.rewards[2].values, vec![1.0, -1.0]);
    w.score(&completions);
    assert_eq!(
        w.failure_totals()
            .get(&("math".to_string(), FailureKind::Parse)),
        Some(&2)
    );
}

#[test]
fn unknown_names_and_options_are_errors() {
    let reg = Registry::default();
    let err = reg
        .build(&RewardSpec::new("nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("unknown reward `nope`") && err.contains("math"),
        "{err}"
    );
    let mut spec = RewardSpec::new("math");
    spec.options.insert("answer_feild".into(), "x".into());
    let err = reg.build(&spec).err().unwrap().to_string();
    assert!(err.contains("answer_feild"), "{err}");
}

#[test]
fn jsonl_lines_in_and_out() {
    let input = "{\"completion\": \"so \\\\boxed{72}\", \"answer\": \"72\"}\n\
                 {\"completion\": \"I think 71\", \"answer\": \"#### 72\"}\n\
                 not json\n\
                 {\"completion\": \"no idea\", \"answer\": \"72\"}\n";
    let mut out = Vec::new();
    let summary = score_jsonl("math", None, input.as_bytes(), &mut out).unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0], serde_json::json!({"score": 1.0}));
    assert_eq!(lines[1], serde_json::json!({"score": 0.0}));
    assert_eq!(lines[2]["score"], 0.0);
    assert!(lines[2]["error"].as_str().unwrap().contains("not a sample"));
    assert!(lines[3]["error"]
        .as_str()
        .unwrap()
        .contains("parse failure"));
    assert_eq!(summary.lines, 4);
    assert_eq!(summary.failures.get(&FailureKind::Parse), Some(&2));
}

#[test]
fn config_file_forms() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run.toml");
    std::fs::write(&run, "[[rewards]]\nname = \"strict\"\ntype = \"format\"\npattern = \"^ok$\"\nfailure_score = -2.0\n").unwrap();
    let spec = load_spec("strict", Some(&run)).unwrap();
    assert_eq!(spec.builder(), "format");
    assert_eq!(spec.failure_score, -2.0);
    assert!(load_spec("other", Some(&run)).is_err());
    let opts = dir.path().join("math.json");
    std::fs::write(&opts, "{\"answer_field\": \"gold\"}").unwrap();
    let mut out = Vec::new();
    score_jsonl(
        "math",
        Some(&opts),
        "{\"completion\": \"\\\\boxed{3}\", \"gold\": 3}\n".as_bytes(),
        &mut out,
    )
    .unwrap();
    assert_eq!(String::from_utf8(out).unwrap().trim(), "{\"score\":1.0}");
    // An already-built reward works the same.
    let reg = Registry::default();
    let r = reg.build(&spec).unwrap();
    let mut out = Vec::new();
    score_jsonl_with(
        r.as_ref(),
        spec.failure_score,
        "{\"completion\": \"ok\"}\n{\"completion\": \"no\"}\n".as_bytes(),
        &mut out,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"score\":1.0}\n{\"score\":0.0}\n"
    );
}

#[test]
fn code_through_jsonl() {
    let input = serde_json::json!({
        "completion": "def inc(x):\n    return x + 1\n",
        "tests": ["assert inc(1) == 2", "assert inc(-1) == 0"]
    });
    let mut out = Vec::new();
    score_jsonl("code", None, format!("{input}\n").as_bytes(), &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap().trim(), "{\"score\":1.0}");
}

#[test]
fn shipped_example_config_builds() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/rewards/rewards.toml"
    );
    let cfg: RunConfig = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let names: Vec<&str> = cfg.rewards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "math",
            "code",
            "grounding",
            "think_format",
            "helpfulness",
            "contains_answer"
        ]
    );
    // Build everything; the command's path is relative to the repository root.
    let mut specs = cfg.rewards.clone();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    specs[5].options.insert("cwd".into(), root.into());
    let w = WeightedRewards::from_specs(&Registry::default(), &specs).unwrap();
    assert_eq!(w.names().len(), 6);
    let spec = load_spec("think_format", Some(std::path::Path::new(path))).unwrap();
    assert_eq!(spec.builder(), "format");
}

#[test]
fn function_rewards() {
    use oxrl_rewards::custom::FnReward;
    let mut reg = Registry::default();
    reg.register("has_please", |_name, _opts| {
        Ok(Arc::new(FnReward::new(|s: &Completion| {
            Ok(if s.completion.contains("please") {
                1.0
            } else {
                0.0
            })
        })))
    });
    let w = WeightedRewards::from_specs(&reg, &[RewardSpec::new("has_please")]).unwrap();
    let out = w.score(&[Completion::new("yes please"), Completion::new("no")]);
    assert_eq!(out.total, vec![1.0, 0.0]);
    assert_eq!(out.rewards[0].name, "has_please");
}
