//! `oxrl reward`: score JSONL lines with one named reward (see docs/rewards.md for the input
//! fields each reward reads). Writes `{"score": f, "error": optional}` per line to stdout.

use std::io::BufReader;
use std::path::PathBuf;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Reward name: a built-in (math, code, iou, format, judge, command, http, model) or one
    /// named in the config's [[rewards]].
    #[arg(long)]
    reward: String,
    /// Run config (its [[rewards]] entry of that name) or a table of the reward's options.
    #[arg(long)]
    config: Option<PathBuf>,
    /// JSONL input, one sample per line.
    #[arg(long)]
    input: PathBuf,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.input)
        .with_context(|| format!("opening {}", args.input.display()))?;
    let scoring = || {
        format!(
            "scoring {} with reward {:?}",
            args.input.display(),
            args.reward
        )
    };
    let spec = oxrl_rewards::jsonl::load_spec(&args.reward, args.config.as_deref())
        .with_context(scoring)?;
    // The engine's registry, so `type = "model"` works here too; relative paths are taken
    // from the config file's folder, as `oxrl train` takes them.
    let base = args
        .config
        .as_deref()
        .and_then(std::path::Path::parent)
        .unwrap_or(std::path::Path::new("."));
    let reward = crate::reward_model::registry(base)
        .build(&spec)
        .with_context(scoring)?;
    let summary = oxrl_rewards::jsonl::score_jsonl_with(
        reward.as_ref(),
        spec.failure_score,
        BufReader::new(file),
        std::io::stdout().lock(),
    )
    .with_context(scoring)?;
    let mean = summary.score_sum / summary.lines.max(1) as f64;
    eprintln!(
        "lines={} mean_score={mean:.4} failures={:?} seconds={:.2}",
        summary.lines, summary.failures, summary.seconds
    );
    Ok(())
}
