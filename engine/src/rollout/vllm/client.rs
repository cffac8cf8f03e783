//! One vLLM replica over HTTP, token in and token out: prompts go as token ids, completions
//! come back as token ids (`return_tokens_as_token_ids`) with each sampled token's logprob, so
//! nothing is re-tokenized on the way.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use super::server::SERVED_MODEL;
use crate::rollout::{SamplingParams, StopConditions};
use crate::sample::FinishReason;

/// One completion as a replica returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineCompletion {
    /// The new tokens, the stop token included when one ended it.
    pub tokens: Vec<u32>,
    /// The engine's logprob of each new token (the behaviour logprobs).
    pub logprobs: Vec<f32>,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// What one completions request asks for, besides its prompt.
#[derive(Debug, Clone)]
pub struct CompletionParams<'a> {
    /// Completions of the prompt (a GRPO group: they share the prompt's prefix cache).
    pub n: usize,
    /// Most new tokens per completion.
    pub max_tokens: usize,
    /// Token selection.
    pub sampling: &'a SamplingParams,
    /// Stop token ids and strings.
    pub stop: &'a StopConditions,
    /// The request's seed.
    pub seed: u64,
    /// The model to sample: the served base ([`SERVED_MODEL`]) or a loaded LoRA adapter.
    pub model: &'a str,
}

/// A vLLM server's OpenAI-compatible endpoint.
#[derive(Debug)]
pub struct Replica {
    /// Base URL, `http://host:port`.
    pub url: String,
    http: reqwest::blocking::Client,
    /// Requests in flight (for least-outstanding dispatch).
    outstanding: AtomicUsize,
    /// False from a failed request until the fleet has checked the server again (and
    /// re-synced its weights): no request is sent to it meanwhile.
    healthy: AtomicBool,
}

impl Replica {
    /// A replica at `url`; each request may take up to `timeout`.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        Ok(Replica {
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::blocking::Client::builder()
                .timeout(timeout)
                .build()?,
            outstanding: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        })
    }

    /// Requests in flight now.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    /// Whether requests may go to it.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// Marks it (un)usable.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Whether `GET /health` answers 200 within a few seconds.
    pub fn responds(&self) -> bool {
        self.http
            .get(format!("{}/health", self.url))
            .timeout(Duration::from_secs(5))
            .send()
            .is_ok_and(|r| r.status().is_success())
    }

    /// Counts one more request in flight until the claim is dropped: the dispatcher claims a
    /// replica when it picks it, so prompts picked in a row see each other.
    pub fn claim(&self) -> Claim<'_> {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        Claim(self)
    }

    /// POSTs `body` as JSON; the reply's text, or an error naming the replica and route.
    fn post_text(&self, route: &str, body: &Value) -> anyhow::Result<String> {
        let sent = self
            .http
            .post(format!("{}{route}", self.url))
            .json(body)
            .send();
        let response = sent.with_context(|| format!("vLLM replica {}: POST {route}", self.url))?;
        let status = response.status();
        let text = response.text().unwrap_or_default();
        if !status.is_success() {
            bail!(
                "vLLM replica {}: POST {route} answered {status}: {}",
                self.url,
                clip(&text)
            );
        }
        Ok(text)
    }

    fn post(&self, route: &str, body: &Value) -> anyhow::Result<Value> {
        let text = self.post_text(route, body)?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "vLLM replica {}: POST {route} answered no JSON: {}",
                self.url,
                clip(&text)
            )
        })
    }

    /// Samples `params.n` completions of `prompt`.
    pub fn complete(
        &self,
        prompt: &[u32],
        params: &CompletionParams,
    ) -> anyhow::Result<Vec<EngineCompletion>> {
        let s = params.sampling;
        let body = json!({
            "model": params.model,
            "prompt": prompt,
            "n": params.n,
            "max_tokens": params.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            // vLLM's "off" for top-k is -1 (oxrl's is 0).
            "top_k": if s.top_k == 0 { -1 } else { s.top_k as i64 },
            "min_p": s.min_p,
            "seed": params.seed % (1 << 63),
            "stop_token_ids": params.stop.token_ids,
            "stop": params.stop.strings,
            "logprobs": 0,
            "return_tokens_as_token_ids": true,
            "skip_special_tokens": false,
            "include_stop_str_in_output": true,
        });
        let reply = self.post("/v1/completions", &body)?;
        let what = |detail: &str| anyhow!("vLLM replica {}: completion reply {detail}", self.url);
        let choices = reply["choices"]
            .as_array()
            .ok_or_else(|| what("has no `choices`"))?;
        if choices.len() != params.n {
            bail!(what(&format!(
                "has {} choices, {} were asked for",
                choices.len(),
                params.n
            )));
        }
        let mut out = vec![None; params.n];
        for choice in choices {
            let index = choice["index"]
                .as_u64()
                .filter(|&i| (i as usize) < params.n)
                .ok_or_else(|| what("has a choice without a valid `index`"))?;
            out[index as usize] = Some(parse_choice(choice).map_err(|e| what(&e))?);
        }
        out.into_iter()
            .map(|c| c.ok_or_else(|| what("repeats a choice index")))
            .collect()
    }

    /// The logprob of each token of `tokens` after the first, teacher-forced (vLLM's
    /// `prompt_logprobs`): what the replica's current weights assign to a fixed text.
    pub fn score(&self, tokens: &[u32]) -> anyhow::Result<Vec<f32>> {
        let body = json!({
            "model": SERVED_MODEL,
            "prompt": tokens,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        });
        let reply = self.post("/v1/completions", &body)?;
        let entries = reply["choices"][0]["prompt_logprobs"]
            .as_array()
            .ok_or_else(|| anyhow!("vLLM replica {}: no `prompt_logprobs` in reply", self.url))?;
        // One entry per prompt token: null for the first, else {token_id: {logprob, ..}, ..}.
        tokens
            .iter()
            .zip(entries)
            .skip(1)
            .map(|(id, entry)| {
                entry[id.to_string()]["logprob"]
                    .as_f64()
                    .map(|l| l as f32)
                    .ok_or_else(|| anyhow!("vLLM replica {}: no logprob for token {id}", self.url))
            })
            .collect()
    }

    /// Reloads the weights from `dir` (safetensors with the served model's names).
    pub fn reload_weights(&self, dir: &Path) -> anyhow::Result<()> {
        let body = json!({
            "method": "reload_weights",
            "kwargs": {"weights_path": dir.display().to_string()},
        });
        self.post("/collective_rpc", &body)
            .with_context(|| format!("reloading weights from {}", dir.display()))?;
        self.reset_prefix_cache()
    }

    /// Loads the LoRA adapter in `dir` (PEFT files) under `name`, which requests then name as
    /// their model (`POST /v1/load_lora_adapter`; the server runs with `--enable-lora` and
    /// `VLLM_ALLOW_RUNTIME_LORA_UPDATING`).
    pub fn load_adapter(&self, name: &str, dir: &Path) -> anyhow::Result<()> {
        let body = json!({"lora_name": name, "lora_path": dir.display().to_string()});
        self.post_text("/v1/load_lora_adapter", &body)
            .with_context(|| format!("loading LoRA adapter {name} from {}", dir.display()))?;
        Ok(())
    }

    /// Unloads the LoRA adapter `name` (`POST /v1/unload_lora_adapter`).
    pub fn unload_adapter(&self, name: &str) -> anyhow::Result<()> {
        self.post_text("/v1/unload_lora_adapter", &json!({"lora_name": name}))
            .with_context(|| format!("unloading LoRA adapter {name}"))?;
        Ok(())
    }

    /// Drops the cached keys/values of earlier prompts: computed with the old weights, a
    /// prefix cache would otherwise serve them to every later prompt that shares the prefix
    /// (the chat template's system turn), and the completions would come from a mix of old
    /// and new weights. Nothing runs during a sync, so the reset succeeds or is an error.
    pub fn reset_prefix_cache(&self) -> anyhow::Result<()> {
        let reply = self.post("/reset_prefix_cache", &json!({}))?;
        if reply["success"].as_bool() != Some(true) {
            bail!(
                "vLLM replica {}: /reset_prefix_cache answered {reply}",
                self.url
            );
        }
        Ok(())
    }
}

/// A request in flight on a replica (see [`Replica::claim`]).
#[derive(Debug)]
pub struct Claim<'a>(&'a Replica);

impl std::ops::Deref for Claim<'_> {
    type Target = Replica;
    fn deref(&self) -> &Replica {
        self.0
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One choice of a completions reply: `"token_id:N"` tokens, their logprobs, the finish.
fn parse_choice(choice: &Value) -> Result<EngineCompletion, String> {
    let logprobs = &choice["logprobs"];
    let tokens = logprobs["tokens"]
        .as_array()
        .ok_or("has a choice without `logprobs.tokens`")?
        .iter()
        .map(|t| {
            t.as_str()
                .and_then(|s| s.strip_prefix("token_id:"))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("has a token `{t}` that is not `token_id:N`"))
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let values = logprobs["token_logprobs"]
        .as_array()
        .ok_or("has a choice without `logprobs.token_logprobs`")?
        .iter()
        .map(|v| {
            v.as_f64()
                .map(|l| l as f32)
                .ok_or_else(|| format!("has a logprob `{v}` that is not a number"))
        })
        .collect::<Result<Vec<f32>, _>>()?;
    if values.len() != tokens.len() {
        return Err(format!(
            "has {} tokens but {} logprobs",
            tokens.len(),
            values.len()
        ));
    }
    let finish_reason = match choice["finish_reason"].as_str() {
        Some("length") => FinishReason::Length,
        // `stop_reason` is the stop string that matched, or the stop token's id.
        Some("stop") if choice["stop_reason"].is_string() => FinishReason::StopString,
        Some("stop") => FinishReason::Stop,
        other => return Err(format!("has an unknown finish_reason {other:?}")),
    };
    Ok(EngineCompletion {
        tokens,
        logprobs: values,
        finish_reason,
    })
}

fn clip(s: &str) -> String {
    s.chars().take(400).collect()
}
