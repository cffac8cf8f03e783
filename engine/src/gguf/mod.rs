//! GGUF support: reading the container, dequantizing tensors, converting to HF form.

pub mod convert;
pub mod dequant;
pub mod reader;

pub use convert::{to_hf, to_hf_tokenizer, HfModel};
pub use reader::GgufFile;
