//! Format reward: tag structure (`<think>…</think><answer>…</answer>`, as in DeepSeek-R1 /
//! TRL's format reward), a user regex, and DAPO's soft overlong penalty
//! (Yu et al. 2025: 0 up to `overlong_max - overlong_buffer`, then falling linearly to -1
//! at `overlong_max`, -1 beyond).
//!
//! Score = 1 when every structural check passes (0 otherwise; 0 when none is configured),
//! plus the overlong penalty when `overlong_max` is set.

use regex::Regex;
use serde::Deserialize;

use crate::{Completion, Error, Reward, Score};

/// Options of the `format` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FormatConfig {
    /// Tags that must appear in this order, each exactly once, with only whitespace around
    /// and between them: `["think", "answer"]`.
    pub tags: Vec<String>,
    /// A regex the completion must match (`(?s)` is implied: `.` matches newlines).
    pub pattern: Option<String>,
    /// Length at which the overlong penalty reaches -1 (no penalty when absent).
    pub overlong_max: Option<usize>,
    /// Width of the linear penalty zone before `overlong_max`.
    pub overlong_buffer: usize,
    /// Task field with the completion length in tokens; characters are counted without it.
    pub length_field: String,
}

impl Default for FormatConfig {
    fn default() -> Self {
        FormatConfig {
            tags: Vec::new(),
            pattern: None,
            overlong_max: None,
            overlong_buffer: 0,
            length_field: "completion_tokens".into(),
        }
    }
}

/// The `format` reward.
#[derive(Debug, Clone)]
pub struct FormatReward {
    cfg: FormatConfig,
    checks: Vec<Regex>,
}

/// Whether `text` is exactly `<t1>..</t1> <t2>..</t2> ...` (whitespace around and between),
/// each tag once, no tag nested in another's content.
pub fn tags_match(text: &str, tags: &[String]) -> bool {
    if tags.is_empty() {
        return true;
    }
    let mut rest = text.trim();
    for t in tags {
        let (open, close) = (format!("<{t}>"), format!("</{t}>"));
        if text.matches(&open).count() != 1 || text.matches(&close).count() != 1 {
            return false;
        }
        let Some(after) = rest.strip_prefix(&open) else {
            return false;
        };
        let Some(end) = after.find(&close) else {
            return false;
        };
        let content = &after[..end];
        if tags
            .iter()
            .any(|o| content.contains(&format!("<{o}>")) || content.contains(&format!("</{o}>")))
        {
            return false;
        }
        rest = after[end + close.len()..].trim_start();
    }
    rest.is_empty()
}

/// DAPO soft overlong penalty for a completion of `len`.
pub fn overlong_penalty(len: usize, max: usize, buffer: usize) -> f64 {
    let start = max.saturating_sub(buffer);
    if len <= start {
        0.0
    } else if len >= max || buffer == 0 {
        -1.0
    } else {
        (start as f64 - len as f64) / buffer as f64
    }
}

impl FormatReward {
    /// Builds the reward; fails on an invalid regex or tag.
    pub fn new(name: &str, cfg: FormatConfig) -> crate::Result<Self> {
        let bad = |m: String| Error::Config {
            name: name.to_string(),
            message: m,
        };
        let mut checks = Vec::new();
        for t in &cfg.tags {
            if t.is_empty()
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(format!("bad tag name `{t}`")));
            }
        }
        if let Some(p) = &cfg.pattern {
            checks.push(Regex::new(&format!("(?s){p}")).map_err(|e| bad(format!("pattern: {e}")))?);
        }
        if cfg.overlong_max.is_some_and(|m| cfg.overlong_buffer > m) {
            return Err(bad("overlong_buffer exceeds overlong_max".into()));
        }
        Ok(FormatReward { cfg, checks })
    }

    /// Scores one completion.
    pub fn score_one(&self, s: &Completion) -> f64 {
        let has_checks = !self.checks.is_empty() || !self.cfg.tags.is_empty();
        let structure = has_checks
            && tags_match(&s.completion, &self.cfg.tags)
            && self.checks.iter().all(|r| r.is_match(&s.completion));
        let mut score = if structure { 1.0 } else { 0.0 };
        if let Some(max) = self.cfg.overlong_max {
            let len = s
                .field(&self.cfg.length_field)
                .and_then(|v| v.as_u64())
                .map(|n| n as usize)
                .unwrap_or_else(|| s.completion.chars().count());
            score += overlong_penalty(len, max, self.cfg.overlong_buffer);
        }
        score
    }
}

impl Reward for FormatReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        completions.iter().map(|s| Ok(self.score_one(s))).collect()
    }
}
