//! Countdown (as in TinyZero): combine the given numbers with `+ - * /` to reach the target,
//! using each number exactly once. Rows: `numbers` (array of integers), `target` (integer),
//! `solution` (one expression that works). The answer goes in `<answer>...</answer>`; an
//! `= target` suffix is allowed. Score: 1.0 for a correct equation, else 0.0. Trained with the
//! `oxrl-rewards` `countdown` reward ([`RewardKind::Countdown`]), which uses the same verifier.

use serde_json::json;

use super::{RewardKind, SingleTurn, Task};
use crate::chat_template::Message;
use crate::episode::Environment;
use crate::error::Result;
use crate::rng::Rng;
use crate::row::Row;

/// The Countdown task.
#[derive(Debug, Clone, Copy)]
pub struct Countdown;

/// Scores `completion` for `numbers` and `target`: 1.0 if its last `<answer>` is an expression
/// over exactly those numbers (each once), using only `+ - * /`, equal to `target`. This is the
/// `oxrl-rewards` `countdown` reward's verifier ([`oxrl_rewards::countdown::score`]), so the
/// task's self-check and training agree.
pub use oxrl_rewards::countdown::score;

/// Builds a random expression over `numbers` with integer intermediate results; returns the
/// expression text and its value.
fn random_solution(rng: &mut Rng, numbers: &[i64]) -> (String, i64) {
    let mut pool: Vec<(String, i64)> = numbers.iter().map(|n| (n.to_string(), *n)).collect();
    while pool.len() > 1 {
        let (a, b) = take_pair(rng, &mut pool);
        let (op, value) = match rng.below(4) {
            0 => ('+', a.1 + b.1),
            1 if a.1 >= b.1 => ('-', a.1 - b.1),
            1 => ('-', b.1 - a.1),
            2 if a.1 * b.1 <= 2000 => ('*', a.1 * b.1),
            3 if b.1 != 0 && a.1 % b.1 == 0 => ('/', a.1 / b.1),
            _ => ('+', a.1 + b.1),
        };
        // Subtraction puts the larger operand first so intermediates stay non-negative.
        let (l, r) = if op == '-' && b.1 > a.1 {
            (b, a)
        } else {
            (a, b)
        };
        pool.push((format!("({} {op} {})", l.0, r.0), value));
    }
    let (text, value) = pool.pop().unwrap_or_default();
    let text = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(&text)
        .to_owned();
    (text, value)
}

fn take_pair(rng: &mut Rng, pool: &mut Vec<(String, i64)>) -> ((String, i64), (String, i64)) {
    let a = pool.swap_remove(rng.below(pool.len() as u64) as usize);
    let b = pool.swap_remove(rng.below(pool.len() as u64) as usize);
    (a, b)
}

fn item(rng: &mut Rng) -> (Vec<i64>, i64, String) {
    loop {
        let count = rng.range(3, 4) as usize;
        let numbers: Vec<i64> = (0..count).map(|_| rng.range(1, 50)).collect();
        let (solution, target) = random_solution(rng, &numbers);
        // Targets like TinyZero's: positive and not one of the inputs (no trivial items).
        if (10..=500).contains(&target) && !numbers.contains(&target) {
            return (numbers, target, solution);
        }
    }
}

/// The question for `numbers` and `target` (generated rows store it as `prompt`).
fn question(numbers: &[i64], target: i64) -> String {
    format!("Using the numbers {numbers:?}, create an equation that equals {target}.")
}

/// The row's `numbers`.
fn numbers(row: &Row) -> Result<Vec<i64>> {
    let values = row.get("numbers").and_then(|v| v.as_array());
    let numbers: Option<Vec<i64>> = values.and_then(|a| a.iter().map(|n| n.as_i64()).collect());
    numbers.ok_or_else(|| row.bad("countdown", "`numbers` must be an array of integers"))
}

impl Task for Countdown {
    fn name(&self) -> &'static str {
        "countdown"
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Countdown
    }
    /// `prompt` is optional: public Countdown data has only the numbers and the target.
    fn required_fields(&self) -> &'static [&'static str] {
        &["numbers", "target"]
    }
    fn instruction(&self) -> &'static str {
        "Use each number exactly once, with + - * / and parentheses. Show your work, then give the equation in <answer> </answer> tags, e.g. <answer>(1 + 2) / 3</answer>."
    }
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        Ok((0..n)
            .map(|i| {
                let (numbers, target, solution) = item(&mut Rng::derive(seed, i as u64));
                Row::from_pairs(
                    format!("countdown-{seed}-{i}"),
                    [
                        ("prompt", json!(question(&numbers, target))),
                        ("numbers", json!(numbers)),
                        ("target", json!(target)),
                        ("solution", json!(solution)),
                    ],
                )
            })
            .collect())
    }
    fn opening(&self, row: &Row) -> Result<Vec<Message>> {
        let text = match row.get("prompt").and_then(|p| p.as_str()) {
            Some(prompt) => prompt.to_owned(),
            None => question(&numbers(row)?, row.require_i64(self.name(), "target")?),
        };
        Ok(vec![Message::new("user", text)])
    }
    fn reference(&self, row: &Row) -> Result<Vec<String>> {
        let solution = row.require_str(self.name(), "solution")?;
        Ok(vec![format!("<answer>{solution}</answer>")])
    }
    fn score(&self, row: &Row, completion: &str) -> Result<f64> {
        let target = row.require_i64(self.name(), "target")?;
        Ok(score(&numbers(row)?, target, completion))
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(SingleTurn::new(*self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_accepts_correct_and_rejects_cheats() {
        let n = [3, 5, 7];
        assert_eq!(score(&n, 22, "<answer>3 * 5 + 7</answer>"), 1.0);
        assert_eq!(
            score(&n, 22, "think... <answer>(7 + 5 * 3) = 22</answer>"),
            1.0
        );
        assert_eq!(
            score(&n, 22, "<answer>3 * 5 + 8</answer>"),
            0.0,
            "wrong number"
        );
        assert_eq!(
            score(&n, 15, "<answer>3 * 5</answer>"),
            0.0,
            "number unused"
        );
        assert_eq!(
            score(&n, 29, "<answer>3 * 5 + 7 + 7</answer>"),
            0.0,
            "number reused"
        );
        assert_eq!(
            score(&n, 22, "<answer>3 * 5 + 6</answer>"),
            0.0,
            "wrong value"
        );
        assert_eq!(score(&n, 22, "3 * 5 + 7"), 0.0, "no answer tag");
        assert_eq!(
            score(&[2, 3, 1], 9, "<answer>3 ^ 2 * 1</answer>"),
            0.0,
            "power not allowed"
        );
        assert_eq!(score(&[2, 6, 4], 1, "<answer>(6 - 2) / 4</answer>"), 1.0);
        assert_eq!(score(&[2, 6, 4], 1, "<answer>6 / 0</answer>"), 0.0);
    }

    #[test]
    fn rows_without_prompt_get_a_written_question() {
        let row = Row::from_pairs("c", [("numbers", json!([3, 5, 7])), ("target", json!(22))]);
        let opening = Countdown.opening(&row).unwrap();
        assert_eq!(
            opening[0].content,
            "Using the numbers [3, 5, 7], create an equation that equals 22."
        );
        assert_eq!(
            Countdown.score(&row, "<answer>3 * 5 + 7</answer>").unwrap(),
            1.0
        );
        let bad = Row::from_pairs("c", [("numbers", json!([3, "x"])), ("target", json!(22))]);
        assert!(Countdown.score(&bad, "<answer>3</answer>").is_err());
    }

    #[test]
    fn the_countdown_reward_scores_rows_like_the_task() {
        let reward = oxrl_rewards::Registry::default()
            .build(&oxrl_rewards::RewardSpec::new(RewardKind::Countdown.name()))
            .unwrap();
        let rows = Countdown.generate(50, 7).unwrap();
        for row in &rows {
            let reference = &Countdown.reference(row).unwrap()[0];
            for completion in [reference.as_str(), "<answer>1 + 1</answer>", "no answer"] {
                let scored: oxrl_rewards::Completion =
                    serde_json::from_value(row.with_completion(completion)).unwrap();
                assert_eq!(
                    reward.score_batch(&[scored]),
                    vec![Ok(Countdown.score(row, completion).unwrap())],
                    "{row:?} {completion}"
                );
            }
        }
    }

    #[test]
    fn every_generated_item_is_solved_by_its_reference() {
        let rows = Countdown.generate(300, 4).unwrap();
        for row in &rows {
            let reference = Countdown.reference(row).unwrap();
            assert_eq!(Countdown.score(row, &reference[0]).unwrap(), 1.0, "{row:?}");
            let target = row.require_i64("t", "target").unwrap();
            assert!((10..=500).contains(&target));
        }
        assert_eq!(rows, Countdown.generate(300, 4).unwrap());
    }
}
