//! Data-parallel training (`oxrl train --nproc 2`, Gloo through libtorch's c10d): two ranks
//! reach the weights and losses of one process on the same global batch; a run resumes on
//! another number of ranks; a killed rank ends the whole job with a message naming it, and
//! `--resume auto` continues from the last checkpoint (while it ran, rank 0's `/status` showed
//! both ranks' live phases); options the ranks cannot share yet are refused by name. DPO on
//! the shipped preference pairs (no generation, so both sides train on the very same tokens)
//! with a tiny random model.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use oxrl_tests::{oxrl_bin, smoke_train, training_lines, TINY_MODEL};
use serde_json::Value;
use tch::Tensor;

/// `oxrl train configs/dpo_pairs.toml` with the tiny model into `out`, plus `sets` and
/// `args` (`--nproc 2`, `--resume auto`).
fn dpo(out: &Path, sets: &[&str], args: &[&str]) -> Command {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/dpo_pairs.toml");
    let mut cmd = Command::new(oxrl_bin());
    cmd.arg("train").arg(config).args(args);
    let output_dir = format!("output_dir={}", out.display());
    let fixed = [
        "metrics.listen=\"\"",
        "eval.every=0",
        "rollout.prompts_per_step=4",
        "learner.optim.lr=1e-3",
        output_dir.as_str(),
    ];
    for set in TINY_MODEL.iter().chain(&fixed).chain(sets) {
        cmd.args(["--set", set]);
    }
    cmd.env("OMP_NUM_THREADS", "1");
    cmd
}

/// `oxrl train configs/smoke.toml` into `out` with `sets`, on `nproc` ranks (a plain single
/// process for 1), one OpenMP thread each.
fn smoke_on(out: &Path, sets: &[&str], nproc: usize) -> Command {
    let mut cmd = smoke_train(out, sets);
    if nproc > 1 {
        cmd.args(["--nproc", &nproc.to_string()]);
    }
    cmd.env("OMP_NUM_THREADS", "1");
    cmd
}

/// The lines of a run's `replay.jsonl`.
fn replay(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("replay.jsonl")).unwrap();
    (text.lines())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn succeed(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn final_weights(out: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(out.join("final/model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .map(|(name, x)| (x - &b[name]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

fn losses(out: &Path) -> Vec<f64> {
    training_lines(out)
        .iter()
        .map(|l| l["oxrl_learner_loss"].as_f64().unwrap())
        .collect()
}

/// Float reduction order differs between one process and a sum over ranks: weights agree to
/// this (they are O(1)), losses to a tenth of it.
const TOL: f64 = 1e-5;

#[test]
fn two_ranks_reach_the_weights_and_losses_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    succeed(&mut dpo(&one, &["steps=3"], &[]));
    succeed(&mut dpo(&two, &["steps=3"], &["--nproc", "2"]));
    let (a, b) = (final_weights(&one), final_weights(&two));
    let d = max_diff(&a, &b);
    assert!(d < TOL, "final weights differ by {d}");
    let (la, lb) = (losses(&one), losses(&two));
    assert_eq!(la.len(), 3);
    assert_eq!(lb.len(), 3, "rank 0 alone logs each step once");
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < TOL / 10.0, "loss {x} vs {y}");
    }
    assert!((la[0] - la[2]).abs() > 1e-3, "the run should learn: {la:?}");
    // Counts are the job's, summed over the ranks; means and extremes agree to rounding.
    for (x, y) in training_lines(&one).iter().zip(&training_lines(&two)) {
        for key in [
            "oxrl_learner_trained_tokens",
            "oxrl_learner_samples",
            "oxrl_learner_dpo_rewards_accuracy",
            "reward",
        ] {
            let (a, b) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((a - b).abs() < 1e-9, "{key}: {a} vs {b}");
        }
    }
}

#[test]
fn a_run_resumes_on_another_number_of_ranks() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, split) = (dir.path().join("straight"), dir.path().join("split"));
    succeed(&mut dpo(&straight, &["steps=4"], &[]));
    let every = ["checkpoint.every=1"];
    succeed(&mut dpo(
        &split,
        &[&every[..], &["steps=2"]].concat(),
        &["--nproc", "2"],
    ));
    succeed(&mut dpo(
        &split,
        &[&every[..], &["steps=4"]].concat(),
        &["--resume", "auto"],
    ));
    let d = max_diff(&final_weights(&straight), &final_weights(&split));
    assert!(
        d < TOL,
        "2 steps on 2 ranks + 2 on 1 vs 4 on 1: weights differ by {d}"
    );
    assert_eq!(losses(&split).len(), 4);
}

/// The pids of the processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The parent pid is the second field after the command name's closing paren.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

fn has_env(pid: u32, var: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|kv| kv == var.as_bytes())
}

/// Rank 0's `/status` `ranks`: each rank's (phase, step), by rank.
fn rank_phases(out: &Path) -> Vec<(String, u64)> {
    let addr = std::fs::read_to_string(out.join("metrics_address")).unwrap();
    let (code, body) = oxrl_tests::http_get(&addr, "/status").expect("GET /status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ranks = status["ranks"]
        .as_array()
        .unwrap_or_else(|| panic!("{status}"));
    (ranks.iter().enumerate())
        .map(|(i, r)| {
            assert_eq!(r["rank"], i, "{status}");
            let phase = r["phase"].as_str().unwrap_or_else(|| panic!("{status}"));
            (phase.to_owned(), r["step"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// While the job runs, rank 0's `/status` shows both ranks' live phases.
#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sets = [
        "steps=100000",
        "checkpoint.every=1",
        "dist.timeout_seconds=20",
        "metrics.listen=\"127.0.0.1:0\"",
    ];
    let job = dpo(&out, &sets, &["--nproc", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few steps, then kill rank 1 as the OOM killer would.
    let start = Instant::now();
    while !out.join("metrics.jsonl").exists() || training_lines(&out).len() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job made no progress"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let phases = rank_phases(&out);
    assert_eq!(phases.len(), 2, "{phases:?}");
    let known = ["generate", "reward", "update", "metrics", "checkpoint"];
    for (phase, step) in &phases {
        assert!(known.contains(&phase.as_str()), "{phases:?}");
        assert!(*step >= 2, "{phases:?}");
    }
    let rank1 = children(job.id())
        .into_iter()
        .find(|&pid| has_env(pid, "RANK=1"))
        .expect("rank 1 is a child of the launcher");
    assert!(Command::new("kill")
        .args(["-KILL", &rank1.to_string()])
        .status()
        .unwrap()
        .success());
    let killed = Instant::now();
    let ended = job.wait_with_output().unwrap();
    assert!(!ended.status.success());
    let stderr = String::from_utf8_lossy(&ended.stderr);
    assert!(
        stderr.contains("rank 1 of 2 was killed by signal 9; the other ranks were stopped"),
        "{stderr}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(60),
        "{:?}",
        killed.elapsed()
    );
    // The last checkpoint is intact: one process continues from it.
    let done = training_lines(&out).len();
    let steps = format!("steps={}", done + 1);
    succeed(&mut dpo(
        &out,
        &["checkpoint.every=1", &steps],
        &["--resume", "auto"],
    ));
    assert!(out.join("final/model.safetensors").exists());
}

#[test]
fn grpo_generates_on_two_ranks_sync_or_async_and_refuses_what_they_cannot_share() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let quiet = ["metrics.listen=\"\"", "log.samples=\"all\""];
    succeed(&mut smoke_on(&one, &quiet, 1));
    succeed(&mut smoke_on(&two, &quiet, 2));
    let (a, b) = (training_lines(&one), training_lines(&two));
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        // Counted over both ranks' completions (2 prompts x 4): the random model's answers
        // never parse, so every one is a failure of the math reward.
        let key = "rewards/math/failures";
        assert_eq!(x[key].as_f64(), Some(8.0), "{x}");
        assert_eq!(y[key].as_f64(), Some(8.0), "{y}");
        // Each rank's phase times; one process has none.
        for rank in 0..2 {
            assert!(
                y[format!("time/rank{rank}/update_seconds")].as_f64() > Some(0.0),
                "{y}"
            );
        }
        assert!(x.get("time/rank0/update_seconds").is_none());
    }
    // Rank 0 writes every rank's samples, in one process's order and groups.
    let groups = |out: &Path| -> Vec<(u64, u64, Value)> {
        (replay(out).into_iter())
            .map(|v| {
                let id = |k: &str| v[k].as_u64().unwrap();
                (id("step"), id("group_id"), v["prompt_ids"].clone())
            })
            .collect()
    };
    let (g1, g2) = (groups(&one), groups(&two));
    assert_eq!(g1.len(), 3 * 8);
    assert_eq!(g1, g2);
    let distinct: std::collections::HashSet<u64> = g1.iter().map(|g| g.1).collect();
    assert_eq!(distinct.len(), 3 * 2, "a group id per prompt and step");
    let lines = |out: &Path| {
        let text = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
        text.lines().count()
    };
    assert_eq!((lines(&one), lines(&two)), (3 * 2, 3 * 2));
    // Async rollouts: each rank's worker generates its share of the next step.
    let (a1, a2) = (dir.path().join("async-one"), dir.path().join("async-two"));
    let sets = ["metrics.listen=\"\"", "rollout.async=true"];
    succeed(&mut smoke_on(&a1, &sets, 1));
    succeed(&mut smoke_on(&a2, &sets, 2));
    let (a, b) = (training_lines(&a1), training_lines(&a2));
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        for key in [
            "rollout/staleness",
            "rollout/dropped_stale_samples",
            "oxrl_learner_samples",
        ] {
            assert_eq!(x[key], y[key], "{key}: {x} vs {y}");
        }
    }
    assert_eq!(b[2]["rollout/staleness"], 1, "{}", b[2]);
    let vllm_async = [
        "metrics.listen=\"\"",
        "rollout.engine=\"vllm\"",
        "rollout.async=true",
    ];
    let refused = smoke_on(&dir.path().join("vllm"), &vllm_async, 2)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("do not support yet: rollout.async on vLLM"),
        "{stderr}"
    );
}

/// GRPO end to end: while the two ranks sample the very tokens one process samples (each
/// completion from its own random stream; logits agree to float rounding), they reach its
/// weights. At temperature 0.6 this run's first token flip at a near-tie (the batches differ
/// in shape) comes in step 3, so two steps compare exactly; a flip would show here as
/// different tokens, named, not as a weight tolerance.
#[test]
fn grpo_on_two_ranks_reaches_the_weights_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let sets = [
        "metrics.listen=\"\"",
        "steps=2",
        "rollout.sampling.temperature=0.6",
        "log.samples=\"all\"",
    ];
    succeed(&mut smoke_on(&one, &sets, 1));
    succeed(&mut smoke_on(&two, &sets, 2));
    let tokens = |out: &Path| -> Vec<Value> {
        (replay(out).into_iter())
            .map(|v| v["completion_ids"].clone())
            .collect()
    };
    let (t1, t2) = (tokens(&one), tokens(&two));
    assert_eq!(t1.len(), 2 * 8);
    assert!(t1 == t2, "the ranks sampled other tokens than one process");
    let d = max_diff(&final_weights(&one), &final_weights(&two));
    assert!(d < TOL, "final weights differ by {d}");
    for (a, b) in losses(&one).iter().zip(losses(&two)) {
        assert!((a - b).abs() < TOL / 10.0, "losses {a} vs {b}");
    }
}

#[test]
fn the_ranks_share_the_evaluation_and_report_what_one_process_does() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    // 20 held-out prompts: batches of 8, 8 and 4, two of them on rank 0 and one on rank 1.
    let sets = [
        "metrics.listen=\"\"",
        "steps=1",
        "env.data.eval_size=20",
        "eval.every=10",
        "eval.samples=2",
        "eval.k=2",
        "eval.temperature=1.0",
    ];
    succeed(&mut smoke_on(&one, &sets, 1));
    succeed(&mut smoke_on(&two, &sets, 2));
    let first_eval = |out: &Path| {
        oxrl_tests::metrics_lines(out)
            .into_iter()
            .find(oxrl_tests::is_eval_line)
            .expect("an eval line before the first step")
    };
    let (a, b) = (first_eval(&one), first_eval(&two));
    // Before any update both sides hold the same weights and sample the same batches.
    for key in [
        "eval/pass_at_1",
        "eval/pass_at_k",
        "eval/majority_vote",
        "eval/reward_mean",
        "eval/prompts",
    ] {
        assert_eq!(a[key], b[key], "{key}: {a} vs {b}");
    }
    assert!(
        a["eval/reward_mean"].as_f64().unwrap() < 0.0,
        "the length penalty varies: {a}"
    );
}

/// GRPO's dynamic sampling on two ranks counts informative groups over the job and shares
/// each refill batch as one process would: the same refills and trained samples.
#[test]
fn dynamic_sampling_counts_informative_groups_over_the_job() {
    let dir = tempfile::tempdir().unwrap();
    // The smoke config's length reward makes every group informative (no refill, though
    // each rank alone has only half the groups wanted); the math reward alone never pays a
    // random model (every group ties: refills up to the cap, nothing trained).
    let cases: [(&str, &[&str], u64, f64); 2] = [
        ("length", &[], 0, 8.0),
        ("math", &["rewards=[{name = \"math\"}]"], 2, 24.0),
    ];
    for (name, sets, refills, samples) in cases {
        for nproc in [1, 2] {
            let out = dir.path().join(format!("{name}-{nproc}"));
            let mut all = vec![
                "metrics.listen=\"\"",
                "learner.grpo.dynamic_sampling=true",
                "learner.grpo.max_refill_batches=2",
                "steps=1",
            ];
            all.extend(sets);
            succeed(&mut smoke_on(&out, &all, nproc));
            let line = &training_lines(&out)[0];
            let what = format!("{name}, {nproc} rank(s): {line}");
            assert_eq!(line["rollout/refill_batches"], refills, "{what}");
            assert_eq!(line["oxrl_learner_samples"], samples, "{what}");
        }
    }
}
