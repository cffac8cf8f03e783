//! A user-written Rust environment plugged in through `LoadedEnv::from_task`: three rounds of
//! "reverse this word", a reward on every turn.

mod common;

use common::*;
use oxrl_envs::{
    EnvError, Environment, LoadedEnv, Message, Result, RewardKind, Row, StepResult, Task,
};
use serde_json::json;

const WORDS: &[&str] = &["oxide", "tensor", "reward", "policy", "gradient", "episode"];
const ROUNDS: usize = 3;

#[derive(Clone, Copy)]
struct ReverseTask;

#[derive(Default)]
struct ReverseEnv {
    words: Vec<String>,
    round: usize,
}

impl ReverseEnv {
    fn ask(&self) -> String {
        format!("Reverse: {}", self.words[self.round])
    }
}

impl Environment for ReverseEnv {
    fn reset(&mut self, row: &Row) -> Result<Vec<Message>> {
        let words = row
            .get("words")
            .and_then(|w| w.as_array())
            .ok_or_else(|| row.bad("reverse", "no words"))?;
        self.words = words
            .iter()
            .filter_map(|w| w.as_str().map(str::to_owned))
            .collect();
        self.round = 0;
        Ok(vec![Message::new("user", self.ask())])
    }

    fn step(&mut self, action: &str) -> Result<StepResult> {
        let word = self
            .words
            .get(self.round)
            .ok_or_else(|| EnvError::Episode("no round left".into()))?;
        let reversed: String = word.chars().rev().collect();
        let reward = if action.trim() == reversed {
            1.0 / ROUNDS as f64
        } else {
            0.0
        };
        self.round += 1;
        if self.round == self.words.len() {
            return Ok(StepResult {
                reward,
                ..StepResult::finish(0.0)
            });
        }
        Ok(StepResult {
            reward,
            ..StepResult::reply(self.ask())
        })
    }
}

impl Task for ReverseTask {
    fn name(&self) -> &'static str {
        "reverse"
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Environment
    }
    fn required_fields(&self) -> &'static [&'static str] {
        &["words"]
    }
    fn instruction(&self) -> &'static str {
        "Answer with the reversed word only."
    }
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        Ok((0..n)
            .map(|i| {
                let words: Vec<&str> = (0..ROUNDS)
                    .map(|r| WORDS[(i + r + seed as usize) % WORDS.len()])
                    .collect();
                Row::from_pairs(format!("reverse-{i}"), [("words", json!(words))])
            })
            .collect())
    }
    fn reference(&self, row: &Row) -> Result<Vec<String>> {
        let words = row
            .get("words")
            .and_then(|w| w.as_array())
            .ok_or_else(|| row.bad("reverse", "no words"))?;
        Ok(words
            .iter()
            .filter_map(|w| w.as_str())
            .map(|w| w.chars().rev().collect())
            .collect())
    }
    fn score(&self, _row: &Row, _completion: &str) -> Result<f64> {
        Err(EnvError::Config("multi-turn only".into()))
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(ReverseEnv::default()))
    }
}

#[test]
fn rust_task_runs_through_the_config_path_with_per_turn_rewards() {
    let cfg = config(
        json!({ "task": "custom", "data": { "generate": 6 }, "episode": { "max_turns": 5 } }),
    );
    let env = LoadedEnv::from_task(
        Box::new(ReverseTask),
        &cfg,
        &fixtures(),
        Some(smollm2_template()),
    )
    .unwrap();
    for row in env.train().rows() {
        let mut ep = env.start_episode(row).unwrap();
        let mut turn = 0;
        // Right on rounds 0 and 2, wrong on round 1.
        ep.run(Some(STOP), |messages| {
            let word = messages
                .last()
                .unwrap()
                .content
                .lines()
                .next()
                .unwrap()
                .trim_start_matches("Reverse: ");
            turn += 1;
            if turn == 2 {
                "nope".to_owned()
            } else {
                word.chars().rev().collect()
            }
        })
        .unwrap();
        assert_eq!((ep.turns(), ep.truncated()), (ROUNDS, false));
        let third = 1.0 / ROUNDS as f64;
        assert_eq!(ep.rewards(), &[third, 0.0, third]);
        let asks = ep.messages().iter().filter(|m| m.role == "user").count();
        assert_eq!(asks, ROUNDS, "one question per round");
        let tok = ep.transcript().tokenize(tokenize);
        assert_eq!(trained_text(&tok), ep.transcript().model_texts().concat());
        assert!(!trained_text(&tok).contains("Reverse:"));
    }
}

#[test]
fn custom_task_and_config_must_agree() {
    let gsm8k = config(json!({ "task": "gsm8k" }));
    assert!(LoadedEnv::from_task(
        Box::new(ReverseTask),
        &gsm8k,
        &fixtures(),
        Some(smollm2_template())
    )
    .is_err());
    let custom = config(json!({ "task": "custom" }));
    assert!(LoadedEnv::from_config(&custom, &fixtures(), Some(smollm2_template())).is_err());
}
