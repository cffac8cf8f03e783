//! Multi-turn episodes driven by scripted policies through the real environments and the real
//! chat template: turns, observations, masks and rewards.

mod common;

use common::*;
use oxrl_envs::tasks::guessing::optimal_guesses;
use oxrl_envs::{Episode, LoadedEnv, Message, Row, TaskKind, Turn};
use serde_json::json;

fn calculator_env() -> LoadedEnv {
    load(
        json!({ "task": "calculator", "data": { "generate": 8 }, "prompt": { "system": SYSTEM } }),
        &fixtures(),
    )
}

fn warehouse_row() -> Row {
    Row::from_pairs(
        "warehouse",
        [
            ("prompt", json!("A warehouse holds 120 crates with 12 items in each. 100 items are shipped out. How many items are left?")),
            ("answer", json!("120 * 12 - 100 = 1340\n#### 1340")),
        ],
    )
}

/// Calls the calculator once, then answers with whatever the tool returned.
fn calculator_policy(messages: &[Message]) -> String {
    let last = &messages.last().unwrap().content;
    match last
        .strip_prefix("<result>")
        .and_then(|r| r.strip_suffix("</result>"))
    {
        Some(result) => format!("<answer>{result}</answer>"),
        None => "Let me compute.\n<calc>120 * 12 - 100</calc>".to_owned(),
    }
}

#[test]
fn calculator_episode_turns_observations_and_rewards() {
    let env = calculator_env();
    let mut ep = env.start_episode(&warehouse_row()).unwrap();
    let (expected_messages, _, expected_text) = golden("calculator_episode");
    assert_eq!(
        ep.prompt(),
        smollm2_template()
            .render(&expected_messages[..2], true)
            .unwrap()
    );

    let first = calculator_policy(ep.messages());
    let turn = ep.model_turn(&first, Some(STOP), None).unwrap();
    assert_eq!(
        turn,
        Turn::Continue(
            "\n<|im_start|>user\n<result>1340</result><|im_end|>\n<|im_start|>assistant\n".into()
        )
    );
    let second = calculator_policy(ep.messages());
    assert_eq!(
        ep.model_turn(&second, Some(STOP), None).unwrap(),
        Turn::Done
    );

    assert_eq!(ep.messages(), expected_messages.as_slice());
    assert_eq!(ep.rewards(), &[0.0, 1.0]);
    assert_eq!((ep.turns(), ep.truncated()), (2, false));
    // The growing context equals a fresh render of the whole conversation (transformers'
    // golden) except the newline after the last <|im_end|>, which nobody generated.
    assert_eq!(format!("{}\n", ep.transcript().text()), expected_text);
}

#[test]
fn calculator_masks_train_model_tokens_only() {
    let env = calculator_env();
    let mut ep = env.start_episode(&warehouse_row()).unwrap();
    ep.run(Some(STOP), calculator_policy).unwrap();
    let tok = ep.transcript().tokenize(tokenize);
    assert_eq!(tok.ids.len(), tok.mask.len());
    // Segment-wise tokenization equals tokenizing the whole text: the cached context the
    // sampler built turn by turn is the sequence the learner scores.
    assert_eq!(tok.ids, tokenize(&ep.transcript().text()));

    assert_eq!(
        trained_text(&tok),
        "Let me compute.\n<calc>120 * 12 - 100</calc><|im_end|><answer>1340</answer><|im_end|>"
    );
    let prompt_ids = tokenize(ep.prompt());
    assert_eq!(tok.prompt_len, prompt_ids.len());
    assert!(tok.mask[..tok.prompt_len].iter().all(|&m| m == 0));
    // The tool result and the template glue around it are never trained.
    let result =
        tokenize("\n<|im_start|>user\n<result>1340</result><|im_end|>\n<|im_start|>assistant\n");
    let at = tok
        .ids
        .windows(result.len())
        .position(|w| w == result.as_slice())
        .unwrap();
    assert!(tok.mask[at..at + result.len()].iter().all(|&m| m == 0));
    // Each turn ends on a trained <|im_end|>; per-turn rewards go there.
    assert_eq!(tok.turn_ends.len(), 2);
    for &end in &tok.turn_ends {
        assert_eq!((tok.ids[end], tok.mask[end]), (IM_END, 1));
    }
    assert_eq!(tok.turn_ends[1], tok.ids.len() - 1);
    assert_eq!(tok.mask[tok.turn_ends[0] + 1], 0);
}

#[test]
fn sampled_token_ids_are_kept_verbatim() {
    let env = calculator_env();
    let mut ep = env.start_episode(&warehouse_row()).unwrap();
    let reply = calculator_policy(ep.messages());
    let sampled: Vec<u32> = vec![7000, 7001, IM_END]; // e.g. a tokenization the sampler chose
    ep.model_turn(&reply, Some(STOP), Some(sampled.clone()))
        .unwrap();
    let tok = ep.transcript().tokenize(tokenize);
    let start = tok.prompt_len;
    assert_eq!(&tok.ids[start..start + 3], sampled.as_slice());
    assert_eq!(&tok.mask[start..start + 3], &[1, 1, 1]);
}

/// Binary search that reads the environment's higher/lower answers.
struct BinarySearch {
    lo: i64,
    hi: i64,
    last: i64,
}

impl BinarySearch {
    fn new(lo: i64, hi: i64) -> Self {
        Self { lo, hi, last: 0 }
    }

    fn next(&mut self, messages: &[Message]) -> String {
        match messages.last().map(|m| m.content.as_str()) {
            Some("higher") => self.lo = self.last + 1,
            Some("lower") => self.hi = self.last - 1,
            _ => {}
        }
        self.last = self.lo + (self.hi - self.lo) / 2;
        format!("<guess>{}</guess>", self.last)
    }
}

#[test]
fn guessing_game_rewards_fast_solving_and_truncates_at_the_turn_limit() {
    let env = load(
        json!({ "task": "guessing", "data": { "generate": 40, "seed": 5 }, "episode": { "max_turns": 10 } }),
        &fixtures(),
    );
    for row in env.train().rows() {
        let high = row.get("high").unwrap().as_i64().unwrap();
        let mut ep = env.start_episode(row).unwrap();
        let mut policy = BinarySearch::new(1, high);
        ep.run(Some(STOP), |m| policy.next(m)).unwrap();
        assert!(
            !ep.truncated() && ep.turns() <= optimal_guesses(1, high),
            "{row:?}"
        );
        assert_eq!(ep.total_reward(), 1.0);
        assert_eq!(
            ep.rewards().iter().filter(|r| **r != 0.0).count(),
            1,
            "reward only at the end"
        );
        // Every environment reply is a user message with feedback.
        for m in ep.messages().iter().skip(2).filter(|m| m.role == "user") {
            assert!(
                ["higher", "lower", "correct"].contains(&m.content.as_str()),
                "{m:?}"
            );
        }
    }

    let short = load(
        json!({ "task": "guessing", "data": { "generate": 3, "seed": 1 }, "episode": { "max_turns": 3 } }),
        &fixtures(),
    );
    let row = Row::from_pairs(
        "g",
        [
            ("prompt", json!("p")),
            ("secret", json!(9)),
            ("low", json!(1)),
            ("high", json!(10)),
        ],
    );
    let mut ep = short.start_episode(&row).unwrap();
    ep.run(Some(STOP), |_| "<guess>1</guess>".into()).unwrap();
    assert!(ep.truncated());
    assert_eq!(ep.rewards(), &[0.0, 0.0, 0.0]);
    assert!(
        ep.model_turn("<guess>9</guess>", Some(STOP), None).is_err(),
        "no turns after the end"
    );
}

#[test]
fn every_task_reference_solves_its_items_through_an_episode() {
    let kinds = [
        TaskKind::Arithmetic,
        TaskKind::Gsm8k,
        TaskKind::Countdown,
        TaskKind::Grounding,
        TaskKind::Humaneval,
        TaskKind::Mbpp,
        TaskKind::Calculator,
        TaskKind::Guessing,
    ];
    for kind in kinds {
        let env = load(
            json!({ "task": kind, "data": { "generate": 25, "seed": 3 } }),
            &fixtures(),
        );
        assert!(env.train().len() >= 10, "{kind:?}");
        for row in env.train().rows() {
            let reference = env.task().reference(row).unwrap();
            let mut ep: Episode = env.start_episode(row).unwrap();
            let mut turns = reference.iter();
            ep.run(Some(STOP), |_| turns.next().cloned().unwrap_or_default())
                .unwrap();
            assert!(!ep.truncated(), "{kind:?} {row:?}");
            assert_eq!(ep.turns(), reference.len(), "{kind:?}");
            assert_eq!(ep.total_reward(), 1.0, "{kind:?} {row:?}");
        }
    }
}
