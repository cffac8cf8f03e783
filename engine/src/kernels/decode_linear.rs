//! `x Wᵀ` for the few rows of a decode step, on the CPU in f32.
//!
//! A decode step multiplies 8-32 rows by every weight matrix, so it is bound by reading the
//! weights (docs/rollout.md). libtorch's GEMM repacks the weight on every call, reading and
//! writing it more than once; this kernel reads each weight row once, in its stored layout,
//! and multiplies it with all input rows while they sit in cache. AVX-512 FMAs, on
//! libtorch's OpenMP threads ([`super::omp`]). Each output is a 16-lane f32 sum reduced by a
//! tree, so results differ from libtorch's in the last bits only.

use std::ops::Range;
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

use super::omp;

/// Most input rows this kernel takes (a decode batch); longer inputs (prefill, training) are
/// compute-bound, where libtorch's packed GEMM is the right tool.
pub const MAX_ROWS: usize = 32;

/// Weight rows kept in L2 while all input rows pass over them (a multiple of every
/// [`Blocking::weight_rows`]).
const STRIP_ROWS: usize = 48;

/// A tile's register blocking: weight rows x input rows, one 16-lane accumulator each, plus
/// one vector per weight row and one input vector, within AVX-512's 32 registers.
#[derive(Debug, Clone, Copy)]
struct Blocking {
    weight_rows: usize,
    input_rows: usize,
}

impl Blocking {
    /// Up to 8 input rows the product is bound by reading the weights: 3 x 8 takes them all
    /// in one pass. More rows make it compute-bound: 4 x 6 shares each row's reduction.
    fn for_rows(rows: usize) -> Self {
        if rows <= 8 {
            Self {
                weight_rows: 3,
                input_rows: 8,
            }
        } else {
            Self {
                weight_rows: 4,
                input_rows: 6,
            }
        }
    }
}

/// `x Wᵀ` (no bias) for `x` `[.., in]` and `w` `[out, in]`, when this kernel applies: both f32
/// on the CPU, at most [`MAX_ROWS`] rows, autograd off (no graph is recorded), AVX-512 and
/// libgomp present. `None` means "use libtorch".
pub fn linear(x: &Tensor, w: &Tensor) -> Option<Tensor> {
    let (n, k) = w.size2().ok()?;
    let rows = x.numel() / k.max(1) as usize;
    let applies = x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && w.kind() == Kind::Float
        && rows <= MAX_ROWS
        && x.size().last() == Some(&k)
        && w.is_contiguous()
        && supported()
        && !grad_enabled();
    if !applies {
        return None;
    }
    let x = x.contiguous();
    let mut shape = x.size();
    *shape.last_mut()? = n;
    let y = Tensor::empty(shape.as_slice(), (Kind::Float, Device::Cpu));
    let dims = Dims {
        block: Blocking::for_rows(rows),
        rows,
        k: k as usize,
        n: n as usize,
    };
    let (xp, wp, yp) = (
        x.data_ptr() as usize,
        w.data_ptr() as usize,
        y.data_ptr() as usize,
    );
    omp::parallel(|index, count| {
        let range = dims.share(index, count);
        // SAFETY: the pointers address contiguous f32 buffers of the sizes in `dims`, alive
        // for the call; each thread writes only the output columns in its own `range`.
        unsafe {
            product(
                xp as *const f32,
                wp as *const f32,
                yp as *mut f32,
                dims,
                range,
            )
        }
    });
    Some(y)
}

/// Whether the CPU and runtime have what the kernel needs.
fn supported() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && omp::available()
    })
}

/// libtorch's (thread-local) autograd mode. Its C API has no getter: setting the mode
/// returns the previous one, which is put straight back.
pub(crate) fn grad_enabled() -> bool {
    // SAFETY: plain calls into libtorch that cannot fail.
    unsafe {
        let previous = torch_sys::at_grad_set_enabled(0);
        torch_sys::at_grad_set_enabled(previous);
        previous != 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    block: Blocking,
    rows: usize,
    k: usize,
    n: usize,
}

impl Dims {
    /// Output columns (weight rows) for thread `index` of `count`: contiguous, so each thread
    /// streams its own part of the weight, in whole tiles.
    fn share(&self, index: usize, count: usize) -> Range<usize> {
        let tile = self.block.weight_rows;
        let per = self.n.div_ceil(tile).div_ceil(count) * tile;
        (index * per).min(self.n)..((index + 1) * per).min(self.n)
    }
}

/// `y[:, cols] = x W[cols]ᵀ`. The weight is read from memory once, in strips of
/// [`STRIP_ROWS`] rows that stay in L2 while every block of input rows (in L1) passes over
/// them, tile by tile.
///
/// # Safety
/// `x` is `[rows, k]`, `w` `[n, k]` and `y` `[rows, n]`, contiguous f32; `cols` ⊆ `0..n`.
unsafe fn product(x: *const f32, w: *const f32, y: *mut f32, d: Dims, cols: Range<usize>) {
    let Blocking {
        weight_rows,
        input_rows,
    } = d.block;
    let passes = d.rows.div_ceil(input_rows);
    for strip in cols.clone().step_by(STRIP_ROWS) {
        let strip_end = (strip + STRIP_ROWS).min(cols.end);
        for (pass, m0) in (0..d.rows).step_by(input_rows).enumerate() {
            let mb = (d.rows - m0).min(input_rows);
            let mut n0 = strip;
            while n0 < strip_end {
                let r = (strip_end - n0).min(weight_rows);
                // The weight rows to be read from memory next are fetched while this tile
                // computes: with one pass the next tile; with several, the next strip's
                // tiles, spread over the passes so memory stays busy through all of them.
                let ahead = if passes == 1 {
                    n0 + r
                } else if (n0 - strip) / weight_rows % passes == pass {
                    n0 + STRIP_ROWS
                } else {
                    usize::MAX
                };
                let t = Tile {
                    x: x.add(m0 * d.k),
                    w: w.add(n0 * d.k),
                    y: y.add(m0 * d.n + n0),
                    ahead: if ahead < cols.end {
                        w.add(ahead * d.k)
                    } else {
                        std::ptr::null()
                    },
                    k: d.k,
                    ldy: d.n,
                };
                tile_dispatch(r, mb, t);
                n0 += r;
            }
        }
    }
}

/// One tile: `R` weight rows against `MB` input rows.
#[derive(Clone, Copy)]
struct Tile {
    x: *const f32,
    w: *const f32,
    y: *mut f32,
    /// Weight rows to prefetch (the same `R` x `k` shape), or null.
    ahead: *const f32,
    k: usize,
    ldy: usize,
}

macro_rules! dispatch {
    ($r:expr, $mb:expr, $t:expr, [$($rr:literal),*], $mbs:tt) => {
        match $r {
            $($rr => dispatch!(@mb $rr, $mb, $t, $mbs),)*
            _ => unreachable!("weight-row block {}", $r),
        }
    };
    (@mb $rr:literal, $mb:expr, $t:expr, [$($m:literal),*]) => {
        match $mb {
            $($m => tile::<$rr, $m>($t),)*
            _ => unreachable!("input-row block {}", $mb),
        }
    };
}

/// # Safety
/// As [`product`]; `r <= 4`, `mb <= 8`, AVX-512F and VL available.
unsafe fn tile_dispatch(r: usize, mb: usize, t: Tile) {
    dispatch!(r, mb, t, [1, 2, 3, 4], [1, 2, 3, 4, 5, 6, 7, 8])
}

/// `y[m][j] = Σ_k x[m][k] w[j][k]` for `j < R`, `m < MB`: 16 lanes of k at a time, one
/// accumulator per output, each weight vector loaded once and used for all `MB` rows.
///
/// # Safety
/// As [`product`], for the tile's rows; AVX-512F and VL available.
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::needless_range_loop)] // plain indices keep the accumulators in registers
unsafe fn tile<const R: usize, const MB: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); MB]; R];
    let mut wv = [_mm512_setzero_ps(); R];
    let whole = t.k / 16 * 16;
    let mut i = 0;
    while i < whole {
        for (r, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(t.w.add(r * t.k + i));
        }
        if !t.ahead.is_null() {
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(t.ahead.wrapping_add(r * t.k + i) as *const i8);
            }
        }
        for m in 0..MB {
            let xv = _mm512_loadu_ps(t.x.add(m * t.k + i));
            for r in 0..R {
                acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
            }
        }
        i += 16;
    }
    if i < t.k {
        // The row's tail: one masked vector (masked-off lanes load as zero).
        let mask = ((1u32 << (t.k - i)) - 1) as __mmask16;
        for (r, v) in wv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, t.w.add(r * t.k + i));
        }
        for m in 0..MB {
            let xv = _mm512_maskz_loadu_ps(mask, t.x.add(m * t.k + i));
            for r in 0..R {
                acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
            }
        }
    }
    if R == 4 {
        // Four weight rows: each input row's four sums reduce together into one store.
        for m in 0..MB {
            let sums = reduce4(acc[0][m], acc[1][m], acc[2][m], acc[3][m]);
            _mm_storeu_ps(t.y.add(m * t.ldy), sums);
        }
    } else {
        for (r, row) in acc.iter().enumerate() {
            for (m, a) in row.iter().enumerate() {
                *t.y.add(m * t.ldy + r) = _mm512_reduce_add_ps(*a);
            }
        }
    }
}

/// The lane sums of four vectors, `[Σa, Σb, Σc, Σd]`: a transposing add tree that shares
/// its shuffles between the four (13 instructions where four separate reductions take ~32).
#[target_feature(enable = "avx512f,avx512vl")]
fn reduce4(
    a: std::arch::x86_64::__m512,
    b: std::arch::x86_64::__m512,
    c: std::arch::x86_64::__m512,
    d: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] and the same for c, d.
    let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    // Per 128-bit lane: [Σa, Σb, Σc, Σd] over that lane.
    let lanes = _mm512_add_ps(
        _mm512_shuffle_ps::<0x44>(ab, cd),
        _mm512_shuffle_ps::<0xEE>(ab, cd),
    );
    let halves = _mm256_add_ps(
        _mm512_castps512_ps256(lanes),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(lanes))),
    );
    _mm_add_ps(
        _mm256_castps256_ps128(halves),
        _mm256_extractf128_ps::<1>(halves),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rows: i64, k: i64, n: i64) {
        let _no_grad = tch::no_grad_guard();
        let x = Tensor::randn([rows, k], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
        let ours = linear(&x, &w).expect("the kernel applies");
        let want = x
            .to_kind(Kind::Double)
            .matmul(&w.to_kind(Kind::Double).tr());
        let err = (ours.to_kind(Kind::Double) - &want)
            .abs()
            .max()
            .double_value(&[]);
        let scale = (k as f64).sqrt();
        assert!(err < 1e-5 * scale, "{rows}x{k} by {n}x{k}: max error {err}");
    }

    #[test]
    fn equals_a_double_precision_product_for_every_tile_shape() {
        if !supported() {
            // Without AVX-512 every call must fall back to libtorch.
            let _no_grad = tch::no_grad_guard();
            let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
            assert!(linear(&x, &x).is_none());
            return;
        }
        for rows in [1, 2, 5, 8, 9, 17, 32] {
            for (k, n) in [(32, 64), (576, 193), (7, 5), (40, 3), (1536, 50)] {
                check(rows, k, n);
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_do() {
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([6, 8], (Kind::Float, Device::Cpu));
        assert!(linear(&x, &w).is_none(), "autograd is on");
        let _no_grad = tch::no_grad_guard();
        let many = Tensor::randn([MAX_ROWS as i64 + 1, 8], (Kind::Float, Device::Cpu));
        assert!(linear(&many, &w).is_none());
        assert!(linear(&x.to_kind(Kind::BFloat16), &w.to_kind(Kind::BFloat16)).is_none());
        assert!(
            linear(&x, &w.tr()).is_none(),
            "shape mismatch / non-contiguous weight"
        );
    }
}
