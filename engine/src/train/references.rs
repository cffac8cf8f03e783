//! `learner.algorithm = "sft"`: the completion of each prompt is the task's reference solution
//! (`Task::reference`: GSM8K's worked steps and `#### N`, arithmetic's `#### N`, a code task's
//! solution, a dataset's answer field), so supervised fine-tuning runs through the same loop,
//! checkpoints, eval and metrics as RL, and a ReFT-style run continues from its checkpoint.

use anyhow::{bail, Context};
use oxrl_envs::{LoadedEnv, Row, Task};

use crate::rollout::Generated;
use crate::sample::FinishReason;
use crate::tokenizer::Tokenizer;

/// Checks that the task gives every training row one reference message, naming the first row
/// that has none.
pub fn check_rows(env: &LoadedEnv) -> anyhow::Result<()> {
    for (i, row) in env.train().rows().iter().enumerate() {
        reference(env.task(), row).with_context(|| format!("training row {i}"))?;
    }
    Ok(())
}

fn reference(task: &dyn Task, row: &Row) -> anyhow::Result<String> {
    let mut messages = task
        .reference(row)
        .context("learner.algorithm = \"sft\" trains on each row's reference solution")?;
    if messages.len() != 1 {
        bail!(
            "learner.algorithm = \"sft\": task {:?} answers with {} messages; SFT trains single-turn tasks",
            task.name(),
            messages.len()
        );
    }
    Ok(messages.remove(0))
}

/// Row `i`'s reference as the "generation" for prompt `i`: tokenized without special tokens
/// and ended by the first EOS id (as TRL's SFT tokenization of a completion), cut to
/// `max_tokens` (then without EOS, finish reason `length`). Logprobs are zeros: SFT does not
/// read them.
pub fn reference_completions(
    rows: &[Row],
    task: &dyn Task,
    tokenizer: &Tokenizer,
    max_tokens: usize,
) -> anyhow::Result<Vec<Generated>> {
    let eos = tokenizer.eos_token_ids().first().copied();
    rows.iter()
        .enumerate()
        .map(|(prompt_index, row)| {
            let mut tokens = tokenizer.encode(&reference(task, row)?, false)?;
            tokens.extend(eos);
            let finish_reason = match tokens.len() > max_tokens {
                true => FinishReason::Length,
                false => FinishReason::Stop,
            };
            tokens.truncate(max_tokens);
            Ok(Generated {
                prompt_index,
                sample_index: 0,
                logprobs: vec![0.0; tokens.len()],
                tokens,
                finish_reason,
                learner_logprobs: None,
            })
        })
        .collect()
}
