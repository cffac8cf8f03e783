//! Learner losses and gradients against golden values from
//! `fixtures/learner/make_golden.py` (TRL's GRPO/DPO formulas, the TOPR paper,
//! `torch.optim.AdamW`), on fixed small tensors; plus exact gradient accumulation:
//! micro-batch losses add up to the whole batch's loss for every aggregation.

use oxrl::learner::advantages::{group_advantages, ScaleRewards};
use oxrl::learner::algorithm::{
    aggregate, CriticInput, LossInput, LossOutput, LossType, StepScale,
};
use oxrl::learner::dpo::{dpo_loss, DpoConfig, DpoLoss};
use oxrl::learner::grpo::{grpo_loss, GrpoConfig, ImportanceSamplingLevel};
use oxrl::learner::optim::{AdamW, OptimConfig};
use oxrl::learner::ppo::{ppo_loss, ppo_targets, PpoConfig};
use oxrl::learner::topr::{topr_loss, TaperRatio};
use oxrl::learner::{RolloutCorrection, Stats};
use oxrl::{FinishReason, Sample};
use serde_json::Value;
use tch::{Kind, Tensor};

const TOL: f64 = 1e-9;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/learner/golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tensor(v: &Value) -> Tensor {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

fn vec1(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

struct Fixture {
    mask: Tensor,
    logp: Tensor,
    old: Tensor,
    reference: Tensor,
}

fn fixture(g: &Value) -> Fixture {
    Fixture {
        mask: tensor(&g["mask"]),
        logp: tensor(&g["logp"]),
        old: tensor(&g["old"]),
        reference: tensor(&g["ref"]),
    }
}

fn per_token(adv: &[f64], t: i64) -> Tensor {
    Tensor::from_slice(adv)
        .view([-1, 1])
        .expand([adv.len() as i64, t], false)
        .contiguous()
}

fn check(name: &str, loss: &Tensor, leaf: &Tensor, case: &Value) {
    loss.backward();
    let want = case["loss"].as_f64().unwrap();
    let got = loss.double_value(&[]);
    assert!(
        (got - want).abs() < TOL,
        "{name}: loss {got} vs golden {want}"
    );
    let d = max_diff(&leaf.grad(), &tensor(&case["grad"]));
    assert!(d < TOL, "{name}: gradient differs by {d}");
}

/// GRPO's loss of the fixture with advantages `adv` (and the rollout correction's `weight`)
/// against the golden `case`.
fn check_grpo(
    name: &str,
    cfg: &GrpoConfig,
    f: &Fixture,
    adv: &[f64],
    weight: Option<&Tensor>,
    case: &Value,
) {
    let leaf = f.logp.copy().set_requires_grad(true);
    let adv_t = per_token(adv, f.mask.size()[1]);
    let out = grpo_loss(
        cfg,
        &LossInput {
            logp: &leaf,
            old_logp: &f.old,
            ref_logp: Some(&f.reference),
            rollout_weight: weight,
            mask: &f.mask,
            advantages: &adv_t,
            critic: None,
            scale: StepScale::single(&f.mask, cfg.max_completion_length.unwrap()),
        },
    )
    .unwrap();
    check(name, &out.loss, &leaf, case);
}

#[test]
fn grpo_losses_and_gradients_match_golden() {
    let g = golden();
    let f = fixture(&g);
    let rewards = vec1(&g["rewards"]);
    let ids: Vec<u64> = serde_json::from_value(g["group_ids"].clone()).unwrap();
    let mut n = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["algorithm"] != "grpo" {
            continue;
        }
        let cfg: GrpoConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let adv = group_advantages(&rewards, &ids, cfg.scale_rewards).advantages;
        for (a, b) in adv.iter().zip(vec1(&case["advantages"])) {
            assert!((a - b).abs() < 1e-9, "{cfg:?}: advantage {a} vs {b}");
        }
        check_grpo(&format!("{cfg:?}"), &cfg, &f, &adv, None, case);
        n += 1;
    }
    assert_eq!(n, 48, "every GRPO option combination is covered");
}

/// TRL's `vllm_importance_sampling_correction`: the weights `exp(old - engine)` (per token
/// or per sequence, truncated or masked at the cap), and GRPO's loss and gradient with them.
#[test]
fn rollout_correction_matches_trls_importance_sampling_correction() {
    let g = golden();
    let f = fixture(&g);
    let engine = tensor(&g["engine"]);
    let rewards = vec1(&g["rewards"]);
    let ids: Vec<u64> = serde_json::from_value(g["group_ids"].clone()).unwrap();
    let mut n = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["algorithm"] != "grpo_rollout_correction" {
            continue;
        }
        let correction = RolloutCorrection {
            mode: serde_json::from_value(case["mode"].clone()).unwrap(),
            tis_cap: case["tis_cap"].as_f64().unwrap(),
        };
        let mut stats = Stats::default();
        let w = correction
            .weights(&f.old, &engine, &f.mask, &mut stats)
            .unwrap();
        let d = max_diff(&w, &tensor(&case["weights"]));
        assert!(d < TOL, "{correction:?}: weights differ by {d}");
        let cfg: GrpoConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let adv = group_advantages(&rewards, &ids, cfg.scale_rewards).advantages;
        check_grpo(&format!("{correction:?}"), &cfg, &f, &adv, Some(&w), case);
        n += 1;
    }
    assert_eq!(n, 4, "every correction mode is covered");
}

#[test]
fn grpo_config_reads_trl_names_and_rejects_unknown_ones() {
    let cfg: GrpoConfig = serde_json::from_str(
        r#"{"loss_type":"dr_grpo","scale_rewards":"none","importance_sampling_level":"sequence",
            "epsilon":0.2,"epsilon_high":0.28,"beta":0.04,"num_iterations":2}"#,
    )
    .unwrap();
    assert_eq!(cfg.loss_type, LossType::DrGrpo);
    assert_eq!(cfg.scale_rewards, ScaleRewards::None);
    assert_eq!(
        cfg.importance_sampling_level,
        ImportanceSamplingLevel::Sequence
    );
    assert_eq!(cfg.eps_high(), 0.28);
    assert!(serde_json::from_str::<GrpoConfig>(r#"{"epsilon_hi":0.3}"#).is_err());
}

#[test]
fn topr_loss_and_gradient_match_golden() {
    let g = golden();
    let f = fixture(&g);
    let rewards = vec1(&g["rewards"]);
    let mut n = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["algorithm"] != "topr" {
            continue;
        }
        let baseline = case["config"]["baseline"].as_f64().unwrap();
        let taper = match case["config"]["ratio"].as_str() {
            Some("token") => TaperRatio::Token,
            _ => TaperRatio::Sequence,
        };
        let r: Vec<f64> = rewards.iter().map(|r| r - baseline).collect();
        let leaf = f.logp.copy().set_requires_grad(true);
        let adv = per_token(&r, f.mask.size()[1]);
        let out = topr_loss(
            &LossInput {
                logp: &leaf,
                old_logp: &f.old,
                ref_logp: None,
                rollout_weight: None,
                mask: &f.mask,
                advantages: &adv,
                critic: None,
                scale: StepScale::single(&f.mask, 1),
            },
            taper,
        );
        check(
            &format!("topr baseline {baseline} {taper:?}"),
            &out.loss,
            &leaf,
            case,
        );
        n += 1;
    }
    assert_eq!(n, 4);
}

/// The DPO loss of the fixture's pairs with policy logprobs `logp`.
fn dpo_on_fixture(cfg: &DpoConfig, f: &Fixture, logp: &Tensor) -> LossOutput {
    let zeros = f.mask.zeros_like();
    dpo_loss(
        cfg,
        &LossInput {
            logp,
            old_logp: &f.old,
            ref_logp: Some(&f.reference),
            rollout_weight: None,
            mask: &f.mask,
            advantages: &zeros,
            critic: None,
            scale: StepScale::single(&f.mask, 1),
        },
    )
    .unwrap()
}

#[test]
fn dpo_losses_and_gradients_match_golden() {
    let g = golden();
    let f = fixture(&g);
    let mut n = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["algorithm"] != "dpo" {
            continue;
        }
        let cfg: DpoConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let leaf = f.logp.copy().set_requires_grad(true);
        let out = dpo_on_fixture(&cfg, &f, &leaf);
        check(&format!("{cfg:?}"), &out.loss, &leaf, case);
        n += 1;
    }
    assert_eq!(n, 3);
    // RPO adds alpha x the chosen rows' mean token NLL per pair, over the step's pairs.
    let loss = |rpo_alpha: f64| {
        let cfg = DpoConfig {
            rpo_alpha,
            ..DpoConfig::default()
        };
        dpo_on_fixture(&cfg, &f, &f.logp).loss.double_value(&[])
    };
    let logp = Vec::<Vec<f64>>::try_from(f.logp.to_kind(tch::Kind::Double)).unwrap();
    let mask = Vec::<Vec<f64>>::try_from(f.mask.to_kind(tch::Kind::Double)).unwrap();
    let chosen_nll: f64 = (0..logp.len())
        .step_by(2)
        .map(|i| {
            let tokens: f64 = mask[i].iter().sum();
            -logp[i]
                .iter()
                .zip(&mask[i])
                .map(|(l, m)| l * m)
                .sum::<f64>()
                / tokens
        })
        .sum();
    let pairs = (logp.len() / 2) as f64;
    let expected = loss(0.0) + 0.5 * chosen_nll / pairs;
    assert!(
        (loss(0.5) - expected).abs() < 1e-5,
        "{} vs {expected}",
        loss(0.5)
    );
    let ipo: DpoConfig = serde_json::from_str(r#"{"loss_type":"ipo","beta":0.1}"#).unwrap();
    assert_eq!(ipo.loss_type, DpoLoss::Ipo);
}

#[test]
fn adamw_matches_torch() {
    let g = golden();
    let a = &g["adamw"];
    let w = tensor(&a["w0"]).set_requires_grad(true);
    let n = Tensor::from_slice(&vec1(&a["n0"])).set_requires_grad(true);
    let mut opt = AdamW::new(vec![
        ("layer.weight".to_string(), w.shallow_clone()),
        ("model.norm.weight".to_string(), n.shallow_clone()),
    ]);
    let betas = vec1(&a["betas"]);
    let cfg = OptimConfig {
        lr: a["lr"].as_f64().unwrap(),
        adam_beta1: betas[0],
        adam_beta2: betas[1],
        adam_epsilon: a["eps"].as_f64().unwrap(),
        weight_decay: a["weight_decay"].as_f64().unwrap(),
        ..Default::default()
    };
    for step in a["grads"].as_array().unwrap() {
        let gw = tensor(&step[0]);
        let gn = Tensor::from_slice(&vec1(&step[1]));
        // Set the gradients through a backward pass of <p, g>.
        opt.zero_grad();
        ((&w * &gw).sum(Kind::Double) + (&n * &gn).sum(Kind::Double)).backward();
        opt.step(cfg.lr, &cfg);
    }
    assert!(max_diff(&w, &tensor(&a["w"])) < 1e-10);
    assert!(max_diff(&n, &Tensor::from_slice(&vec1(&a["n"]))) < 1e-10);
}

#[test]
fn micro_batch_losses_add_up_to_the_batch_loss() {
    let g = golden();
    let f = fixture(&g);
    let adv = per_token(&[1.0, -0.5, 0.3, -1.2], f.mask.size()[1]);
    for lt in [
        LossType::Grpo,
        LossType::DrGrpo,
        LossType::Dapo,
        LossType::Bnpo,
    ] {
        let whole = StepScale::single(&f.mask, 8);
        let full = aggregate(&(&f.logp * &adv), &f.mask, lt, &whole).double_value(&[]);
        let split = StepScale {
            micro_batches: 2,
            ..whole
        };
        let parts: f64 = [(0, 1), (1, 3)]
            .iter()
            .map(|&(s, len)| {
                let pt = (&f.logp * &adv).narrow(0, s, len);
                aggregate(&pt, &f.mask.narrow(0, s, len), lt, &split).double_value(&[])
            })
            .sum();
        if lt == LossType::Bnpo {
            // TRL's bnpo normalises by the local batch: different by design, finite.
            assert!(parts.is_finite() && (parts - full).abs() > 1e-6);
        } else {
            assert!((parts - full).abs() < 1e-9, "{lt:?}: {parts} vs {full}");
        }
    }
}

#[test]
fn ppo_targets_match_golden() {
    let g = golden();
    let mut n = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["algorithm"] != "ppo_targets" {
            continue;
        }
        let cfg: PpoConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let mut samples = Vec::new();
        let (mut refs, mut values) = (Vec::new(), Vec::new());
        for s in case["samples"].as_array().unwrap() {
            let f32s = |k: &str| -> Vec<f32> { vec1(&s[k]).iter().map(|&x| x as f32).collect() };
            let mask: Vec<u8> = serde_json::from_value(s["loss_mask"].clone()).unwrap();
            samples.push(Sample {
                prompt_ids: vec![1],
                completion_ids: vec![3; mask.len()],
                loss_mask: mask.iter().map(|&b| b == 1).collect(),
                behaviour_logprobs: f32s("behaviour"),
                learner_logprobs: None,
                policy_version: 0,
                group_id: 0,
                finish_reason: FinishReason::Stop,
                reward: s["reward"].as_f64().unwrap(),
                rewards: Default::default(),
                turn_rewards: Vec::new(),
            });
            refs.push(f32s("ref"));
            values.push(f32s("values"));
        }
        let t = ppo_targets(&cfg, &samples, &refs, &values);
        let want_adv: Vec<Vec<f64>> = serde_json::from_value(case["advantages"].clone()).unwrap();
        let want_ret: Vec<Vec<f64>> = serde_json::from_value(case["returns"].clone()).unwrap();
        for (got, want) in [(&t.advantages, &want_adv), (&t.returns, &want_ret)] {
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!((*g as f64 - w).abs() < 1e-5, "{cfg:?}: {g} vs {w}");
            }
            assert_eq!(got.iter().flatten().count(), want.iter().flatten().count());
        }
        n += 1;
    }
    assert_eq!(n, 2);
}

#[test]
fn ppo_loss_and_gradients_match_golden() {
    let g = golden();
    let f = fixture(&g);
    let mut n = 0;
    for case in g["cases"].as_array().unwrap() {
        if case["algorithm"] != "ppo" {
            continue;
        }
        let cfg: PpoConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let leaf = f.logp.copy().set_requires_grad(true);
        let values = tensor(&g["ppo_values"]).set_requires_grad(true);
        let out = ppo_loss(
            &cfg,
            &LossInput {
                logp: &leaf,
                old_logp: &f.old,
                ref_logp: None,
                rollout_weight: None,
                mask: &f.mask,
                advantages: &tensor(&g["ppo_advantages"]),
                critic: Some(CriticInput {
                    values: &values,
                    old_values: &tensor(&g["ppo_old_values"]),
                    returns: &tensor(&g["ppo_returns"]),
                }),
                scale: StepScale::single(&f.mask, 1),
            },
        )
        .unwrap();
        check(&format!("{cfg:?}"), &out.loss, &leaf, case);
        let d = max_diff(&values.grad(), &tensor(&case["value_grad"]));
        assert!(d < TOL, "{cfg:?}: value gradient differs by {d}");
        n += 1;
    }
    assert_eq!(n, 2);
}
