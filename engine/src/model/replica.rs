//! A new model in its own `VarStore`, on the source's device and in its dtype, with its
//! weights copied by name from the source: the learner's frozen reference, the PPO critic's
//! trunk, a LoRA model over base weights, and the async rollout worker all start this way.

use tch::nn::{Path, VarStore};

use crate::error::{Error, Result};

/// Builds a model with `build` in a new `VarStore` like `src` (device, dtype of its first
/// variable) and copies every variable from `src` by name, except those `own` says the new
/// model brings itself (LoRA adapters, a value head). A variable `src` lacks is an error
/// naming it.
pub fn replica<M>(
    src: &VarStore,
    build: impl FnOnce(&Path) -> M,
    own: impl Fn(&str) -> bool,
) -> Result<(VarStore, M)> {
    let mut vs = VarStore::new(src.device());
    let model = build(&vs.root());
    if let Some(kind) = src.variables().values().next().map(|t| t.kind()) {
        vs.set_kind(kind);
    }
    let from = src.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, mut dst) in vs.variables() {
            if own(&name) {
                continue;
            }
            let s = from.get(&name).ok_or_else(|| {
                Error::Invalid(format!("copying weights: the source lacks {name}"))
            })?;
            dst.f_copy_(s)?;
        }
        Ok(())
    })?;
    Ok((vs, model))
}
