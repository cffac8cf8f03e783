//! The rollout engine: batched sampling with exact behaviour logprobs ([`generate`]), the
//! worker pool that runs it beside the learner ([`pool`]), the one-prompt reference path
//! behind `oxrl generate` ([`single`]) and full-forward logprobs, the reference the recorded
//! behaviour logprobs must equal ([`logprobs`]); and generation on vLLM servers ([`vllm`]).

pub mod generate;
pub mod logprobs;
pub mod pool;
pub mod sampling;
pub mod single;
pub mod stop;
pub mod vllm;

pub use generate::{
    generate_batch, generate_continuing, Generated, GenerationRequest, SequenceCache,
};
pub use pool::{RolloutPool, RolloutResult, Staleness, WeightUpdate, WorkerModel};
pub use sampling::SamplingParams;
pub use stop::StopConditions;
