//! Rollouts on vLLM: servers oxrl launches and supervises ([`server`]), each reached token in
//! and token out ([`client`]), and a fleet that spreads a step's prompts over them and syncs
//! the learner's weights to them ([`fleet`]).

pub mod client;
pub mod fleet;
pub mod server;

pub use client::{CompletionParams, EngineCompletion, Replica};
pub use fleet::Fleet;
pub use server::{free_port, log_tail, LaunchSpec, VllmServer, SERVED_MODEL};
