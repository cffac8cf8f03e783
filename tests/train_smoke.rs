//! `oxrl train configs/smoke.toml` end to end: a tiny random model with the bundled tokenizer
//! runs GRPO steps through the real rollout engine, math reward and learner; logs, samples and
//! a loadable final model come out, and on-policy importance ratios are 1.

use std::process::Command;

use oxrl::{LoadOptions, Pretrained};
use oxrl_tests::{
    is_eval_line, metrics_lines, oxrl_bin, smoke_config as config, smoke_train, training_lines,
};
use serde_json::Value;

#[test]
fn smoke_run_writes_logs_and_a_loadable_model() {
    let out = tempfile::tempdir().unwrap();
    let status = smoke_train(out.path(), &[]).status().unwrap();
    assert!(status.success());
    let lines: Vec<Value> = metrics_lines(out.path());
    assert_eq!(lines.len(), 3, "one metrics line per step");
    for line in &lines {
        for key in [
            "reward",
            "rewards/math/mean",
            "completions/mean_length",
            "oxrl_learner_loss",
            "rollout/tokens_per_second",
        ] {
            assert!(line.get(key).is_some(), "missing {key} in {line}");
        }
        // Rollout and learner score the same tokens with the same weights before the update.
        let ratio = line["oxrl_learner_ratio_max"].as_f64().unwrap();
        assert!((ratio - 1.0).abs() < 1e-4, "on-policy ratio {ratio}");
    }
    // The saved config keeps `${VAR}` references: values from the environment (API keys,
    // tokens) never reach the disk.
    let saved = std::fs::read_to_string(out.path().join("config.toml")).unwrap();
    let secret = std::env::var("OXRL_SMOLLM2_GGUF").unwrap();
    assert!(
        saved.contains("${OXRL_SMOLLM2_GGUF}") && !saved.contains(&secret),
        "{saved}"
    );
    let samples = std::fs::read_to_string(out.path().join("samples.jsonl")).unwrap();
    assert!(samples.lines().count() >= 2 && samples.contains("\"completion\""));
    for line in samples.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["advantage"].is_number() && v["prompt"].is_string(), "{v}");
    }
    let model = Pretrained::load(&out.path().join("final"), LoadOptions::default()).unwrap();
    assert_eq!(model.model.config().hidden_size, 32);
    assert!(!model
        .tokenizer
        .encode("What is 2 + 2?", false)
        .unwrap()
        .is_empty());
}

#[test]
fn lora_runs_train_adapters_and_export_a_merged_plain_model() {
    let out = tempfile::tempdir().unwrap();
    let status = smoke_train(out.path(), &["model.lora.r=4", "steps=2"])
        .status()
        .unwrap();
    assert!(status.success());
    let names: Vec<String> =
        tch::Tensor::read_safetensors(out.path().join("final/model.safetensors"))
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
    assert!(
        names.iter().all(|n| !n.contains("lora_")),
        "adapters are merged on export"
    );
    assert!(Pretrained::load(&out.path().join("final"), LoadOptions::default()).is_ok());

    // `oxrl export` of the last checkpoint gives the same merged model as the run's final/.
    let exported = out.path().join("exported");
    let checkpoint = out.path().join("checkpoints/step-00000002");
    let status = Command::new(oxrl_bin())
        .args(["export", "--checkpoint"])
        .arg(&checkpoint)
        .arg(&exported)
        .status()
        .unwrap();
    assert!(status.success());
    let read = |dir: &std::path::Path| {
        let mut t = tch::Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    for ((a, ta), (b, tb)) in read(&out.path().join("final")).iter().zip(read(&exported)) {
        assert_eq!(a, &b);
        assert!(ta.equal(&tb), "{a} differs between final/ and the export");
    }
    assert!(Pretrained::load(&exported, LoadOptions::default()).is_ok());
}

#[test]
fn config_errors_name_the_file_and_key() {
    let check = |extra: &[&str]| {
        let out = Command::new(oxrl_bin())
            .args(["config", "check"])
            .arg(config())
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(check(&[]).0);
    let (ok, err) = check(&["--set", "rollout.group_sizee=4"]);
    assert!(
        !ok && err.contains("smoke.toml")
            && err.contains("rollout.group_sizee")
            && err.contains("did you mean `group_size`"),
        "{err}"
    );
    let (ok, err) = check(&["--set", "learner.algorithm=ppo2"]);
    assert!(!ok && err.contains("learner.algorithm"), "{err}");
    let (ok, err) = check(&["--set", "rollout.sampling.top_p=0"]);
    assert!(!ok && err.contains("top_p"), "{err}");
    let (ok, err) = check(&["--set", "eval.evry=5"]);
    assert!(
        !ok && err.contains("smoke.toml")
            && err.contains("eval.evry")
            && err.contains("did you mean `every`"),
        "{err}"
    );
    let (ok, err) = check(&["--set", "eval.k=2"]);
    assert!(
        !ok && err.contains("smoke.toml") && err.contains("eval.k = 2"),
        "{err}"
    );
    // A reward's own options are checked too (each reward parses its own table).
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.toml");
    let text = std::fs::read_to_string(config()).unwrap();
    std::fs::write(&typo, text.replace("overlong_max =", "overlong_maxx =")).unwrap();
    let out = Command::new(oxrl_bin())
        .args(["config", "check"])
        .arg(&typo)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("typo.toml")
            && err.contains("length")
            && err.contains("overlong_maxx"),
        "{err}"
    );
}

#[test]
fn a_diverging_run_skips_nan_steps_then_stops_with_a_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    // An absurd learning rate blows the weights up after the first update.
    let output = smoke_train(out.path(), &["learner.optim.lr=1e30", "steps=10"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("NaN/inf in 3 consecutive steps"), "{err}");
    assert!(
        out.path()
            .join("checkpoints")
            .read_dir()
            .unwrap()
            .next()
            .is_some(),
        "a checkpoint was written"
    );
    let skipped: Vec<f64> = metrics_lines(out.path())
        .iter()
        .map(|l| l["oxrl_learner_skipped_steps"].as_f64().unwrap())
        .collect();
    assert_eq!(
        skipped[..],
        [0.0, 1.0, 1.0, 1.0],
        "three skipped steps were counted before stopping"
    );
}

#[test]
fn eval_reports_pass_rates_on_the_held_out_split() {
    let out = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(oxrl_bin())
            .args(args)
            .arg(config())
            .args(["--set", "env.data.eval_size=4", "--set"])
            .arg(format!("output_dir={}", out.path().display()))
            .output()
            .unwrap()
    };
    assert!(run(&["train"]).status.success());
    let checkpoint = out.path().join("checkpoints/step-00000003");
    let output = run(&[
        "eval",
        "--samples",
        "3",
        "--k",
        "2",
        "--checkpoint",
        checkpoint.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["prompts"], 4);
    assert_eq!(report["samples_per_prompt"], 3);
    let (p1, pk) = (
        report["pass_at_1"].as_f64().unwrap(),
        report["pass_at_k"].as_f64().unwrap(),
    );
    assert!(
        (0.0..=1.0).contains(&p1) && pk >= p1 && pk <= 1.0,
        "{report}"
    );
    assert!(report["majority_vote"].is_number() && report["reward_mean"].is_number());
    // Without a checkpoint, a random-model config has nothing to evaluate: a clear error.
    let output = run(&["eval"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--checkpoint"));
}

#[test]
fn async_rollouts_train_on_batches_one_version_old() {
    let out = tempfile::tempdir().unwrap();
    let status = smoke_train(out.path(), &["rollout.async=true", "steps=4"])
        .status()
        .unwrap();
    assert!(status.success());
    let lines: Vec<Value> = metrics_lines(out.path());
    let staleness: Vec<u64> = lines
        .iter()
        .map(|l| l["rollout/staleness"].as_u64().unwrap())
        .collect();
    assert_eq!(
        staleness,
        [0, 1, 1, 1],
        "step k trains on a batch generated by version k-1"
    );
    // The learner sees those batches as off-policy: its importance ratios leave 1.
    for l in &lines[1..] {
        let spread = l["oxrl_learner_ratio_max"].as_f64().unwrap()
            - l["oxrl_learner_ratio_min"].as_f64().unwrap();
        assert!(
            spread > 1e-3,
            "ratios of a stale batch should differ from 1: {l}"
        );
    }
    assert!(Pretrained::load(&out.path().join("final"), LoadOptions::default()).is_ok());
}

/// Final weights of a run, sorted by name.
fn final_weights(dir: &std::path::Path) -> Vec<(String, tch::Tensor)> {
    let mut t = tch::Tensor::read_safetensors(dir.join("final/model.safetensors")).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// A training line without its wall-clock measurements.
fn without_timings(line: &Value) -> Value {
    let mut line = line.as_object().unwrap().clone();
    line.retain(|k, _| !k.starts_with("time/") && !k.ends_with("tokens_per_second"));
    Value::Object(line)
}

#[test]
fn periodic_eval_logs_at_start_every_n_steps_and_at_the_end_without_changing_training() {
    let split = "env.data.eval_size=4";
    let with_eval = tempfile::tempdir().unwrap();
    let output = smoke_train(
        with_eval.path(),
        &[
            "steps=5",
            split,
            "eval.every=2",
            "eval.max_prompts=3",
            "eval.samples=3",
            "eval.k=2",
            "eval.temperature=1.0",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines = metrics_lines(with_eval.path());
    let evals: Vec<&Value> = lines.iter().filter(|l| is_eval_line(l)).collect();
    let steps: Vec<u64> = evals.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    // The initial policy, after steps 2 and 4, and after the last (5th) step.
    assert_eq!(steps, [0, 2, 4, 5], "eval steps");
    for e in &evals {
        let get = |k: &str| e[k].as_f64().unwrap_or_else(|| panic!("no {k} in {e}"));
        let (p1, pk, majority) = (
            get("eval/pass_at_1"),
            get("eval/pass_at_k"),
            get("eval/majority_vote"),
        );
        for v in [p1, pk, majority] {
            assert!((0.0..=1.0).contains(&v), "{e}");
        }
        assert!(pk >= p1, "pass@k >= pass@1: {e}");
        assert!(get("eval/reward_mean").is_finite() && get("time/eval_seconds") >= 0.0);
        assert_eq!(e["eval/prompts"], 3, "eval.max_prompts caps the split: {e}");
        assert_eq!(e["eval/samples"], 3);
    }
    for step in [0, 2, 4, 5] {
        assert!(
            stderr.contains(&format!("eval step {step}: pass@1 ")),
            "{stderr}"
        );
    }
    let trained = training_lines(with_eval.path());
    assert_eq!(trained.len(), 5, "one training line per step");

    // The same run without eval trains to the same weights and the same per-step metrics:
    // evaluation consumes no training randomness or data.
    let without = tempfile::tempdir().unwrap();
    let status = smoke_train(without.path(), &["steps=5", split])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(metrics_lines(without.path())
        .iter()
        .all(|l| !is_eval_line(l)));
    let plain = training_lines(without.path());
    assert_eq!(
        trained.iter().map(without_timings).collect::<Vec<_>>(),
        plain.iter().map(without_timings).collect::<Vec<_>>()
    );
    for ((na, ta), (nb, tb)) in final_weights(with_eval.path())
        .iter()
        .zip(final_weights(without.path()))
    {
        assert_eq!(na, &nb);
        assert!(ta.equal(&tb), "{na}: eval changed the training");
    }
}

#[test]
fn config_check_refuses_bad_learner_and_rollout_options_before_loading() {
    let check = |set: &str| {
        let out = Command::new(oxrl_bin())
            .args(["config", "check"])
            .arg(config())
            .args(["--set", set])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (set, named) in [
        ("learner.grpo.epsilon=-1", "learner.grpo.epsilon = -1"),
        ("learner.dpo.beta=0", "learner.dpo.beta = 0"),
        ("learner.ppo.gamma=2", "learner.ppo.gamma = 2"),
        (
            "rollout.samples_path=\"logged.jsonl\"",
            "is read with rollout.source = \"dataset\"",
        ),
        ("rollout.source=\"agents\"", "[[rewards]] (the agent posts"),
        // The smoke model is f32: there is nothing to keep an f32 master copy of.
        (
            "learner.precision=bf16-mixed",
            "learner.precision = \"bf16-mixed\" needs a bf16 or f16 model",
        ),
        ("learner.precision=fp8", "learner.precision"),
    ] {
        let (ok, err) = check(set);
        assert!(!ok && err.contains(named), "{set}: {err}");
    }
}

#[test]
fn dynamic_sampling_refills_a_step_whose_groups_all_tie() {
    let out = tempfile::tempdir().unwrap();
    // Only the math reward, which a random model never earns: every group ties at 0, so the
    // step refills up to the cap and the learner drops every (uninformative) sample.
    let status = smoke_train(
        out.path(),
        &[
            "rewards=[{name = \"math\"}]",
            "learner.grpo.dynamic_sampling=true",
            "learner.grpo.max_refill_batches=2",
            "steps=1",
        ],
    )
    .status()
    .unwrap();
    assert!(status.success());
    let lines = training_lines(out.path());
    let line = &lines[0];
    assert_eq!(line["rollout/refill_batches"], 2, "{line}");
    // 3 batches of 2 prompts x 4 completions.
    assert_eq!(line["oxrl_learner_samples"], 24.0, "{line}");
    assert_eq!(line["oxrl_learner_dropped_samples"], 24.0, "{line}");
    assert_eq!(line["oxrl_learner_optimizer_steps"], 0.0, "{line}");
    let samples = std::fs::read_to_string(out.path().join("samples.jsonl")).unwrap();
    for sample in samples.lines() {
        let v: Value = serde_json::from_str(sample).unwrap();
        assert!(
            v["advantage"].is_null(),
            "a dropped sample has no advantage: {v}"
        );
    }
}

#[test]
fn rows_skipped_under_on_bad_row_skip_are_reported() {
    let out = tempfile::tempdir().unwrap();
    let data = out.path().join("rows.jsonl");
    let good = (1..=8)
        .map(|i| {
            format!(
                "{{\"prompt\": \"What is {i} + 1?\", \"answer\": \"{}\"}}\n",
                i + 1
            )
        })
        .collect::<String>();
    std::fs::write(&data, format!("{good}{{\"prompt\": \"What is 9 + 1?\"}}\n")).unwrap();
    let output = smoke_train(
        out.path(),
        &[
            &format!("env.data.path={}", data.display()),
            "env.data.on_bad_row=skip",
            "steps=1",
        ],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{err}");
    assert!(err.contains("skipped 1 row"), "{err}");
    assert!(
        err.contains("rows.jsonl:9"),
        "the skipped row names its line: {err}"
    );
}

#[test]
fn a_second_run_on_the_same_output_dir_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let mut first = smoke_train(out.path(), &["steps=100000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The lock is taken before the logs open.
    let start = std::time::Instant::now();
    while !out.path().join("metrics.jsonl").exists() {
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        assert!(
            start.elapsed().as_secs() < 120,
            "the first run never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = smoke_train(out.path(), &["steps=1"]).output().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    let holder = format!("pid {}", first.id());
    oxrl_tests::terminate_cleanly(first);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("in use by another oxrl run") && err.contains(&holder),
        "{err}"
    );
}

#[test]
fn config_check_finds_missing_models_bad_data_and_empty_completions() {
    let dir = tempfile::tempdir().unwrap();
    let rows = dir.path().join("rows.jsonl");
    std::fs::write(
        &rows,
        "{\"prompt\": \"What is 1 + 1?\", \"answer\": \"2\"}\n{not json\n",
    )
    .unwrap();
    let check = |set: &str| {
        let out = Command::new(oxrl_bin())
            .args(["config", "check"])
            .arg(config())
            .args(["--set", set])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check("model.path=/nonexistent/model-dir");
    assert!(!ok && err.contains("/nonexistent/model-dir"), "{err}");
    let (ok, err) = check(&format!("env.data.path={}", rows.display()));
    assert!(!ok && err.contains("rows.jsonl:2"), "{err}");
    let (ok, err) = check("rollout.max_tokens=0");
    assert!(!ok && err.contains("rollout.max_tokens = 0"), "{err}");
}

/// `rollout.engine = "vllm"` with what it does not do yet, or a `[rollout.vllm]` that would
/// be ignored, is refused by name before anything starts.
#[test]
fn vllm_engine_refuses_options_it_cannot_honour() {
    let check = |sets: &[&str]| {
        let mut cmd = Command::new(oxrl_bin());
        cmd.args(["config", "check"]).arg(config());
        for set in sets {
            cmd.args(["--set", set]);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{sets:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let vllm = "rollout.engine=vllm";
    let err = check(&["rollout.vllm.replicas=1"]);
    assert!(
        err.contains("[rollout.vllm] is set but rollout.engine = \"native\""),
        "{err}"
    );
    let err = check(&["learner.rollout_correction.tis_cap=2.0"]);
    assert!(
        err.contains("[learner.rollout_correction]") && err.contains("native"),
        "{err}"
    );
    let err = check(&[vllm, "learner.rollout_correction.tis_cap=0"]);
    assert!(err.contains("rollout_correction.tis_cap = 0"), "{err}");
    let err = check(&[vllm, "model.lora.r=1024"]);
    assert!(
        err.contains("model.lora.r = 1024") && err.contains("up to 512"),
        "{err}"
    );
    let err = check(&[vllm, "rollout.vllm.sync_every=3"]);
    assert!(
        err.contains("rollout.vllm.sync_every = 3") && err.contains("rollout.max_staleness = 1"),
        "{err}"
    );
    let err = check(&[vllm, "rollout.vllm.sync_every=2", "rollout.async=true"]);
    assert!(err.contains("up to 2 policy versions old"), "{err}");
    let err = check(&[vllm, "rollout.vllm.replicas=0"]);
    assert!(err.contains("no server to generate on"), "{err}");
    let err = check(&[
        vllm,
        "rollout.vllm.urls=[\"http://127.0.0.1:1\"]",
        "rollout.vllm.python=/usr/bin/python3",
    ]);
    assert!(err.contains("set one of them"), "{err}");
    let err = check(&[vllm, "rollout.vllm.replica=1"]);
    assert!(
        err.contains("replica") && err.contains("did you mean"),
        "{err}"
    );
}

/// A vLLM server that cannot be reached, or a python that cannot start one, stops the run at
/// once with an error naming it.
#[test]
fn unreachable_vllm_servers_are_clear_errors() {
    let train = |sets: &[&str]| {
        let out = tempfile::tempdir().unwrap();
        let mut cmd = smoke_train(out.path(), &["rollout.engine=vllm"]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        let output = cmd.output().unwrap();
        assert!(!output.status.success(), "{sets:?} trained");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let err = train(&["rollout.vllm.urls=[\"http://127.0.0.1:9\"]"]);
    assert!(
        err.contains("vLLM replica http://127.0.0.1:9") && err.contains("syncing"),
        "{err}"
    );
    let err = train(&["rollout.vllm.python=/nonexistent/python"]);
    assert!(
        err.contains("starting vLLM with /nonexistent/python"),
        "{err}"
    );
}

#[test]
fn a_run_sampled_at_a_temperature_is_scored_at_it_with_memory_options_on() {
    let out = tempfile::tempdir().unwrap();
    let sets = [
        "rollout.sampling.temperature=0.7",
        "learner.gradient_checkpointing=true",
        "learner.logprob_chunk_tokens=64",
        "steps=2",
    ];
    let status = smoke_train(out.path(), &sets).status().unwrap();
    assert!(status.success());
    for line in metrics_lines(out.path()) {
        // The sampler recorded log_softmax(logits / 0.7); the learner scores the same.
        let ratio = line["oxrl_learner_ratio_max"].as_f64().unwrap();
        assert!((ratio - 1.0).abs() < 1e-4, "on-policy ratio {ratio}");
        let gap = line["rollout/logprob_abs_diff_max"].as_f64().unwrap();
        assert!(gap < 1e-4, "sampler vs learner at T = 0.7: {gap}");
    }
    let greedy = smoke_train(out.path(), &["rollout.sampling.temperature=0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&greedy.stderr);
    assert!(
        !greedy.status.success() && err.contains("rollout.sampling.temperature = 0"),
        "{err}"
    );
}
