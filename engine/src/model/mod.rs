//! Model definitions and their configuration.

pub mod config;
pub mod kv_cache;
pub mod llama;
pub mod random;
pub mod replica;
pub mod rope;

pub use config::{Architecture, ModelConfig};
pub use kv_cache::KvCache;
pub use llama::Llama;
