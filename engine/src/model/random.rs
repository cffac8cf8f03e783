//! Randomly initialised models: tiny ones for tests (no downloads, fixed seeds) and for the
//! smoke-test run config.

use tch::nn::VarStore;
use tch::Tensor;

/// Overwrites every parameter with seeded noise: N(0, scale) for matrices and vectors,
/// 1 + N(0, scale) for norm weights, so that no parameter keeps a symmetric default and
/// layout bugs cannot hide.
pub fn randomize(vs: &VarStore, seed: i64, scale: f64) {
    tch::manual_seed(seed);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0)); // HashMap order would make the seed meaningless
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let noise = Tensor::randn(var.size(), (var.kind(), var.device())) * scale;
            let value = if name.contains("norm") {
                noise + 1.0
            } else {
                noise
            };
            var.copy_(&value);
        }
    });
}
