//! `optim = "adamw_8bit"` against bitsandbytes' own `AdamW8bit` on the CPU (golden values from
//! `fixtures/learner/make_adamw_8bit.py`): the quantization maps and codes, five steps on a
//! weight with 8-bit moments and a norm with f32 ones, and checkpoints that resume exactly and
//! convert between 8-bit and f32 moments.

use std::collections::HashMap;

use oxrl::learner::optim::{AdamW, OptimConfig, Optimizer};
use oxrl::learner::quant8::{dynamic_map, Codebook, Quantized};
use tch::{Device, Kind, Tensor};

fn golden() -> HashMap<String, Tensor> {
    entries(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/learner/adamw_8bit.safetensors"
    )))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

fn config(g: &HashMap<String, Tensor>, optim: Optimizer) -> OptimConfig {
    let h = |i| g["hparams"].double_value(&[i]);
    OptimConfig {
        optim,
        lr: h(0),
        adam_beta1: h(1),
        adam_beta2: h(2),
        adam_epsilon: h(3),
        weight_decay: h(4),
        max_grad_norm: 0.0,
        ..Default::default()
    }
}

/// The fixture's weight (decayed) and norm (not decayed) as leaves, and an optimizer on them.
fn start(g: &HashMap<String, Tensor>, optim: Optimizer) -> (Tensor, Tensor, AdamW) {
    start_from(&g["weight0"], &g["norm0"], optim)
}

/// As [`start`], from the weight and norm values `w0`, `n0`.
fn start_from(w0: &Tensor, n0: &Tensor, optim: Optimizer) -> (Tensor, Tensor, AdamW) {
    let w = w0.copy().set_requires_grad(true);
    let n = n0.copy().set_requires_grad(true);
    let params = vec![
        ("layer.weight".to_string(), w.shallow_clone()),
        ("model.norm.weight".to_string(), n.shallow_clone()),
    ];
    (w, n, AdamW::build(params, false, optim))
}

/// Steps `from .. to` of the fixture's gradients.
fn run(
    g: &HashMap<String, Tensor>,
    w: &Tensor,
    n: &Tensor,
    opt: &mut AdamW,
    cfg: &OptimConfig,
    steps: std::ops::Range<usize>,
) {
    for step in steps {
        opt.zero_grad();
        ((w * &g[&format!("grad_weight{step}")]).sum(Kind::Float)
            + (n * &g[&format!("grad_norm{step}")]).sum(Kind::Float))
        .backward();
        opt.step(cfg.lr, cfg);
    }
}

fn entries(path: &std::path::Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn steps(g: &HashMap<String, Tensor>) -> usize {
    g["hparams"].double_value(&[5]) as usize
}

#[test]
fn maps_and_codes_equal_bitsandbytes() {
    let g = golden();
    assert_eq!(max_diff(&dynamic_map(true), &g["qmap_signed"]), 0.0);
    assert_eq!(max_diff(&dynamic_map(false), &g["qmap_unsigned"]), 0.0);
    let x = &g["quantize_x"];
    let n = x.size()[0];
    let mut q = Quantized::zeros(n, &Codebook::dynamic(true, Device::Cpu));
    q.write(0, x);
    let (codes, absmax) = q.parts();
    assert!(absmax.equal(&g["quantize_absmax"]), "block maxima differ");
    // Codes equal bitsandbytes' but for two things its CPU kernel does: it codes a block of
    // zeros as 0/0 (code 0 there, the 0 entry here: both decode to 0), and its binary search
    // sometimes stops one entry short of the nearest. Where the codes differ, oxrl's entry is
    // never the farther one.
    let theirs = &g["quantize_codes"];
    let map = dynamic_map(true);
    let scale = absmax
        .repeat_interleave_self_int(256, 0, None)
        .narrow(0, 0, n);
    let zero_block = scale.eq(0.0);
    let differ = codes
        .ne_tensor(theirs)
        .logical_and(&zero_block.logical_not());
    let frac = differ
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    assert!(frac < 0.005, "{frac} of the codes differ");
    let distance =
        |c: &Tensor| (x / scale.clamp_min(1e-38) - map.take(&c.to_kind(Kind::Int64))).abs();
    let farther = (distance(codes) - distance(theirs))
        .gt(0.0)
        .logical_and(&differ);
    assert_eq!(
        farther.sum(Kind::Int64).int64_value(&[]),
        0,
        "a code is farther than bitsandbytes'"
    );
    let zero_code = map.abs().argmin(0, false);
    assert!(
        codes
            .masked_select(&zero_block)
            .to_kind(Kind::Int64)
            .eq_tensor(&zero_code)
            .all()
            .int64_value(&[])
            == 1
    );
}

/// Bitsandbytes' state after `k` steps as an oxrl optimizer checkpoint.
fn bnb_checkpoint(g: &HashMap<String, Tensor>, k: usize, path: &std::path::Path) {
    let mut tensors = vec![("step".to_string(), Tensor::from_slice(&[k as i64]))];
    for key in ["exp_avg", "exp_avg_sq"] {
        for part in ["codes", "absmax"] {
            tensors.push((
                format!("layer.weight.{key}.{part}"),
                g[&format!("weight_{key}_{part}{k}")].shallow_clone(),
            ));
        }
        tensors.push((
            format!("model.norm.weight.{key}"),
            g[&format!("norm_{key}{k}")].shallow_clone(),
        ));
    }
    Tensor::write_safetensors(&tensors, path).unwrap();
}

/// The largest difference between two flat 8-bit moments, decoded, relative to their block
/// maximum (`theirs`'), and the fraction of values that differ by more than the map's fine
/// entries near 0 (1e-4 of the block maximum).
fn code_distance(ours: &Tensor, theirs: &Tensor, absmax: &Tensor, signed: bool) -> (f64, f64) {
    let n = ours.numel() as i64;
    let book = Codebook::dynamic(signed, Device::Cpu);
    let decode = |codes: &Tensor| {
        Quantized::from_parts(codes, absmax, &book)
            .unwrap()
            .read(0, n)
            / absmax
                .clamp_min(1e-38)
                .repeat_interleave_self_int(256, 0, None)
                .narrow(0, 0, n)
    };
    let off = (decode(ours) - decode(theirs)).abs();
    let differ = off
        .gt(1e-4)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    (off.max().double_value(&[]), differ)
}

#[test]
fn each_step_from_bitsandbytes_state_equals_its_next_step() {
    let g = golden();
    let cfg = config(&g, Optimizer::Adamw8bit);
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("bnb.safetensors");
    for k in 0..steps(&g) {
        // Start from bitsandbytes' weights and state after k steps (zeros at k = 0).
        let (w, n, mut opt) = start_from(
            &g[&format!("weight{k}")],
            &g[&format!("norm{k}")],
            Optimizer::Adamw8bit,
        );
        if k > 0 {
            bnb_checkpoint(&g, k, &ckpt);
            opt.load(&ckpt).unwrap();
        }
        run(&g, &w, &n, &mut opt, &cfg, k..k + 1);

        // The step uses the moments before they are coded again: from the same state the
        // weights equal bitsandbytes' to the last bit or two (torch's lerp_ for the first
        // moment, where bitsandbytes multiplies and adds).
        for (ours, theirs) in [
            (&w, format!("weight{}", k + 1)),
            (&n, format!("norm{}", k + 1)),
        ] {
            let d = max_diff(ours, &g[&theirs]);
            assert!(d < 5e-7, "step {k}: {theirs} differs by {d:e}");
        }
        // The coded moments: bitsandbytes' CPU kernel finds its code by an approximate
        // search that sometimes stops an entry short of the nearest (and, among the finest
        // entries near 0, several: it codes 0 itself as 2e-5), where oxrl takes the
        // nearest: under 1% of the values differ by more than those finest entries, and by
        // less than the map's widest step, relative to the block maximum.
        opt.save(&ckpt).unwrap();
        let saved: HashMap<String, Tensor> = Tensor::read_safetensors(&ckpt)
            .unwrap()
            .into_iter()
            .collect();
        for (key, signed) in [("exp_avg", true), ("exp_avg_sq", false)] {
            let theirs = |part: &str| g[&format!("weight_{key}_{part}{}", k + 1)].shallow_clone();
            let absmax = &saved[&format!("layer.weight.{key}.absmax")];
            let rel = max_diff(absmax, &theirs("absmax"))
                / theirs("absmax").abs().max().double_value(&[]);
            assert!(rel < 1e-6, "step {k} {key}: block maxima differ by {rel:e}");
            let (off, differ) = code_distance(
                &saved[&format!("layer.weight.{key}.codes")],
                &theirs("codes"),
                &theirs("absmax"),
                signed,
            );
            assert!(
                differ < 0.01,
                "step {k} {key}: {differ} of the values differ"
            );
            assert!(
                off < 0.015,
                "step {k} {key}: a value differs by {off} of its block maximum"
            );
            let norm = max_diff(
                &saved[&format!("model.norm.weight.{key}")],
                &g[&format!("norm_{key}{}", k + 1)],
            );
            assert!(
                norm < 1e-9,
                "step {k}: the norm's f32 {key} differs by {norm:e}"
            );
        }
    }
}

#[test]
fn a_resumed_8bit_optimizer_continues_exactly_and_converts_f32_checkpoints() {
    let g = golden();
    let total = steps(&g);
    let dir = tempfile::tempdir().unwrap();
    let cfg8 = config(&g, Optimizer::Adamw8bit);
    let (w, n, mut opt) = start(&g, Optimizer::Adamw8bit);
    run(&g, &w, &n, &mut opt, &cfg8, 0..2);
    let ckpt8 = dir.path().join("8bit.safetensors");
    opt.save(&ckpt8).unwrap();
    let (w_at2, n_at2) = (w.detach().copy(), n.detach().copy());
    run(&g, &w, &n, &mut opt, &cfg8, 2..total);

    // Resume from step 2 in a fresh optimizer: the same weights at the end, bit for bit.
    let (w2, n2, mut resumed) = start_from(&w_at2, &n_at2, Optimizer::Adamw8bit);
    resumed.load(&ckpt8).unwrap();
    assert_eq!(resumed.steps(), 2);
    run(&g, &w2, &n2, &mut resumed, &cfg8, 2..total);
    assert!(w2.equal(&w) && n2.equal(&n), "resumed 8-bit run differs");

    // The same checkpoint resumes an f32-moment run: the codes are decoded exactly.
    let (w3, n3, mut decoded) = start(&g, Optimizer::AdamwTorch);
    decoded.load(&ckpt8).unwrap();
    let ckpt32 = dir.path().join("f32.safetensors");
    decoded.save(&ckpt32).unwrap();
    let (f8, f32_) = (entries(&ckpt8), entries(&ckpt32));
    for (key, signed) in [("exp_avg", true), ("exp_avg_sq", false)] {
        let codes = &f8[&format!("layer.weight.{key}.codes")];
        let absmax = &f8[&format!("layer.weight.{key}.absmax")];
        let q =
            Quantized::from_parts(codes, absmax, &Codebook::dynamic(signed, Device::Cpu)).unwrap();
        let values = f32_[&format!("layer.weight.{key}")].view([-1]);
        assert!(
            values.equal(&q.read(0, codes.numel() as i64)),
            "{key} decoded differently"
        );
    }
    drop((w3, n3));

    // And an f32 checkpoint resumes an 8-bit run: the moments are coded again (a block whose
    // largest value is negative codes it as -0.993, so its scale shifts by 0.7% once), and the
    // run continues within a small part of the uninterrupted run's movement.
    let (w4, n4, mut quantized) = start_from(&w_at2, &n_at2, Optimizer::Adamw8bit);
    quantized.load(&ckpt32).unwrap();
    run(&g, &w4, &n4, &mut quantized, &cfg8, 2..total);
    let moved = (&w - &w_at2).norm().double_value(&[]);
    let off = (&w4 - &w).norm().double_value(&[]) / moved;
    assert!(
        off < 0.01,
        "re-coded moments drifted by {off} of the movement"
    );

    // A checkpoint of another shape is refused by name, and nothing is changed.
    let other = AdamW::build(
        vec![(
            "layer.weight".to_string(),
            Tensor::zeros([41, 130], (Kind::Float, Device::Cpu)).set_requires_grad(true),
        )],
        false,
        Optimizer::Adamw8bit,
    );
    let wrong = dir.path().join("wrong.safetensors");
    other.save(&wrong).unwrap();
    let err = quantized.load(&wrong).unwrap_err().to_string();
    assert!(err.contains("layer.weight.exp_avg: shape"), "{err}");
    assert_eq!(quantized.steps(), total);
}

#[test]
fn the_config_takes_hf_names_and_refuses_others() {
    let c: OptimConfig = toml::from_str("optim = \"adamw_bnb_8bit\"").unwrap();
    assert_eq!(c.optim, Optimizer::Adamw8bit);
    let c: OptimConfig = toml::from_str("optim = \"adamw_8bit\"").unwrap();
    assert_eq!(c.optim, Optimizer::Adamw8bit);
    assert_eq!(OptimConfig::default().optim, Optimizer::AdamwTorch);
    let err = toml::from_str::<OptimConfig>("optim = \"paged_adamw_8bit\"").unwrap_err();
    assert!(err.to_string().contains("paged_adamw_8bit"), "{err}");
}
