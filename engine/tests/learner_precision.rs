//! Mixed precision (`[learner] precision`) on the tiny random policy in bf16 (CPU, fixed
//! seeds): at an RL learning rate of 1e-6 a pure bf16 update rounds most weights back to
//! where they were, while bf16-mixed's f32 master weights all move and, over steps, carry
//! the bf16 weights with them; given the same gradients a master update is bit-for-bit the
//! f32 AdamW update, and a whole bf16-mixed run stays close to an f32 run where pure bf16
//! does not; a resumed bf16-mixed learner continues exactly (the masters are saved); the
//! option resolves by dtype, is refused by name for an f32 model, and LoRA keeps masters of
//! the adapters only.

mod learner_support;

use learner_support::*;
use oxrl::learner::lora::{is_adapter, with_adapters, LoraConfig};
use oxrl::learner::optim::{AdamW, OptimConfig};
use oxrl::learner::{AlgorithmKind, Learner, LearnerConfig, Precision};
use oxrl::weights::load_into;
use oxrl::{Llama, Sample};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// A typical RL learning rate, far below half a bf16 ulp of most weights (std 0.1).
const LR: f64 = 1e-6;

fn config(precision: Precision) -> LearnerConfig {
    let mut cfg = LearnerConfig {
        algorithm: AlgorithmKind::Grpo,
        precision,
        ..Default::default()
    };
    cfg.optim.lr = LR;
    cfg
}

/// The tiny policy with its weights rounded to bf16, held in `kind`: the bf16 policy and its
/// f32 twin start from identical values.
fn policy(kind: Kind) -> (VarStore, Llama) {
    let (mut vs, model) = tiny(3);
    vs.set_kind(Kind::BFloat16);
    vs.set_kind(kind);
    (vs, model)
}

fn learner(kind: Kind, precision: Precision) -> Learner {
    let (vs, model) = policy(kind);
    Learner::new(vs, model, config(precision)).unwrap()
}

/// Fixed batches, sampled from the f32 twin (seeds 10, 11, ...).
fn batches(n: usize) -> Vec<Vec<Sample>> {
    let (_vs, model) = policy(Kind::Float);
    (0..n)
        .map(|i| rollout(&model, &all_digits(), 4, 10 + i as i64))
        .collect()
}

/// Named f32 copies, sorted by name.
fn f32_copies<'a>(named: impl Iterator<Item = (String, &'a Tensor)>) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = named
        .map(|(n, t)| (n, t.detach().copy().to_kind(Kind::Float)))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The policy's trainable weights, as f32 copies.
fn weights(l: &Learner) -> Vec<(String, Tensor)> {
    let vars = l.var_store().variables();
    f32_copies(vars.iter().map(|(n, t)| (n.clone(), t)))
}

/// The optimizer's f32 master weights, copied.
fn masters(l: &Learner) -> Vec<(String, Tensor)> {
    let masters: Vec<(String, Tensor)> = l
        .optimizer()
        .master_weights()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    f32_copies(masters.iter().map(|(n, t)| (n.clone(), t)))
}

/// Elements of `a` that differ from `b`, and the total.
fn changed(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (i64, i64) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0, 0), |(c, n), ((na, x), (nb, y))| {
        assert_eq!(na, nb);
        let diff = x.ne_tensor(y).sum(Kind::Int64).int64_value(&[]);
        (c + diff, n + x.numel() as i64)
    })
}

/// Sum over elements of |a - b|.
fn l1(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((_, x), (_, y))| (x - y).abs().sum(Kind::Double).double_value(&[]))
        .sum()
}

#[test]
fn at_lr_1e6_pure_bf16_drops_most_updates_and_the_masters_keep_them() {
    let _serial = serial();
    let batch = &batches(1)[0];
    let mut pure = learner(Kind::BFloat16, Precision::Pure);
    let mut mixed = learner(Kind::BFloat16, Precision::Bf16Mixed);
    let start = weights(&pure);
    assert_eq!(
        masters(&mixed),
        start,
        "the masters start as the bf16 weights"
    );
    pure.update(batch).unwrap();
    mixed.update(batch).unwrap();
    let (pure_moved, total) = changed(&weights(&pure), &start);
    let (master_moved, _) = changed(&masters(&mixed), &start);
    let (mixed_moved, _) = changed(&weights(&mixed), &start);
    // The step's gradients are still in `.grad()`: a master stays only where its is 0.
    let with_gradient: i64 = mixed
        .var_store()
        .variables()
        .values()
        .map(|t| t.grad().ne(0.0).sum(Kind::Int64).int64_value(&[]))
        .sum();
    eprintln!(
        "one step at lr {LR}: pure bf16 moved {pure_moved} of {total} weights; bf16-mixed \
         moved {master_moved} masters ({with_gradient} had a nonzero gradient) and \
         {mixed_moved} bf16 weights"
    );
    assert_eq!(master_moved, with_gradient);
    assert!(
        (pure_moved as f64) < 0.1 * total as f64,
        "pure bf16 should round away most updates: {pure_moved} of {total} moved"
    );
    assert!(
        master_moved as f64 > 0.99 * total as f64,
        "every master with a gradient should move: {master_moved} of {total}"
    );
    // The same batch again and again: pure bf16 rounds each step away anew, while the
    // masters accumulate until the bf16 weights cross a rounding boundary.
    let steps = 40;
    for _ in 1..steps {
        pure.update(batch).unwrap();
        mixed.update(batch).unwrap();
    }
    let (pure_moved, _) = changed(&weights(&pure), &start);
    let (mixed_moved, _) = changed(&weights(&mixed), &start);
    eprintln!(
        "after {steps} steps: pure bf16 moved {pure_moved} of {total} weights, bf16-mixed \
         {mixed_moved}"
    );
    assert!(
        mixed_moved > 10 * pure_moved.max(1),
        "the masters should carry the bf16 weights: {mixed_moved} vs pure {pure_moved}"
    );
}

#[test]
fn a_master_update_equals_the_f32_update_bit_for_bit() {
    let _serial = serial();
    tch::manual_seed(0);
    let names = ["layer.weight", "model.norm.weight"];
    let shapes: [&[i64]; 2] = [&[16, 8], &[8]];
    let bf16: Vec<Tensor> = shapes
        .iter()
        .map(|s| Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)).to_kind(Kind::BFloat16))
        .collect();
    let half: Vec<Tensor> = bf16
        .iter()
        .map(|t| t.copy().set_requires_grad(true))
        .collect();
    let full: Vec<Tensor> = bf16
        .iter()
        .map(|t| t.to_kind(Kind::Float).set_requires_grad(true))
        .collect();
    let track = |ts: &[Tensor]| -> Vec<(String, Tensor)> {
        names
            .iter()
            .zip(ts)
            .map(|(n, t)| (n.to_string(), t.shallow_clone()))
            .collect()
    };
    let mut mixed = AdamW::with_master_weights(track(&half));
    let mut reference = AdamW::new(track(&full));
    let cfg = OptimConfig {
        lr: LR,
        weight_decay: 0.1,
        ..Default::default()
    };
    for _ in 0..5 {
        // bf16 gradients large enough for clipping at 1.0 to act.
        let grads: Vec<Tensor> = shapes
            .iter()
            .map(|s| {
                (Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)) * 3.0).to_kind(Kind::BFloat16)
            })
            .collect();
        let loss = |ps: &[Tensor], kind: Kind| -> Tensor {
            ps.iter()
                .zip(&grads)
                .map(|(p, g)| (p * g.to_kind(kind)).sum(Kind::Float))
                .fold(
                    Tensor::zeros([], (Kind::Float, tch::Device::Cpu)),
                    |a, b| a + b,
                )
        };
        mixed.zero_grad();
        reference.zero_grad();
        loss(&half, Kind::BFloat16).backward();
        loss(&full, Kind::Float).backward();
        let norm = mixed.clip_grad_norm(1.0);
        assert_eq!(norm, reference.clip_grad_norm(1.0));
        assert!(norm > 1.0, "clipping should act: norm {norm}");
        mixed.step(cfg.lr, &cfg);
        reference.step(cfg.lr, &cfg);
    }
    let master: Vec<Tensor> = mixed.master_weights().map(|(_, t)| t).collect();
    assert_eq!(master.len(), 2);
    for ((m, f), (h, start)) in master.iter().zip(&full).zip(half.iter().zip(&bf16)) {
        assert!(
            !m.equal(&start.to_kind(Kind::Float)),
            "the master did not move"
        );
        assert!(
            m.equal(&f.detach()),
            "the master differs from the f32 update"
        );
        assert!(h.equal(&f.to_kind(Kind::BFloat16)), "bf16 != round(master)");
    }
}

#[test]
fn a_bf16_mixed_run_stays_close_to_the_f32_run_and_pure_bf16_does_not() {
    let _serial = serial();
    let batches = batches(3);
    let mut f32_run = learner(Kind::Float, Precision::Auto);
    let mut mixed = learner(Kind::BFloat16, Precision::Auto);
    let mut pure = learner(Kind::BFloat16, Precision::Pure);
    assert_eq!(f32_run.optimizer().master_weights().count(), 0);
    let start = weights(&f32_run);
    for batch in &batches {
        f32_run.update(batch).unwrap();
        mixed.update(batch).unwrap();
        pure.update(batch).unwrap();
    }
    let reference = weights(&f32_run);
    let moved = l1(&reference, &start);
    // The forwards differ by bf16 rounding, so gradients (and, where one is near zero, the
    // sign of Adam's step) differ: compare the total deviation with the total movement.
    let mixed_err = l1(&masters(&mixed), &reference) / moved;
    let pure_err = l1(&weights(&pure), &reference) / moved;
    eprintln!(
        "after {} steps: f32 moved {moved:.3e} (L1); deviation from it / that: bf16-mixed \
         masters {mixed_err:.3}, pure bf16 {pure_err:.3}",
        batches.len()
    );
    assert!(mixed_err < 0.25, "bf16-mixed strays from f32: {mixed_err}");
    assert!(
        pure_err > 0.75,
        "pure bf16 should lose most of the f32 movement: {pure_err}"
    );
}

#[test]
fn a_resumed_bf16_mixed_learner_continues_exactly() {
    let _serial = serial();
    let batches = batches(3);
    let mut a = learner(Kind::BFloat16, Precision::Bf16Mixed);
    a.update(&batches[0]).unwrap();
    a.update(&batches[1]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("optimizer.safetensors");
    a.save_optimizer(&path).unwrap();
    // The same file without its masters: they are then taken from the bf16 weights.
    let without = dir.path().join("no-masters.safetensors");
    let kept: Vec<(String, Tensor)> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .filter(|(n, _)| !n.ends_with(".master"))
        .collect();
    assert!(kept.len() < Tensor::read_safetensors(&path).unwrap().len());
    Tensor::write_safetensors(&kept, &without).unwrap();
    // B and C: a new learner gets A's bf16 weights, then the optimizer file, in the order
    // `checkpoint::restore` loads them.
    let resume = |file: &std::path::Path| {
        let mut l = learner(Kind::BFloat16, Precision::Bf16Mixed);
        let saved: Vec<(String, Tensor)> = a.var_store().variables().into_iter().collect();
        assert!(load_into(l.var_store(), saved).is_complete());
        l.load_optimizer(file).unwrap();
        l
    };
    let mut b = resume(&path);
    let mut c = resume(&without);
    assert_eq!(masters(&b), masters(&a));
    assert_eq!(
        masters(&c),
        weights(&a),
        "missing masters come from the weights"
    );
    for l in [&mut a, &mut b, &mut c] {
        l.update(&batches[2]).unwrap();
    }
    assert_eq!(
        weights(&b),
        weights(&a),
        "bf16 weights differ after resuming"
    );
    assert_eq!(masters(&b), masters(&a), "masters differ after resuming");
    let (lost, total) = changed(&masters(&c), &masters(&a));
    eprintln!("without saved masters, {lost} of {total} masters differ after one more step");
    assert!(
        lost as f64 > 0.5 * total as f64,
        "the saved masters made no difference"
    );
}

#[test]
fn precision_resolves_by_dtype_and_lora_keeps_masters_of_adapters_only() {
    let _serial = serial();
    let count = |l: &Learner| {
        let o = l.optimizer();
        (o.master_weights().count(), o.names().count())
    };
    let (masters, params) = count(&learner(Kind::BFloat16, Precision::Auto));
    assert_eq!(masters, params, "auto: a master for every bf16 parameter");
    assert_eq!(count(&learner(Kind::BFloat16, Precision::Pure)).0, 0);
    assert_eq!(count(&learner(Kind::Float, Precision::Auto)).0, 0);
    let (vs, model) = policy(Kind::Float);
    let e = Learner::new(vs, model, config(Precision::Bf16Mixed))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("learner.precision = \"bf16-mixed\"") && e.contains("are f32"),
        "{e}"
    );
    let (base, model) = policy(Kind::BFloat16);
    let (vs, lora) = with_adapters(&base, model.config(), &LoraConfig::default()).unwrap();
    drop(model);
    let l = Learner::new(vs, lora, config(Precision::Auto)).unwrap();
    let names: Vec<&str> = l.optimizer().master_weights().map(|(n, _)| n).collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| is_adapter(n)),
        "{names:?}"
    );
    assert_eq!(names.len(), l.optimizer().names().count());
}
