//! `oxrl generate`.

use std::time::Instant;

use anyhow::Context;
use oxrl_envs::Message;

use super::ModelArgs;
use crate::rollout::single::{generate, SamplingConfig};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep generating past end-of-sequence tokens (for benchmarks).
    #[arg(long)]
    ignore_eos: bool,
}

pub(super) fn run(args: Args) -> anyhow::Result<()> {
    let loaded = args.model.load()?;
    let tok = &loaded.tokenizer;
    let text = if args.chat {
        tok.apply_chat_template(&[Message::new("user", &args.prompt)], true)?
    } else {
        args.prompt.clone()
    };
    let prompt = tok
        .encode(&text, !args.chat)
        .context("tokenizing the prompt")?;
    let cfg = SamplingConfig {
        temperature: args.temperature,
        max_tokens: args.max_tokens,
        seed: args.seed,
    };
    let start = Instant::now();
    let stop = if args.ignore_eos {
        &[][..]
    } else {
        tok.eos_token_ids()
    };
    let out = generate(&loaded.model, &prompt, &cfg, stop)?;
    let secs = start.elapsed().as_secs_f64();
    println!("{}", tok.decode(&out, true)?);
    eprintln!(
        "prompt_tokens={} new_tokens={} seconds={secs:.3} tokens_per_s={:.1}",
        prompt.len(),
        out.len(),
        out.len() as f64 / secs
    );
    Ok(())
}
