//! `oxrl reward` scores JSONL through the rewards crate, one output line per input line.

use std::process::Command;

#[test]
fn reward_command_scores_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = [
        r#"{"completion": "so the answer is \\boxed{\\frac{1}{2}}", "answer": "0.5"}"#,
        r#"{"completion": "Natalia sold 48 + 24 = 72 clips.\n#### 72", "answer": "72"}"#,
        r#"{"completion": "I think 41", "answer": "42"}"#,
        r#"{"completion": "no reference here"}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oxrl"))
        .args(["reward", "--reward", "math", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scores: Vec<f64> = rows.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert_eq!(scores, [1.0, 1.0, 0.0, 0.0]);
    assert!(rows[2].get("error").is_none());
    assert!(rows[3]["error"].as_str().unwrap().contains("answer"));
}
