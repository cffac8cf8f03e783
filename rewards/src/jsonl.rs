//! The `oxrl reward --reward NAME [--config FILE] --input FILE.jsonl` entry point: read one
//! completion per JSON line, write one `{"score": f, "error": "..."}` line per input line (the
//! `error` key only on failure, when `score` is the reward's `failure_score`).

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value};

use crate::{
    Completion, Error, FailureCounts, Registry, Result, Reward, RewardFailure, RewardSpec,
};

/// Lines scored per batch handed to the reward.
const BATCH_LINES: usize = 256;

/// What a [`score_jsonl`] run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonlSummary {
    /// Lines read (and written).
    pub lines: usize,
    /// Sum of the scores written.
    pub score_sum: f64,
    /// Failures by kind; lines that are not valid completions count as `parse`.
    pub failures: FailureCounts,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Finds the spec for `reward_name` in a config file (TOML, or JSON when the file ends in
/// `.json`). The file is either a run config with a `[[rewards]]` list, in which the entry
/// with that `name` is used, or a table holding just that reward's options.
/// Without a file, the spec is the built-in reward of that name with default options.
pub fn load_spec(reward_name: &str, config: Option<&Path>) -> Result<RewardSpec> {
    let Some(path) = config else {
        return Ok(RewardSpec::new(reward_name));
    };
    let text = std::fs::read_to_string(path)?;
    let bad = |message: String| Error::Config {
        name: reward_name.to_string(),
        message,
    };
    let value: Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?
    } else {
        let t: toml::Value =
            toml::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        serde_json::to_value(t).map_err(|e| bad(e.to_string()))?
    };
    let Value::Object(mut table) = value else {
        return Err(bad("config is not a table".into()));
    };
    if let Some(list) = table.remove("rewards") {
        let specs: Vec<RewardSpec> =
            serde_json::from_value(list).map_err(|e| bad(format!("[[rewards]]: {e}")))?;
        return specs
            .into_iter()
            .find(|s| s.name == reward_name)
            .ok_or_else(|| {
                bad(format!(
                    "no [[rewards]] entry named `{reward_name}` in {}",
                    path.display()
                ))
            });
    }
    let mut spec: RewardSpec = {
        let mut t: Map<String, Value> = table;
        t.entry("name")
            .or_insert_with(|| Value::String(reward_name.to_string()));
        serde_json::from_value(Value::Object(t)).map_err(|e| bad(e.to_string()))?
    };
    spec.name = reward_name.to_string();
    Ok(spec)
}

/// Scores a JSONL stream with the built-in (or configured) reward `reward_name`.
/// See [`load_spec`] for the config file and the module docs for the line format.
pub fn score_jsonl(
    reward_name: &str,
    config: Option<&Path>,
    input: impl BufRead,
    output: impl Write,
) -> Result<JsonlSummary> {
    let spec = load_spec(reward_name, config)?;
    let registry = Registry::default();
    let reward = registry.build(&spec)?;
    score_jsonl_with(reward.as_ref(), spec.failure_score, input, output)
}

/// Scores a JSONL stream with an already-built reward.
pub fn score_jsonl_with(
    reward: &dyn Reward,
    failure_score: f64,
    input: impl BufRead,
    mut output: impl Write,
) -> Result<JsonlSummary> {
    let start = Instant::now();
    let mut summary = JsonlSummary::default();
    let mut lines = input.lines();
    loop {
        // Each slot: a completion, or the reason the line is not one.
        let mut batch: Vec<std::result::Result<Completion, RewardFailure>> =
            Vec::with_capacity(BATCH_LINES);
        for line in lines.by_ref().take(BATCH_LINES) {
            let line = line?;
            batch.push(
                serde_json::from_str::<Completion>(&line)
                    .map_err(|e| RewardFailure::Parse(format!("input line is not a sample: {e}"))),
            );
        }
        if batch.is_empty() {
            break;
        }
        let completions: Vec<Completion> = batch
            .iter()
            .filter_map(|b| b.as_ref().ok().cloned())
            .collect();
        let mut scored = reward.score_batch(&completions).into_iter();
        for slot in batch {
            let outcome = match slot {
                Ok(_) => scored.next().unwrap_or_else(|| {
                    Err(RewardFailure::Crash(
                        "reward returned too few scores".into(),
                    ))
                }),
                Err(f) => Err(f),
            };
            let line = match outcome {
                Ok(v) if v.is_finite() => serde_json::json!({ "score": v }),
                Ok(v) => {
                    let f = RewardFailure::Crash(format!("non-finite score {v}"));
                    *summary.failures.entry(f.kind()).or_default() += 1;
                    serde_json::json!({ "score": failure_score, "error": f.to_string() })
                }
                Err(f) => {
                    *summary.failures.entry(f.kind()).or_default() += 1;
                    serde_json::json!({ "score": failure_score, "error": f.to_string() })
                }
            };
            summary.lines += 1;
            summary.score_sum += line["score"].as_f64().unwrap_or(0.0);
            writeln!(output, "{line}")?;
        }
    }
    output.flush()?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}
