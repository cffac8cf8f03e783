//! Model definitions and their configuration.

pub mod config;
pub mod decode_attention;
pub mod decode_linear;
pub mod fused;
pub mod kv_cache;
pub mod llama;
pub mod omp;
pub mod random;
pub mod rope;

pub use config::{Architecture, ModelConfig};
pub use kv_cache::KvCache;
pub use llama::Llama;
