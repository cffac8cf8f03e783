//! From [`Sample`]s to padded tensors, token-budget micro-batches, and the policy's
//! per-token log-probabilities on completion tokens (logits only where a completion token is
//! predicted).
//!
//! Rows are right-padded: with causal attention a real token never attends to a later pad,
//! so no key mask is needed and each row's positions start at 0. Rows that share their prompt
//! (a GRPO group) run it once: see [`predicting_hidden`].

use std::collections::HashMap;
use std::ops::Range;

use tch::{Device, Kind, Tensor};

use super::recompute::{
    chunked_head_logprobs, head_logprobs, CheckpointedStack, ChunkedHead, Deferred, ScoreOptions,
};
use crate::error::{Error, Result};
use crate::kernels::decode_linear::grad_enabled;
use crate::model::Llama;
use crate::sample::Sample;

/// A micro-batch of samples as tensors.
///
/// # Shapes
/// `B` rows, `L` = longest prompt + completion, `T` = longest completion.
#[derive(Debug)]
pub struct Rows {
    /// int64 `[B, L]`: prompt then completion ids, right-padded with 0.
    pub tokens: Tensor,
    /// int64 `[B, L]`: `0..L` per row.
    pub positions: Tensor,
    /// int64 `[B, T]`: the position whose output predicts each completion token.
    pub predict_at: Tensor,
    /// int64 `[B, T]`: the completion ids (0 on padding).
    pub targets: Tensor,
    /// float `[B, T]`: 1 where the loss applies (model tokens), 0 on env tokens and padding.
    pub mask: Tensor,
    /// float `[B, T]`: the sampling policy's log-probabilities as the learner computes them
    /// (`pi_old`): the samples' `learner_logprobs` when another engine sampled, else their
    /// behaviour logprobs (0 on padding).
    pub old_logp: Tensor,
    /// float `[B, T]`: the other engine's behaviour logprobs (`mu`), when it sampled (the
    /// samples carry `learner_logprobs`); `None` when `old_logp` is the behaviour itself.
    pub engine_logp: Option<Tensor>,
    /// Completion length of each row.
    pub completion_lens: Vec<usize>,
    /// Length of the prompt every row shares (0 when the rows are of different groups or
    /// there is one row): [`predicting_hidden`] runs it once for all rows.
    pub shared_prompt: i64,
}

impl Rows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.completion_lens.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.completion_lens.is_empty()
    }
}

/// Checks that a sample is usable by the learner.
pub fn validate(s: &Sample) -> Result<()> {
    let n = s.completion_ids.len();
    if s.prompt_ids.is_empty() {
        return Err(Error::Invalid(
            "learner: a sample has an empty prompt".into(),
        ));
    }
    if s.loss_mask.len() != n || s.behaviour_logprobs.len() != n {
        return Err(Error::Invalid(format!(
            "learner: sample with {n} completion tokens has {} loss-mask and {} behaviour-logprob entries",
            s.loss_mask.len(),
            s.behaviour_logprobs.len()
        )));
    }
    if let Some(learner) = s.learner_logprobs.as_ref().filter(|l| l.len() != n) {
        return Err(Error::Invalid(format!(
            "learner: sample with {n} completion tokens has {} learner-logprob entries",
            learner.len()
        )));
    }
    if !s.reward.is_finite() {
        return Err(Error::Invalid(format!(
            "learner: non-finite reward {}",
            s.reward
        )));
    }
    if let Some(&(at, _)) = s.turn_rewards.iter().find(|t| t.0 >= n) {
        return Err(Error::Invalid(format!(
            "learner: a turn reward at completion token {at} of a sample with {n} tokens"
        )));
    }
    Ok(())
}

/// Checks a whole batch once: every sample (see [`validate`]); that samples sharing a
/// `group_id` share their prompt, which is what lets a group's prompt run once; and that all
/// samples or none carry `learner_logprobs` (one engine drew the batch).
pub fn validate_batch(samples: &[Sample]) -> Result<()> {
    let mut prompts: HashMap<u64, &[u32]> = HashMap::new();
    let recomputed = samples
        .first()
        .is_some_and(|s| s.learner_logprobs.is_some());
    for (i, s) in samples.iter().enumerate() {
        validate(s).map_err(|e| Error::Invalid(format!("sample {i}: {e}")))?;
        if s.learner_logprobs.is_some() != recomputed {
            return Err(Error::Invalid(format!(
                "learner: sample {i} {} learner logprobs but sample 0 {}: a batch has them for all samples or none",
                if recomputed { "lacks" } else { "has" },
                if recomputed { "has them" } else { "does not" },
            )));
        }
        let prompt = *prompts.entry(s.group_id).or_insert(&s.prompt_ids);
        if prompt != s.prompt_ids.as_slice() {
            return Err(Error::Invalid(format!(
                "learner: sample {i} is in group {} but its prompt differs from the group's first sample's",
                s.group_id
            )));
        }
    }
    Ok(())
}

/// Pads `samples` into tensors on `device`. The samples are taken to have passed
/// [`validate_batch`] (the learner checks each batch once, not each micro-batch of each pass):
/// rows of one group (`group_id`) share their prompt.
pub fn collate(samples: &[&Sample], device: Device) -> Result<Rows> {
    if samples.is_empty() {
        return Err(Error::Invalid("learner: empty micro-batch".into()));
    }
    let b = samples.len();
    let l = samples
        .iter()
        .map(|s| s.prompt_ids.len() + s.completion_ids.len())
        .max()
        .unwrap_or(1); // non-empty: checked above
    let t = samples
        .iter()
        .map(|s| s.completion_ids.len())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut tokens = vec![0i64; b * l];
    let mut predict_at = vec![0i64; b * t];
    let mut targets = vec![0i64; b * t];
    let mut mask = vec![0f32; b * t];
    let mut old = vec![0f32; b * t];
    let recomputed = samples[0].learner_logprobs.is_some();
    let mut engine = vec![0f32; if recomputed { b * t } else { 0 }];
    for (i, s) in samples.iter().enumerate() {
        let p = s.prompt_ids.len();
        for (j, &id) in s.prompt_ids.iter().chain(&s.completion_ids).enumerate() {
            tokens[i * l + j] = id as i64;
        }
        for j in 0..t {
            // Padding predicts from the last prompt position: harmless, masked out.
            predict_at[i * t + j] =
                (p.saturating_sub(1) + j.min(s.completion_ids.len().saturating_sub(1))) as i64;
        }
        let per_token = s.loss_mask.iter().zip(&s.behaviour_logprobs);
        for (j, (&id, (&trained, &logp))) in s.completion_ids.iter().zip(per_token).enumerate() {
            targets[i * t + j] = id as i64;
            mask[i * t + j] = if trained { 1.0 } else { 0.0 };
            old[i * t + j] = logp;
        }
        if let Some(learner) = &s.learner_logprobs {
            let row = i * t..i * t + learner.len();
            engine[row.clone()].copy_from_slice(&old[row.clone()]);
            old[row].copy_from_slice(learner);
        }
    }
    let (b, l, t) = (b as i64, l as i64, t as i64);
    Ok(Rows {
        tokens: Tensor::from_slice(&tokens).view([b, l]).to_device(device),
        positions: Tensor::arange(l, (Kind::Int64, device))
            .unsqueeze(0)
            .expand([b, l], false)
            .contiguous(),
        predict_at: Tensor::from_slice(&predict_at)
            .view([b, t])
            .to_device(device),
        targets: Tensor::from_slice(&targets).view([b, t]).to_device(device),
        mask: Tensor::from_slice(&mask).view([b, t]).to_device(device),
        old_logp: Tensor::from_slice(&old).view([b, t]).to_device(device),
        engine_logp: recomputed.then(|| Tensor::from_slice(&engine).view([b, t]).to_device(device)),
        completion_lens: samples.iter().map(|s| s.completion_ids.len()).collect(),
        shared_prompt: if b > 1 && samples.iter().all(|s| s.group_id == samples[0].group_id) {
            samples[0].prompt_ids.len() as i64
        } else {
            0
        },
    })
}

/// The policy's view of a micro-batch.
#[derive(Debug)]
pub struct TokenLogprobs {
    /// float `[B, T]`: `log pi(token)` (differentiable unless computed under `no_grad`).
    pub logp: Tensor,
    /// float `[B, T]`: entropy of the next-token distribution (detached).
    pub entropy: Tensor,
    /// What the backward must recompute (checkpointed layers, chunked head): call
    /// [`finish_backward`](Self::finish_backward) right after `loss.backward()`.
    deferred: Option<Deferred>,
}

impl TokenLogprobs {
    /// Completes the backward pass that `loss.backward()` began when the forward deferred
    /// part of it ([`ScoreOptions`]); nothing otherwise.
    pub fn finish_backward(self, model: &Llama, rows: &Rows) {
        if let Some(deferred) = self.deferred {
            deferred.backward(model, &rows.targets);
        }
    }
}

/// Per-token log-probabilities of the completion tokens under `model` at `opts.temperature`,
/// computing logits only at the positions that predict a completion token. With a graph
/// (training) `opts` may checkpoint the layers and chunk the head, and the caller must then
/// call [`TokenLogprobs::finish_backward`] after `loss.backward()`; under `no_grad` only the
/// chunking applies.
///
/// # Shapes
/// returns `[B, T]` tensors as in [`Rows`].
pub fn token_logprobs(model: &Llama, rows: &Rows, opts: ScoreOptions) -> TokenLogprobs {
    let training = grad_enabled();
    let (stack, hidden) = match training && opts.checkpoint_layers {
        true => {
            let (stack, hidden) = CheckpointedStack::forward(model, rows);
            (Some(stack), hidden)
        }
        false => (None, predicting_hidden(model, rows)),
    };
    let t = opts.temperature;
    let (head, logp, entropy) = match opts.chunk_tokens {
        Some(chunk) if training => {
            let (head, logp, entropy) =
                ChunkedHead::forward(model, &hidden, &rows.targets, t, chunk);
            (Some(head), logp, entropy)
        }
        Some(chunk) => {
            let (logp, entropy) = chunked_head_logprobs(model, &hidden, &rows.targets, t, chunk);
            (None, logp, entropy)
        }
        None => {
            let (logp, entropy) = head_logprobs(model, &hidden, &rows.targets, t);
            (None, logp, entropy)
        }
    };
    TokenLogprobs {
        logp,
        entropy,
        deferred: Deferred::new(head, hidden, stack),
    }
}

/// Final hidden states at the positions that predict each completion token.
///
/// # Shapes
/// returns `[B, T, hidden]`.
pub fn predicting_hidden(model: &Llama, rows: &Rows) -> Tensor {
    let hidden = if rows.shared_prompt > 0 {
        shared_prompt_hidden(model, rows)
    } else {
        model.forward_hidden(&rows.tokens, &rows.positions, None, None)
    };
    gather_predicting(&hidden, rows)
}

/// `hidden` (`[B, L, H]`) at `rows.predict_at`: `[B, T, H]`.
pub(crate) fn gather_predicting(hidden: &Tensor, rows: &Rows) -> Tensor {
    let h = hidden.size()[2];
    let (b, t) = (rows.predict_at.size()[0], rows.predict_at.size()[1]);
    let idx = rows.predict_at.unsqueeze(-1).expand([b, t, h], false);
    hidden.gather(1, &idx, false)
}

/// Final hidden states of rows that share their prompt: the prompt runs once (batch 1), every
/// row attends to its keys and values (`index_select`, so the rows' gradients add up in it),
/// and only the completions run per row. The same function as the plain forward; a group of
/// G completions pays for its prompt once instead of G times.
///
/// # Shapes
/// returns `[B, L, hidden]` like `forward_hidden` on all rows.
fn shared_prompt_hidden(model: &Llama, rows: &Rows) -> Tensor {
    let p = rows.shared_prompt;
    let (b, l) = rows.tokens.size2().expect("tokens are [B, L]");
    let mut cache = model.new_cache();
    let prompt = model.forward_hidden(
        &rows.tokens.narrow(0, 0, 1).narrow(1, 0, p),
        &rows.positions.narrow(0, 0, 1).narrow(1, 0, p),
        None,
        Some(&mut cache),
    );
    let prompt = prompt.expand([b, p, prompt.size()[2]], false);
    if l == p {
        return prompt;
    }
    cache.select_rows(&Tensor::zeros([b], (Kind::Int64, rows.tokens.device())));
    let completions = model.forward_hidden(
        &rows.tokens.narrow(1, p, l - p),
        &rows.positions.narrow(1, p, l - p),
        None,
        Some(&mut cache),
    );
    Tensor::cat(&[prompt, completions], 1)
}

/// Fewest rows sharing a prompt for them to get micro-batches of their own: below it, running
/// the prompt once saves less than batching with other prompts' rows gains.
const MIN_SHARED_ROWS: usize = 4;

/// Sorts each run of one group's rows by completion length (stably), in place: when the
/// token budget cuts a group into several micro-batches, each then pads its completions to
/// similar lengths (`oxrl bench padding`: 5-10% fewer positions with lengths spread over
/// 100-512). The order of the groups, and so prompt sharing, is unchanged.
pub fn sort_within_groups<T>(rows: &mut [T], sample: impl Fn(&T) -> &Sample) {
    for run in rows.chunk_by_mut(|a, b| sample(a).group_id == sample(b).group_id) {
        run.sort_by_key(|r| sample(r).completion_ids.len());
    }
}

/// Micro-batches as [`micro_batches`] makes them, except that a run of at least
/// [`MIN_SHARED_ROWS`] consecutive samples of one group (a GRPO group: one `group_id`, one
/// prompt) is split on its own, so its micro-batches share their prompt and compute it once.
/// Runs never split a unit.
pub fn prompt_micro_batches(
    samples: &[&Sample],
    unit: usize,
    budget: Option<usize>,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let flush = |range: Range<usize>, out: &mut Vec<Range<usize>>| {
        let lens: Vec<usize> = samples[range.clone()]
            .iter()
            .map(|s| s.prompt_ids.len() + s.completion_ids.len())
            .collect();
        let shift = |r: Range<usize>| r.start + range.start..r.end + range.start;
        out.extend(micro_batches(&lens, unit, budget).into_iter().map(shift));
    };
    let (mut mixed_start, mut run_start) = (0, 0);
    for i in 1..=samples.len() {
        if i < samples.len() && samples[i].group_id == samples[run_start].group_id {
            continue;
        }
        let whole_units = run_start % unit.max(1) == 0 && i % unit.max(1) == 0;
        if i - run_start >= MIN_SHARED_ROWS && whole_units {
            flush(mixed_start..run_start, &mut out);
            flush(run_start..i, &mut out);
            mixed_start = i;
        }
        run_start = i;
    }
    flush(mixed_start..samples.len(), &mut out);
    out.retain(|r| !r.is_empty());
    out
}

/// Splits items into consecutive micro-batches whose padded size (rows x longest row) stays
/// within `budget` tokens; `unit` items always stay together (2 for DPO pairs). A unit larger
/// than the budget gets a micro-batch of its own. `None` = one micro-batch.
pub fn micro_batches(lengths: &[usize], unit: usize, budget: Option<usize>) -> Vec<Range<usize>> {
    let unit = unit.max(1);
    let Some(budget) = budget else {
        return if lengths.is_empty() {
            vec![]
        } else {
            std::iter::once(0..lengths.len()).collect()
        };
    };
    let mut out = Vec::new();
    let mut start = 0;
    let mut longest = 0;
    let mut i = 0;
    while i < lengths.len() {
        let end = (i + unit).min(lengths.len());
        let unit_longest = lengths[i..end].iter().copied().max().unwrap_or(0);
        let new_longest = longest.max(unit_longest);
        if end - start > unit && (end - start) * new_longest > budget {
            out.push(start..i);
            start = i;
            longest = unit_longest;
        } else {
            longest = new_longest;
        }
        i = end;
    }
    if start < lengths.len() {
        out.push(start..lengths.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micro_batches_respect_budget_and_units() {
        let lens = [4, 4, 4, 8, 2, 2];
        assert_eq!(micro_batches(&lens, 1, None), vec![0..6]);
        assert_eq!(micro_batches(&lens, 1, Some(12)), vec![0..3, 3..4, 4..6]);
        assert_eq!(micro_batches(&lens, 2, Some(12)), vec![0..2, 2..4, 4..6]);
        assert_eq!(
            micro_batches(&lens, 1, Some(1)),
            vec![0..1, 1..2, 2..3, 3..4, 4..5, 5..6]
        );
    }

    #[test]
    fn rows_are_sorted_by_length_within_each_group_only() {
        let rows: Vec<(u64, usize)> = vec![(7, 5), (7, 2), (7, 9), (3, 4), (3, 1), (7, 0)];
        let samples: Vec<Sample> = rows
            .iter()
            .map(|&(group_id, len)| Sample {
                completion_ids: vec![0; len],
                loss_mask: vec![true; len],
                behaviour_logprobs: vec![0.0; len],
                finish_reason: crate::sample::FinishReason::Length,
                ..Sample::for_test(group_id, 0.0)
            })
            .collect();
        let mut refs: Vec<&Sample> = samples.iter().collect();
        sort_within_groups(&mut refs, |s| s);
        let got: Vec<(u64, usize)> = refs
            .iter()
            .map(|s| (s.group_id, s.completion_ids.len()))
            .collect();
        assert_eq!(got, [(7, 2), (7, 5), (7, 9), (3, 1), (3, 4), (7, 0)]);
    }
}
