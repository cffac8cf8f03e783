//! JSON-over-HTTP POST with a timeout, retries with exponential backoff, and a concurrency
//! limit, shared by the judge and the HTTP custom reward. Secrets (API keys) are held in
//! [`Secret`], whose `Debug` never shows them, and are never put in error messages.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::RewardFailure;

/// A secret string (API key) that does not print.
#[derive(Clone, Default)]
pub struct Secret(Option<String>);

impl Secret {
    /// Reads the secret from an environment variable (absent or empty = none).
    pub fn from_env(var: &str) -> Secret {
        Secret(std::env::var(var).ok().filter(|v| !v.is_empty()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Secret(<redacted>)"
        } else {
            "Secret(None)"
        })
    }
}

/// Retry policy and limits.
#[derive(Debug, Clone)]
pub struct HttpPolicy {
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff; doubled after each retry.
    pub backoff: Duration,
    /// Most requests in flight.
    pub concurrency: usize,
}

/// A client for one endpoint.
pub(crate) struct JsonPoster {
    client: reqwest::Client,
    key: Secret,
    policy: HttpPolicy,
    permits: Arc<Semaphore>,
}

fn clip(s: &str) -> String {
    s.chars().take(200).collect()
}

impl JsonPoster {
    pub(crate) fn new(key: Secret, policy: HttpPolicy) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let permits = Arc::new(Semaphore::new(policy.concurrency.max(1)));
        Ok(JsonPoster {
            client,
            key,
            policy,
            permits,
        })
    }

    /// POSTs `body` to `url`, retrying transport errors, timeouts, 429 and 5xx.
    pub(crate) async fn post(&self, url: &str, body: &Value) -> Result<Value, RewardFailure> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| RewardFailure::Crash(e.to_string()))?;
        let mut backoff = self.policy.backoff;
        let mut attempt = 0;
        loop {
            let mut req = self.client.post(url).json(body);
            if let Some(k) = &self.key.0 {
                req = req.bearer_auth(k);
            }
            let outcome = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    if status.is_success() {
                        return serde_json::from_str(&text).map_err(|e| {
                            RewardFailure::MalformedReply(format!("{e}: {}", clip(&text)))
                        });
                    }
                    let f = RewardFailure::Transport(format!(
                        "HTTP {}: {}",
                        status.as_u16(),
                        clip(&text)
                    ));
                    if status.as_u16() == 429 || status.is_server_error() {
                        Err(f)
                    } else {
                        return Err(f); // 4xx other than 429: retrying will not help
                    }
                }
                // `without_url`: errors must not echo query strings that could carry secrets.
                Err(e) if e.is_timeout() => Err(RewardFailure::Timeout(self.policy.timeout)),
                Err(e) => Err(RewardFailure::Transport(e.without_url().to_string())),
            };
            if attempt >= self.policy.max_retries {
                return outcome;
            }
            attempt += 1;
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }
}
