//! Datasets, prompt formatting and environments for oxrl.
//!
//! This crate has no libtorch dependency: it turns data into prompts (text or chat
//! messages) and completions into observations and rewards; the engine drives it.
//!
//! Entry points for the engine:
//! - [`EnvConfig`] (`[env]` in the run config) → [`LoadedEnv::from_config`]: the task, its
//!   train/eval [`Dataset`]s, and a [`Sampler`] whose [`Cursor`] goes into checkpoints.
//! - Single-turn: [`LoadedEnv::prompt`] (text) or [`LoadedEnv::messages`]; the row
//!   ([`Row::with_completion`]) is the `oxrl_rewards::Completion` the rewards crate scores.
//! - Multi-turn: [`LoadedEnv::start_episode`] → [`Episode::model_turn`] after each
//!   generation → [`Transcript::tokenize`] for ids and the loss mask.
//!
//! docs/envs.md describes row schemas, the tool-call format and the external protocol.
#![warn(missing_docs)]

pub mod chat_template;
pub mod config;
pub mod dataset;
pub mod episode;
pub mod error;
/// Exact arithmetic over rationals, shared with `oxrl-rewards` (whose `countdown` reward
/// verifies with it): re-exported from [`oxrl_rewards::exact`].
pub use oxrl_rewards::exact as expr;
pub mod external;
pub mod prompt;
pub mod rng;
pub mod row;
pub mod tasks;
pub mod tools;
pub mod transcript;

pub use chat_template::{ChatTemplate, Message};
pub use config::{DataConfig, EnvConfig, EpisodeConfig, LoadedEnv};
pub use dataset::{Cursor, Dataset, OnBadRow, Sampler};
pub use episode::{Environment, Episode, EpisodeRecord, StepResult, Turn};
pub use error::{EnvError, Result};
pub use external::{ExternalConfig, ExternalEnv};
pub use prompt::{FewShot, PromptConfig, PromptFormat, PromptFormatter};
pub use row::Row;
pub use tasks::{RewardKind, Task, TaskKind};
pub use tools::{ToolSyntax, ToolsConfig};
pub use transcript::{Segment, Source, TokenizedTranscript, Transcript};
