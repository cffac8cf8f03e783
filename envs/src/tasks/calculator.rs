//! Calculator tool use (multi-turn). The model works on a word problem with large numbers and
//! may call a calculator any number of times before answering.
//!
//! Tool-call format (one per turn): `<calc>EXPRESSION</calc>`, where EXPRESSION uses numbers,
//! `+ - * /`, `^` and parentheses. The environment answers in a user message
//! `<result>VALUE</result>` (or `<error>REASON</error>`). The final answer is
//! `<answer>NUMBER</answer>`; it ends the episode with reward 1.0 if it equals the row's answer,
//! else 0.0. Turns without a call or an answer get a reminder of the format. Tool turns earn 0.
//!
//! Rows: `prompt`, `answer` (GSM8K-style, `#### N`), `expression` (a reference calculation).

use serde_json::json;

use super::{math::extract_answer, util::extract_tag, RewardKind, Task};
use crate::chat_template::Message;
use crate::episode::{Environment, StepResult};
use crate::error::{EnvError, Result};
use crate::expr::{self, Rational};
use crate::rng::Rng;
use crate::row::Row;

type Template = fn(&mut Rng) -> (String, String);

const TEMPLATES: &[Template] = &[
    |r| {
        let (a, b) = (r.range(120, 990), r.range(12, 99));
        let c = r.range(100, a * b / 2);
        (
            format!("A warehouse holds {a} crates with {b} items in each. {c} items are shipped out. How many items are left?"),
            format!("{a} * {b} - {c}"),
        )
    },
    |r| {
        let (a, b, c, d) = (
            r.range(20, 300),
            r.range(12, 48),
            r.range(20, 300),
            r.range(6, 24),
        );
        (
            format!("A school orders {a} packs of {b} pencils and {c} packs of {d} pens. How many pencils and pens does it order in total?"),
            format!("{a} * {b} + {c} * {d}"),
        )
    },
    |r| {
        let (sack, per_day_sacks, days) = (r.range(15, 60), r.range(11, 90), r.range(12, 40));
        let per_day = sack * per_day_sacks;
        (
            format!("A farm harvests {per_day} kg of potatoes a day for {days} days and packs them in sacks of {sack} kg. How many sacks does it fill?"),
            format!("{per_day} * {days} / {sack}"),
        )
    },
    |r| {
        let (rows, seats) = (r.range(25, 90), r.range(30, 120));
        let sold = r.range(rows * seats / 3, rows * seats - 1);
        (
            format!("A stadium has {rows} rows of {seats} seats. {sold} tickets are sold, one seat each. How many seats stay empty?"),
            format!("{rows} * {seats} - {sold}"),
        )
    },
];

/// The calculator task.
#[derive(Debug, Clone, Copy)]
pub struct Calculator;

impl Task for Calculator {
    fn name(&self) -> &'static str {
        "calculator"
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Environment
    }
    fn required_fields(&self) -> &'static [&'static str] {
        &["prompt", "answer"]
    }
    fn instruction(&self) -> &'static str {
        "You have a calculator. To use it, reply with only <calc>EXPRESSION</calc> (numbers, + - * / ^ and parentheses) and wait for the <result>. When you know the answer, reply with <answer>NUMBER</answer>."
    }
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        (0..n)
            .map(|i| {
                let mut rng = Rng::derive(seed, i as u64);
                let (prompt, expression) = TEMPLATES[i % TEMPLATES.len()](&mut rng);
                let value =
                    expr::evaluate(&expression).map_err(|e| EnvError::Config(e.to_string()))?;
                Ok(Row::from_pairs(
                    format!("calculator-{seed}-{i}"),
                    [
                        ("prompt", json!(prompt)),
                        (
                            "answer",
                            json!(format!("{expression} = {value}\n#### {value}")),
                        ),
                        ("expression", json!(expression)),
                    ],
                ))
            })
            .collect()
    }
    fn reference(&self, row: &Row) -> Result<Vec<String>> {
        let expression = row.require_str(self.name(), "expression")?;
        let value = expr::evaluate(expression).map_err(|e| row.bad(self.name(), e.to_string()))?;
        Ok(vec![
            format!("<calc>{expression}</calc>"),
            format!("<answer>{value}</answer>"),
        ])
    }
    /// A single completion scores only if it is a final answer.
    fn score(&self, row: &Row, completion: &str) -> Result<f64> {
        super::score_first_turn(CalculatorEnv::default(), row, completion)
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(CalculatorEnv::default()))
    }
}

/// One calculator episode.
#[derive(Debug, Default)]
pub struct CalculatorEnv {
    answer: Option<Rational>,
}

impl Environment for CalculatorEnv {
    fn reset(&mut self, row: &Row) -> Result<Vec<Message>> {
        let gold = row.require_str("calculator", "answer")?;
        self.answer = Some(
            extract_answer(gold).ok_or_else(|| row.bad("calculator", "`answer` has no number"))?,
        );
        Calculator.opening(row)
    }

    fn step(&mut self, action: &str) -> Result<StepResult> {
        let gold = self
            .answer
            .ok_or_else(|| EnvError::Episode("step before reset".into()))?;
        if let Some(answer) = extract_tag(action, "answer") {
            let correct = extract_answer(answer) == Some(gold);
            return Ok(StepResult::finish(f64::from(u8::from(correct))));
        }
        Ok(match extract_tag(action, "calc") {
            Some(expression) => match expr::evaluate(expression) {
                Ok(v) => StepResult::reply(format!("<result>{v}</result>")).tool_result(false),
                Err(e) => StepResult::reply(format!("<error>{e}</error>")).tool_result(true),
            },
            None => StepResult::reply("No tool call or answer found. Reply with <calc>EXPRESSION</calc> or <answer>NUMBER</answer>."),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_results_errors_and_reminders() {
        let row = &Calculator.generate(1, 0).unwrap()[0];
        let mut env = CalculatorEnv::default();
        env.reset(row).unwrap();
        let obs = |s: &StepResult| s.observation[0].content.clone();
        let ok = env.step("<calc>12 * (3 + 4)</calc>").unwrap();
        assert_eq!(obs(&ok), "<result>84</result>");
        assert_eq!((ok.tool_calls, ok.tool_failures), (1, 0));
        let failed = env.step("<calc>1/0</calc>").unwrap();
        assert_eq!(obs(&failed), "<error>division by zero</error>");
        assert_eq!((failed.tool_calls, failed.tool_failures), (1, 1));
        let none = env.step("hmm").unwrap();
        assert!(obs(&none).starts_with("No tool call"));
        assert_eq!(none.tool_calls, 0);
        let wrong = env.step("<answer>-1</answer>").unwrap();
        assert!(wrong.done && wrong.reward == 0.0);
    }

    #[test]
    fn every_item_is_solved_by_its_reference_calls() {
        for row in Calculator.generate(200, 2).unwrap() {
            let turns = Calculator.reference(&row).unwrap();
            let mut env = CalculatorEnv::default();
            env.reset(&row).unwrap();
            let first = env.step(&turns[0]).unwrap();
            assert!(!first.done && first.reward == 0.0);
            let last = env.step(&turns[1]).unwrap();
            assert!(last.done && last.reward == 1.0, "{row:?}");
            let value = extract_answer(row.require_str("t", "answer").unwrap()).unwrap();
            assert!(value.as_integer().is_some_and(|v| v > 0), "{row:?}");
        }
    }
}
