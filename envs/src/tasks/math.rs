//! Math tasks with GSM8K-format answers: `answer` holds worked steps and ends in `#### N`, as
//! in GSM8K, so the math reward of `oxrl-rewards` reads it unchanged. The task's own check
//! ([`Task::score`]) and [`extract_answer`] go through that reward too, so they agree with
//! training.
//!
//! - `arithmetic`: integer expressions with `+ - *` and parentheses; `[env.arithmetic]`
//!   ([`ArithmeticConfig`]) sets how many terms, how large, which operators.
//! - `gsm8k`: templated multi-step word problems (shopping, rates, ages, percentages, ...),
//!   each with its worked solution.

use oxrl_rewards::math::{self as math_reward, parse::Expr as Parsed, MathConfig, MathReward};
use oxrl_rewards::RewardFailure;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{util, RewardKind, SingleTurn, Task};
use crate::episode::Environment;
use crate::error::{EnvError, Result};
use crate::expr::{self, Op, Rational};
use crate::rng::Rng;
use crate::row::Row;

const INSTRUCTION: &str =
    "Solve the problem step by step. End with a final line of the form `#### <answer>`.";

/// The final answer a completion gives, read by the `oxrl-rewards` math reward's extraction
/// ([`oxrl_rewards::math::parse_completion`]: GSM8K `#### x`, else the last `\boxed{}`, else
/// "the answer is x", else the last math span or number; see docs/rewards.md), as an exact
/// rational. An equation chain gives its last member (`x = 7 - 5 = 2` is 2) and a percent sign
/// is dropped (`25%` is 25). `None` if there is no answer or it is not a rational number (a
/// variable, `\sqrt{2}`, a set, an interval, text).
pub fn extract_answer(text: &str) -> Option<Rational> {
    let answer = math_reward::parse_completion(text)?;
    exact(&answer.expr)?.eval().ok()
}

/// The math reward's parse of an answer as an exact expression, when it is plain arithmetic.
fn exact(parsed: &Parsed) -> Option<expr::Expr> {
    let bin = |op, a: &Parsed, b: &Parsed| {
        Some(expr::Expr::Bin(
            op,
            Box::new(exact(a)?),
            Box::new(exact(b)?),
        ))
    };
    match parsed {
        // `f64`'s `Display` is the shortest text that reads back as the same value, so a
        // number written as `0.1` comes back as exactly 1/10.
        Parsed::Num(v) if v.is_finite() => expr::Expr::parse(&v.to_string()).ok(),
        Parsed::Int(n) => expr::Expr::parse(&n.to_string()).ok(),
        Parsed::Neg(a) => Some(expr::Expr::Neg(Box::new(exact(a)?))),
        Parsed::Add(a, b) => bin(Op::Add, a, b),
        Parsed::Mul(a, b) => bin(Op::Mul, a, b),
        Parsed::Div(a, b) => bin(Op::Div, a, b),
        Parsed::Pow(a, b) => bin(Op::Pow, a, b),
        Parsed::Eq(members) => exact(members.last()?),
        _ => None,
    }
}

/// The math reward a task's completions are scored with: default options, plus
/// `literal_answer` for `arithmetic` (its prompt is the expression, which must not score when
/// echoed back; the shipped arithmetic configs set it too).
fn math_reward(task: &str) -> MathReward {
    MathReward::new(MathConfig {
        literal_answer: task == "arithmetic",
        ..MathConfig::default()
    })
}

/// The `oxrl-rewards` math reward's score of `completion` against the row's `answer`: 1.0 if
/// the final answers are equal, else 0.0 (also when the completion has no answer).
fn score_math(task: &str, row: &Row, completion: &str) -> Result<f64> {
    let gold = row.require_str(task, "answer")?;
    match math_reward(task).score_one(completion, gold) {
        Ok(score) => Ok(score),
        Err(RewardFailure::BadReference(why)) => Err(row.bad(task, format!("`answer`: {why}"))),
        Err(_) => Ok(0.0),
    }
}

/// GSM8K-style answer text: the steps, then `#### value`.
fn gsm8k_answer(steps: &[String], value: i64) -> String {
    let mut text = steps.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(&format!("#### {value}"));
    text
}

/// A generated problem: question, worked steps, integer answer.
type Problem = (String, Vec<String>, i64);

/// `[env.arithmetic]`: how hard the generated expressions are. The defaults give 2 to 4 terms
/// with `+ - *`; a small model learns fastest from `max_terms = 2`, `max_operand = 20`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArithmeticConfig {
    /// Fewest terms in an expression (default 2).
    pub min_terms: i64,
    /// Most terms (default 4).
    pub max_terms: i64,
    /// Largest operand of `+` and `-`, drawn from 1 up (default 99).
    pub max_operand: i64,
    /// Largest factor of `*`, drawn from 2 up (default 12).
    pub max_factor: i64,
    /// Operators to draw from (default `["+", "-", "*"]`).
    pub ops: Ops,
    /// Whether the first two of three or more terms may be parenthesised (default true).
    pub parentheses: bool,
}

impl ArithmeticConfig {
    /// The defaults, usable in constants.
    pub const DEFAULT: Self = Self {
        min_terms: 2,
        max_terms: 4,
        max_operand: 99,
        max_factor: 12,
        ops: Ops::ALL,
        parentheses: true,
    };

    /// Checks the ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(EnvError::Config(format!("env.arithmetic.{what}")));
        if self.min_terms < 1 || self.min_terms > self.max_terms {
            return bad(format!(
                "min_terms = {} must be at least 1 and at most max_terms = {}",
                self.min_terms, self.max_terms
            ));
        }
        if self.max_operand < 1 {
            return bad(format!(
                "max_operand = {} must be at least 1",
                self.max_operand
            ));
        }
        if self.max_factor < 2 {
            return bad(format!(
                "max_factor = {} must be at least 2",
                self.max_factor
            ));
        }
        Ok(())
    }
}

impl Default for ArithmeticConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A non-empty set of the operators `+ - *`, written in config as a list of strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Ops {
    add: bool,
    sub: bool,
    mul: bool,
}

impl Ops {
    /// `+`, `-` and `*`.
    pub const ALL: Self = Self {
        add: true,
        sub: true,
        mul: true,
    };

    fn symbols(self) -> Vec<&'static str> {
        [(self.add, "+"), (self.sub, "-"), (self.mul, "*")]
            .into_iter()
            .filter_map(|(on, op)| on.then_some(op))
            .collect()
    }
}

impl TryFrom<Vec<String>> for Ops {
    type Error = String;

    fn try_from(list: Vec<String>) -> std::result::Result<Self, String> {
        let mut ops = Self {
            add: false,
            sub: false,
            mul: false,
        };
        for op in &list {
            match op.as_str() {
                "+" => ops.add = true,
                "-" => ops.sub = true,
                "*" => ops.mul = true,
                other => {
                    return Err(format!(
                        "unknown operator {other:?} (use \"+\", \"-\", \"*\")"
                    ))
                }
            }
        }
        if list.is_empty() {
            return Err("ops must name at least one operator".into());
        }
        Ok(ops)
    }
}

impl From<Ops> for Vec<String> {
    fn from(ops: Ops) -> Self {
        ops.symbols().into_iter().map(str::to_owned).collect()
    }
}

/// Where a math task's problems come from.
#[derive(Debug, Clone, Copy)]
enum Generator {
    Arithmetic(ArithmeticConfig),
    WordProblems,
}

/// An integer expression (`+ - *`, sometimes parentheses) shaped by `cfg`.
fn arithmetic_problem(rng: &mut Rng, cfg: &ArithmeticConfig) -> Problem {
    let ops = cfg.ops.symbols();
    let n = rng.range(cfg.min_terms, cfg.max_terms);
    let mut text = rng.range(1, cfg.max_operand).to_string();
    for i in 1..n {
        let op = *rng.pick(&ops);
        let operand = if op == "*" {
            rng.range(2, cfg.max_factor)
        } else {
            rng.range(1, cfg.max_operand)
        };
        text = if cfg.parentheses && i == 1 && n > 2 && rng.below(3) == 0 {
            format!("({text} {op} {operand})")
        } else {
            format!("{text} {op} {operand}")
        };
    }
    // Integer operands and + - * only: the value is an integer that fits easily.
    let value = expr::evaluate(&text)
        .ok()
        .and_then(|v| v.as_integer())
        .unwrap_or_default() as i64;
    (
        format!("What is {text}?"),
        vec![format!("{text} = {value}")],
        value,
    )
}

/// A word problem: templates in turn, each with a random name and numbers.
fn gsm8k_problem(rng: &mut Rng, i: usize) -> Problem {
    let name = *rng.pick(NAMES);
    TEMPLATES[i % TEMPLATES.len()](rng, name)
}

/// A math task: GSM8K-format rows from a problem generator.
#[derive(Debug, Clone, Copy)]
pub struct MathTask {
    name: &'static str,
    generator: Generator,
}

impl MathTask {
    /// Arithmetic expressions.
    pub const ARITHMETIC: MathTask = MathTask::arithmetic(ArithmeticConfig::DEFAULT);
    /// Arithmetic expressions shaped by `cfg`.
    pub const fn arithmetic(cfg: ArithmeticConfig) -> MathTask {
        MathTask {
            name: "arithmetic",
            generator: Generator::Arithmetic(cfg),
        }
    }
    /// GSM8K-format word problems.
    pub const GSM8K: MathTask = MathTask {
        name: "gsm8k",
        generator: Generator::WordProblems,
    };
}

const NAMES: &[&str] = &[
    "Natalia", "Omar", "Priya", "Lucas", "Mei", "Sam", "Amara", "Jonas",
];

/// One word-problem template: question, worked steps, answer.
type Template = fn(&mut Rng, &str) -> Problem;

const TEMPLATES: &[Template] = &[
    |r, name| {
        let april = r.range(10, 60) * 2;
        let may = april / 2;
        (
            format!("{name} sold clips to {april} of her friends in April, and then she sold half as many clips in May. How many clips did {name} sell altogether in April and May?"),
            vec![format!("In May {name} sold {april} / 2 = {may} clips."), format!("Altogether {name} sold {april} + {may} = {} clips.", april + may)],
            april + may,
        )
    },
    |r, name| {
        let rate = r.range(1, 5) * 12;
        let minutes = r.range(2, 20) * 5;
        let pay = rate * minutes / 60;
        (
            format!("{name} earns ${rate} an hour for babysitting. Yesterday, {name} did {minutes} minutes of babysitting. How many dollars did {name} earn?"),
            vec![
                format!("Every 5 minutes pay {rate} / 12 = ${}.", rate / 12),
                format!("{minutes} minutes are {minutes} / 5 = {} blocks of 5 minutes.", minutes / 5),
                format!("{name} earned {} * {} = ${pay}.", minutes / 5, rate / 12),
            ],
            pay,
        )
    },
    |r, name| {
        let (start, eaten, given, packs, per) = (
            r.range(20, 80),
            r.range(1, 9),
            r.range(1, 9),
            r.range(2, 6),
            r.range(3, 12),
        );
        let left = start - eaten - given;
        let end = left + packs * per;
        (
            format!("{name} has {start} apples. {name} eats {eaten} and gives {given} to a neighbour, then buys {packs} bags with {per} apples in each. How many apples does {name} have now?"),
            vec![format!("After eating and giving some away, {name} has {start} - {eaten} - {given} = {left} apples."), format!("The bags hold {packs} * {per} = {} apples.", packs * per), format!("{name} now has {left} + {} = {end} apples.", packs * per)],
            end,
        )
    },
    |r, _| {
        let (v1, h1, v2, h2) = (
            r.range(4, 12) * 10,
            r.range(1, 5),
            r.range(4, 12) * 10,
            r.range(1, 5),
        );
        let total = v1 * h1 + v2 * h2;
        (
            format!("A train travels at {v1} km per hour for {h1} hours, then at {v2} km per hour for {h2} hours. How many kilometres does it travel in total?"),
            vec![format!("First part: {v1} * {h1} = {} km.", v1 * h1), format!("Second part: {v2} * {h2} = {} km.", v2 * h2), format!("Total: {} + {} = {total} km.", v1 * h1, v2 * h2)],
            total,
        )
    },
    |r, name| {
        let (n, price, pen) = (r.range(2, 8), r.range(2, 9), r.range(1, 5));
        let cost = n * price + pen;
        let bill = if cost < 50 { 50 } else { 100 };
        (
            format!("{name} buys {n} notebooks at ${price} each and a pen for ${pen}. {name} pays with a ${bill} bill. How much change does {name} get?"),
            vec![format!("The notebooks cost {n} * {price} = ${}.", n * price), format!("Everything costs {} + {pen} = ${cost}.", n * price), format!("The change is {bill} - {cost} = ${}.", bill - cost)],
            bill - cost,
        )
    },
    |r, name| {
        let (per_day, days) = (r.range(5, 30), r.range(2, 9));
        let pages = per_day * days + r.range(1, 120);
        let read = per_day * days;
        (
            format!("A book has {pages} pages. {name} reads {per_day} pages every day. How many pages are left to read after {days} days?"),
            vec![format!("In {days} days {name} reads {per_day} * {days} = {read} pages."), format!("{pages} - {read} = {} pages are left.", pages - read)],
            pages - read,
        )
    },
    |r, name| {
        let (age, k, years) = (r.range(4, 15), r.range(2, 4), r.range(1, 10));
        let parent = age * k;
        let sum = age + parent + 2 * years;
        (
            format!("{name} is {age} years old, and {name}'s mother is {k} times as old. What will the sum of their ages be in {years} years?"),
            vec![format!("The mother is {age} * {k} = {parent} years old."), format!("Now their ages sum to {age} + {parent} = {}.", age + parent), format!("In {years} years the sum grows by 2 * {years} = {}, so it is {} + {} = {sum}.", 2 * years, age + parent, 2 * years)],
            sum,
        )
    },
    |r, _| {
        let (price, off) = (r.range(1, 15) * 20, r.range(1, 9) * 5);
        let discount = price * off / 100;
        (
            format!("A jacket costs ${price}. In a sale it is {off}% off. What is the sale price in dollars?"),
            vec![format!("The discount is {price} * {off} / 100 = ${discount}."), format!("The sale price is {price} - {discount} = ${}.", price - discount)],
            price - discount,
        )
    },
];

impl Task for MathTask {
    fn name(&self) -> &'static str {
        self.name
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Math
    }
    fn required_fields(&self) -> &'static [&'static str] {
        &["prompt", "answer"]
    }
    fn instruction(&self) -> &'static str {
        INSTRUCTION
    }
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        Ok((0..n)
            .map(|i| {
                let rng = &mut Rng::derive(seed, i as u64);
                let (question, steps, value) = match &self.generator {
                    Generator::Arithmetic(cfg) => arithmetic_problem(rng, cfg),
                    Generator::WordProblems => gsm8k_problem(rng, i),
                };
                Row::from_pairs(
                    format!("{}-{seed}-{i}", self.name),
                    [
                        ("prompt", json!(question)),
                        ("answer", json!(gsm8k_answer(&steps, value))),
                    ],
                )
            })
            .collect())
    }
    fn reference(&self, row: &Row) -> Result<Vec<String>> {
        Ok(vec![row.require_str(self.name(), "answer")?.to_owned()])
    }
    fn score(&self, row: &Row, completion: &str) -> Result<f64> {
        score_math(self.name(), row, completion)
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(SingleTurn::new(*self)))
    }
}

/// Integers mentioned in an answer's steps (tests use it to check the steps' arithmetic).
pub fn step_integers(answer: &str) -> Vec<i64> {
    util::integers(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_hashes_boxed_and_last_number() {
        let r = |s| extract_answer(s).map(|v| v.to_string());
        assert_eq!(r("so 3 + 4 = 7\n#### 1,234"), Some("1234".into()));
        assert_eq!(r("#### $18."), Some("18".into()));
        assert_eq!(r("the answer is \\boxed{3/4}"), Some("0.75".into()));
        assert_eq!(r("I get 5 apples, then 12."), Some("12".into()));
        assert_eq!(r("no idea"), None);
    }

    /// This crate used to have its own extractor, which disagreed with the math reward: it cut
    /// `\boxed{\frac{3}{4}}` at the first `}` (no answer), took the word after `####`, and
    /// read `$\frac{1}{2}$` as its last number, 2. Now both read the same answer.
    #[test]
    fn extraction_and_score_agree_with_the_math_reward() {
        let reward = MathReward::default();
        for (completion, value) in [
            (r"so the answer is \boxed{\frac{3}{4}}", "3/4"),
            ("#### 42", "42"),
            ("#### The answer is 42", "42"),
            (r"The answer is $\frac{1}{2}$ of the pie", "1/2"),
            ("I get 5 apples, then 12.", "12"),
        ] {
            let want = expr::evaluate(value).unwrap();
            assert_eq!(extract_answer(completion), Some(want), "{completion}");
            let parsed = math_reward::parse_completion(completion).unwrap();
            assert_eq!(
                exact(&parsed.expr).unwrap().eval(),
                Ok(want),
                "{completion}"
            );
            assert_eq!(reward.score_one(completion, value), Ok(1.0), "{completion}");
            let row = Row::from_pairs(
                "r",
                [
                    ("prompt", json!("?")),
                    ("answer", json!(format!("#### {value}"))),
                ],
            );
            assert_eq!(MathTask::GSM8K.score(&row, completion).unwrap(), 1.0);
            assert_eq!(MathTask::GSM8K.score(&row, "#### 7").unwrap(), 0.0);
        }
        // Answers the reward parses but that are no rational number have no exact value.
        assert_eq!(extract_answer(r"\boxed{\sqrt{2}}"), None);
        assert_eq!(extract_answer(r"\boxed{x + 1}"), None);
        assert_eq!(
            extract_answer(r"\boxed{x = 7 - 5}").map(|v| v.to_string()),
            Some("2".into())
        );
    }

    #[test]
    fn arithmetic_does_not_score_an_echoed_expression() {
        let row = &MathTask::ARITHMETIC.generate(1, 0).unwrap()[0];
        let prompt = row.require_str("t", "prompt").unwrap();
        let echo = prompt.trim_start_matches("What is ").trim_end_matches('?');
        assert_eq!(
            MathTask::ARITHMETIC.score(row, echo).unwrap(),
            0.0,
            "{echo}"
        );
        let row = Row::from_pairs("r", [("prompt", json!("?")), ("answer", json!(7))]);
        assert!(
            MathTask::GSM8K.score(&row, "#### 7").is_err(),
            "`answer` must be a string"
        );
    }

    #[test]
    fn every_generated_item_is_verifiable_by_its_reference() {
        for task in [&MathTask::ARITHMETIC as &dyn Task, &MathTask::GSM8K] {
            let rows = task.generate(200, 11).unwrap();
            for row in &rows {
                let reference = task.reference(row).unwrap();
                assert_eq!(task.score(row, &reference[0]).unwrap(), 1.0, "{row:?}");
                assert_eq!(task.score(row, "#### 999999").unwrap(), 0.0);
            }
            assert_eq!(rows, task.generate(200, 11).unwrap(), "seeded");
            assert_ne!(rows, task.generate(200, 12).unwrap());
        }
    }

    #[test]
    fn arithmetic_answers_are_the_true_value() {
        for row in MathTask::ARITHMETIC.generate(100, 3).unwrap() {
            let prompt = row.require_str("t", "prompt").unwrap();
            let text = prompt.trim_start_matches("What is ").trim_end_matches('?');
            let gold = extract_answer(row.require_str("t", "answer").unwrap()).unwrap();
            assert_eq!(expr::evaluate(text).unwrap(), gold, "{prompt}");
        }
    }

    #[test]
    fn arithmetic_config_shapes_the_expressions() {
        let cfg: ArithmeticConfig =
            serde_json::from_str(r#"{"max_terms": 2, "max_operand": 20, "ops": ["+", "-"]}"#)
                .unwrap();
        assert_eq!(cfg.min_terms, 2, "unset keys keep their defaults");
        let rows = MathTask::arithmetic(cfg).generate(300, 4).unwrap();
        let mut seen_ops = std::collections::BTreeSet::new();
        for row in &rows {
            let prompt = row.require_str("t", "prompt").unwrap();
            let text = prompt.trim_start_matches("What is ").trim_end_matches('?');
            let parts: Vec<&str> = text.split(' ').collect();
            assert_eq!(parts.len(), 3, "two terms: {prompt}");
            seen_ops.insert(parts[1]);
            for operand in [parts[0], parts[2]] {
                assert!(
                    (1..=20).contains(&operand.parse::<i64>().unwrap()),
                    "{prompt}"
                );
            }
            let gold = extract_answer(row.require_str("t", "answer").unwrap()).unwrap();
            assert_eq!(expr::evaluate(text).unwrap(), gold, "{prompt}");
        }
        assert_eq!(seen_ops.into_iter().collect::<Vec<_>>(), ["+", "-"]);
    }

    #[test]
    fn default_arithmetic_config_keeps_the_builtin_generator() {
        let explicit = MathTask::arithmetic(serde_json::from_str("{}").unwrap());
        assert_eq!(
            explicit.generate(50, 9).unwrap(),
            MathTask::ARITHMETIC.generate(50, 9).unwrap()
        );
    }

    #[test]
    fn bad_arithmetic_configs_are_rejected_with_the_key() {
        let parse = |json: &str| serde_json::from_str::<ArithmeticConfig>(json);
        assert!(parse(r#"{"ops": ["/"]}"#)
            .unwrap_err()
            .to_string()
            .contains("unknown operator"));
        assert!(parse(r#"{"ops": []}"#).is_err());
        assert!(parse(r#"{"max_term": 2}"#).is_err(), "typo rejected");
        let err = parse(r#"{"min_terms": 3, "max_terms": 2}"#)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("env.arithmetic.min_terms"),
            "{err}"
        );
    }

    #[test]
    fn gsm8k_steps_check_out_and_answers_are_natural_numbers() {
        let rows = MathTask::GSM8K.generate(TEMPLATES.len() * 20, 5).unwrap();
        for row in &rows {
            let answer = row.require_str("t", "answer").unwrap();
            let value = extract_answer(answer).unwrap().as_integer().unwrap();
            assert!(value >= 0, "{answer}");
            // Every `a op b = c` in the steps is true arithmetic.
            for line in answer.lines() {
                for eq in line.split(", so ") {
                    check_equation(eq);
                }
            }
        }
    }

    /// Checks the last `lhs = rhs` on a line where the lhs is pure arithmetic.
    fn check_equation(line: &str) {
        let Some((lhs, rhs)) = line.rsplit_once(" = ") else {
            return;
        };
        let lhs: String = lhs
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_digit() || " +-*/$".contains(*c))
            .collect::<String>()
            .chars()
            .rev()
            .filter(|&c| c != '$')
            .collect();
        let rhs_num = step_integers(rhs).first().copied();
        if let (Ok(v), Some(r)) = (expr::evaluate(lhs.trim()), rhs_num) {
            if lhs.trim().contains(|c: char| "+-*/".contains(c)) {
                assert_eq!(v, Rational::int(r.into()), "{line}");
            }
        }
    }
}
