//! The oxrl engine: models in libtorch (via tch), tokenizers, weight formats (safetensors,
//! GGUF), generation and the `oxrl` command line.
#![warn(missing_docs)]

pub mod cli;
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod learner;
pub mod logprobs;
pub mod model;
pub mod pretrained;
pub mod rollout;
pub mod sample;
pub mod telemetry;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use error::{Error, Result};
pub use model::{KvCache, Llama, ModelConfig};
pub use pretrained::{LoadOptions, Pretrained};
pub use sample::{FinishReason, Sample};
pub use tokenizer::Tokenizer;
