//! Attention of a decode step — one new query per sequence over its cached keys and values —
//! on the CPU in f32.
//!
//! libtorch's CPU attention handles a single query as a batch of tiny matrix products, paying
//! per-call overhead for every sequence and head (at batch 32 that was ~11 ms of a ~95 ms
//! step). Here each (sequence, head) is a dot product per key, a softmax and a weighted sum
//! of value rows, vectorised over the head dimension, on libtorch's OpenMP threads.

use tch::{Device, Kind, Tensor};

use super::fused::{self, split_rows};

/// `softmax(q kᵀ / sqrt(d) + mask) v` for one query per sequence, when this kernel applies:
/// f32 on the CPU, `q` `[b, heads, 1, d]`, `k`/`v` `[b, kv_heads, keys, d]` with contiguous
/// rows (a cache's narrowed buffer qualifies), `d` a multiple of 16, `mask` absent or bool
/// `[b, 1, 1, keys]` (true = may attend), autograd off, AVX-512 and libgomp present. `None`
/// means "use libtorch". Returns `[b, heads, 1, d]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Option<Tensor> {
    let (b, heads, t, d) = q.size4().ok()?;
    let (kb, kv_heads, keys, kd) = k.size4().ok()?;
    let rows_contiguous = |x: &Tensor| x.stride()[3] == 1 && x.stride()[2] == d;
    let applies = t == 1
        && q.device() == Device::Cpu
        && [q.kind(), k.kind(), v.kind()] == [Kind::Float; 3]
        && (kb, kd) == (b, d)
        && v.size() == k.size()
        && k.stride() == v.stride()
        && d % 16 == 0
        && kv_heads > 0
        && heads % kv_heads == 0
        && rows_contiguous(k)
        && rows_contiguous(v)
        && mask.is_none_or(|m| m.kind() == Kind::Bool && m.numel() as i64 == b * keys)
        && fused::available()
        && !super::decode_linear::grad_enabled();
    if !applies {
        return None;
    }
    let q = q.contiguous();
    let mask = mask.map(|m| m.contiguous());
    let out = Tensor::empty([b, heads, 1, d], (Kind::Float, Device::Cpu));
    let shape = Shape {
        heads: heads as usize,
        group: (heads / kv_heads) as usize,
        keys: keys as usize,
        d: d as usize,
        kv_strides: [k.stride()[0] as usize, k.stride()[1] as usize],
    };
    let ptrs = [
        q.data_ptr() as usize,
        k.data_ptr() as usize,
        v.data_ptr() as usize,
        out.data_ptr() as usize,
        mask.as_ref().map_or(0, |m| m.data_ptr() as usize),
    ];
    let items = (b * heads) as usize;
    // Contiguous blocks, so the query heads sharing a key/value head run one after another on
    // one thread while those keys and values are in its L1.
    split_rows(items, |block| {
        let mut scores = vec![0f32; shape.keys];
        for item in block {
            // SAFETY: the pointers address the tensors above with the shapes and strides in
            // `shape`, alive for the call; each item writes only its own output row.
            unsafe { one_query(&ptrs, shape, item, &mut scores) };
        }
    });
    Some(out)
}

#[derive(Debug, Clone, Copy)]
struct Shape {
    heads: usize,
    /// Query heads per key/value head.
    group: usize,
    keys: usize,
    d: usize,
    /// Element strides of `k`/`v` over sequences and key/value heads.
    kv_strides: [usize; 2],
}

/// Attention for query `item` (= sequence * heads + head).
///
/// # Safety
/// `ptrs` = [q, k, v, out, mask or 0] as set up by [`attend`]; AVX-512F available.
#[target_feature(enable = "avx512f")]
unsafe fn one_query(ptrs: &[usize; 5], s: Shape, item: usize, scores: &mut [f32]) {
    use std::arch::x86_64::*;
    let (seq, head) = (item / s.heads, item % s.heads);
    let q = (ptrs[0] as *const f32).add(item * s.d);
    let kv_offset = seq * s.kv_strides[0] + head / s.group * s.kv_strides[1];
    let k = (ptrs[1] as *const f32).add(kv_offset);
    let v = (ptrs[2] as *const f32).add(kv_offset);
    let mask = (ptrs[4] != 0).then(|| (ptrs[4] as *const u8).add(seq * s.keys));
    let scale = 1.0 / (s.d as f32).sqrt();
    let mut max = f32::NEG_INFINITY;
    for (j, score) in scores.iter_mut().enumerate() {
        *score = if mask.is_some_and(|m| *m.add(j) == 0) {
            f32::NEG_INFINITY
        } else {
            let row = k.add(j * s.d);
            let mut acc = _mm512_setzero_ps();
            for c in (0..s.d).step_by(16) {
                acc = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(c)), _mm512_loadu_ps(row.add(c)), acc);
            }
            _mm512_reduce_add_ps(acc) * scale
        };
        max = max.max(*score);
    }
    let out = (ptrs[3] as *mut f32).add(item * s.d);
    if max == f32::NEG_INFINITY {
        // Every key masked: libtorch's kernels give zeros for such a row.
        std::ptr::write_bytes(out, 0, s.d);
        return;
    }
    let total = fused::exp_shifted(scores, max);
    // Weighted sum of value rows, 64 columns (4 vectors) at a time.
    for c in (0..s.d).step_by(64) {
        let vectors = ((s.d - c) / 16).min(4);
        let mut acc = [_mm512_setzero_ps(); 4];
        for (j, &p) in scores.iter().enumerate() {
            if p == 0.0 {
                continue; // masked (or negligible) keys
            }
            let (weight, row) = (_mm512_set1_ps(p), v.add(j * s.d + c));
            for (u, a) in acc.iter_mut().enumerate().take(vectors) {
                *a = _mm512_fmadd_ps(weight, _mm512_loadu_ps(row.add(16 * u)), *a);
            }
        }
        let norm = _mm512_set1_ps(1.0 / total);
        for (u, a) in acc.iter().enumerate().take(vectors) {
            _mm512_storeu_ps(out.add(c + 16 * u), _mm512_mul_ps(*a, norm));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_libtorch_attention_over_a_padded_cache() {
        let _no_grad = tch::no_grad_guard();
        let opts = (Kind::Float, Device::Cpu);
        let (b, heads, kv_heads, keys, d) = (5, 9, 3, 37, 64);
        let q = Tensor::randn([b, heads, 1, d], opts);
        // Keys and values as a cache holds them: a narrowed view of a longer buffer.
        let k = Tensor::randn([b, kv_heads, 50, d], opts).narrow(2, 0, keys);
        let v = Tensor::randn([b, kv_heads, 50, d], opts).narrow(2, 0, keys);
        // Left padding: sequence i ignores its first 3 * i keys.
        let pad = Tensor::arange(keys, (Kind::Int64, Device::Cpu)).view([1, keys]);
        let starts = Tensor::from_slice(&[0i64, 3, 6, 9, 12]).view([b, 1]);
        let mask = pad.ge_tensor(&starts).view([b, 1, 1, keys]);
        let Some(ours) = attend(&q, &k, &v, Some(&mask)) else {
            assert!(!fused::available(), "the kernel should apply here");
            return;
        };
        let want =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None, true);
        let diff = (&ours - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "max difference {diff}");
        let unmasked = attend(&q, &k, &v, None).unwrap();
        let want = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            true,
        );
        assert!((&unmasked - &want).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn declines_what_it_does_not_do() {
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([2, 4, 1, 16], opts);
        let kv = Tensor::randn([2, 2, 7, 16], opts);
        assert!(attend(&q, &kv, &kv, None).is_none(), "autograd is on");
        let _no_grad = tch::no_grad_guard();
        let two_queries = Tensor::randn([2, 4, 2, 16], opts);
        assert!(attend(&two_queries, &kv, &kv, None).is_none());
        let odd_dim = Tensor::randn([2, 4, 1, 8], opts);
        let odd_kv = Tensor::randn([2, 2, 7, 8], opts);
        assert!(attend(&odd_dim, &odd_kv, &odd_kv, None).is_none());
        let half = kv.to_kind(Kind::Half);
        assert!(attend(&q.to_kind(Kind::Half), &half, &half, None).is_none());
    }
}
