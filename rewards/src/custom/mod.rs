//! Custom rewards in any language.
//! 1. Rust: implement [`crate::Reward`] (or wrap a per-completion function in [`FnReward`]) and
//!    [`crate::Registry::register`] it by name.
//! 2. [`command::CommandReward`]: an external program started once and fed JSON lines.
//! 3. [`http::HttpReward`]: an HTTP endpoint scoring batches.
//!
//! Both external forms read the same reply for each completion: a bare number, `{"score": n}`,
//! or `{"error": "why"}`; the command's replies also echo the request's `request_id`.

pub mod command;
pub mod http;

use rayon::prelude::*;
use serde_json::Value;

use crate::{Completion, Reward, RewardFailure, Score};

/// A reward from a per-completion function, scored in parallel with rayon.
/// Like every [`Reward`], it reports under the name it is added with
/// ([`crate::WeightedRewards::push`], or the `[[rewards]]` name of a registered builder).
pub struct FnReward<F> {
    f: F,
}

impl<F> FnReward<F>
where
    F: Fn(&Completion) -> Score + Send + Sync,
{
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        FnReward { f }
    }
}

impl<F> Reward for FnReward<F>
where
    F: Fn(&Completion) -> Score + Send + Sync,
{
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        completions.par_iter().map(|s| (self.f)(s)).collect()
    }
}

/// Interprets one reply item: a number, `{"score": n}`, or `{"error": "..."}`.
pub fn parse_reply(v: &Value) -> Score {
    let clip = |v: &Value| v.to_string().chars().take(200).collect::<String>();
    match v {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| RewardFailure::MalformedReply(n.to_string())),
        Value::Object(o) => {
            if let Some(e) = o.get("error").filter(|e| !e.is_null()) {
                let msg = e
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string());
                return Err(RewardFailure::Crash(format!("scorer reported: {msg}")));
            }
            match o.get("score").and_then(Value::as_f64) {
                Some(s) if s.is_finite() => Ok(s),
                _ => Err(RewardFailure::MalformedReply(format!(
                    "no numeric `score` in {}",
                    clip(v)
                ))),
            }
        }
        other => Err(RewardFailure::MalformedReply(format!(
            "expected a number or object, got {}",
            clip(other)
        ))),
    }
}
