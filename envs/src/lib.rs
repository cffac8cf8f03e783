//! Datasets, prompt formatting and environments for oxrl.
//!
//! This crate has no libtorch dependency: it turns data into prompts (text or chat
//! messages) and completions into observations and rewards; the engine drives it.
#![warn(missing_docs)]

pub mod chat_template;

pub use chat_template::{ChatTemplate, Message};
