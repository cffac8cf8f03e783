//! GRPO end to end on the real vLLM CPU build (`make test` installs it; `OXRL_VLLM_PYTHON`
//! names its python): oxrl launches servers, trains on their completions, syncs the weights
//! after every update, corrects for and logs the engine-vs-learner logprob gap, restarts a
//! server that dies, resumes a killed run on fresh servers, stops the servers with the run,
//! and serves two data-parallel ranks from rank 0's server. The model is `configs/smoke.toml`'s
//! tiny random one (a 135M run's checkpoints and weight copies take ~3 GB of disk); the
//! bundled model against vLLM is `vllm_rollout.rs`; `configs_run.rs` runs a step of
//! `configs/grpo_vllm.toml`.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use oxrl_tests::{metrics_lines, smoke_train};
use serde_json::Value;

/// configs/smoke.toml (its length reward moves the weights every step) on vLLM, with one
/// attention head of 32: vLLM's CPU attention has no kernel for heads of 8.
const ON_VLLM: [&str; 3] = [
    "rollout.engine=vllm",
    "model.random.num_attention_heads=1",
    "model.random.num_key_value_heads=1",
];

/// One run at a time: each launches vLLM servers, and two machines' worth of them would
/// starve each other of the 2 cores.
fn one_run_at_a_time() -> MutexGuard<'static, ()> {
    static RUNS: Mutex<()> = Mutex::new(());
    assert!(
        std::env::var_os("OXRL_VLLM_PYTHON").is_some(),
        "OXRL_VLLM_PYTHON is not set: run `make test` (it runs scripts/setup_vllm.sh)"
    );
    RUNS.lock().unwrap_or_else(|e| e.into_inner())
}

fn sets<'a>(more: &[&'a str]) -> Vec<&'a str> {
    ON_VLLM
        .iter()
        .copied()
        .chain(more.iter().copied())
        .collect()
}

/// The launched servers' process ids, from `vllm/servers.json`.
fn server_pids(out: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(out.join("vllm/servers.json")).unwrap();
    let list: Vec<Value> = serde_json::from_str(&text).unwrap();
    list.iter()
        .map(|s| s["pid"].as_i64().unwrap() as i32)
        .collect()
}

fn server_log(out: &Path, i: usize) -> String {
    std::fs::read_to_string(out.join(format!("vllm/server-{i}.log"))).unwrap_or_default()
}

/// Runs `cmd` (a training run into `out`) to the end, asserting it succeeded (its stderr and
/// the first server's log otherwise); the run's `metrics.jsonl` lines.
fn train_to_the_end(mut cmd: Command, out: &Path) -> Vec<Value> {
    let output = cmd.output().unwrap();
    assert!(
        output.status.success(),
        "{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server_log(out, 0)
    );
    metrics_lines(out)
}

/// Waits until `metrics.jsonl` has `n` lines.
fn wait_for_steps(out: &Path, n: usize, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let done = std::fs::read_to_string(out.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if done >= n {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) before step {n}:\n{}",
                server_log(out, 0)
            );
        }
        assert!(Instant::now() < deadline, "no step {n} after 15 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether any process of the group `pgid` (a launched server and its engine processes)
/// still exists.
fn alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks that a process of the group exists.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// The f32 gap between vLLM's logprobs and the learner's is ~1e-5 per token; a server left
/// on older weights is far off (the weights move every step).
fn assert_in_sync(line: &Value) {
    let mean = line["rollout/logprob_abs_diff_mean"].as_f64().unwrap();
    let max = line["rollout/logprob_abs_diff_max"].as_f64().unwrap();
    let kl = line["rollout/logprob_kl"].as_f64().unwrap();
    assert!(
        mean < 1e-3 && max < 5e-2 && (0.0..1e-4).contains(&kl),
        "{line}"
    );
}

#[test]
fn grpo_trains_on_a_vllm_server_that_oxrl_launches() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let lines = train_to_the_end(smoke_train(out.path(), &ON_VLLM), out.path());
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(lines.len(), 3, "one line per step");
    for (step, line) in lines.iter().enumerate() {
        for key in ["reward", "oxrl_learner_loss"] {
            assert!(line[key].is_number(), "{key} missing: {line}");
        }
        // Synced before every step's generation but the first (the launched server starts
        // with the policy).
        assert_eq!(line["time/sync_seconds"].is_number(), step > 0, "{line}");
        // The weights move every step (lr 1e-3) and the gap is measured against the
        // learner's after the previous update: it stays this small only because each update
        // reached the server.
        assert_in_sync(line);
        assert!(
            line["oxrl_learner_grad_norm"].as_f64().unwrap() > 0.0,
            "{line}"
        );
        // The rollout correction pi_old / mu is ~1 for every token: nothing is truncated.
        let weight = line["oxrl_learner_rollout_is_weight_mean"]
            .as_f64()
            .unwrap();
        assert!((weight - 1.0).abs() < 1e-3, "{line}");
        assert_eq!(line["oxrl_learner_rollout_is_clipped_fraction"], 0.0);
    }
    let synced: Vec<_> = std::fs::read_dir(out.path().join("vllm/sync"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(synced.len(), 1, "only the newest synced weights are kept");
    assert!(out.path().join("final/model.safetensors").exists());
    let left = std::process::Command::new("pgrep")
        .args(["-f", &out.path().join("vllm/model").display().to_string()])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the vLLM server outlived the run");
}

/// A data-parallel run on vLLM: rank 0 launches the server and syncs it, rank 1 follows it,
/// each generates its share there, and every rank's tokens stay in sync with the learner.
#[test]
fn two_ranks_generate_their_shares_on_rank_0s_vllm_server() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let mut cmd = smoke_train(out.path(), &ON_VLLM);
    cmd.args(["--nproc", "2"]).env("OMP_NUM_THREADS", "1");
    let lines = train_to_the_end(cmd, out.path());
    assert_eq!(lines.len(), 3, "one line per step");
    for (step, line) in lines.iter().enumerate() {
        // 2 prompts x 4 completions, one prompt per rank.
        assert_eq!(line["oxrl_learner_samples"], 8.0, "{line}");
        assert_eq!(line["time/sync_seconds"].is_number(), step > 0, "{line}");
        // Over both ranks' tokens: a rank on older weights would be far off.
        assert_in_sync(line);
    }
    assert_eq!(server_pids(out.path()).len(), 1, "rank 0 alone launches");
    let left = std::process::Command::new("pgrep")
        .args(["-f", &out.path().join("vllm/model").display().to_string()])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the vLLM server outlived the run");
}

/// A multi-turn task on vLLM: every turn of the calculator episodes is generated by the
/// server from the episode's token ledger, and the learner's recomputed logprobs of the model's
/// tokens (the environment's masked) equal the server's.
#[test]
fn calculator_episodes_play_out_on_vllm() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke_tool.toml");
    let cmd = oxrl_tests::train_command(&config, out.path(), &ON_VLLM);
    let lines = train_to_the_end(cmd, out.path());
    assert_eq!(lines.len(), 2);
    for line in &lines {
        assert!(
            line["episodes/turns_mean"].as_f64().unwrap() >= 2.0,
            "{line}"
        );
        let model = line["episodes/model_tokens_mean"].as_f64().unwrap();
        assert_eq!(line["oxrl_learner_trained_tokens"], model * 8.0, "{line}");
        assert_in_sync(line);
    }
}

/// Two replicas share each step's prompts; one killed (its whole process group, SIGKILL)
/// mid-run is restarted, re-synced to the current weights, and the run finishes with every
/// step's logprobs in sync.
#[test]
fn two_replicas_share_a_run_and_a_killed_one_is_restarted_and_resynced() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let mut child = smoke_train(out.path(), &sets(&["rollout.vllm.replicas=2", "steps=6"]))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_steps(out.path(), 1, &mut child);
    let pids = server_pids(out.path());
    assert_eq!(pids.len(), 2);
    // SAFETY: the server's own process group (oxrl starts each server in one).
    assert_eq!(unsafe { libc::kill(-pids[1], libc::SIGKILL) }, 0);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{stderr}\nserver 1 log:\n{}",
        server_log(out.path(), 1)
    );
    let lines = metrics_lines(out.path());
    assert_eq!(lines.len(), 6, "every step ran");
    lines.iter().for_each(assert_in_sync);
    let restarted = server_log(out.path(), 1);
    assert!(
        restarted.contains("oxrl: restarting the vLLM server"),
        "{stderr}"
    );
    assert!(
        stderr.contains("vLLM replica 1"),
        "the restart is reported: {stderr}"
    );
    // Both replicas answered completions, the restarted one after its restart too.
    let answered = |log: &str| log.matches("POST /v1/completions").count();
    assert!(answered(&server_log(out.path(), 0)) > 0);
    let after_restart = restarted.split("oxrl: restarting").nth(1).unwrap();
    assert!(
        answered(after_restart) > 0,
        "the restarted replica got work"
    );
    let new_pids = server_pids(out.path());
    assert_ne!(new_pids[1], pids[1], "servers.json names the new process");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        new_pids.iter().all(|&p| !alive(p)),
        "servers outlived the run"
    );
}

/// A run killed with SIGKILL takes its servers with it; `--resume auto` launches new ones from
/// the checkpoint's weights, and the resumed steps' logprobs match the learner's.
#[test]
fn a_killed_vllm_run_resumes_on_new_servers_with_its_checkpoints_weights() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let run = || smoke_train(out.path(), &sets(&["steps=4", "checkpoint.every=1"]));
    let mut child = run().stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for_steps(out.path(), 2, &mut child);
    let pids = server_pids(out.path());
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !pids.iter().any(|&p| alive(p)),
        "the servers outlived a SIGKILLed run"
    );
    let mut resume = run();
    resume.args(["--resume", "auto"]);
    let lines = train_to_the_end(resume, out.path());
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(*steps.last().unwrap(), 3, "{steps:?}");
    // Every resumed step ran on the new servers, in sync with the checkpoint's weights
    // (launched from vllm/model, rewritten from the checkpoint at start).
    lines.iter().for_each(assert_in_sync);
    assert!(out.path().join("final/model.safetensors").exists());
}

/// `rollout.async` on vLLM: the servers generate step k+1 while the learner trains on step k,
/// and the weights are synced once that generation is done, so a batch is at most one version
/// old; the learner's recomputed logprobs (current weights) correct for it.
#[test]
fn async_rollouts_on_vllm_generate_ahead_within_the_staleness_bound() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let lines = train_to_the_end(
        smoke_train(out.path(), &sets(&["rollout.async=true", "steps=4"])),
        out.path(),
    );
    assert_eq!(lines.len(), 4);
    for (step, line) in lines.iter().enumerate() {
        let staleness = line["rollout/staleness"].as_u64().unwrap();
        assert!(staleness <= 1, "{line}");
        let weight = line["oxrl_learner_rollout_is_weight_mean"]
            .as_f64()
            .unwrap();
        assert_eq!(line["time/sync_seconds"].is_number(), step > 0, "{line}");
        match staleness {
            // Generated by the weights the learner had: the gap is float rounding.
            0 => {
                assert_in_sync(line);
                assert!((weight - 1.0).abs() < 1e-3, "{line}");
            }
            // One update behind (lr 1e-3): close to, but not exactly, on-policy; the gap is
            // not reported because it would include the update.
            _ => {
                assert!((weight - 1.0).abs() < 0.2, "{line}");
                assert!(
                    line.get("rollout/logprob_abs_diff_mean").is_none(),
                    "{line}"
                );
            }
        }
    }
    assert!(
        lines.iter().any(|l| l["rollout/staleness"] == 1),
        "no batch was generated ahead"
    );
}

/// A LoRA run serves its frozen base on vLLM and pushes only the adapters each step
/// (`/v1/load_lora_adapter`, a new name per version, the previous one unloaded). With a large
/// learning rate the adapters move the policy far from the base, so the gap stays at float
/// rounding only if vLLM applies exactly the learner's adapters.
#[test]
fn a_lora_run_pushes_only_its_adapters_to_vllm() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let lora = [
        "model.lora.r=4",
        "model.lora.lora_alpha=8",
        "learner.optim.lr=0.05",
    ];
    let lines = train_to_the_end(smoke_train(out.path(), &sets(&lora)), out.path());
    let log = server_log(out.path(), 0);
    assert_eq!(lines.len(), 3);
    for line in &lines {
        assert_in_sync(line);
        let mean = line["rollout/logprob_abs_diff_mean"].as_f64().unwrap();
        assert!(mean < 1e-4, "{line}");
    }
    // Loaded once at start (version 0) and before each later step; each replaced the one
    // before.
    for version in 0..=2 {
        let name = format!("oxrl-policy-v{version}");
        assert!(
            log.contains(&format!("name '{name}'")),
            "{name} never loaded:\n{log}"
        );
        if version < 2 {
            let removed = format!("Removed LoRA adapter: name '{name}'");
            assert!(log.contains(&removed), "{name} was never unloaded:\n{log}");
        }
    }
    let synced: Vec<_> = std::fs::read_dir(out.path().join("vllm/sync"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(synced.len(), 1);
    assert!(synced[0].join("adapter_model.safetensors").exists());
    assert!(
        !synced[0].join("model.safetensors").exists(),
        "only the adapters move"
    );
}

/// `rollout.vllm.sync_every = 2`: the servers get the weights after every second update, so
/// every other batch is one version old (within `rollout.max_staleness = 1`); fresh batches
/// are in sync, and the learner's recomputation corrects the stale ones.
#[test]
fn weights_synced_every_second_update_leave_every_other_batch_one_version_old() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let lines = train_to_the_end(
        smoke_train(out.path(), &sets(&["rollout.vllm.sync_every=2", "steps=4"])),
        out.path(),
    );
    let staleness: Vec<u64> = lines
        .iter()
        .map(|l| l["rollout/staleness"].as_u64().unwrap())
        .collect();
    assert_eq!(staleness, [0, 1, 0, 1]);
    for (step, line) in lines.iter().enumerate() {
        // Before step 2's generation only: the servers are then 2 versions behind.
        assert_eq!(line["time/sync_seconds"].is_number(), step == 2, "{line}");
        let weight = line["oxrl_learner_rollout_is_weight_mean"]
            .as_f64()
            .unwrap();
        if step % 2 == 0 {
            assert_in_sync(line);
        } else {
            assert!(
                line.get("rollout/logprob_abs_diff_mean").is_none(),
                "{line}"
            );
            assert!((weight - 1.0).abs() < 0.2 && weight != 1.0, "{line}");
        }
    }
}

/// A replica that cannot come back (its model directory is gone when oxrl restarts it) stops
/// the run before the failing step's update, with a checkpoint of the state before that step;
/// `--resume auto` replays the step on new servers and finishes the run.
#[test]
fn a_replica_that_cannot_come_back_stops_the_run_with_a_checkpoint_to_resume_from() {
    let _one = one_run_at_a_time();
    let out = tempfile::tempdir().unwrap();
    let run = || smoke_train(out.path(), &sets(&["steps=4", "checkpoint.every=0"]));
    let mut child = run().stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for_steps(out.path(), 1, &mut child);
    std::fs::remove_dir_all(out.path().join("vllm/model")).unwrap();
    let pid = server_pids(out.path())[0];
    // SAFETY: the server's own process group.
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    let failed = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "the run went on without a server");
    assert!(stderr.contains("restarting vLLM replica 0"), "{stderr}");
    assert!(stderr.contains("continue with --resume auto"), "{stderr}");
    let done = metrics_lines(out.path()).len();
    let checkpoint = out.path().join(format!("checkpoints/step-{done:08}"));
    assert!(
        checkpoint.exists(),
        "no checkpoint before step {done}: {stderr}"
    );

    let mut resume = run();
    resume.args(["--resume", "auto"]);
    let lines = train_to_the_end(resume, out.path());
    let steps: Vec<u64> = lines.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 2, 3], "each step once");
    lines.iter().skip(done).for_each(assert_in_sync);
}
