//! The elementwise parts of a no-grad f32 forward on the CPU (RMSNorm, RoPE, SiLU gating,
//! residual adds) as single Rust passes.
//!
//! In a decode step each of these is a handful of libtorch ops over a few thousand numbers, and
//! in between weight products that sweep the caches each op costs ~10-30 µs of dispatch and
//! allocation: together about a fifth of the step at batch 32 (docs/rollout.md). Here each is
//! one pass, in place where the input is a temporary of the caller. Every function returns
//! `None`/`false` when it does not apply (autograd on, another dtype or device, no AVX-512), and
//! the caller falls back to libtorch. Results equal libtorch's to the last bit or two: RoPE
//! and the adds round exactly as libtorch does; RMSNorm sums in another order; SiLU uses the
//! `exp` below instead of SLEEF's.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use super::{decode_linear::grad_enabled, omp};

/// Whether the fused kernels may run on these tensors: f32, contiguous, on the CPU, autograd
/// off, AVX-512 and libgomp present.
fn applies(tensors: &[&Tensor]) -> bool {
    available()
        && tensors
            .iter()
            .all(|t| t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous())
        && !grad_enabled()
}

/// Whether the CPU and runtime have what these kernels need (AVX-512F, libtorch's libgomp).
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| is_x86_feature_detected!("avx512f") && omp::available())
}

/// Runs `body(rows)` over `0..rows` split into contiguous blocks, one per thread.
pub(crate) fn split_rows(rows: usize, body: impl Fn(std::ops::Range<usize>) + Sync) {
    omp::parallel(|index, count| {
        let per = rows.div_ceil(count);
        let start = (index * per).min(rows);
        body(start..(start + per).min(rows));
    });
}

/// A raw f32 pointer that may cross to the other threads of [`split_rows`].
#[derive(Clone, Copy)]
struct Ptr(*mut f32);
// SAFETY: every kernel below has each thread write only its own rows.
unsafe impl Sync for Ptr {}
unsafe impl Send for Ptr {}

impl Ptr {
    fn of(t: &Tensor) -> Self {
        Self(t.data_ptr() as *mut f32)
    }

    /// Row `i` of width `width`, to read.
    ///
    /// # Safety
    /// The tensor has at least `(i + 1) * width` elements and outlives the slice; nothing
    /// writes the row meanwhile.
    unsafe fn row<'a>(self, i: usize, width: usize) -> &'a [f32] {
        std::slice::from_raw_parts(self.0.add(i * width), width)
    }

    /// Row `i` of width `width`, to write.
    ///
    /// # Safety
    /// As [`row`](Self::row), and no other slice of the row is live.
    unsafe fn row_mut<'a>(self, i: usize, width: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(i * width), width)
    }
}

/// Whether two tensors' storage overlaps (the in-place kernels write one while reading the other).
fn overlap(a: &Tensor, b: &Tensor) -> bool {
    let span = |t: &Tensor| {
        let start = t.data_ptr() as usize;
        start..start + t.numel() * 4
    };
    let (a, b) = (span(a), span(b));
    a.start < b.end && b.start < a.end
}

/// `weight * x / sqrt(mean(x²) + eps)` over the last dimension (transformers' `LlamaRMSNorm`
/// in f32).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Option<Tensor> {
    let width = *x.size().last()? as usize;
    if !applies(&[x, weight]) || weight.numel() != width || width == 0 {
        return None;
    }
    let out = x.empty_like();
    let (src, dst, w) = (Ptr::of(x), Ptr::of(&out), Ptr::of(weight));
    split_rows(x.numel() / width, |rows| {
        // SAFETY: x and out hold `rows` rows of `width`; weight holds `width`.
        let w = unsafe { w.row(0, width) };
        for i in rows {
            unsafe { normalize_row(src.row(i, width), w, eps as f32, dst.row_mut(i, width)) };
        }
    });
    Some(out)
}

#[target_feature(enable = "avx512f")]
fn normalize_row(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let inv = 1.0 / (sum_of_squares(x) / x.len() as f32 + eps).sqrt();
    for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
        *y = w * (x * inv);
    }
}

#[target_feature(enable = "avx512f")]
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    lanes.iter().sum::<f32>() + tail
}

/// Rotates `x` (`[batch, seq, heads * head_dim]`, the projection's output) in place by the
/// RoPE tables `cos`/`sin` (`[batch, 1, seq, head_dim]`), in the HF "rotate half" layout:
/// `x * cos + rotate_half(x) * sin`, rounded as libtorch rounds it. Returns false (and leaves
/// `x` alone) when the kernel does not apply.
pub fn rope_in_place(x: &Tensor, cos: &Tensor, sin: &Tensor) -> bool {
    let (Ok((b, t, width)), Ok((cb, _, ct, d))) = (x.size3(), cos.size4()) else {
        return false;
    };
    if !applies(&[x, cos, sin]) || (cb, ct) != (b, t) || d % 2 != 0 || width % d != 0 {
        return false;
    }
    let (width, d) = (width as usize, d as usize);
    let (xs, cs, ss) = (Ptr::of(x), Ptr::of(cos), Ptr::of(sin));
    split_rows((b * t) as usize, |rows| {
        for i in rows {
            // SAFETY: row i of x has `width`, of cos and sin `d` elements.
            let (x, cos, sin) = unsafe { (xs.row_mut(i, width), cs.row(i, d), ss.row(i, d)) };
            for head in x.chunks_exact_mut(d) {
                unsafe { rotate_head(head, cos, sin) };
            }
        }
    });
    true
}

#[target_feature(enable = "avx512f")]
fn rotate_head(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at_mut(half);
    let (c1, c2) = cos.split_at(half);
    let (s1, s2) = sin.split_at(half);
    for i in 0..half {
        let (a, b) = (x1[i], x2[i]);
        x1[i] = a * c1[i] + -b * s1[i];
        x2[i] = b * c2[i] + a * s2[i];
    }
}

/// `gate = silu(gate) * up`, in place; `gate` and `up` have the same shape.
pub fn silu_mul_in_place(gate: &Tensor, up: &Tensor) -> bool {
    let Some(&width) = gate.size().last() else {
        return false;
    };
    let fits = gate.size() == up.size() && width > 0 && width % 16 == 0;
    if !applies(&[gate, up]) || !fits || overlap(gate, up) {
        return false;
    }
    let width = width as usize;
    let (g, u) = (Ptr::of(gate), Ptr::of(up));
    split_rows(gate.numel() / width, |rows| {
        for i in rows {
            // SAFETY: both hold `rows` rows of `width`; width is a multiple of 16.
            unsafe { silu_mul_row(g.row_mut(i, width), u.row(i, width)) };
        }
    });
    true
}

#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_row(gate: &mut [f32], up: &[f32]) {
    let one = _mm512_set1_ps(1.0);
    for (g, u) in gate.chunks_exact_mut(16).zip(up.chunks_exact(16)) {
        let gv = _mm512_loadu_ps(g.as_ptr());
        let neg = _mm512_sub_ps(_mm512_setzero_ps(), gv);
        let silu = _mm512_div_ps(gv, _mm512_add_ps(one, exp(neg)));
        _mm512_storeu_ps(
            g.as_mut_ptr(),
            _mm512_mul_ps(silu, _mm512_loadu_ps(u.as_ptr())),
        );
    }
}

/// `acc += y`, in place; both have the same shape. The residual stream's adds.
pub fn add_in_place(acc: &Tensor, y: &Tensor) -> bool {
    let Some(&width) = acc.size().last() else {
        return false;
    };
    if !applies(&[acc, y]) || acc.size() != y.size() || width == 0 || overlap(acc, y) {
        return false;
    }
    let width = width as usize;
    let (a, b) = (Ptr::of(acc), Ptr::of(y));
    split_rows(acc.numel() / width, |rows| {
        for i in rows {
            // SAFETY: both hold `rows` rows of `width`.
            let (a, b) = unsafe { (a.row_mut(i, width), b.row(i, width)) };
            for (a, b) in a.iter_mut().zip(b.iter()) {
                *a += b;
            }
        }
    });
    true
}

/// `e^x` in 16 lanes, within 2 ulp of the exact value (Cephes' `expf`: `x = n ln 2 + r`,
/// a degree-6 polynomial for `e^r`, then scaling by `2^n`). Underflows to 0 below -104,
/// saturates above 88.72, keeps NaN.
#[target_feature(enable = "avx512f")]
pub(crate) fn exp(x: __m512) -> __m512 {
    // Below ln(2^-150) every result rounds to 0; above ln(f32::MAX) it saturates near
    // f32::MAX. `max_ps`/`min_ps` return their second operand when either is NaN, so NaN
    // passes through.
    let x = _mm512_min_ps(
        _mm512_set1_ps(88.72),
        _mm512_max_ps(_mm512_set1_ps(-104.0), x),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // r = x - n ln 2, with ln 2 split in two so that n * hi is exact.
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(
        _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r),
        _mm512_set1_ps(1.0),
    );
    _mm512_scalef_ps(y, n)
}

/// `values[j] = e^(values[j] - max)`, 16 at a time; returns their sum (softmax's
/// numerators and denominator).
#[target_feature(enable = "avx512f")]
pub(crate) fn exp_shifted(values: &mut [f32], max: f32) -> f32 {
    let shift = _mm512_set1_ps(max);
    let mut sum = _mm512_setzero_ps();
    for chunk in values.chunks_mut(16) {
        let mask = ((1u32 << chunk.len()) - 1) as __mmask16;
        // SAFETY: the masked load and store touch only the chunk's lanes.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
            let e = _mm512_maskz_mov_ps(mask, exp(_mm512_sub_ps(v, shift)));
            _mm512_mask_storeu_ps(chunk.as_mut_ptr(), mask, e);
            sum = _mm512_add_ps(sum, e);
        }
    }
    _mm512_reduce_add_ps(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F32: (Kind, Device) = (Kind::Float, Device::Cpu);

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn exp_is_within_two_ulp_and_handles_the_edges() {
        if !available() {
            return;
        }
        let xs: Vec<f32> = (-2000..=2000)
            .map(|i| i as f32 * 0.0443)
            .chain([f32::NEG_INFINITY, -200.0, 0.0, 88.0, f32::NAN])
            .collect();
        for chunk in xs.chunks(16) {
            let mut lanes = [0f32; 16];
            lanes[..chunk.len()].copy_from_slice(chunk);
            let mut out = [0f32; 16];
            // SAFETY: AVX-512F checked above; both arrays hold 16 floats.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp(_mm512_loadu_ps(lanes.as_ptr()))) };
            for (&x, &y) in chunk.iter().zip(&out) {
                let want = (x as f64).exp();
                if x.is_nan() {
                    assert!(y.is_nan());
                } else if want < 1e-38 {
                    assert!(y < 1e-37, "exp({x}) = {y}");
                } else {
                    let ulp = (want as f32).abs() * f32::EPSILON;
                    assert!(
                        ((y as f64) - want).abs() <= 2.0 * ulp as f64,
                        "exp({x}) = {y}, want {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_equal_their_libtorch_ops() {
        let _no_grad = tch::no_grad_guard();
        let x = Tensor::randn([3, 5, 64], F32) * 3;
        let w = Tensor::randn([64], F32);
        let Some(ours) = rms_norm(&x, &w, 1e-5) else {
            assert!(!available(), "the kernels should apply");
            return;
        };
        let var = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let want = &w * (&x * (var + 1e-5).rsqrt());
        assert!(max_diff(&ours, &want) < 1e-5, "rms_norm");

        // RoPE on [batch, seq, heads * d], checked against the libtorch formula on the
        // [batch, heads, seq, d] view: exactly equal.
        let (b, t, heads, d) = (3, 5, 4, 16);
        let q = Tensor::randn([b, t, heads * d], F32);
        let angles = Tensor::randn([b, 1, t, d], F32);
        let (cos, sin) = (angles.cos(), angles.sin());
        let view = |y: &Tensor| y.view([b, t, heads, d]).transpose(1, 2);
        let want = crate::model::rope::Rope::rotate(&view(&q), &cos, &sin);
        let rotated = q.copy();
        assert!(rope_in_place(&rotated, &cos, &sin));
        assert!(view(&rotated).equal(&want), "rope");

        let gate = Tensor::randn([4, 2, 48], F32) * 4;
        let up = Tensor::randn([4, 2, 48], F32);
        let want = gate.silu() * &up;
        assert!(silu_mul_in_place(&gate, &up));
        assert!(max_diff(&gate, &want) < 1e-5, "silu * up");

        let acc = Tensor::randn([7, 33], F32);
        let y = Tensor::randn([7, 33], F32);
        let want = &acc + &y;
        assert!(add_in_place(&acc, &y));
        assert!(acc.equal(&want), "add");
    }

    #[test]
    fn declines_what_it_does_not_do() {
        let x = Tensor::randn([2, 16], F32);
        assert!(
            rms_norm(&x, &Tensor::ones([16], F32), 1e-5).is_none(),
            "autograd is on"
        );
        let _no_grad = tch::no_grad_guard();
        assert!(!add_in_place(
            &x,
            &x.tr().contiguous().view([2, 16]).to_kind(Kind::Double)
        ));
        assert!(!silu_mul_in_place(&x, &Tensor::randn([2, 8], F32)));
        assert!(!add_in_place(&x.tr(), &x.tr()), "not contiguous");
        assert!(!add_in_place(&x, &x), "the same storage");
    }
}
