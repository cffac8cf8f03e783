//! Offline learner data from JSONL files: scored samples with their behaviour logprobs
//! (TOPR offline, expert iteration) and preference pairs (DPO), one JSON object per line.

use std::path::Path;

use serde::Deserialize;

use super::dpo::pair_samples;
use crate::error::{Error, Result};
use crate::sample::Sample;
use crate::tokenizer::Tokenizer;

fn lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect())
}

/// Reads [`Sample`]s (the format rollouts are logged in), checking each one.
pub fn read_samples_jsonl(path: &Path) -> Result<Vec<Sample>> {
    lines(path)?
        .into_iter()
        .map(|(n, l)| {
            let s: Sample = serde_json::from_str(&l)
                .map_err(|e| Error::bad_file(path, format!("line {n}: {e}")))?;
            super::batch::validate(&s)
                .map_err(|e| Error::bad_file(path, format!("line {n}: {e}")))?;
            Ok(s)
        })
        .collect()
}

/// One preference line: text (TRL's standard `prompt`/`chosen`/`rejected` format) or token
/// ids (`prompt_ids`/`chosen_ids`/`rejected_ids`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PreferenceRecord {
    /// Token ids, used as they are.
    Ids {
        /// Prompt ids.
        prompt_ids: Vec<u32>,
        /// Preferred completion ids.
        chosen_ids: Vec<u32>,
        /// Dispreferred completion ids.
        rejected_ids: Vec<u32>,
    },
    /// Text: the prompt is encoded with special tokens, each completion without, then the
    /// first EOS id is appended (as TRL's DPO tokenisation).
    Text {
        /// Prompt text (already chat-formatted if the model expects it).
        prompt: String,
        /// Preferred completion.
        chosen: String,
        /// Dispreferred completion.
        rejected: String,
    },
}

/// Reads preference pairs as DPO samples (pairs adjacent, chosen first, one group per
/// pair). Text records need `tokenizer`.
pub fn read_preference_jsonl(path: &Path, tokenizer: Option<&Tokenizer>) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (n, l) in lines(path)? {
        let bad = |msg: String| Error::bad_file(path, format!("line {n}: {msg}"));
        let rec: PreferenceRecord = serde_json::from_str(&l).map_err(|e| bad(e.to_string()))?;
        let (p, c, r) = match rec {
            PreferenceRecord::Ids {
                prompt_ids,
                chosen_ids,
                rejected_ids,
            } => (prompt_ids, chosen_ids, rejected_ids),
            PreferenceRecord::Text {
                prompt,
                chosen,
                rejected,
            } => {
                let tok = tokenizer.ok_or_else(|| bad("text pairs need a tokenizer".into()))?;
                let eos = tok.eos_token_ids().first().copied();
                let completion = |t: &str| -> Result<Vec<u32>> {
                    let mut ids = tok.encode(t, false)?;
                    ids.extend(eos);
                    Ok(ids)
                };
                (
                    tok.encode(&prompt, true)?,
                    completion(&chosen)?,
                    completion(&rejected)?,
                )
            }
        };
        if p.is_empty() || c.is_empty() || r.is_empty() {
            return Err(bad("empty prompt or completion".into()));
        }
        out.extend(pair_samples(&p, &c, &r, out.len() as u64 / 2));
    }
    Ok(out)
}
