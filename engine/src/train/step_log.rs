//! The run's JSONL logs: `metrics.jsonl` (one line per step and per evaluation),
//! `samples.jsonl` (the first completion of each group every `log.samples_every` steps) and
//! `replay.jsonl` (`log.samples = "all"`: every trained sample, replayable). On resume each
//! log is cut back to the lines of the steps before the checkpoint, so a run killed between
//! checkpoints never leaves duplicate or orphaned lines. The sample lines are made apart from
//! the files ([`replay_lines`], [`group_lines`]) so that a data-parallel run's ranks can
//! send theirs to rank 0, which writes them all.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use anyhow::Context;
use serde_json::{json, Map, Value};

use super::batch::RolloutBatch;
use super::scoring::ScoredBatch;
use super::step_record::StepRecord;
use crate::sample::Sample;

/// Every trained sample of a `log.samples = "all"` run, in the output directory.
pub const REPLAY: &str = "replay.jsonl";
use crate::telemetry::names as n;

/// `metrics.jsonl` and `samples.jsonl` of a run, and with `log.samples = "all"`
/// `replay.jsonl`.
pub struct StepLog {
    metrics: File,
    samples: File,
    replay: Option<File>,
}

impl StepLog {
    /// Opens the logs in `dir` for a run continuing at `next_step`; `replay`: also
    /// `replay.jsonl`.
    pub fn open(dir: &Path, next_step: usize, replay: bool) -> anyhow::Result<Self> {
        Ok(Self {
            metrics: open_log(&dir.join("metrics.jsonl"), next_step)?,
            samples: open_log(&dir.join("samples.jsonl"), next_step)?,
            replay: replay
                .then(|| open_log(&dir.join(REPLAY), next_step))
                .transpose()?,
        })
    }

    /// Appends lines of [`replay_lines`] to `replay.jsonl` (nothing without it).
    pub fn replay(&mut self, lines: &str) -> anyhow::Result<()> {
        if let Some(file) = &mut self.replay {
            file.write_all(lines.as_bytes())?;
        }
        Ok(())
    }

    /// Appends lines of [`group_lines`] to `samples.jsonl`.
    pub fn samples(&mut self, lines: &str) -> anyhow::Result<()> {
        Ok(self.samples.write_all(lines.as_bytes())?)
    }

    /// Appends a step's line.
    pub fn step(&mut self, record: &StepRecord) -> anyhow::Result<()> {
        writeln!(self.metrics, "{}", serde_json::to_string(record)?)?;
        Ok(())
    }

    /// Appends an evaluation's line.
    pub fn eval(&mut self, line: &Value) -> anyhow::Result<()> {
        writeln!(self.metrics, "{line}")?;
        Ok(())
    }
}

/// `replay.jsonl`'s lines for `step`: every sample it trained on, as the learner got it
/// (`Sample`'s JSON plus `step`), which `rollout.samples_path` reads back.
pub fn replay_lines(step: usize, samples: &[Sample]) -> anyhow::Result<String> {
    let mut lines = String::new();
    for s in samples {
        let mut line = serde_json::to_value(s)?;
        line[n::STEP_KEY] = json!(step);
        lines.push_str(&format!("{line}\n"));
    }
    Ok(lines)
}

/// `samples.jsonl`'s lines for `step`: the first completion of every group of its batch with
/// its prompt, rewards and the advantage the learner trained it with (`null` where it
/// dropped it).
pub fn group_lines(
    step: usize,
    batch: &RolloutBatch,
    scored: &ScoredBatch,
    advantages: &[Option<f64>],
) -> String {
    let scores = &scored.scores;
    let mut lines = String::new();
    for (i, g) in batch.generated.iter().enumerate() {
        if g.sample_index != 0 {
            continue;
        }
        let prompt = batch.rows[g.prompt_index]
            .get("prompt")
            .cloned()
            .unwrap_or(Value::Null);
        let rewards: Map<String, Value> = scores
            .rewards
            .iter()
            .map(|r| (r.name.clone(), json!(r.values[i])))
            .collect();
        let row = json!({n::STEP_KEY: step, "prompt": prompt, "completion": scored.texts[i],
                             "reward": scores.total[i], "rewards": rewards,
                             "advantage": advantages.get(i).copied().flatten(),
                             "finish_reason": g.finish_reason});
        lines.push_str(&format!("{row}\n"));
    }
    lines
}

/// Opens a JSONL log for appending, first dropping lines of steps at or after `next_step`
/// (written by a run that was killed before its next checkpoint).
fn open_log(path: &Path, next_step: usize) -> anyhow::Result<File> {
    let kept: Vec<String> = match File::open(path) {
        Ok(f) if next_step > 0 => BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v[n::STEP_KEY].as_u64())
                    .is_some_and(|s| (s as usize) < next_step)
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    for line in kept {
        writeln!(file, "{line}")?;
    }
    Ok(file)
}
