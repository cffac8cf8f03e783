//! Number guessing (multi-turn): the environment picks a secret integer in `[low, high]`; the
//! model guesses with `<guess>N</guess>` (a bare number is accepted too) and hears `higher`,
//! `lower` or `correct`. Solving ends the episode with reward `min(1, optimal / guesses)`,
//! where `optimal = ceil(log2(high - low + 2))` is binary search's worst case, so solving as
//! fast as binary search scores 1 and slower play scores less; unsolved episodes score 0.
//! Turns that contain no guess count as guesses (and get a format reminder).
//!
//! Rows: `prompt`, `secret`, `low`, `high`.

use serde_json::json;

use super::{util, util::extract_tag, RewardKind, Task};
use crate::chat_template::Message;
use crate::episode::{Environment, StepResult};
use crate::error::{EnvError, Result};
use crate::rng::Rng;
use crate::row::Row;

/// The guessing game.
#[derive(Debug, Clone, Copy)]
pub struct Guessing;

/// Guesses binary search needs in the worst case for `[low, high]`.
pub fn optimal_guesses(low: i64, high: i64) -> usize {
    let n = (high - low + 1).max(1) as u64;
    (u64::BITS - n.leading_zeros()) as usize // = ceil(log2(n + 1))
}

impl Task for Guessing {
    fn name(&self) -> &'static str {
        "guessing"
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Environment
    }
    fn required_fields(&self) -> &'static [&'static str] {
        &["prompt", "secret", "low", "high"]
    }
    fn instruction(&self) -> &'static str {
        "Reply with one guess per turn as <guess>N</guess>. I answer higher, lower or correct."
    }
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        Ok((0..n)
            .map(|i| {
                let mut rng = Rng::derive(seed, i as u64);
                let high = *rng.pick(&[10, 20, 50, 100]);
                let secret = rng.range(1, high);
                Row::from_pairs(
                    format!("guessing-{seed}-{i}"),
                    [
                        (
                            "prompt",
                            json!(format!(
                                "I am thinking of an integer between 1 and {high}. Find it."
                            )),
                        ),
                        ("secret", json!(secret)),
                        ("low", json!(1)),
                        ("high", json!(high)),
                    ],
                )
            })
            .collect())
    }
    /// Binary search's guesses for this row's secret.
    fn reference(&self, row: &Row) -> Result<Vec<String>> {
        let secret = row.require_i64(self.name(), "secret")?;
        let (mut lo, mut hi) = (
            row.require_i64(self.name(), "low")?,
            row.require_i64(self.name(), "high")?,
        );
        let mut turns = Vec::new();
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            turns.push(format!("<guess>{mid}</guess>"));
            match mid.cmp(&secret) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid - 1,
                std::cmp::Ordering::Equal => return Ok(turns),
            }
        }
        Err(row.bad(self.name(), "secret outside [low, high]"))
    }
    /// A single completion scores only if it guesses right at once.
    fn score(&self, row: &Row, completion: &str) -> Result<f64> {
        super::score_first_turn(GuessingEnv::default(), row, completion)
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(GuessingEnv::default()))
    }
}

/// One guessing episode.
#[derive(Debug, Default)]
pub struct GuessingEnv {
    game: Option<(i64, usize)>,
    guesses: usize,
}

fn parse_guess(action: &str) -> Option<i64> {
    let text = extract_tag(action, "guess").unwrap_or(action);
    match util::integers(text).as_slice() {
        [n] => Some(*n),
        _ => None,
    }
}

impl Environment for GuessingEnv {
    fn reset(&mut self, row: &Row) -> Result<Vec<Message>> {
        let name = "guessing";
        let (secret, low, high) = (
            row.require_i64(name, "secret")?,
            row.require_i64(name, "low")?,
            row.require_i64(name, "high")?,
        );
        if !(low..=high).contains(&secret) {
            return Err(row.bad(name, "secret outside [low, high]"));
        }
        self.game = Some((secret, optimal_guesses(low, high)));
        self.guesses = 0;
        Guessing.opening(row)
    }

    fn step(&mut self, action: &str) -> Result<StepResult> {
        let (secret, optimal) = self
            .game
            .ok_or_else(|| EnvError::Episode("step before reset".into()))?;
        self.guesses += 1;
        let reply = match parse_guess(action) {
            Some(g) if g == secret => {
                return Ok(StepResult {
                    observation: vec![Message::new("user", "correct")],
                    reward: (optimal as f64 / self.guesses as f64).min(1.0),
                    done: true,
                    ..StepResult::default()
                })
            }
            Some(g) if g < secret => "higher",
            Some(_) => "lower",
            None => "Please reply with exactly one guess as <guess>N</guess>.",
        };
        Ok(StepResult::reply(reply))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimal_is_binary_search_worst_case() {
        assert_eq!(optimal_guesses(1, 1), 1);
        assert_eq!(optimal_guesses(1, 3), 2);
        assert_eq!(optimal_guesses(1, 7), 3);
        assert_eq!(optimal_guesses(1, 8), 4);
        assert_eq!(optimal_guesses(1, 100), 7);
    }

    #[test]
    fn feedback_and_decaying_reward() {
        let row = Row::from_pairs(
            "g",
            [
                ("prompt", json!("p")),
                ("secret", json!(6)),
                ("low", json!(1)),
                ("high", json!(7)),
            ],
        );
        let mut env = GuessingEnv::default();
        env.reset(&row).unwrap();
        let say = |env: &mut GuessingEnv, a: &str| env.step(a).unwrap();
        assert_eq!(
            say(&mut env, "<guess>2</guess>").observation[0].content,
            "higher"
        );
        assert_eq!(say(&mut env, "9").observation[0].content, "lower");
        assert!(say(&mut env, "two or three").observation[0]
            .content
            .starts_with("Please"));
        let last = say(&mut env, "I say <guess>6</guess>");
        assert!(last.done);
        assert_eq!(last.reward, 3.0 / 4.0, "4 guesses where 3 suffice");
    }

    #[test]
    fn reference_binary_search_scores_one_on_every_item() {
        for row in Guessing.generate(300, 8).unwrap() {
            let turns = Guessing.reference(&row).unwrap();
            let mut env = GuessingEnv::default();
            env.reset(&row).unwrap();
            let results: Vec<StepResult> = turns.iter().map(|t| env.step(t).unwrap()).collect();
            let (last, before) = results.split_last().unwrap();
            assert!(before.iter().all(|r| !r.done && r.reward == 0.0));
            assert!(last.done && last.reward == 1.0, "{row:?}");
        }
    }
}
