//! `rollout.source = "dataset"`: the completions of a step are each row's `chosen` and
//! `rejected` fields (TRL's standard preference format) instead of the policy's samples, so
//! DPO trains on a fixed preference dataset through the same loop, checkpoints and metrics.

use anyhow::Context;
use oxrl_envs::{LoadedEnv, Row};

use crate::rollout::Generated;
use crate::sample::{FinishReason, Sample};
use crate::tokenizer::Tokenizer;

/// The row fields holding the preferred and the dispreferred completion.
const FIELDS: [&str; 2] = ["chosen", "rejected"];

/// Checks that every training row of `env` carries both completions, naming the first row
/// that does not.
pub fn check_rows(env: &LoadedEnv) -> anyhow::Result<()> {
    for row in env.train().rows() {
        for field in FIELDS {
            row.require_str(env.task().name(), field).context(
                "rollout.source = \"dataset\" needs `chosen` and `rejected` in every row",
            )?;
        }
    }
    Ok(())
}

/// Row `i`'s pair as the "generation" for prompt `i`: sample 0 is `chosen`, sample 1
/// `rejected`, each tokenized without special tokens and ended by the first EOS id (as TRL's
/// DPO tokenization). Logprobs are zeros: DPO does not read them.
pub fn pair_completions(rows: &[Row], tokenizer: &Tokenizer) -> anyhow::Result<Vec<Generated>> {
    let eos = tokenizer.eos_token_ids().first().copied();
    let mut out = Vec::with_capacity(2 * rows.len());
    for (prompt_index, row) in rows.iter().enumerate() {
        for (sample_index, field) in FIELDS.into_iter().enumerate() {
            let text = row.require_str("preference pair", field)?;
            let mut tokens = tokenizer.encode(text, false)?;
            tokens.extend(eos);
            out.push(Generated {
                prompt_index,
                sample_index,
                logprobs: vec![0.0; tokens.len()],
                tokens,
                finish_reason: FinishReason::Stop,
                learner_logprobs: None,
            });
        }
    }
    Ok(out)
}

/// The dataset's labels decide the pair, not the rewards (which still score both
/// completions for the metrics): chosen gets total reward 1, rejected 0.
pub fn label(samples: &mut [Sample], generated: &[Generated]) {
    for (s, g) in samples.iter_mut().zip(generated) {
        s.reward = if g.sample_index == 0 { 1.0 } else { 0.0 };
    }
}
