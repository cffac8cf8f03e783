//! The run's JSONL logs: `metrics.jsonl` (one line per step and per evaluation),
//! `samples.jsonl` (the first completion of each group every `log.samples_every` steps) and
//! `replay.jsonl` (`log.samples = "all"`: every trained sample, replayable). On resume each log is cut back to the lines of the steps before the checkpoint, so a run
//! killed between checkpoints never leaves duplicate or orphaned lines.

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

    /// With `log.samples = "all"`: every sample `step` trained on, as the learner got it
    /// (`Sample`'s JSON plus `step`), which `rollout.samples_path` reads back.
    pub fn replay(&mut self, step: usize, samples: &[Sample]) -> anyhow::Result<()> {
        let Some(file) = &mut self.replay else {
            return Ok(());
        };
        for s in samples {
            let mut line = serde_json::to_value(s)?;
            line[n::STEP_KEY] = json!(step);
            writeln!(file, "{line}")?;
        }
        Ok(())
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

    /// Writes the first completion of every group of `step`'s batch with its prompt, rewards
    /// and the advantage the learner trained it with (`null` where it dropped it).
    pub fn samples(
        &mut self,
        step: usize,
        batch: &RolloutBatch,
        scored: &ScoredBatch,
        advantages: &[Option<f64>],
    ) -> anyhow::Result<()> {
        let scores = &scored.scores;
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
            writeln!(self.samples, "{row}")?;
        }
        Ok(())
    }
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
