//! `oxrl train`: the run config and the training loop that ties rollouts, rewards and the
//! learner together.

pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod pairs;
pub mod progress;
pub mod trainer;

pub use config::RunConfig;
pub use trainer::{Resume, StepReport, Trainer};
