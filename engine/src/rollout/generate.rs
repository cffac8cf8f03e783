//! Batched generation: each prompt is prefilled once and its KV cache shared across its group
//! of `n` completions; every step samples all live sequences at once, and finished sequences
//! leave the batch (the cache rows are compacted) so they stop costing compute.
//!
//! A request may continue earlier sequences ([`generate_continuing`]): each finished
//! completion's cache is kept ([`SequenceCache`]), and a prompt that extends it (an episode's
//! next turn: the same tokens, then the environment's) prefills only what is new.

use tch::{Device, Kind, Tensor};

use super::sampling::{draw_tokens, SamplingParams, SequenceRng};
use super::stop::{hits_stop_string, StopConditions};
use crate::error::{Error, Result};
use crate::model::{KvCache, Llama};
use crate::sample::FinishReason;
use crate::tokenizer::Tokenizer;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    /// Prompt token ids, one entry per prompt.
    pub prompts: Vec<Vec<u32>>,
    /// Completions per prompt (the GRPO group size).
    pub n: usize,
    /// Token selection.
    pub sampling: SamplingParams,
    /// Upper bound on new tokens per completion.
    pub max_tokens: usize,
    /// When a completion ends early.
    pub stop: StopConditions,
    /// Seed; completion j of prompt i always draws from stream `(prompt_offset + i) * n + j`
    /// of this seed.
    pub seed: u64,
    /// The index of `prompts[0]` in the step's whole batch (0 but on a data-parallel rank,
    /// which generates its share of the batch and draws what one process would).
    pub prompt_offset: usize,
}

/// One finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Index into `GenerationRequest::prompts`.
    pub prompt_index: usize,
    /// Which of the prompt's `n` completions this is.
    pub sample_index: usize,
    /// The new tokens (including the stop token, if one ended it).
    pub tokens: Vec<u32>,
    /// Behaviour logprob of each new token (see [`super::sampling`]).
    pub logprobs: Vec<f32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// The learner's logprob of each new token under the weights that generated it, when
    /// another engine (vLLM) generated and the trainer recomputed them; `None` otherwise.
    pub learner_logprobs: Option<Vec<f32>>,
}

/// One finished sequence's keys and values, kept so that a later prompt extending it prefills
/// only its new tokens.
#[derive(Debug)]
pub struct SequenceCache {
    /// The ids the cache covers: the prompt, then every generated token but the last (which
    /// was sampled, never fed).
    tokens: Vec<u32>,
    /// One row, `tokens.len()` positions.
    cache: KvCache,
}

impl SequenceCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether it covers nothing.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// How many of `prompt`'s leading tokens this cache can stand for: the tokens both begin
    /// with, but never the whole prompt (its last token must be fed for the next logits).
    fn usable_for(&self, prompt: &[u32]) -> usize {
        let common = (self.tokens.iter().zip(prompt))
            .take_while(|(a, b)| a == b)
            .count();
        common.min(prompt.len().saturating_sub(1))
    }
}

/// A sequence still generating.
struct Live {
    out: Generated,
    position: i64,
    rng: SequenceRng,
}

/// Generates all completions of `req`. `tokenizer` is needed only for stop strings.
pub fn generate_batch(
    model: &Llama,
    req: &GenerationRequest,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<Generated>> {
    validate(model, req, tokenizer)?;
    let out = tch::no_grad(|| run(model, req, tokenizer, Vec::new(), false))?;
    Ok(out.into_iter().map(|(g, _)| g).collect())
}

/// [`generate_batch`], where prompt i may start from `prefixes[i]`, the cache of a sequence
/// it extends (only the tokens after the prefix both share are prefilled); returns each
/// completion with its own cache, for a next request that extends it. `prefixes` is empty or
/// has one entry per prompt.
pub fn generate_continuing(
    model: &Llama,
    req: &GenerationRequest,
    tokenizer: Option<&Tokenizer>,
    prefixes: Vec<Option<SequenceCache>>,
) -> Result<Vec<(Generated, Option<SequenceCache>)>> {
    validate(model, req, tokenizer)?;
    if !prefixes.is_empty() && prefixes.len() != req.prompts.len() {
        return Err(Error::Invalid(format!(
            "{} prefix caches for {} prompts",
            prefixes.len(),
            req.prompts.len()
        )));
    }
    tch::no_grad(|| run(model, req, tokenizer, prefixes, true))
}

fn validate(model: &Llama, req: &GenerationRequest, tokenizer: Option<&Tokenizer>) -> Result<()> {
    req.sampling.validate()?;
    let context = model.config().max_position_embeddings;
    for (i, p) in req.prompts.iter().enumerate() {
        if p.is_empty() || p.len() >= context {
            return Err(Error::Invalid(format!(
                "prompt {i} has {} tokens; it must have between 1 and {} (the model's context is {context})",
                p.len(),
                context - 1
            )));
        }
    }
    if req.n == 0 {
        return Err(Error::Invalid(
            "n (completions per prompt) must be at least 1".into(),
        ));
    }
    if !req.stop.strings.is_empty() && tokenizer.is_none() {
        return Err(Error::Invalid("stop strings need a tokenizer".into()));
    }
    Ok(())
}

/// Generates `req` from the `prefixes` (empty: none); `keep_caches` copies out each finished
/// sequence's cache.
fn run(
    model: &Llama,
    req: &GenerationRequest,
    tokenizer: Option<&Tokenizer>,
    prefixes: Vec<Option<SequenceCache>>,
    keep_caches: bool,
) -> Result<Vec<(Generated, Option<SequenceCache>)>> {
    let device = model.device();
    let context = model.config().max_position_embeddings as i64;
    let longest = req.prompts.iter().map(Vec::len).max().unwrap_or(0);
    let capacity = (longest + req.max_tokens).min(context as usize);
    let mut cache = KvCache::with_capacity(model.config().num_hidden_layers, capacity);
    let (logits, mut key_mask) = prefill(model, &req.prompts, prefixes, &mut cache, device);
    // Repeat each prompt's prefill across its group.
    let group = Tensor::arange(req.prompts.len() as i64, (Kind::Int64, device))
        .repeat_interleave_self_int(req.n as i64, 0, None);
    let mut logits = logits.index_select(0, &group);
    if req.n > 1 {
        cache.select_rows(&group);
        key_mask = key_mask.map(|m| m.index_select(0, &group));
    }
    let mut live = start_sequences(req);
    let mut done = Vec::with_capacity(live.len());
    if req.max_tokens == 0 {
        return Ok(live
            .into_iter()
            .map(|l| (finish(l, FinishReason::Length), None))
            .collect());
    }
    loop {
        let mut rngs: Vec<SequenceRng> = live.iter().map(|l| l.rng.clone()).collect();
        let (tokens, logprobs) = draw_tokens(&logits, &req.sampling, &mut rngs);
        let tokens = Vec::<i64>::try_from(tokens.to_device(Device::Cpu))?;
        let logprobs = Vec::<f32>::try_from(logprobs.to_device(Device::Cpu))?;
        let mut keep = Vec::with_capacity(live.len());
        let mut still = Vec::with_capacity(live.len());
        for (i, (mut seq, rng)) in live.into_iter().zip(rngs).enumerate() {
            seq.rng = rng;
            match advance(
                &mut seq,
                tokens[i] as u32,
                logprobs[i],
                req,
                context,
                tokenizer,
            )? {
                Some(reason) => {
                    let kept = keep_caches.then(|| kept_cache(&cache, i as i64, &seq, req));
                    done.push((finish(seq, reason), kept));
                }
                None => {
                    keep.push(i as i64);
                    still.push(seq);
                }
            }
        }
        if still.is_empty() {
            break;
        }
        if keep.len() < tokens.len() {
            let index = Tensor::from_slice(&keep).to_device(device);
            cache.select_rows(&index);
            key_mask = key_mask.map(|m| m.index_select(0, &index));
        }
        live = still;
        crate::runtime::adapt_threads(); // between steps: fewer threads while cores are taken
        logits = decode_step(model, &live, &mut cache, &mut key_mask, device);
    }
    done.sort_by_key(|(g, _)| (g.prompt_index, g.sample_index));
    Ok(done)
}

/// The cache of `seq`, row `row` of `cache`, just finished: its real positions are the last
/// ones (every step appended one for each live row), all but its last token.
fn kept_cache(cache: &KvCache, row: i64, seq: &Live, req: &GenerationRequest) -> SequenceCache {
    let prompt = &req.prompts[seq.out.prompt_index];
    let fed = &seq.out.tokens[..seq.out.tokens.len() - 1];
    let tokens: Vec<u32> = prompt.iter().chain(fed).copied().collect();
    SequenceCache {
        cache: cache.copy_row(row, tokens.len() as i64),
        tokens,
    }
}

/// A prompt's cached prefix: `len` leading tokens whose keys and values `cache` holds.
struct Prefix {
    cache: SequenceCache,
    len: usize,
}

/// Runs the prompts through the model, in groups of similar length still to feed (see
/// [`length_groups`]), into one left-padded cache; returns the last position's logits
/// `[prompts, vocab]` and the key mask (None when no prompt is padded). A prompt with a
/// prefix cache feeds only the tokens after it.
fn prefill(
    model: &Llama,
    prompts: &[Vec<u32>],
    prefixes: Vec<Option<SequenceCache>>,
    cache: &mut KvCache,
    device: Device,
) -> (Tensor, Option<Tensor>) {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let batch = prompts.len() as i64;
    let mut prefixes: Vec<Option<Prefix>> = prefixes
        .into_iter()
        .zip(prompts)
        .map(|(c, p)| {
            c.map(|cache| Prefix {
                len: cache.usable_for(p),
                cache,
            })
        })
        .collect();
    prefixes.resize_with(prompts.len(), || None);
    let to_feed: Vec<usize> = (prompts.iter().zip(&prefixes))
        .map(|(p, c)| p.len() - c.as_ref().map_or(0, |c| c.len))
        .collect();
    let mut last_hidden: Option<Tensor> = None;
    for group in length_groups(&to_feed) {
        let members: Vec<&[u32]> = group.iter().map(|&i| prompts[i].as_slice()).collect();
        let cached: Vec<Option<Prefix>> = group.iter().map(|&i| prefixes[i].take()).collect();
        let (last, part) = prefill_group(model, &members, cached, device);
        let rows = Tensor::from_slice(&group.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .to_device(device);
        cache.place(&part, &rows, batch, longest);
        let all = last_hidden
            .get_or_insert_with(|| last.new_empty([batch, last.size()[1]], (last.kind(), device)));
        let _ = all.index_copy_(0, &rows, &last);
    }
    let all: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let key_mask = prompts
        .iter()
        .any(|p| (p.len() as i64) < longest)
        .then(|| left_padded(&all, device).1);
    let hidden = last_hidden.expect("validate() ensures at least one prompt");
    (model.logits(&hidden), key_mask)
}

/// One left-padded batch of prompts through the model, each starting from its cached prefix
/// if it has one: the last position's hidden states `[prompts, hidden]` and the batch's own
/// cache, every row's real tokens right-aligned and contiguous.
///
/// Every row feeds its last `tail` tokens, the most any row has uncached, and takes the
/// positions before them from its cache: rows with less to feed recompute a few cached
/// tokens rather than leave a gap (sliding windows count cache slots as positions).
fn prefill_group(
    model: &Llama,
    prompts: &[&[u32]],
    prefixes: Vec<Option<Prefix>>,
    device: Device,
) -> (Tensor, KvCache) {
    let tail = (prompts.iter().zip(&prefixes))
        .map(|(p, c)| p.len() - c.as_ref().map_or(0, |c| c.len))
        .max()
        .unwrap_or(0);
    let kept: Vec<usize> = prompts
        .iter()
        .map(|p| p.len().saturating_sub(tail))
        .collect();
    let past = kept.iter().copied().max().unwrap_or(0) as i64;
    let mut cache = model.new_cache();
    for (row, (prefix, &len)) in prefixes.iter().zip(&kept).enumerate() {
        if let Some(prefix) = prefix.as_ref().filter(|_| len > 0) {
            let rows = Tensor::from_slice(&[row as i64]).to_device(device);
            let part = prefix.cache.cache.prefix(len as i64);
            cache.place(&part, &rows, prompts.len() as i64, past);
        }
    }
    let tails: Vec<&[u32]> = prompts.iter().zip(&kept).map(|(p, &k)| &p[k..]).collect();
    let (tokens, tail_mask) = left_padded(&tails, device);
    let offsets = Tensor::from_slice(&kept.iter().map(|&k| k as i64).collect::<Vec<_>>())
        .to_device(device)
        .view([-1, 1]);
    let positions =
        (tail_mask.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0) + &offsets;
    let cached_mask = Tensor::arange(past, (Kind::Int64, device))
        .view([1, -1])
        .ge_tensor(&(-&offsets + past));
    let mask = Tensor::cat(&[cached_mask, tail_mask], 1);
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let padded = prompts.iter().any(|p| p.len() < longest);
    let hidden = model.forward_hidden(
        &tokens,
        &positions,
        padded.then_some(&mask),
        Some(&mut cache),
    );
    (hidden.select(1, -1), cache)
}

/// Token ids `[n, longest]` left-padded with 0, and the mask of real tokens (bool, same shape).
fn left_padded(prompts: &[&[u32]], device: Device) -> (Tensor, Tensor) {
    let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut mask = Vec::with_capacity(prompts.len() * longest);
    for p in prompts {
        let pad = longest - p.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(p.iter().map(|&t| t as i64)));
        mask.extend(std::iter::repeat_n(false, pad).chain(std::iter::repeat_n(true, p.len())));
    }
    let shape = [prompts.len() as i64, longest as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// What one more prefill forward costs, in prompt rows: it reads every weight once more (about
/// as long as 32 rows take to compute on a CPU; on a GPU, small).
const PREFILL_PASS_ROWS: usize = 32;

/// Prompt indices (by the tokens each must feed) split into prefill groups so that padding
/// every prompt to its group's longest wastes little: by length, longest first, cut where the
/// rows saved outweigh one more pass (an exact split by dynamic programming over the sorted
/// lengths).
fn length_groups(lengths: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let len = |j: usize| lengths[order[j]];
    // best[j]: cost of the first j prompts (in order); cut[j]: where their last group starts.
    let n = order.len();
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        (best[j], cut[j]) = (0..j)
            .map(|i| (best[i] + PREFILL_PASS_ROWS + (j - i) * len(i), i))
            .min()
            .expect("j >= 1");
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        groups.push(order[cut[end]..end].to_vec());
        end = cut[end];
    }
    groups.reverse();
    groups
}

fn start_sequences(req: &GenerationRequest) -> Vec<Live> {
    let mut live = Vec::with_capacity(req.prompts.len() * req.n);
    for (p, prompt) in req.prompts.iter().enumerate() {
        for s in 0..req.n {
            live.push(Live {
                out: Generated {
                    prompt_index: p,
                    sample_index: s,
                    tokens: Vec::with_capacity(req.max_tokens),
                    logprobs: Vec::with_capacity(req.max_tokens),
                    finish_reason: FinishReason::Length,
                    learner_logprobs: None,
                },
                position: prompt.len() as i64,
                rng: SequenceRng::new(req.seed, ((req.prompt_offset + p) * req.n + s) as u64),
            });
        }
    }
    live
}

/// Records one sampled token; returns why the sequence ended, if it did.
fn advance(
    seq: &mut Live,
    token: u32,
    logprob: f32,
    req: &GenerationRequest,
    context: i64,
    tokenizer: Option<&Tokenizer>,
) -> Result<Option<FinishReason>> {
    seq.out.tokens.push(token);
    seq.out.logprobs.push(logprob);
    seq.position += 1;
    if req.stop.token_ids.contains(&token) {
        return Ok(Some(FinishReason::Stop));
    }
    if let Some(tok) = tokenizer {
        if hits_stop_string(tok, &seq.out.tokens, &req.stop.strings)? {
            return Ok(Some(FinishReason::StopString));
        }
    }
    let full = seq.out.tokens.len() >= req.max_tokens || seq.position >= context;
    Ok(full.then_some(FinishReason::Length))
}

fn finish(seq: Live, reason: FinishReason) -> Generated {
    Generated {
        finish_reason: reason,
        ..seq.out
    }
}

/// Feeds each live sequence's last token; returns next-token logits `[live, vocab]`.
fn decode_step(
    model: &Llama,
    live: &[Live],
    cache: &mut KvCache,
    key_mask: &mut Option<Tensor>,
    device: Device,
) -> Tensor {
    let last: Vec<i64> = live
        .iter()
        .map(|l| *l.out.tokens.last().expect("live sequences have a token") as i64)
        .collect();
    let pos: Vec<i64> = live.iter().map(|l| l.position - 1).collect();
    let b = live.len() as i64;
    let tokens = Tensor::from_slice(&last).view([b, 1]).to_device(device);
    let positions = Tensor::from_slice(&pos).view([b, 1]).to_device(device);
    if let Some(mask) = key_mask.as_mut() {
        *mask = Tensor::cat(&[&*mask, &Tensor::ones([b, 1], (Kind::Bool, device))], 1);
    }
    let hidden = model.forward_hidden(&tokens, &positions, key_mask.as_ref(), Some(cache));
    model.logits(&hidden.squeeze_dim(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(groups: &[Vec<usize>], all: &[usize]) -> Vec<Vec<usize>> {
        let len = |i: &usize| all[*i];
        groups.iter().map(|g| g.iter().map(len).collect()).collect()
    }

    #[test]
    fn prompts_are_grouped_by_length_when_padding_would_cost_more_than_a_pass() {
        let of = |lens: &[usize]| lens.to_vec();
        let same = of(&[9, 9, 9]);
        assert_eq!(length_groups(&same).len(), 1);
        // Padding 60 short prompts to 100 tokens wastes far more than one more pass.
        let mixed = of(&[&[5; 30][..], &[100, 100], &[4; 30][..]].concat());
        let groups = length_groups(&mixed);
        assert_eq!(
            lengths(&groups, &mixed),
            vec![vec![100, 100], [&[5; 30][..], &[4; 30][..]].concat()]
        );
        let mut seen: Vec<usize> = groups.concat();
        seen.sort();
        assert_eq!(
            seen,
            (0..62).collect::<Vec<_>>(),
            "every prompt exactly once"
        );
    }
}
