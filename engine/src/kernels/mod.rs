//! CPU fast paths for a no-grad forward: hand-written SIMD kernels that replace a few libtorch
//! ops where libtorch's per-call overhead or weight repacking dominates a decode step
//! (docs/rollout.md).
//!
//! Each kernel applies only with autograd off, f32 tensors on the CPU, AVX-512 and libtorch's
//! libgomp present; otherwise it returns `None`/`false` and the caller falls back to libtorch,
//! so results never depend on whether a kernel ran beyond the last bit or two. The model's
//! layers dispatch to them from their `forward` (one call per op), so `model/` reads like a
//! model and the kernel code lives here:
//!
//! - [`decode_linear`]: `x Wᵀ` for the few rows of a decode step, reading each weight once.
//! - [`decode_attention`]: one query per sequence over its cached keys and values.
//! - [`fused`]: RMSNorm, RoPE, SiLU gating and residual adds as single passes.
//! - [`token_draw`]: drawing the next token and its behaviour logprob without truncation.
//! - [`omp`]: running a closure on libtorch's own OpenMP thread team, which all of them use.

pub mod decode_attention;
pub mod decode_linear;
pub mod fused;
pub mod omp;
pub mod token_draw;
