//! Sampling through the config path: splits, and a cursor saved to JSON and restored into a
//! freshly built environment continues the same stream.

mod common;

use common::*;
use oxrl_envs::{Cursor, LoadedEnv};
use serde_json::json;

fn ids(env: &LoadedEnv, indices: &[usize]) -> Vec<String> {
    indices
        .iter()
        .map(|&i| env.train().get(i).unwrap().id().to_owned())
        .collect()
}

#[test]
fn cursor_round_trips_through_a_checkpoint() {
    let cfg =
        json!({ "task": "countdown", "data": { "generate": 30, "seed": 9, "eval_fraction": 0.1 } });
    let env = load(cfg.clone(), &fixtures());
    assert_eq!((env.train().len(), env.eval().len()), (27, 3));
    let mut sampler = env.sampler(None).unwrap();
    sampler.next_indices(40); // into the second epoch
    let checkpoint = serde_json::to_string(sampler.cursor()).unwrap();
    let expected = ids(&env, &sampler.next_indices(25));

    let restarted = load(cfg, &fixtures());
    let cursor: Cursor = serde_json::from_str(&checkpoint).unwrap();
    let mut resumed = restarted.sampler(Some(cursor.clone())).unwrap();
    assert_eq!(ids(&restarted, &resumed.next_indices(25)), expected);

    let other = load(
        json!({ "task": "countdown", "data": { "generate": 30, "seed": 10, "eval_fraction": 0.1 } }),
        &fixtures(),
    );
    assert!(
        other.sampler(Some(cursor)).is_err(),
        "a cursor from other data is refused"
    );
}

#[test]
fn eval_file_and_eval_split_are_disjoint_from_training() {
    let env = load(
        json!({
            "task": "gsm8k",
            "data": { "path": "gsm8k_sample.jsonl", "eval_path": "gsm8k_sample.jsonl", "fields": { "prompt": "question" }, "on_bad_row": "skip" }
        }),
        &fixtures(),
    );
    assert_eq!((env.train().len(), env.eval().len()), (4, 4));
    assert_eq!(
        env.skipped().len(),
        2,
        "the bad line is reported for each file"
    );

    let split = load(
        json!({ "task": "grounding", "data": { "generate": 20, "eval_size": 5 } }),
        &fixtures(),
    );
    let train: Vec<&str> = split.train().rows().iter().map(|r| r.id()).collect();
    assert_eq!((split.train().len(), split.eval().len()), (15, 5));
    assert!(split.eval().rows().iter().all(|r| !train.contains(&r.id())));
}

#[test]
fn environments_and_episodes_can_move_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<LoadedEnv>();
    send::<oxrl_envs::Episode>();
    send::<oxrl_envs::ExternalEnv>();
}
