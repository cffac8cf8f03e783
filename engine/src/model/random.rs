//! Randomly initialised models: tiny ones for tests (no downloads, fixed seeds) and for the
//! smoke-test run config.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::{Llama, ModelConfig};
use crate::pretrained::LoadOptions;

/// A model of `cfg` with seeded random weights (N(0, 0.02), see [`randomize`]) on `opts`'
/// device and in its dtype.
pub fn random_model(cfg: &ModelConfig, seed: u64, opts: LoadOptions) -> (VarStore, Llama) {
    let mut vs = VarStore::new(opts.device);
    let model = Llama::new(&vs.root(), cfg);
    randomize(&vs, seed as i64, 0.02);
    if opts.kind != Kind::Float {
        vs.set_kind(opts.kind);
    }
    (vs, model)
}

/// Overwrites every parameter with seeded noise: N(0, scale) for matrices and vectors,
/// 1 + N(0, scale) for norm weights, so that no parameter keeps a symmetric default and
/// layout bugs cannot hide. The noise comes from a private generator (not libtorch's global
/// one), so the same seed gives the same model even while other threads draw random numbers.
pub fn randomize(vs: &VarStore, seed: i64, scale: f64) {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0)); // HashMap order would make the seed meaningless
    let mut rng = ChaCha8Rng::seed_from_u64(seed as u64);
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let offset = if name.contains("norm") { 1.0 } else { 0.0 };
            let values: Vec<f32> = (0..var.numel())
                .map(|_| (offset + scale * normal(&mut rng)) as f32)
                .collect();
            let noise = Tensor::from_slice(&values).view(var.size().as_slice());
            var.copy_(&noise);
        }
    });
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_weights_and_sensible_statistics() {
        let make = |seed| {
            let vs = VarStore::new(tch::Device::Cpu);
            let root = vs.root();
            let _ = root.zeros("w", &[100, 100]);
            let _ = (&root / "norm").zeros("weight", &[100]);
            randomize(&vs, seed, 0.5);
            vs
        };
        let (a, b, c) = (make(1), make(1), make(2));
        let (va, vb, vc) = (a.variables(), b.variables(), c.variables());
        assert!(va["w"].equal(&vb["w"]));
        assert!(!va["w"].equal(&vc["w"]));
        let std = f64::try_from(va["w"].std(true)).unwrap();
        assert!((std - 0.5).abs() < 0.02, "std {std}");
        let mean = f64::try_from(va["norm.weight"].mean(tch::Kind::Float)).unwrap();
        assert!((mean - 1.0).abs() < 0.15, "norm mean {mean}");
    }
}
