//! Multi-turn rollouts: each prompt's group of episodes is played out against its
//! environment (`oxrl_envs::Episode`), all episodes of a step advancing together.
//!
//! Token in, token out: an episode is one growing ledger of token ids, the opening prompt,
//! then the sampled ids of each model turn exactly as drawn and the ids of the environment's
//! text after it (tool results, feedback, the template's glue and next generation prompt),
//! which the chat template appends (`Episode::model_turn`). Earlier turns are never rendered
//! or tokenized again, so what the learner trains on is what the policy saw and sampled. Each
//! turn the unfinished episodes generate one completion each from their ledgers (the first
//! turn shares each prompt's prefill across its group as single-turn rollouts do), on the
//! native engine or the vLLM servers alike. The native engine keeps each episode's KV cache
//! from one turn to the next and prefills only the environment's tokens
//! ([`crate::rollout::generate_continuing`]); vLLM finds the ledger in its prefix cache.
//!
//! An episode ends when the environment says done, after `env.episode.max_turns` model
//! turns, when its tokens after the prompt reach `env.episode.max_tokens`, or when its
//! environment fails (crashes, hangs, refuses a turn): a counted failure that keeps the turns
//! played so far and their rewards. A failing tool is the environment's business: it answers
//! with an error observation and the episode goes on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;
use oxrl_envs::{EnvError, Environment, Episode, LoadedEnv, Row, Turn};
use rayon::prelude::*;

use crate::rollout::{Generated, GenerationRequest, SequenceCache};
use crate::sample::FinishReason;
use crate::tokenizer::Tokenizer;

/// What one finished episode adds to its [`Generated`] (whose `tokens` are every token after
/// the opening prompt, model and environment alike, environment tokens with logprob 0).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EpisodeOutcome {
    /// Per completion token: true where the model sampled it (trained).
    pub loss_mask: Vec<bool>,
    /// Per model turn: the completion index of its last token and the environment's reward.
    pub turn_rewards: Vec<(usize, f64)>,
    /// Tool calls the environment answered, and how many of them failed.
    pub tool_calls: usize,
    /// See `tool_calls`.
    pub tool_failures: usize,
    /// The environment's error when it failed mid-episode.
    pub failure: Option<String>,
    /// The last model message (what `[[rewards]]` score, and eval's majority vote reads).
    pub final_message: String,
    /// Whether the chat template wrote earlier turns differently as the conversation grew
    /// (`Episode::rewrites_history`): the ledger, what the model saw, then differs from a
    /// fresh rendering of the whole conversation.
    pub rewrites_history: bool,
}

impl EpisodeOutcome {
    /// Model turns taken.
    pub fn turns(&self) -> usize {
        self.turn_rewards.len()
    }

    /// The sum of the environment's rewards.
    pub fn env_return(&self) -> f64 {
        self.turn_rewards.iter().map(|t| t.1).sum()
    }

    /// Tokens the model generated.
    pub fn model_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Tokens the environment added after the prompt.
    pub fn env_tokens(&self) -> usize {
        self.loss_mask.len() - self.model_tokens()
    }
}

/// A step's episodes: `generated[i]` and `episodes[i]` are one episode.
#[derive(Debug, Clone)]
pub struct EpisodeBatch {
    /// The request with each row's opening prompt.
    pub request: GenerationRequest,
    /// One per episode, `request.n` per prompt in prompt order.
    pub generated: Vec<Generated>,
    /// What each episode adds to its `Generated`.
    pub episodes: Vec<EpisodeOutcome>,
    /// Wall seconds spent in the environments (resets and steps).
    pub env_seconds: f64,
}

/// Plays episodes; keeps finished episodes' environments for the next ones (an external
/// environment's process serves many episodes through successive resets).
#[derive(Default)]
pub struct EpisodeRunner {
    idle: Mutex<Vec<Box<dyn Environment>>>,
    max_tokens: Option<usize>,
    /// Whether the run was told that its chat template rewrites history.
    warned: AtomicBool,
}

/// A generated turn: each completion with its KV cache, where the engine keeps them (the
/// next turn continues from it).
pub type Turns = Vec<(Generated, Option<SequenceCache>)>;

/// An episode being played.
struct Live {
    episode: Episode,
    prompt_index: usize,
    sample_index: usize,
    /// The opening prompt's ids, then the completion's.
    ledger: Vec<u32>,
    prompt_len: usize,
    logprobs: Vec<f32>,
    outcome: EpisodeOutcome,
    finish_reason: FinishReason,
    done: bool,
}

impl EpisodeRunner {
    /// A runner whose episodes end once `max_tokens` tokens follow the prompt (None: no
    /// limit besides the turn limit).
    pub fn new(max_tokens: Option<usize>) -> Self {
        Self {
            idle: Mutex::default(),
            max_tokens,
            warned: AtomicBool::new(false),
        }
    }

    /// Plays `request.n` episodes of each of `rows` to the end. `request` gives the
    /// sampling, per-turn `max_tokens`, stops and seed (its prompts are replaced by the
    /// episodes' openings); `complete` generates one turn from its request and, per prompt,
    /// the cache of the sequence it continues (none on the first turn).
    pub fn run(
        &self,
        env: &LoadedEnv,
        tokenizer: &Tokenizer,
        rows: &[Row],
        mut request: GenerationRequest,
        mut complete: impl FnMut(
            &GenerationRequest,
            Vec<Option<SequenceCache>>,
        ) -> anyhow::Result<Turns>,
    ) -> anyhow::Result<EpisodeBatch> {
        let start = Instant::now();
        let mut live = self.start(env, tokenizer, rows, request.n)?;
        let mut env_seconds = start.elapsed().as_secs_f64();
        request.prompts = live
            .iter()
            .step_by(request.n)
            .map(|l| l.ledger.clone())
            .collect();
        // Each unfinished episode's KV cache from its last turn, where the engine keeps them.
        let mut caches: Vec<Option<SequenceCache>> = live.iter().map(|_| None).collect();
        let mut turn = 0;
        while live.iter().any(|l| !l.done) {
            let active: Vec<usize> = (0..live.len()).filter(|&i| !live[i].done).collect();
            let turn_request = self.turn_request(&request, &live, &active, turn);
            let prefixes = match turn {
                0 => Vec::new(),
                _ => active.iter().map(|&i| caches[i].take()).collect(),
            };
            let generated = complete(&turn_request, prefixes)
                .with_context(|| format!("generating turn {} of the episodes", turn + 1))?;
            let env_start = Instant::now();
            let mut played: Vec<(&mut Live, Generated)> = Vec::with_capacity(generated.len());
            let mut slots: Vec<Option<&mut Live>> = live.iter_mut().map(Some).collect();
            for (g, cache) in generated {
                let episode = match turn {
                    0 => g.prompt_index * request.n + g.sample_index,
                    _ => active[g.prompt_index],
                };
                caches[episode] = cache;
                let slot = slots[episode]
                    .take()
                    .context("two generations for one episode")?;
                played.push((slot, g));
            }
            played.into_par_iter().try_for_each(|(l, g)| {
                self.play_turn(l, g, tokenizer, &turn_request.stop.token_ids)
            })?;
            env_seconds += env_start.elapsed().as_secs_f64();
            for (cache, l) in caches.iter_mut().zip(&live) {
                if l.done {
                    *cache = None;
                }
            }
            turn += 1;
        }
        let (generated, episodes) = live.into_iter().map(|l| self.finish(l)).unzip();
        Ok(EpisodeBatch {
            request,
            generated,
            episodes,
            env_seconds,
        })
    }

    /// `n` episodes of each row, started (an environment that fails to reset gets one more
    /// try in a fresh one) and checked to open alike: a group shares one prompt.
    fn start(
        &self,
        env: &LoadedEnv,
        tokenizer: &Tokenizer,
        rows: &[Row],
        n: usize,
    ) -> anyhow::Result<Vec<Live>> {
        let mut live: Vec<Live> = Vec::with_capacity(rows.len() * n);
        for (p, row) in rows.iter().enumerate() {
            for s in 0..n {
                let episode = self
                    .reset(env, row)
                    .with_context(|| format!("starting an episode of row {:?}", row.id()))?;
                let prompt = tokenizer.encode(episode.prompt(), false)?;
                if s > 0 && prompt != live[live.len() - s].ledger {
                    anyhow::bail!(
                        "row {:?}: the environment opened two episodes of the row differently; a group's episodes must share one prompt",
                        row.id()
                    );
                }
                live.push(Live {
                    episode,
                    prompt_index: p,
                    sample_index: s,
                    prompt_len: prompt.len(),
                    ledger: prompt,
                    logprobs: Vec::new(),
                    outcome: EpisodeOutcome::default(),
                    finish_reason: FinishReason::Environment,
                    done: false,
                });
            }
        }
        Ok(live)
    }

    /// An episode of `row` in an idle environment, or a fresh one.
    fn reset(&self, env: &LoadedEnv, row: &Row) -> anyhow::Result<Episode> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let first = match idle {
            Some(environment) => env.start_episode_in(environment, row),
            None => env.start_episode(row),
        };
        match first {
            Ok(episode) => Ok(episode),
            Err(e) => {
                eprintln!("warning: row {:?}: the environment failed to start an episode ({e}); trying a fresh one", row.id());
                Ok(env.start_episode(row)?)
            }
        }
    }

    /// The request for turn `turn` of the `active` episodes: the rows' prompts, `n` each, on
    /// the first turn (as a single-turn rollout draws them); then one completion of each
    /// active ledger, from streams apart from the first turn's.
    fn turn_request(
        &self,
        request: &GenerationRequest,
        live: &[Live],
        active: &[usize],
        turn: usize,
    ) -> GenerationRequest {
        let left = active
            .iter()
            .map(|&i| self.tokens_left(&live[i]))
            .max()
            .unwrap_or(0);
        let mut turn_request = GenerationRequest {
            max_tokens: request.max_tokens.min(left),
            ..request.clone()
        };
        if turn > 0 {
            turn_request.prompts = active.iter().map(|&i| live[i].ledger.clone()).collect();
            turn_request.n = 1;
            turn_request.prompt_offset = request.prompt_offset * request.n;
            turn_request.seed = turn_seed(request.seed, turn);
        }
        turn_request
    }

    /// Tokens an episode may still add after its prompt.
    fn tokens_left(&self, l: &Live) -> usize {
        let used = l.ledger.len() - l.prompt_len;
        self.max_tokens
            .map_or(usize::MAX, |m| m.saturating_sub(used))
    }

    /// Records one model turn (cut to the token budget) and the environment's answer.
    fn play_turn(
        &self,
        l: &mut Live,
        mut g: Generated,
        tokenizer: &Tokenizer,
        stop_ids: &[u32],
    ) -> anyhow::Result<()> {
        let (content, stop) = split_turn(&mut g, self.tokens_left(l), tokenizer, stop_ids)?;
        l.ledger.extend(&g.tokens);
        l.logprobs.extend(&g.logprobs);
        l.outcome
            .loss_mask
            .extend(std::iter::repeat_n(true, g.tokens.len()));
        let turn_end = l.outcome.loss_mask.len().saturating_sub(1);
        let turn = l
            .episode
            .model_turn(&content, stop.as_deref(), Some(g.tokens));
        l.outcome.final_message = content;
        // The episode's own count: a failed step has no reward, and earns 0.
        let reward = l.episode.rewards().get(l.outcome.turns()).copied();
        l.outcome
            .turn_rewards
            .push((turn_end, reward.unwrap_or(0.0)));
        l.finish_reason = g.finish_reason;
        match turn {
            Ok(Turn::Continue(text)) if self.tokens_left(l) > 0 => {
                let ids = tokenizer.encode(&text, false)?;
                if ids.len() < self.tokens_left(l) {
                    l.ledger.extend(&ids);
                    l.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
                    l.outcome
                        .loss_mask
                        .extend(std::iter::repeat_n(false, ids.len()));
                    return Ok(());
                }
                l.finish_reason = FinishReason::Length;
            }
            Ok(Turn::Continue(_)) => l.finish_reason = FinishReason::Length,
            Ok(Turn::Done) if l.episode.truncated() => l.finish_reason = FinishReason::Length,
            Ok(Turn::Done) => l.finish_reason = FinishReason::Environment,
            Err(EnvError::TemplateNotAppendOnly) => {
                return Err(EnvError::TemplateNotAppendOnly)
                    .context("the chat template cannot continue an episode by appending");
            }
            Err(e) => {
                l.outcome.failure = Some(e.to_string());
                l.finish_reason = FinishReason::Environment;
            }
        }
        l.done = true;
        Ok(())
    }

    /// The episode as a completion of its prompt; its environment goes back to the idle
    /// ones unless it failed.
    fn finish(&self, l: Live) -> (Generated, EpisodeOutcome) {
        let mut outcome = l.outcome;
        outcome.tool_calls = l.episode.tool_calls();
        outcome.tool_failures = l.episode.tool_failures();
        outcome.rewrites_history = l.episode.rewrites_history();
        if outcome.rewrites_history && !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!("note: the chat template writes earlier turns differently as a conversation grows (e.g. it drops past reasoning); episodes continue with its text for each new message, and train on what the model saw");
        }
        if outcome.failure.is_none() {
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(l.episode.into_environment());
            }
        }
        let generated = Generated {
            prompt_index: l.prompt_index,
            sample_index: l.sample_index,
            tokens: l.ledger[l.prompt_len..].to_vec(),
            logprobs: l.logprobs,
            finish_reason: l.finish_reason,
            learner_logprobs: None,
        };
        (generated, outcome)
    }
}

/// Cuts a generated turn to `limit` tokens (it then ended on the length) and splits its text
/// as a chat message sees it: the content, and the stop token's text when one of `stop_ids`
/// ended it (the template's closing, which the model wrote itself).
pub fn split_turn(
    g: &mut Generated,
    limit: usize,
    tokenizer: &Tokenizer,
    stop_ids: &[u32],
) -> anyhow::Result<(String, Option<String>)> {
    if g.tokens.len() > limit {
        g.tokens.truncate(limit);
        g.logprobs.truncate(limit);
        g.finish_reason = FinishReason::Length;
    }
    let stopped = g.finish_reason == FinishReason::Stop
        && g.tokens.last().is_some_and(|t| stop_ids.contains(t));
    let content_len = g.tokens.len() - usize::from(stopped);
    let content = tokenizer.decode(&g.tokens[..content_len], false)?;
    let stop = match stopped {
        true => Some(tokenizer.decode(&g.tokens[content_len..], false)?),
        false => None,
    };
    Ok((content, stop))
}

/// The sampling seed of a later turn: apart from the first turn's and every step's.
fn turn_seed(seed: u64, turn: usize) -> u64 {
    seed ^ ((turn as u64) << 48) ^ 0x2545_f491_4f6c_dd1d
}
