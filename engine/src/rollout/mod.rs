//! The rollout engine: batched sampling with exact behaviour logprobs, and the worker pool
//! that runs it beside the learner.

pub mod generate;
pub mod pool;
mod sample_kernel;
pub mod sampling;
pub mod stop;

pub use generate::{generate_batch, Generated, GenerationRequest};
pub use pool::{RolloutPool, RolloutResult, Staleness, WeightUpdate, WorkerModel};
pub use sampling::SamplingParams;
pub use stop::StopConditions;
