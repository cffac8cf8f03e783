//! Built-in tasks. A task knows its row schema, generates a seeded dataset of its own, turns a
//! row into opening messages, gives a reference solution, and verifies completions for its own
//! items. Single-turn tasks are scored in training by the `oxrl-rewards` reward that
//! [`Task::reward`] names (math, code, IoU, countdown), reading the row's fields
//! ([`Row::with_completion`] is the reward's `oxrl_rewards::Completion`); their `score` here is
//! a self-contained check used to prove every generated item is solvable (math and countdown
//! score with the same `oxrl-rewards` code as training; code and grounding with a simpler
//! check). Multi-turn tasks score themselves through their [`Environment`].

pub mod calculator;
pub mod code;
pub mod countdown;
pub mod grounding;
pub mod guessing;
pub mod math;
mod util;

use serde::{Deserialize, Serialize};

use crate::chat_template::Message;
use crate::episode::{Environment, StepResult};
use crate::error::Result;
use crate::row::Row;

pub use util::extract_tag;

/// Which reward scores a task's completions. Every kind but `Environment` is the name of an
/// `oxrl-rewards` reward (built by `Registry::default()`) that reads the row's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// `oxrl-rewards` math answer checking against the row's `answer` (GSM8K `#### N`).
    Math,
    /// `oxrl-rewards` code execution with the row's `tests` (+ `entry_point`).
    Code,
    /// `oxrl-rewards` box IoU against the row's `boxes`.
    Iou,
    /// `oxrl-rewards` countdown checking with the row's `numbers` and `target` (the same
    /// verifier as [`countdown::score`]).
    Countdown,
    /// The environment's own per-turn rewards (multi-turn tasks, external environments).
    Environment,
}

impl RewardKind {
    /// The name as written in config; for `math`, `code`, `iou` and `countdown` it is the
    /// name (`type`) of the `oxrl-rewards` reward that scores the task.
    pub fn name(self) -> &'static str {
        match self {
            RewardKind::Math => "math",
            RewardKind::Code => "code",
            RewardKind::Iou => "iou",
            RewardKind::Countdown => "countdown",
            RewardKind::Environment => "environment",
        }
    }
}

/// A task: data, prompts and verification for one kind of problem.
pub trait Task: Send + Sync {
    /// Short name (`arithmetic`, `gsm8k`, ...).
    fn name(&self) -> &'static str;
    /// The reward that scores it in training.
    fn reward(&self) -> RewardKind;
    /// Canonical fields every row must have.
    fn required_fields(&self) -> &'static [&'static str];
    /// The default instruction appended to the opening user message (answer format).
    fn instruction(&self) -> &'static str;
    /// `n` rows from the task's own generator or shipped data, fixed by `seed`.
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>>;
    /// The opening messages for `row` (before system prompt, few-shot and instruction).
    fn opening(&self, row: &Row) -> Result<Vec<Message>> {
        Ok(vec![Message::new(
            "user",
            row.require_str(self.name(), "prompt")?,
        )])
    }
    /// Assistant messages that solve `row` (one for single-turn tasks).
    fn reference(&self, row: &Row) -> Result<Vec<String>>;
    /// Self-contained check of a single-turn completion: 1.0 correct, 0.0 not.
    fn score(&self, row: &Row, completion: &str) -> Result<f64>;
    /// A fresh environment for one episode. Single-turn tasks get a one-turn environment
    /// scored by [`Task::score`].
    fn environment(&self) -> Result<Box<dyn Environment>>;
}

/// A one-turn environment around a single-turn task: the reply is scored and the episode ends.
pub struct SingleTurn<T: Task + Clone + 'static> {
    task: T,
    row: Option<Row>,
}

impl<T: Task + Clone + 'static> SingleTurn<T> {
    /// Wraps `task`.
    pub fn new(task: T) -> Self {
        Self { task, row: None }
    }
}

impl<T: Task + Clone + 'static> Environment for SingleTurn<T> {
    fn reset(&mut self, row: &Row) -> Result<Vec<Message>> {
        self.row = Some(row.clone());
        self.task.opening(row)
    }

    fn step(&mut self, action: &str) -> Result<StepResult> {
        let row = self
            .row
            .as_ref()
            .ok_or_else(|| crate::error::EnvError::Episode("step before reset".into()))?;
        Ok(StepResult::finish(self.task.score(row, action)?))
    }
}

/// Scores one completion as the first turn of a fresh episode of `env` (multi-turn tasks use
/// it for `Task::score`: only an immediately right final answer scores).
fn score_first_turn(mut env: impl Environment, row: &Row, completion: &str) -> Result<f64> {
    env.reset(row)?;
    Ok(env.step(completion)?.reward)
}

/// Names of the built-in tasks, as written in config (`task = "gsm8k"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Arithmetic expressions, GSM8K-format answers.
    Arithmetic,
    /// GSM8K-format word problems.
    Gsm8k,
    /// HumanEval-format code problems (shipped).
    Humaneval,
    /// MBPP-format code problems (shipped).
    Mbpp,
    /// Text grounding with box answers.
    Grounding,
    /// Countdown: reach a target with the given numbers.
    Countdown,
    /// Multi-turn calculator tool use.
    Calculator,
    /// Multi-turn number guessing game.
    Guessing,
    /// An external process speaking JSON lines (`[env.external]`).
    External,
    /// A task written in Rust and handed over by the program (`LoadedEnv::from_task`).
    Custom,
}

impl TaskKind {
    /// Whether episodes of this task take several model turns (the environment replies and
    /// scores, [`RewardKind::Environment`]), known from the config alone: `Some(true)` for
    /// `calculator`, `guessing` and `external`; `Some(false)` for the single-turn built-ins;
    /// `None` for `custom`, whose program-supplied [`Task::reward`] decides (after loading,
    /// [`LoadedEnv::is_multi_turn`](crate::LoadedEnv::is_multi_turn) answers for every task).
    pub fn is_multi_turn(self) -> Option<bool> {
        match self {
            TaskKind::Calculator | TaskKind::Guessing | TaskKind::External => Some(true),
            TaskKind::Arithmetic
            | TaskKind::Gsm8k
            | TaskKind::Humaneval
            | TaskKind::Mbpp
            | TaskKind::Grounding
            | TaskKind::Countdown => Some(false),
            TaskKind::Custom => None,
        }
    }
}

/// The built-in task for `kind` (`External` is built from its config by the caller).
pub fn builtin(kind: TaskKind) -> Option<Box<dyn Task>> {
    Some(match kind {
        TaskKind::Arithmetic => Box::new(math::MathTask::ARITHMETIC),
        TaskKind::Gsm8k => Box::new(math::MathTask::GSM8K),
        TaskKind::Humaneval => Box::new(code::CodeTask::HUMANEVAL),
        TaskKind::Mbpp => Box::new(code::CodeTask::MBPP),
        TaskKind::Grounding => Box::new(grounding::Grounding),
        TaskKind::Countdown => Box::new(countdown::Countdown),
        TaskKind::Calculator => Box::new(calculator::Calculator),
        TaskKind::Guessing => Box::new(guessing::Guessing),
        TaskKind::External | TaskKind::Custom => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_prefix_stable_and_ids_unique() {
        let kinds = [
            TaskKind::Arithmetic,
            TaskKind::Gsm8k,
            TaskKind::Humaneval,
            TaskKind::Mbpp,
            TaskKind::Grounding,
            TaskKind::Countdown,
            TaskKind::Calculator,
            TaskKind::Guessing,
        ];
        for kind in kinds {
            let task = builtin(kind).unwrap();
            assert_eq!(
                kind.is_multi_turn(),
                Some(task.reward() == RewardKind::Environment),
                "{kind:?}"
            );
            let long = task.generate(40, 1).unwrap();
            assert_eq!(task.generate(5, 1).unwrap(), long[..5], "{kind:?}");
            let mut ids: Vec<&str> = long.iter().map(Row::id).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), long.len(), "{kind:?}");
            for row in &long {
                for field in task.required_fields() {
                    assert!(row.get(field).is_some(), "{kind:?} row lacks {field}");
                }
            }
        }
        assert!(builtin(TaskKind::External).is_none());
        assert_eq!(TaskKind::External.is_multi_turn(), Some(true));
        assert_eq!(TaskKind::Custom.is_multi_turn(), None);
        for kind in [
            RewardKind::Math,
            RewardKind::Code,
            RewardKind::Iou,
            RewardKind::Countdown,
            RewardKind::Environment,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.name());
        }
    }
}
