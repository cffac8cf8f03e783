//! LLM-as-judge reward: a rubric prompt per completion sent to a chat model, the score parsed
//! from its answer and mapped to [0, 1]. The model is reached through a [`JudgeBackend`]:
//! [`OpenAiBackend`] speaks the OpenAI-compatible `POST {base_url}/chat/completions`
//! protocol (API key from an environment variable, never logged); the engine can plug in a
//! local model by implementing the trait and calling [`JudgeReward::with_backend`].
//! Answers are cached by a SHA-256 of (model, messages), so a repeated completion costs nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::http_client::{HttpPolicy, JsonPoster, Secret};
use crate::{runtime, Completion, Error, Reward, RewardFailure, Score};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// Something that answers chat requests: a remote endpoint or a local model.
pub trait JudgeBackend: Send + Sync {
    /// A name for the cache key (the model id).
    fn model(&self) -> &str;
    /// Answers every conversation of the batch (one reply text or failure each, in order).
    fn chat(&self, batch: &[Vec<ChatMessage>]) -> Vec<Result<String, RewardFailure>>;
}

/// Options of the `judge` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// Endpoint base, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Model id sent in the request.
    pub model: String,
    /// Environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
    /// Optional system message.
    pub system: Option<String>,
    /// Rubric template: `{prompt}`, `{completion}` and any task field as `{name}`.
    pub rubric: String,
    /// Regex whose first group is the score; the last number of the answer when it fails.
    pub score_regex: String,
    /// Score that maps to 0.
    pub min_score: f64,
    /// Score that maps to 1.
    pub max_score: f64,
    /// Per-request timeout, seconds.
    pub timeout_s: f64,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First retry backoff in milliseconds (doubled each retry).
    pub backoff_ms: u64,
    /// Most requests in flight.
    pub concurrency: usize,
    /// Sampling temperature.
    pub temperature: f64,
    /// Token budget of the judge's answer.
    pub max_tokens: u32,
    /// Cache answers by content hash.
    pub cache: bool,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "judge".into(),
            api_key_env: "OXRL_JUDGE_API_KEY".into(),
            system: None,
            rubric: "Rate the response to the question on a scale of 0 to 10.\n\nQuestion:\n{prompt}\n\n\
                     Response:\n{completion}\n\nEnd your answer with a line `Score: N`."
                .into(),
            score_regex: r"(?i)score\s*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)".into(),
            min_score: 0.0,
            max_score: 10.0,
            timeout_s: 60.0,
            max_retries: 3,
            backoff_ms: 500,
            concurrency: 16,
            temperature: 0.0,
            max_tokens: 512,
            cache: true,
        }
    }
}

/// The OpenAI-compatible chat backend.
pub struct OpenAiBackend {
    url: String,
    model: String,
    temperature: f64,
    max_tokens: u32,
    poster: Arc<JsonPoster>,
    rt: tokio::runtime::Runtime,
}

impl OpenAiBackend {
    /// A backend for `cfg.base_url`; the key is read from `cfg.api_key_env` now.
    pub fn new(cfg: &JudgeConfig) -> std::result::Result<Self, String> {
        let policy = HttpPolicy {
            timeout: Duration::from_secs_f64(cfg.timeout_s.max(0.001)),
            max_retries: cfg.max_retries,
            backoff: Duration::from_millis(cfg.backoff_ms),
            concurrency: cfg.concurrency,
        };
        let poster = JsonPoster::new(Secret::from_env(&cfg.api_key_env), policy)?;
        Ok(OpenAiBackend {
            url: format!("{}/chat/completions", cfg.base_url.trim_end_matches('/')),
            model: cfg.model.clone(),
            temperature: cfg.temperature,
            max_tokens: cfg.max_tokens,
            poster: Arc::new(poster),
            rt: runtime::build(2).map_err(|e| e.to_string())?,
        })
    }
}

impl JudgeBackend for OpenAiBackend {
    fn model(&self) -> &str {
        &self.model
    }

    fn chat(&self, batch: &[Vec<ChatMessage>]) -> Vec<Result<String, RewardFailure>> {
        let futures = batch.iter().map(|messages| {
            let body = json!({
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            });
            let poster = self.poster.clone();
            let url = self.url.clone();
            async move {
                let v = poster.post(&url, &body).await?;
                v.pointer("/choices/0/message/content")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        RewardFailure::MalformedReply("no choices[0].message.content".into())
                    })
            }
        });
        let all: Vec<_> = futures.collect();
        runtime::block_on(&self.rt, async move {
            let handles: Vec<_> = all.into_iter().map(tokio::spawn).collect();
            let mut out = Vec::with_capacity(handles.len());
            for h in handles {
                out.push(
                    h.await
                        .unwrap_or_else(|e| Err(RewardFailure::Crash(e.to_string()))),
                );
            }
            out
        })
    }
}

/// The `judge` reward.
pub struct JudgeReward {
    cfg: JudgeConfig,
    score_re: Regex,
    backend: Arc<dyn JudgeBackend>,
    cache: Mutex<HashMap<[u8; 32], String>>,
}

/// Fills `{name}` placeholders from the completion; a missing field is a bad reference.
pub fn render(template: &str, s: &Completion) -> Result<String, RewardFailure> {
    static CELL: OnceLock<Regex> = OnceLock::new();
    // Constant pattern, covered by the judge tests.
    let re = CELL.get_or_init(|| Regex::new(r"\{([A-Za-z_][A-Za-z0-9_]*)\}").expect("valid regex"));
    let mut missing = None;
    let out = re.replace_all(template, |c: &regex::Captures| {
        let key = &c[1];
        match key {
            "prompt" => s.prompt.clone(),
            "completion" => s.completion.clone(),
            _ => s.field_text(key).unwrap_or_else(|| {
                missing = Some(key.to_string());
                String::new()
            }),
        }
    });
    match missing {
        Some(k) => Err(RewardFailure::BadReference(format!(
            "rubric needs field `{k}`"
        ))),
        None => Ok(out.into_owned()),
    }
}

impl JudgeReward {
    /// A judge over the OpenAI-compatible endpoint of `cfg`.
    pub fn new(name: &str, cfg: JudgeConfig) -> crate::Result<Self> {
        let backend = OpenAiBackend::new(&cfg).map_err(|m| Error::Config {
            name: name.into(),
            message: m,
        })?;
        Self::with_backend(name, cfg, Arc::new(backend))
    }

    /// A judge over any backend (e.g. a local model provided by the engine).
    pub fn with_backend(
        name: &str,
        cfg: JudgeConfig,
        backend: Arc<dyn JudgeBackend>,
    ) -> crate::Result<Self> {
        let bad = |m: String| Error::Config {
            name: name.into(),
            message: m,
        };
        let score_re =
            Regex::new(&cfg.score_regex).map_err(|e| bad(format!("score_regex: {e}")))?;
        if cfg.max_score <= cfg.min_score {
            return Err(bad("max_score must exceed min_score".into()));
        }
        Ok(JudgeReward {
            cfg,
            score_re,
            backend,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The conversation sent for a completion.
    pub fn messages(&self, s: &Completion) -> Result<Vec<ChatMessage>, RewardFailure> {
        let mut m = Vec::new();
        if let Some(sys) = &self.cfg.system {
            m.push(ChatMessage {
                role: "system".into(),
                content: render(sys, s)?,
            });
        }
        m.push(ChatMessage {
            role: "user".into(),
            content: render(&self.cfg.rubric, s)?,
        });
        Ok(m)
    }

    /// Parses and normalizes a score from the judge's answer.
    pub fn parse_score(&self, answer: &str) -> Score {
        let raw = self
            .score_re
            .captures_iter(answer)
            .last()
            .and_then(|c| c.get(1))
            .and_then(|m| m.as_str().parse::<f64>().ok())
            .or_else(|| {
                crate::math::extract::last_number(answer)
                    .and_then(|n| n.replace(',', "").parse().ok())
            })
            .ok_or_else(|| {
                RewardFailure::Parse(format!("no score in judge answer `{}`", clip(answer)))
            })?;
        if raw < self.cfg.min_score || raw > self.cfg.max_score {
            return Err(RewardFailure::Parse(format!(
                "judge score {raw} outside [{}, {}]",
                self.cfg.min_score, self.cfg.max_score
            )));
        }
        Ok((raw - self.cfg.min_score) / (self.cfg.max_score - self.cfg.min_score))
    }

    fn key(&self, messages: &[ChatMessage]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.backend.model().as_bytes());
        for m in messages {
            h.update([0u8]);
            h.update(m.role.as_bytes());
            h.update([0u8]);
            h.update(m.content.as_bytes());
        }
        h.finalize().into()
    }
}

fn clip(s: &str) -> String {
    s.chars().take(120).collect()
}

/// A conversation and its cache key.
type Keyed = (Vec<ChatMessage>, [u8; 32]);

impl Reward for JudgeReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        let prepared: Vec<Result<Keyed, RewardFailure>> = completions
            .iter()
            .map(|s| {
                self.messages(s).map(|m| {
                    let k = self.key(&m);
                    (m, k)
                })
            })
            .collect();
        let cached: Vec<Option<String>> = {
            let cache = self.cache.lock().map(|c| c.clone()).unwrap_or_default();
            prepared
                .iter()
                .map(|p| {
                    p.as_ref()
                        .ok()
                        .filter(|_| self.cfg.cache)
                        .and_then(|(_, k)| cache.get(k).cloned())
                })
                .collect()
        };
        // Ask the backend once per distinct uncached conversation.
        let mut todo: Vec<(Vec<ChatMessage>, [u8; 32])> = Vec::new();
        for (p, c) in prepared.iter().zip(&cached) {
            if let (Ok((m, k)), None) = (p, c) {
                if !todo.iter().any(|(_, tk)| tk == k) {
                    todo.push((m.clone(), *k));
                }
            }
        }
        let convs: Vec<Vec<ChatMessage>> = todo.iter().map(|(m, _)| m.clone()).collect();
        let answers = if convs.is_empty() {
            Vec::new()
        } else {
            self.backend.chat(&convs)
        };
        let mut fresh: HashMap<[u8; 32], Result<String, RewardFailure>> = HashMap::new();
        for ((_, k), a) in todo.iter().zip(answers) {
            fresh.insert(*k, a);
        }
        if self.cfg.cache {
            if let Ok(mut cache) = self.cache.lock() {
                for (k, a) in &fresh {
                    if let Ok(text) = a {
                        cache.insert(*k, text.clone());
                    }
                }
            }
        }
        prepared
            .into_iter()
            .zip(cached)
            .map(|(p, c)| {
                let (_, k) = p?;
                let answer = match c {
                    Some(text) => text,
                    None => fresh.get(&k).cloned().unwrap_or_else(|| {
                        Err(RewardFailure::Crash(
                            "backend returned too few answers".into(),
                        ))
                    })?,
                };
                self.parse_score(&answer)
            })
            .collect()
    }
}
