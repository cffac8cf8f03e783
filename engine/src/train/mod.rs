//! `oxrl train`: the run config and the training loop that ties rollouts, rewards and the
//! learner together.

pub mod agents;
pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod data_parallel;
pub mod episodes;
pub mod eval;
pub mod pairs;
pub mod prefetch;
pub mod progress;
pub mod rank_status;
pub mod references;
pub mod replay;
pub mod run_lock;
pub mod scoring;
pub mod step_log;
pub mod step_record;
pub mod trainer;
pub mod vllm_rollout;

pub use config::RunConfig;
pub use step_record::StepRecord;
pub use trainer::{Resume, Trainer};
