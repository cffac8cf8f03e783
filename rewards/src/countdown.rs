//! The `countdown` reward (as in TinyZero): the completion's last `<answer>...</answer>` must be
//! an expression over exactly the task's `numbers` (each used once), with only `+ - * /` and
//! parentheses, equal to its `target`. An `= target` suffix is allowed. Score 1.0 or 0.0.
//!
//! [`score`] is the verifier itself; `oxrl-envs`' Countdown task scores with the same function,
//! so its self-check and training with this reward agree.

use serde::Deserialize;
use serde_json::Value;

use crate::exact::{Expr, Op, Rational};
use crate::{Completion, Reward, RewardFailure, Score};

/// Options of the `countdown` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountdownConfig {
    /// Task field holding the numbers to use (an array of integers).
    pub numbers_field: String,
    /// Task field holding the target (an integer, or a string holding one).
    pub target_field: String,
}

impl Default for CountdownConfig {
    fn default() -> Self {
        CountdownConfig {
            numbers_field: "numbers".into(),
            target_field: "target".into(),
        }
    }
}

/// The `countdown` reward. A completion without a usable `<answer>` scores 0.0 (as a wrong
/// answer does); only missing or malformed `numbers` / `target` fields are failures
/// ([`RewardFailure::BadReference`]).
#[derive(Debug, Clone, Default)]
pub struct CountdownReward {
    cfg: CountdownConfig,
}

/// The content of the last `<tag>...</tag>` in `text`, trimmed.
fn last_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.rfind(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(text[start..end].trim())
}

/// Scores `completion` for `numbers` and `target`: 1.0 if its last `<answer>` is an expression
/// over exactly those numbers (each once), using only `+ - * /`, equal to `target`; else 0.0.
pub fn score(numbers: &[i64], target: i64, completion: &str) -> f64 {
    let Some(answer) = last_tag(completion, "answer") else {
        return 0.0;
    };
    let lhs = answer.split('=').next().unwrap_or_default();
    let Ok(expr) = Expr::parse(lhs) else {
        return 0.0;
    };
    let mut used: Vec<Rational> = expr.literals();
    let mut given: Vec<Rational> = numbers.iter().map(|&n| Rational::int(n.into())).collect();
    let key = |r: &Rational| (r.numer(), r.denom());
    used.sort_by_key(key);
    given.sort_by_key(key);
    let ops_ok = expr.uses_only(&[Op::Add, Op::Sub, Op::Mul, Op::Div], false);
    let value_ok = expr.eval().is_ok_and(|v| v == Rational::int(target.into()));
    f64::from(u8::from(ops_ok && used == given && value_ok))
}

impl CountdownReward {
    /// A countdown reward with these options.
    pub fn new(cfg: CountdownConfig) -> Self {
        CountdownReward { cfg }
    }

    /// Scores one completion.
    pub fn score_one(&self, s: &Completion) -> Score {
        let bad = |what: &str| RewardFailure::BadReference(what.to_string());
        let numbers: Vec<i64> = s
            .field(&self.cfg.numbers_field)
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_i64).collect())
            .ok_or_else(|| {
                bad(&format!(
                    "field `{}` must be an array of integers",
                    self.cfg.numbers_field
                ))
            })?;
        let target = match s.field(&self.cfg.target_field) {
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(t)) => t.trim().parse().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            bad(&format!(
                "field `{}` must be an integer",
                self.cfg.target_field
            ))
        })?;
        Ok(score(&numbers, target, &s.completion))
    }
}

impl Reward for CountdownReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        completions.iter().map(|s| self.score_one(s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Registry, RewardSpec};

    #[test]
    fn reward_reads_numbers_and_target_and_scores_like_the_verifier() {
        let reward = Registry::default()
            .build(&RewardSpec::new("countdown"))
            .unwrap();
        let completion = |c: &str| {
            Completion::new(c)
                .with("numbers", serde_json::json!([3, 5, 7]))
                .with("target", 22)
        };
        let out = reward.score_batch(&[
            completion("<answer>3 * 5 + 7</answer>"),
            completion("<answer>3 * 5 + 8</answer>"),
            completion("no tag"),
            completion("<answer>(7 + 5 * 3) = 22</answer>").with("target", "22"),
            Completion::new("<answer>1</answer>").with("target", 1),
            completion("<answer>1</answer>").with("numbers", serde_json::json!([1, "x"])),
        ]);
        assert_eq!(out[0], Ok(1.0));
        assert_eq!(out[1], Ok(0.0));
        assert_eq!(
            out[2],
            Ok(0.0),
            "no answer is a wrong answer, not a failure"
        );
        assert_eq!(out[3], Ok(1.0), "string target");
        assert!(matches!(out[4], Err(RewardFailure::BadReference(_))));
        assert!(matches!(out[5], Err(RewardFailure::BadReference(_))));
    }
}
