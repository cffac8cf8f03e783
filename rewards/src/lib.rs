//! Reward functions for oxrl. No libtorch dependency.
//!
//! A [`Reward`] scores a batch of [`Completion`]s and returns, per completion, a score or a typed
//! [`RewardFailure`]. Rewards are built by name from serde config through a [`Registry`]
//! and combined with weights by [`WeightedRewards`], which reports every reward separately
//! and counts failures per reward and per [`FailureKind`]. Design notes: `docs/rewards.md`.
#![warn(missing_docs)]

pub mod code;
pub mod combine;
pub mod completion;
pub mod countdown;
pub mod custom;
pub mod error;
pub mod exact;
pub mod format;
mod http_client;
pub mod iou;
pub mod json_lines;
pub mod jsonl;
pub mod judge;
pub mod math;
pub mod registry;
mod runtime;

pub use combine::{CombinedScores, FailureCounts, RewardReport, WeightedRewards};
pub use completion::Completion;
pub use error::{Error, FailureKind, Result, RewardFailure};
pub use jsonl::score_jsonl;
pub use registry::{Registry, RewardSpec};

/// Outcome for one completion: a score, or a typed failure that the caller counts.
pub type Score = std::result::Result<f64, RewardFailure>;

/// A reward function over a batch of completions.
///
/// Implementations must never panic on bad input: every problem with a completion is reported
/// as a [`RewardFailure`] in that completion's slot. The returned vector has exactly one entry
/// per input completion, in order.
///
/// A reward has no name of its own: the name it reports under (metrics, logs, failure
/// counts) is the one it is added with, [`RewardSpec::name`] through
/// [`WeightedRewards::from_specs`] or the `name` argument of [`WeightedRewards::push`].
/// Builders receive that name too, for their error messages.
pub trait Reward: Send + Sync {
    /// Scores every completion of the batch.
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score>;
}
