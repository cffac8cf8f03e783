//! A learner as one rank of a data-parallel job (`Learner::join`): what the ranks must agree
//! on for N ranks, each training on its share of a batch, to take the optimizer step one
//! process would take on the whole batch. The ranks start from rank 0's weights; each step's
//! loss is normalised by the whole job's sizes ([`global_scale`]), the gradients are summed
//! across ranks in flat buckets, and every rank then takes the same AdamW step. A rank whose
//! share is empty still takes part, with zero gradients, so no rank waits forever.

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::algorithm::StepScale;
use crate::dist::{ProcessGroup, ReduceOp};
use crate::error::Result;

/// Copies rank 0's variables of each store into every other rank's, in name order.
pub(super) fn broadcast_weights(group: &ProcessGroup, stores: &[&VarStore]) -> Result<()> {
    for vs in stores {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, t) in vars {
            group.broadcast(&t, 0)?;
        }
    }
    Ok(())
}

/// The whole job's step sizes: sequences, tokens and micro-batches summed over the ranks
/// (each rank's micro-batches add their share of the whole loss, so the sum is the one
/// process's count when the ranks' shares are whole groups).
pub(super) fn global_scale(group: &ProcessGroup, local: StepScale) -> Result<StepScale> {
    let sums = sum(
        group,
        &[
            local.sequences as f64,
            local.tokens as f64,
            local.micro_batches as f64,
        ],
    )?;
    Ok(StepScale {
        sequences: sums[0] as usize,
        tokens: sums[1] as usize,
        micro_batches: sums[2] as usize,
        max_completion_length: local.max_completion_length,
    })
}

/// `values` summed elementwise over the ranks (f64: exact for counts).
pub(super) fn sum(group: &ProcessGroup, values: &[f64]) -> Result<Vec<f64>> {
    group.all_reduce_values(values, ReduceOp::Sum)
}

/// The largest `value` over the ranks.
pub(super) fn max(group: &ProcessGroup, value: usize) -> Result<usize> {
    Ok(group.all_reduce_values(&[value as f64], ReduceOp::Max)?[0] as usize)
}

/// Gives every parameter a gradient tensor (zeros) if no backward has yet: the all-reduce
/// needs one on every rank, including a rank that had nothing to train. tch cannot assign
/// `.grad`, so one backward through a slice of each makes autograd allocate them.
pub(super) fn allocate_gradients<'a>(params: impl Iterator<Item = &'a Tensor>) {
    let missing: Vec<Tensor> = params
        .filter(|p| p.requires_grad() && !p.grad().defined())
        .map(|p| p.reshape([-1]).narrow(0, 0, 1).sum(Kind::Float))
        .collect();
    if let Some(total) = missing.into_iter().reduce(|a, b| a + b) {
        (total * 0.0).backward();
    }
}
