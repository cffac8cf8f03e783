//! `oxrl train`, `oxrl eval`, `oxrl export` and `oxrl config check`/`rows`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::runtime::RuntimeSection;
use crate::train::{Resume, RunConfig, Trainer};

#[derive(Debug, clap::Args)]
pub(super) struct TrainArgs {
    /// The run config (TOML).
    config: PathBuf,
    /// Override a config key: `--set learner.optim.lr=1e-6` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue from a checkpoint: `auto` (the newest in the run's output directory, or a
    /// fresh start if none) or a checkpoint directory.
    #[arg(long)]
    resume: Option<String>,
    /// Train on N local processes (data parallel on c10d; `[dist]`): this command starts
    /// them as ranks 0..N and waits. Without it, a process started with `WORLD_SIZE`,
    /// `RANK`, `MASTER_ADDR` and `MASTER_PORT` set (torchrun, Slurm) joins that job.
    #[arg(long, value_name = "N")]
    nproc: Option<usize>,
}

impl TrainArgs {
    /// The config's `[runtime]`; the defaults when it does not load (the command itself
    /// then reports why).
    pub(super) fn runtime(&self) -> RuntimeSection {
        runtime_of(&self.config, &self.overrides)
    }
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum ConfigCommand {
    /// Validate a run config without running it.
    Check(TrainArgs),
    /// Print the task's rows as JSONL: each row's fields plus `prompt_text`, the prompt as
    /// the policy sees it (chat template applied), for running the same task elsewhere.
    Rows(RowsArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct RowsArgs {
    /// The run config (TOML).
    config: PathBuf,
    /// Override a config key (repeatable), as for `train`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// `train` or `eval` (the held-out split).
    #[arg(long, default_value = "train")]
    split: String,
}

pub(super) fn train(args: TrainArgs) -> anyhow::Result<()> {
    let cfg = RunConfig::load(&args.config, &args.overrides)?;
    if let Some(n) = args.nproc.filter(|&n| n > 1) {
        anyhow::ensure!(
            std::env::var_os("WORLD_SIZE").is_none(),
            "--nproc {n} inside a job that already has WORLD_SIZE set: use one or the other"
        );
        return crate::dist::launch::run_local(n, &rank_args());
    }
    anyhow::ensure!(args.nproc != Some(0), "--nproc 0: at least one process");
    // Rank 0 (or the only process) speaks for the job: warnings and the summary once.
    let reports = !std::env::var("RANK").is_ok_and(|r| r != "0");
    if reports {
        cfg.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    }
    let out = cfg.output_dir.clone();
    let resume = match args.resume.as_deref() {
        None => Resume::No,
        Some("auto") => Resume::Auto,
        Some(dir) => Resume::Dir(dir.into()),
    };
    let records = Trainer::new(cfg, resume)?.run()?;
    if !reports {
        return Ok(());
    }
    let first = records.first().map_or(0.0, |r| r.rewards.mean);
    let last = records.last().map_or(0.0, |r| r.rewards.mean);
    eprintln!(
        "done: {} steps, reward {first:.3} -> {last:.3}; logs and final model in {}",
        records.len(),
        out.display()
    );
    Ok(())
}

/// This command's arguments without `--nproc`: what each rank runs.
fn rank_args() -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--nproc") => {
                args.next();
            }
            Some(a) if a.starts_with("--nproc=") => {}
            _ => out.push(arg),
        }
    }
    out
}

pub(super) fn config(cmd: ConfigCommand) -> anyhow::Result<()> {
    let args = match cmd {
        ConfigCommand::Check(args) => args,
        ConfigCommand::Rows(args) => return rows(args),
    };
    let cfg = RunConfig::load(&args.config, &args.overrides)?;
    let file = || args.config.display().to_string();
    cfg.build_rewards().with_context(file)?;
    cfg.check_files().with_context(file)?;
    cfg.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    println!(
        "{}: ok ({} steps, algorithm {})",
        args.config.display(),
        cfg.steps,
        cfg.learner.algorithm.name()
    );
    Ok(())
}

fn rows(args: RowsArgs) -> anyhow::Result<()> {
    let cfg = RunConfig::load(&args.config, &args.overrides)?;
    let env = cfg.load_env()?;
    let data = match args.split.as_str() {
        "train" => env.train(),
        "eval" => env.eval(),
        other => anyhow::bail!("--split {other:?}: train or eval"),
    };
    let mut out = std::io::stdout().lock();
    for row in data.rows() {
        let mut fields = row.fields().clone();
        fields.insert("prompt_text".into(), env.prompt(row)?.into());
        writeln!(out, "{}", serde_json::Value::Object(fields))?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(super) struct ExportArgs {
    /// A checkpoint directory (`output_dir/checkpoints/step-N`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output HF directory (LoRA adapters merged).
    out: PathBuf,
}

pub(super) fn export(args: ExportArgs) -> anyhow::Result<()> {
    crate::train::checkpoint::export(&args.checkpoint, &args.out)?;
    eprintln!(
        "exported {} to {}",
        args.checkpoint.display(),
        args.out.display()
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(super) struct EvalArgs {
    /// The run config (model, eval split, rewards, sampling).
    config: PathBuf,
    /// Evaluate this checkpoint instead of the config's model.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Completions per prompt.
    #[arg(long, default_value_t = 4)]
    samples: usize,
    /// The k of pass@k.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// A completion is correct when its total reward is at least this.
    #[arg(long, default_value_t = 1.0)]
    threshold: f64,
    /// Override a config key (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

impl EvalArgs {
    /// The config's `[runtime]`, as [`TrainArgs::runtime`].
    pub(super) fn runtime(&self) -> RuntimeSection {
        runtime_of(&self.config, &self.overrides)
    }
}

fn runtime_of(config: &std::path::Path, overrides: &[String]) -> RuntimeSection {
    RunConfig::load(config, overrides)
        .map(|cfg| cfg.runtime)
        .unwrap_or_default()
}

pub(super) fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let cfg = RunConfig::load(&args.config, &args.overrides)?;
    let exported = tempfile::tempdir()?;
    let model_dir = match &args.checkpoint {
        Some(ckpt) => {
            crate::train::checkpoint::export(ckpt, exported.path())?;
            Some(exported.path())
        }
        None => None,
    };
    // The run's own sampling temperature and the whole eval split; `[eval]` is the trainer's.
    let opts = crate::train::config::EvalSection {
        samples: args.samples,
        k: args.k,
        threshold: args.threshold,
        temperature: cfg.rollout.sampling.temperature,
        max_prompts: 0,
        ..Default::default()
    };
    let report = crate::train::eval::evaluate(&cfg, model_dir, &opts)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
