//! The oxrl engine: RL post-training of LLMs on libtorch (via tch). [`model`] holds the
//! Llama-family decoder, its config, KV cache and RoPE; [`kernels`] the CPU fast paths (SIMD
//! f32, autograd off) its layers dispatch to, falling back to libtorch; [`rollout`] batched
//! generation with exact behaviour logprobs, the worker pool, the one-prompt reference path and
//! full-forward logprobs; [`learner`] the RL algorithms, optimiser and micro-batching; [`train`]
//! the run config and training loop that ties rollouts, rewards and the learner together;
//! [`telemetry`] Prometheus metrics and their HTTP endpoint; [`cli`] the `oxrl` command line;
//! [`gguf`] reading, dequantizing and converting GGUF files. Beside them: [`tokenizer`] (text
//! to ids, chat template), [`weights`] (safetensors into a `VarStore` by name), [`pretrained`]
//! (loading a model and tokenizer from an HF directory or GGUF), [`reward_model`] (trained
//! reward models, `[[rewards]] type = "model"`), [`dist`] (data-parallel collectives on
//! libtorch's c10d), [`device`] (device and dtype names),
//! [`runtime`] (OpenMP waiting and thread counts beside other work), [`sample`] (the unit of
//! RL data, [`Sample`]) and [`error`]. The map of how they fit together is
//! docs/architecture.md.
#![warn(missing_docs)]

pub mod cli;
pub mod device;
pub mod dist;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod learner;
pub mod model;
pub mod pretrained;
pub mod reward_model;
pub mod rollout;
pub mod runtime;
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
