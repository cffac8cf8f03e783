//! `oxrl logprobs`: for each input line `{"prompt": str, "completion": str}`, one output line
//! `{"tokens": [...], "logprobs": [...]}` over the completion tokens. Prompt and completion are
//! tokenized separately (no special tokens added) and concatenated, so the completion's tokens
//! are exactly those a sampler would have produced after that prompt.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;

use super::ModelArgs;
use crate::rollout::logprobs::completion_logprobs;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// JSONL file of {"prompt", "completion"} lines.
    #[arg(long)]
    input: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    prompt: String,
    completion: String,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let file = std::fs::File::open(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let mut out = std::io::stdout().lock();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let at = || format!("{}:{}", args.input.display(), i + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let row: Line = serde_json::from_str(&line).with_context(at)?;
        let prompt = loaded
            .tokenizer
            .encode(&row.prompt, false)
            .with_context(at)?;
        let completion = loaded
            .tokenizer
            .encode(&row.completion, false)
            .with_context(at)?;
        if prompt.is_empty() {
            bail!("{}: the prompt is empty", at());
        }
        let logprobs = completion_logprobs(&loaded.model, &prompt, &completion).with_context(at)?;
        let json = serde_json::json!({"tokens": completion, "logprobs": logprobs});
        writeln!(out, "{json}")?;
    }
    Ok(())
}
