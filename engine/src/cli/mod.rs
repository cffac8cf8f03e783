//! The `oxrl` command line.

mod bench;
mod bench_padding;
mod bench_turns;
mod bench_update;
mod generate;
mod import;
mod logprobs;
mod reward;
mod train;

use clap::{Parser, Subcommand};

use crate::device::{parse_device, parse_kind};
use crate::pretrained::{LoadOptions, Pretrained};

/// oxrl: reinforcement-learning post-training for LLMs.
#[derive(Debug, Parser)]
#[command(name = "oxrl", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a training run from a TOML config.
    Train(train::TrainArgs),
    /// Evaluate on the held-out split: pass@1, pass@k, majority vote.
    Eval(train::EvalArgs),
    /// Write a checkpoint's policy as a Hugging Face directory (LoRA merged).
    Export(train::ExportArgs),
    /// Run-config tools.
    #[command(subcommand)]
    Config(train::ConfigCommand),
    /// Generate a completion for one prompt.
    Generate(generate::Args),
    /// Per-token logprobs of completions given prompts (JSONL in, JSONL out).
    Logprobs(logprobs::Args),
    /// Convert a GGUF file into a Hugging Face model directory.
    Import(import::Args),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Score JSONL samples with a reward (one JSON line out per line in).
    Reward(reward::Args),
}

/// Where the model comes from and how to hold it; shared by several commands.
#[derive(Debug, clap::Args)]
struct ModelArgs {
    /// HF model directory or .gguf file.
    #[arg(long)]
    model: std::path::PathBuf,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parameter dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl ModelArgs {
    fn load(&self) -> anyhow::Result<Pretrained> {
        let opts = LoadOptions {
            device: parse_device(&self.device)?,
            kind: parse_kind(&self.dtype)?,
        };
        Ok(Pretrained::load(&self.model, opts)?)
    }
}

/// Parses the command line and runs the command, after re-executing the binary once if
/// libgomp must be started with another busy-wait (`crate::runtime`).
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    crate::runtime::reexec_with_omp_env(&cli.command.runtime());
    match cli.command {
        Command::Train(args) => train::train(args),
        Command::Config(cmd) => train::config(cmd),
        Command::Export(args) => train::export(args),
        Command::Eval(args) => train::eval(args),
        Command::Generate(args) => generate::run(args),
        Command::Logprobs(args) => logprobs::run(args),
        Command::Import(args) => import::run(args),
        Command::Reward(args) => reward::run(args),
        Command::Bench(bench) => bench::run(bench),
    }
}

impl Command {
    /// The `[runtime]` of the run config this command reads (the defaults for commands
    /// without one).
    fn runtime(&self) -> crate::runtime::RuntimeSection {
        match self {
            Command::Train(args) | Command::Config(train::ConfigCommand::Check(args)) => {
                args.runtime()
            }
            Command::Eval(args) => args.runtime(),
            _ => Default::default(),
        }
    }
}
