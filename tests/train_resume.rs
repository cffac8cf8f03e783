//! Checkpoints resume exactly: a run killed with SIGKILL at any moment, or stopped with
//! SIGTERM, continues with `--resume auto` to the same final weights and the same per-step
//! metrics as an uninterrupted run with the same seed. The runs evaluate every 3 steps (not a
//! multiple of the checkpoint interval): evaluation must not disturb the training state, and
//! the resumed run logs the same evaluations, once each. The same holds for bf16-mixed runs and
//! for 8-bit AdamW moments.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use oxrl_tests::{is_eval_line, metrics_lines, smoke_train, terminate_cleanly};
use serde_json::Value;
use tch::Tensor;

const STEPS: &str = "steps=10";

fn train(out: &Path, extra: &[&str]) -> Command {
    let mut cmd = smoke_train(
        out,
        &[
            STEPS,
            "checkpoint.every=2",
            "eval.every=3",
            "env.data.eval_size=2",
        ],
    );
    cmd.args(extra);
    cmd
}

fn run(out: &Path, extra: &[&str]) {
    assert!(train(out, extra).status().unwrap().success());
}

/// Waits until the run has written its first checkpoint, then returns.
fn wait_for_checkpoint(child: &mut Child, out: &Path) {
    let first = out.join("checkpoints/step-00000002/state.json");
    let start = Instant::now();
    while !first.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "run ended before its first checkpoint"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(dir.join("final/model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// Per step: (step, reward, loss) from metrics.jsonl.
fn metrics(dir: &Path) -> Vec<(u64, f64, f64)> {
    metrics_lines(dir)
        .into_iter()
        .filter(|v| !is_eval_line(v))
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["reward"].as_f64().unwrap(),
                v["oxrl_learner_loss"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

/// The eval lines of metrics.jsonl, without their duration.
fn evals(dir: &Path) -> Vec<Value> {
    metrics_lines(dir)
        .into_iter()
        .filter(is_eval_line)
        .map(|mut v| {
            v.as_object_mut().unwrap().remove("time/eval_seconds");
            v
        })
        .collect()
}

fn assert_same_run(a: &Path, b: &Path) {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert!(ta.equal(tb), "{na} differs from the uninterrupted run");
    }
    assert_eq!(metrics(a), metrics(b));
    assert_eq!(metrics(a).len(), 10);
    assert_eq!(evals(a), evals(b));
    let steps: Vec<u64> = evals(a)
        .iter()
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [0, 3, 6, 9, 10]);
}

#[test]
fn killed_and_terminated_runs_resume_to_the_same_state() {
    let reference = tempfile::tempdir().unwrap();
    run(reference.path(), &[]);
    // The reference run changed the weights, so equality below is not vacuous.
    let random_init = tempfile::tempdir().unwrap();
    run(random_init.path(), &["--set", "steps=1"]);
    assert!(weights(reference.path())
        .iter()
        .zip(weights(random_init.path()))
        .any(|(a, b)| !a.1.equal(&b.1)));

    let killed = tempfile::tempdir().unwrap();
    let mut child = train(killed.path(), &[]).spawn().unwrap();
    wait_for_checkpoint(&mut child, killed.path());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    run(killed.path(), &["--resume", "auto"]);
    assert_same_run(reference.path(), killed.path());

    let terminated = tempfile::tempdir().unwrap();
    let mut child = train(terminated.path(), &[]).spawn().unwrap();
    wait_for_checkpoint(&mut child, terminated.path());
    terminate_cleanly(child);
    run(terminated.path(), &["--resume", "auto"]);
    assert_same_run(reference.path(), terminated.path());
}

/// Runs with `extra` uninterrupted, and stopped with SIGTERM after its first checkpoint and
/// resumed: both end in the same state. Returns the uninterrupted run's directory.
fn terminated_run_resumes_to_the_same_state(extra: &[&str]) -> tempfile::TempDir {
    let reference = tempfile::tempdir().unwrap();
    run(reference.path(), extra);
    let terminated = tempfile::tempdir().unwrap();
    let mut child = train(terminated.path(), extra).spawn().unwrap();
    wait_for_checkpoint(&mut child, terminated.path());
    terminate_cleanly(child);
    let resume: Vec<&str> = extra.iter().copied().chain(["--resume", "auto"]).collect();
    run(terminated.path(), &resume);
    assert_same_run(reference.path(), terminated.path());
    reference
}

/// The optimizer state the run in `dir` saved at its last step.
fn last_optimizer_state(dir: &Path) -> Vec<(String, Tensor)> {
    let path = dir.join("checkpoints/step-00000010/optimizer.safetensors");
    Tensor::read_safetensors(path).unwrap()
}

/// bf16 with f32 master weights: the masters are checkpointed with the moments, so a run
/// stopped with SIGTERM resumes to the bf16 weights and metrics of an uninterrupted one (the
/// smoke run's lr of 1e-3 leaves sub-ulp residues in the masters that the bf16 weights lack).
#[test]
fn a_bf16_mixed_run_resumes_to_the_same_state() {
    let bf16 = [
        "--set",
        "model.dtype=bf16",
        "--set",
        "learner.precision=bf16-mixed",
    ];
    let reference = terminated_run_resumes_to_the_same_state(&bf16);
    let saved = last_optimizer_state(reference.path());
    assert!(saved
        .iter()
        .any(|(n, t)| n.ends_with(".master") && t.kind() == tch::Kind::Float));
}

/// 8-bit AdamW moments (`learner.optim.optim = "adamw_8bit"`): the checkpoint holds their
/// codes and block maxima, and a run stopped with SIGTERM resumes to the weights and metrics
/// of an uninterrupted one.
#[test]
fn an_8bit_adamw_run_resumes_to_the_same_state() {
    let reference =
        terminated_run_resumes_to_the_same_state(&["--set", "learner.optim.optim=adamw_8bit"]);
    let saved = last_optimizer_state(reference.path());
    let coded = |suffix: &str, kind| {
        saved
            .iter()
            .filter(|(n, t)| n.ends_with(suffix) && t.kind() == kind)
            .count()
    };
    assert!(coded(".exp_avg.codes", tch::Kind::Uint8) > 0);
    assert_eq!(
        coded(".exp_avg.codes", tch::Kind::Uint8),
        coded(".exp_avg_sq.absmax", tch::Kind::Float)
    );
}

#[test]
fn resume_from_a_directory_that_is_not_a_checkpoint_is_an_error() {
    let out = tempfile::tempdir().unwrap();
    let output = train(out.path(), &["--resume", "/nonexistent/ckpt"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("/nonexistent/ckpt") && err.contains("not a checkpoint"),
        "{err}"
    );
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_previous_intact_one() {
    let out = tempfile::tempdir().unwrap();
    let sets = |steps: &'static str| [steps, "checkpoint.every=2", "checkpoint.keep_last=3"];
    assert!(smoke_train(out.path(), &sets("steps=4"))
        .status()
        .unwrap()
        .success());
    // Truncate the newest checkpoint's weights, as a full disk or a bad copy would.
    let newest = out.path().join("checkpoints/step-00000004");
    let weights = newest.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    // Naming it fails clearly...
    let output = smoke_train(out.path(), &sets("steps=6"))
        .args(["--resume"])
        .arg(&newest)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{err}");
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
    // ...and `--resume auto` says so and continues from the one before.
    let output = smoke_train(out.path(), &sets("steps=6"))
        .args(["--resume", "auto"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(
        err.contains("step-00000004 is damaged")
            && err.contains("resuming from")
            && err.contains("step-00000002"),
        "{err}"
    );
    let steps: Vec<u64> = metrics_lines(out.path())
        .iter()
        .filter(|l| !is_eval_line(l))
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(
        steps,
        [0, 1, 2, 3, 4, 5],
        "steps 2 and 3 ran again, once each"
    );
}

/// `final/` is written beside itself and swapped in whole: a run killed while writing it
/// (here by the file-size limit, SIGXFSZ, in the middle of `model.safetensors`) leaves the
/// previous `final/` as it was, never a complete-looking directory with truncated weights.
#[test]
fn a_run_killed_while_writing_final_leaves_the_previous_final_whole() {
    let out = tempfile::tempdir().unwrap();
    assert!(smoke_train(out.path(), &["steps=2"])
        .status()
        .unwrap()
        .success());
    let final_weights = out.path().join("final/model.safetensors");
    let before = std::fs::read(&final_weights).unwrap();
    assert!(before.len() > 2 << 20, "the test needs weights over 2 MiB");
    // A finished run resumed goes straight to writing final/ again; 1 MiB files at most.
    let mut resume = smoke_train(out.path(), &["steps=2"]);
    let resumed = status_with_file_limit(resume.args(["--resume", "auto"]), 1 << 20);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&resumed),
        Some(libc::SIGXFSZ),
        "the rewrite of final/ should have hit the file-size limit"
    );
    let after = std::fs::read(&final_weights).unwrap();
    assert!(
        after == before,
        "final/model.safetensors changed: {} bytes, was {}",
        after.len(),
        before.len()
    );
    let model = oxrl::Pretrained::load(&out.path().join("final"), oxrl::LoadOptions::default());
    assert!(model.is_ok(), "final/ is not loadable after the kill");
}

/// Runs `cmd` with its file-size limit (`RLIMIT_FSIZE`) at `bytes`: its exit status.
fn status_with_file_limit(cmd: &mut Command, bytes: u64) -> std::process::ExitStatus {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd.stderr(std::process::Stdio::null()).status().unwrap()
}
