//! oxrl's learner against TRL's own loss code on one fixed batch of the bundled model:
//! `GRPOTrainer._compute_loss` for every `loss_type` both support (grpo, bnpo, dr_grpo, dapo),
//! with group- and batch-scaled rewards and `importance_sampling_level = "sequence"`;
//! `DPOTrainer._compute_loss` for the sigmoid and IPO losses. Same weights, prompts,
//! completions, rewards and old logprobs on both sides (`tests/reference/trl_batch.py`
//! drives TRL, one group per micro-batch as oxrl splits a batch); the loss and every
//! parameter's gradient must agree to f32 precision (measured: loss within 3e-6 relative,
//! every gradient within 2e-4 of its largest entry).
//!
//! The policy's final norm is scaled by 1.1 on both sides, so that it differs from DPO's
//! reference (the unchanged model) and the implicit rewards are not all zero. The old
//! logprobs are the policy's own moved by up to ±0.4 nats, so ratios fall on both sides of
//! the clip range. GRPO scores at temperature 0.7 on both sides.
//!
//! One difference is taken out on TRL's side: transformers' `nn.Embedding(padding_idx)` never
//! trains the pad token's input row. SmolLM2's pad token is `<|im_end|>`, which every chat
//! prompt contains; oxrl gives it the true gradient (8% of the embedding gradient's largest
//! entry on this batch), and the reference sets `padding_idx = None` to do the same.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use oxrl::learner::advantages::ScaleRewards;
use oxrl::learner::algorithm::LossType;
use oxrl::learner::dpo::{DpoConfig, DpoLoss};
use oxrl::learner::grpo::{GrpoConfig, ImportanceSamplingLevel};
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig};
use oxrl::{FinishReason, LoadOptions, Pretrained, Sample};
use oxrl_tests::{oxrl_bin, python, smollm2_gguf};
use serde_json::{json, Value};
use tch::Tensor;

const NORM_SCALE: f64 = 1.1;
/// GRPO's sampling temperature; DPO scores at 1 (TRL's `DPOTrainer` has no temperature).
const TEMPERATURE: f64 = 0.7;
const MAX_COMPLETION: usize = 24;
const GROUP: usize = 4;

const PROMPTS: [&str; 2] = [
    "<|im_start|>user\nWhat is 17 + 25?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nWhat is 43 - 18?<|im_end|>\n<|im_start|>assistant\n",
];
const COMPLETIONS: [&str; 8] = [
    "17 + 25 = 42. The answer is 42.<|im_end|>",
    "The answer is 32.<|im_end|>",
    "Let me add them: 17 plus 25 makes 42, so the sum is 42.",
    "42<|im_end|>",
    "43 - 18 = 25.<|im_end|>",
    "Subtracting 18 from 43 gives 35, I think. The answer is 35.",
    "25<|im_end|>",
    "The difference is 25.<|im_end|>",
];
const REWARDS: [f64; 8] = [1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5];

/// One comparison: the oxrl learner's options and the TRL trainer's.
struct Case {
    name: &'static str,
    learner: LearnerConfig,
    trl: Value,
}

fn grpo(
    name: &'static str,
    loss: LossType,
    scale: ScaleRewards,
    level: ImportanceSamplingLevel,
) -> Case {
    let grpo = GrpoConfig {
        loss_type: loss,
        scale_rewards: scale,
        importance_sampling_level: level,
        epsilon: 0.2,
        epsilon_high: Some(0.28),
        max_completion_length: Some(MAX_COMPLETION),
        ..GrpoConfig::default()
    };
    let trl = json!({
        "name": name, "trainer": "grpo",
        "loss_type": serde_json::to_value(loss).unwrap(),
        "scale_rewards": serde_json::to_value(scale).unwrap(),
        "importance_sampling_level": serde_json::to_value(level).unwrap(),
        "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.0,
    });
    Case {
        name,
        learner: LearnerConfig {
            algorithm: AlgorithmKind::Grpo,
            grpo,
            temperature: Some(TEMPERATURE),
            ..LearnerConfig::default()
        },
        trl,
    }
}

fn dpo(name: &'static str, loss: DpoLoss, beta: f64) -> Case {
    let trl = json!({
        "name": name, "trainer": "dpo",
        "loss_type": [serde_json::to_value(loss).unwrap()], "beta": beta,
    });
    Case {
        name,
        learner: LearnerConfig {
            algorithm: AlgorithmKind::Dpo,
            dpo: DpoConfig {
                loss_type: loss,
                beta,
                ..DpoConfig::default()
            },
            ..LearnerConfig::default()
        },
        trl,
    }
}

fn cases() -> Vec<Case> {
    use ImportanceSamplingLevel::{Sequence, Token};
    vec![
        grpo("grpo", LossType::Grpo, ScaleRewards::Group, Token),
        grpo("bnpo", LossType::Bnpo, ScaleRewards::Group, Token),
        grpo("dr_grpo", LossType::DrGrpo, ScaleRewards::None, Token),
        grpo("dapo", LossType::Dapo, ScaleRewards::Group, Token),
        grpo(
            "dapo_batch_scaled",
            LossType::Dapo,
            ScaleRewards::Batch,
            Token,
        ),
        grpo(
            "grpo_sequence",
            LossType::Grpo,
            ScaleRewards::Group,
            Sequence,
        ),
        grpo(
            "dapo_sequence",
            LossType::Dapo,
            ScaleRewards::Group,
            Sequence,
        ),
        dpo("dpo_sigmoid", DpoLoss::Sigmoid, 0.1),
        dpo("dpo_ipo", DpoLoss::Ipo, 0.1),
    ]
}

/// The bundled model as an HF directory (f32 safetensors) both sides load.
fn import_model(dir: &Path) {
    let status = Command::new(oxrl_bin())
        .arg("import")
        .arg(smollm2_gguf())
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "oxrl import failed");
}

/// A learner on the model in `dir` whose final norm is scaled by `NORM_SCALE` after the
/// reference (if any) was copied.
fn learner(dir: &Path, cfg: LearnerConfig) -> Learner {
    let (vs, model) = oxrl::pretrained::load_model_dir(dir, LoadOptions::default()).unwrap();
    let learner = Learner::new(vs, model, cfg).unwrap();
    let norm = learner.var_store().variables()["model.norm.weight"].shallow_clone();
    tch::no_grad(|| {
        let _ = norm.shallow_clone().g_mul_scalar_(NORM_SCALE);
    });
    learner
}

fn tokens(pre: &Pretrained, text: &str) -> Vec<u32> {
    pre.tokenizer.encode(text, false).unwrap()
}

/// The batch: `GROUP` completions of each prompt (DPO: consecutive chosen/rejected pairs,
/// by reward), the prompts cut to a common length so TRL needs no left padding.
fn batch(pre: &Pretrained, dpo: bool) -> Vec<Sample> {
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tokens(pre, p)).collect();
    let shortest = prompts.iter().map(Vec::len).min().unwrap();
    COMPLETIONS
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut completion = tokens(pre, text);
            completion.truncate(MAX_COMPLETION);
            let prompt = &prompts[i / GROUP];
            let (group_id, reward) = match dpo {
                true => ((i / 2) as u64, if i % 2 == 0 { 1.0 } else { 0.0 }),
                false => ((i / GROUP) as u64, REWARDS[i]),
            };
            Sample {
                prompt_ids: prompt[prompt.len() - shortest..].to_vec(),
                loss_mask: vec![true; completion.len()],
                behaviour_logprobs: vec![0.0; completion.len()],
                completion_ids: completion,
                learner_logprobs: None,
                policy_version: 0,
                group_id,
                finish_reason: FinishReason::Stop,
                reward,
                rewards: BTreeMap::new(),
                turn_rewards: Vec::new(),
            }
        })
        .collect()
}

/// Old logprobs: the policy's own, moved by up to ±0.4 nats (kept below 0).
fn set_old_logprobs(learner: &Learner, samples: &mut [Sample]) {
    let logp = learner.logprobs(samples).unwrap();
    for (i, (s, lp)) in samples.iter_mut().zip(logp).enumerate() {
        s.behaviour_logprobs = lp
            .iter()
            .enumerate()
            .map(|(t, &v)| (v + 0.4 * (1.7 * i as f32 + 0.9 * t as f32).sin()).min(-1e-4))
            .collect();
    }
}

fn run_trl(request: &Value) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/trl_batch.py");
    let mut child = Command::new(python())
        .arg(&script)
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the TRL script");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "tests/reference/trl_batch.py failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn request(dir: &Path, out: &Path, pad_id: u32, samples: &[Sample], cases: &[&Case]) -> Value {
    json!({
        "model": dir, "norm_scale": NORM_SCALE,
        "temperature": cases[0].learner.temperature.unwrap_or(1.0),
        "max_completion_length": MAX_COMPLETION, "group_size": GROUP, "pad_id": pad_id,
        "out_dir": out,
        "prompt_ids": samples.iter().map(|s| &s.prompt_ids).collect::<Vec<_>>(),
        "completion_ids": samples.iter().map(|s| &s.completion_ids).collect::<Vec<_>>(),
        "rewards": samples.iter().map(|s| s.reward).collect::<Vec<_>>(),
        "old_logp": samples.iter().map(|s| &s.behaviour_logprobs).collect::<Vec<_>>(),
        "cases": cases.iter().map(|c| &c.trl).collect::<Vec<_>>(),
    })
}

/// Largest |a - b| over the largest |b| of one tensor.
fn relative_gap(a: &Tensor, b: &Tensor) -> f64 {
    let scale = b.abs().max().double_value(&[]).max(1e-30);
    (a - b).abs().max().double_value(&[]) / scale
}

/// The loss and gradients of `case` in oxrl against TRL's, from `reference`.
fn compare(case: &Case, dir: &Path, samples: &[Sample], reference: &Path) {
    let mut learner = learner(dir, case.learner.clone());
    let (loss, grads) = learner.gradients(samples).unwrap();
    let trl: BTreeMap<String, Tensor> = Tensor::read_safetensors(reference)
        .unwrap()
        .into_iter()
        .collect();
    let trl_loss = trl["loss"].double_value(&[0]);
    let loss_gap = (loss - trl_loss).abs() / (1.0 + trl_loss.abs());
    let mut worst = (0.0, String::new());
    for (name, grad) in &grads {
        let want = trl
            .get(name)
            .unwrap_or_else(|| panic!("{}: TRL has no gradient for {name}", case.name));
        let gap = relative_gap(grad, want);
        if gap > worst.0 {
            worst = (gap, name.clone());
        }
    }
    let trained = trl.keys().filter(|k| *k != "loss").count();
    println!(
        "{:<18} loss oxrl {loss:+.9} TRL {trl_loss:+.9} (gap {loss_gap:.1e}); \
         worst gradient rel gap {:.1e} ({}) over {} tensors",
        case.name,
        worst.0,
        worst.1,
        grads.len()
    );
    assert_eq!(grads.len(), trained, "{}: parameter sets differ", case.name);
    assert!(
        loss_gap < 1e-5,
        "{}: loss {loss} vs TRL {trl_loss}",
        case.name
    );
    assert!(
        worst.0 < 1e-3,
        "{}: gradient of {} differs by {:.2e} of its largest entry",
        case.name,
        worst.1,
        worst.0
    );
}

#[test]
fn losses_and_gradients_equal_trls_on_one_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    import_model(&dir);
    let pre = Pretrained::load(&dir, LoadOptions::default()).unwrap();
    let pad_id = pre.tokenizer.pad_token_id().unwrap();
    let all = cases();
    for dpo in [false, true] {
        let chosen: Vec<&Case> = all
            .iter()
            .filter(|c| (c.learner.algorithm == AlgorithmKind::Dpo) == dpo)
            .collect();
        let mut samples = batch(&pre, dpo);
        set_old_logprobs(&learner(&dir, chosen[0].learner.clone()), &mut samples);
        let out = tmp.path().join(if dpo { "dpo" } else { "grpo" });
        std::fs::create_dir_all(&out).unwrap();
        run_trl(&request(&dir, &out, pad_id, &samples, &chosen));
        for case in chosen {
            compare(
                case,
                &dir,
                &samples,
                &out.join(format!("{}.safetensors", case.name)),
            );
        }
    }
}
