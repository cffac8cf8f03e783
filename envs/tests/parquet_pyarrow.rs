//! Parquet dataset directories written by pyarrow as the HF hub serves them (snappy and zstd
//! shards, several row groups, nested structs, lists, nulls; fixtures/write_hub_parquet.py),
//! read through the loader and through the config path training takes. Needs the set-up's
//! Python with pyarrow in OXRL_PYTHON (`make test` sets it).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use oxrl_envs::dataset::{self, LoadOptions, OnBadRow};
use oxrl_envs::{Cursor, LoadedEnv};
use serde_json::{json, Value};

fn python() -> PathBuf {
    std::env::var_os("OXRL_PYTHON").map(PathBuf::from).expect(
        "OXRL_PYTHON is not set: run `make test`, or `source \"$(bash scripts/setup.sh)\"` first",
    )
}

/// Writes the hub-style directory into `dir` (and `extra`, e.g. a gzip file); returns
/// pyarrow's `to_pylist()` of each shard.
fn write_hub_dir_and(dir: &Path, extra: &[&Path]) -> BTreeMap<String, Vec<Value>> {
    let out = Command::new(python())
        .arg(fixtures().join("write_hub_parquet.py"))
        .arg(dir)
        .args(extra)
        .output()
        .expect("starting OXRL_PYTHON");
    assert!(
        out.status.success(),
        "write_hub_parquet.py failed (is pyarrow installed? scripts/setup.sh installs it):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

fn write_hub_dir(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    write_hub_dir_and(dir, &[])
}

fn shard(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

fn gsm8k_config(dir: &Path, data: Value) -> Value {
    let mut data = data;
    data["path"] = json!(dir);
    data["fields"] = json!({ "prompt": "question", "answer": "reward_model.ground_truth" });
    json!({ "task": "gsm8k", "data": data, "prompt": { "format": "plain" } })
}

#[test]
fn rows_are_what_pyarrow_reads_in_shard_order() {
    let tmp = tempfile::tempdir().unwrap();
    let seen = write_hub_dir(tmp.path());
    let no_mapping = BTreeMap::new();
    let opts = LoadOptions {
        fields: &no_mapping,
        required: &[],
        on_bad_row: OnBadRow::Stop,
    };
    let loaded = dataset::load(tmp.path(), None, opts).unwrap();
    let mut expected = Vec::new();
    for name in [
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
    ] {
        for (i, row) in seen[name].iter().enumerate() {
            let mut row = row.clone();
            row["id"] = json!(format!("{}:{}", shard(tmp.path(), name), i + 1));
            expected.push(row);
        }
    }
    let rows: Vec<Value> = loaded.dataset.rows().iter().map(|r| r.to_value()).collect();
    assert_eq!(rows, expected);
    assert_eq!(
        loaded.dataset.name(),
        format!("{}[split=train]", tmp.path().display())
    );
    // The nulls, the empty list and the null struct really are in the data compared above.
    assert_eq!(rows[1]["level"], Value::Null);
    assert_eq!(rows[2]["tags"], json!([]));
    assert_eq!(rows[5]["extra_info"], Value::Null);
}

#[test]
fn config_maps_nested_fields_reads_the_eval_split_and_numbers_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    write_hub_dir(tmp.path());
    let bad_row = format!(
        "{}:2: missing required field `answer` (read from column `reward_model.ground_truth`)",
        shard(tmp.path(), "data/train-00001-of-00002.parquet")
    );
    let cfg = gsm8k_config(
        tmp.path(),
        json!({ "eval_split": "test", "on_bad_row": "skip" }),
    );
    let env = load(cfg.clone(), tmp.path());
    assert_eq!((env.train().len(), env.eval().len()), (5, 2));
    let skipped: Vec<String> = env.skipped().iter().map(ToString::to_string).collect();
    assert_eq!(skipped, std::slice::from_ref(&bad_row));
    let first = env.train().get(0).unwrap();
    assert_eq!(first.get("prompt").unwrap(), "What is 1 + 2?");
    assert_eq!(first.get("answer").unwrap(), "3");
    assert_eq!(
        first.get("reward_model").unwrap(),
        &json!({"style": "rule"})
    );
    assert_eq!(
        env.eval().get(1).unwrap().get("prompt").unwrap(),
        "What is 102 + 103?"
    );

    let stop = gsm8k_config(tmp.path(), json!({ "on_bad_row": "stop" }));
    let err = LoadedEnv::from_config(&serde_json::from_value(stop).unwrap(), tmp.path(), None)
        .unwrap_err();
    assert_eq!(err.to_string(), bad_row);
}

#[test]
fn cursor_and_split_off_eval_behave_as_with_jsonl() {
    let tmp = tempfile::tempdir().unwrap();
    write_hub_dir(tmp.path());
    let cfg = gsm8k_config(
        tmp.path(),
        json!({ "on_bad_row": "skip", "eval_size": 2, "seed": 5 }),
    );
    let env = load(cfg.clone(), tmp.path());
    assert_eq!((env.train().len(), env.eval().len()), (3, 2));
    let mut sampler = env.sampler(None).unwrap();
    sampler.next_indices(4); // into the second epoch
    let saved = serde_json::to_string(sampler.cursor()).unwrap();
    let expected = sampler.next_indices(7);

    let reloaded = load(cfg, tmp.path());
    assert_eq!(reloaded.train().fingerprint(), env.train().fingerprint());
    let cursor: Cursor = serde_json::from_str(&saved).unwrap();
    assert_eq!(
        reloaded.sampler(Some(cursor)).unwrap().next_indices(7),
        expected
    );
}

#[test]
fn missing_splits_and_other_codecs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    let gzip = tmp.path().join("test_gzip.parquet");
    write_hub_dir_and(&hub, &[&gzip]);
    let cfg = gsm8k_config(&hub, json!({ "split": "validation" }));
    let err = LoadedEnv::from_config(&serde_json::from_value(cfg).unwrap(), tmp.path(), None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "dataset directory {}: no split `validation` (splits found: test, train)",
            hub.display()
        )
    );
    let cfg = gsm8k_config(&gzip, json!({}));
    let err = LoadedEnv::from_config(&serde_json::from_value(cfg).unwrap(), tmp.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{}: cannot read Parquet: column `question` is compressed with GZIP",
            gzip.display()
        )),
        "{err}"
    );
}
