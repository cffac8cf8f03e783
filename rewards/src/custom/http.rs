//! A reward computed by an HTTP endpoint: completions are POSTed in chunks as
//! `{"samples": [{"prompt", "completion", ...fields}, ...]}` and the reply must be
//! `{"scores": [item, ...]}`, one item per completion (see [`super::parse_reply`]). Timeouts,
//! retries with backoff and a concurrency limit as for the judge.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::http_client::{HttpPolicy, JsonPoster, Secret};
use crate::{runtime, Completion, Error, Reward, RewardFailure, Score};

/// Options of the `http` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Endpoint URL.
    pub url: String,
    /// Environment variable with a bearer token (optional).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Completions per request.
    #[serde(default = "default_chunk")]
    pub batch_size: usize,
    /// Per-request timeout, seconds.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Retries after the first attempt.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First retry backoff, milliseconds.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Requests in flight.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

fn default_chunk() -> usize {
    64
}
fn default_timeout() -> f64 {
    60.0
}
fn default_retries() -> u32 {
    2
}
fn default_backoff() -> u64 {
    200
}
fn default_concurrency() -> usize {
    4
}

/// The `http` reward.
pub struct HttpReward {
    cfg: HttpConfig,
    poster: Arc<JsonPoster>,
    rt: tokio::runtime::Runtime,
}

impl HttpReward {
    /// A reward posting to `cfg.url`.
    pub fn new(name: &str, cfg: HttpConfig) -> crate::Result<Self> {
        let bad = |m: String| Error::Config {
            name: name.into(),
            message: m,
        };
        let key = cfg
            .api_key_env
            .as_deref()
            .map(Secret::from_env)
            .unwrap_or_default();
        let policy = HttpPolicy {
            timeout: Duration::from_secs_f64(cfg.timeout_s.max(0.001)),
            max_retries: cfg.max_retries,
            backoff: Duration::from_millis(cfg.backoff_ms),
            concurrency: cfg.concurrency,
        };
        let poster = Arc::new(JsonPoster::new(key, policy).map_err(bad)?);
        let rt = runtime::build(2).map_err(|e| bad(e.to_string()))?;
        Ok(HttpReward { cfg, poster, rt })
    }
}

impl Reward for HttpReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        let chunks: Vec<Vec<Completion>> = completions
            .chunks(self.cfg.batch_size.max(1))
            .map(<[Completion]>::to_vec)
            .collect();
        let poster = self.poster.clone();
        let url = self.cfg.url.clone();
        let results = runtime::block_on(&self.rt, async move {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let poster = poster.clone();
                    let url = url.clone();
                    tokio::spawn(async move {
                        let n = chunk.len();
                        let reply = poster.post(&url, &json!({ "samples": chunk })).await;
                        match reply {
                            Err(f) => vec![Err(f); n],
                            Ok(v) => match v.get("scores").and_then(Value::as_array) {
                                Some(items) if items.len() == n => {
                                    items.iter().map(super::parse_reply).collect()
                                }
                                Some(items) => vec![
                                    Err(RewardFailure::MalformedReply(format!(
                                        "{} scores for {n} samples",
                                        items.len()
                                    )));
                                    n
                                ],
                                None => vec![
                                    Err(RewardFailure::MalformedReply(
                                        "no `scores` list".into()
                                    ));
                                    n
                                ],
                            },
                        }
                    })
                })
                .collect();
            let mut out = Vec::new();
            for h in handles {
                match h.await {
                    Ok(v) => out.extend(v),
                    Err(e) => out.push(Err(RewardFailure::Crash(e.to_string()))),
                }
            }
            out
        });
        if results.len() == completions.len() {
            results
        } else {
            vec![Err(RewardFailure::Crash("lost replies".into())); completions.len()]
        }
    }
}
