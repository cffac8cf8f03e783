//! The learner: GRPO, PPO, TOPR, DPO, expert iteration and SFT as peers behind one [`Algorithm`]
//! trait, AdamW with schedules, clipping and f32 master weights for bf16 models, token-budget
//! micro-batches with exact gradient accumulation, and a frozen reference model. See
//! `docs/learner.md`.
//!
//! ```text
//! let mut learner = Learner::new(vs, policy, learner_config)?;
//! let metrics = learner.update(&samples)?; // samples: scored rollouts (or DPO pairs)
//! ```

pub mod advantages;
pub mod algorithm;
pub mod batch;
pub mod data;
mod data_parallel;
pub mod dpo;
pub mod expert;
pub mod grpo;
#[allow(clippy::module_inception)]
mod learner;
pub mod lora;
mod master;
pub mod metrics;
pub mod optim;
pub mod ppo;
pub mod precision;
pub mod quant8;
pub mod recompute;
pub mod rollout_correction;
pub mod sft;
pub mod topr;
mod validate;

pub use algorithm::{
    Algorithm, BatchContext, CriticInput, CriticTargets, LossInput, LossOutput, LossType, Prepared,
    PreparedRow, StepScale,
};
pub use learner::{AlgorithmKind, Learner, LearnerConfig, Update};
pub use metrics::{Metrics, Stats};
pub use precision::Precision;
pub use rollout_correction::{CorrectionMode, GapMeter, LogprobGap, RolloutCorrection};
