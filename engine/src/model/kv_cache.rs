//! Key/value cache for incremental decoding, kept outside the (immutable) weights so that one
//! model serves cached rollouts and full-sequence training alike.
//!
//! With a capacity the cache preallocates `[batch, kv_heads, capacity, head_dim]` buffers on
//! first use and writes each step in place, so decoding n tokens copies O(n) rather than the
//! O(n^2) of concatenating at every step.

use tch::Tensor;

#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// Cached keys and values of every layer.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: i64,
    capacity: Option<i64>,
}

impl KvCache {
    /// An empty cache that grows by concatenation.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            capacity: None,
        }
    }

    /// An empty cache with room for `capacity` positions, written in place.
    pub fn with_capacity(num_layers: usize, capacity: usize) -> Self {
        Self {
            capacity: Some(capacity as i64),
            ..Self::new(num_layers)
        }
    }

    /// Number of cached positions (0 when empty).
    pub fn seq_len(&self) -> i64 {
        self.len
    }

    /// Appends this step's keys and values for `layer` and returns all of them
    /// (`[batch, kv_heads, len, head_dim]`). The last layer's append advances the length.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let t = k.size()[2];
        let new_len = self.len + t;
        let slot = &mut self.layers[layer];
        let out = match (slot.as_mut(), self.capacity) {
            (Some(c), Some(cap)) if new_len <= cap => {
                c.k.narrow(2, self.len, t).copy_(&k);
                c.v.narrow(2, self.len, t).copy_(&v);
                (c.k.narrow(2, 0, new_len), c.v.narrow(2, 0, new_len))
            }
            (Some(c), _) => {
                let k = Tensor::cat(&[c.k.narrow(2, 0, self.len), k], 2);
                let v = Tensor::cat(&[c.v.narrow(2, 0, self.len), v], 2);
                *c = LayerCache {
                    k: k.shallow_clone(),
                    v: v.shallow_clone(),
                };
                (k, v)
            }
            (None, Some(cap)) if t <= cap => {
                let mut shape = k.size();
                shape[2] = cap;
                let c = LayerCache {
                    k: Tensor::empty(shape.as_slice(), (k.kind(), k.device())),
                    v: Tensor::empty(shape.as_slice(), (v.kind(), v.device())),
                };
                c.k.narrow(2, 0, t).copy_(&k);
                c.v.narrow(2, 0, t).copy_(&v);
                let out = (c.k.narrow(2, 0, t), c.v.narrow(2, 0, t));
                *slot = Some(c);
                out
            }
            (None, _) => {
                *slot = Some(LayerCache {
                    k: k.shallow_clone(),
                    v: v.shallow_clone(),
                });
                (k, v)
            }
        };
        if layer + 1 == self.layers.len() {
            self.len = new_len;
        }
        out
    }

    /// Writes `part`, the cache of some of this batch's sequences, into rows `rows` (int64
    /// `[part rows]`) of this cache, right-aligned so that every row ends at position `len`
    /// (left padding, as one batch prefill would leave it). An empty cache first allocates
    /// `[batch, kv_heads, capacity or len, head_dim]` zeros, so the padding slots no row
    /// writes are finite (masked keys must not put NaN into attention's products).
    pub fn place(&mut self, part: &KvCache, rows: &Tensor, batch: i64, len: i64) {
        let size = self.capacity.unwrap_or(len).max(len);
        for (slot, p) in self.layers.iter_mut().zip(&part.layers) {
            let Some(p) = p else { continue };
            let c = slot.get_or_insert_with(|| {
                let mut shape = p.k.size();
                (shape[0], shape[2]) = (batch, size);
                let zeros = || Tensor::zeros(shape.as_slice(), (p.k.kind(), p.k.device()));
                LayerCache {
                    k: zeros(),
                    v: zeros(),
                }
            });
            let offset = len - part.len;
            for (dst, src) in [(&c.k, &p.k), (&c.v, &p.v)] {
                let src = src.narrow(2, 0, part.len);
                let _ = dst.narrow(2, offset, part.len).index_copy_(0, rows, &src);
            }
        }
        self.len = len;
    }

    /// The first `len` positions of this cache, as a view (nothing is copied).
    pub fn prefix(&self, len: i64) -> KvCache {
        assert!(
            len <= self.len,
            "a prefix of {len} positions of a cache of {}",
            self.len
        );
        let view = |c: &LayerCache| LayerCache {
            k: c.k.narrow(2, 0, len),
            v: c.v.narrow(2, 0, len),
        };
        KvCache {
            layers: self.layers.iter().map(|c| c.as_ref().map(view)).collect(),
            len,
            capacity: None,
        }
    }

    /// Row `row`'s last `len` positions, copied out as a one-row cache: a finished
    /// sequence's keys and values (its real tokens end at the cache's length).
    pub fn copy_row(&self, row: i64, len: i64) -> KvCache {
        let take = |t: &Tensor| t.narrow(0, row, 1).narrow(2, self.len - len, len).copy();
        KvCache {
            layers: (self.layers.iter())
                .map(|c| {
                    c.as_ref().map(|c| LayerCache {
                        k: take(&c.k),
                        v: take(&c.v),
                    })
                })
                .collect(),
            len,
            capacity: None,
        }
    }

    /// Keeps only the rows `index` (int64 `[n]`) of every cached tensor: drops finished
    /// sequences or repeats a shared prompt prefill across its group.
    pub fn select_rows(&mut self, index: &Tensor) {
        for c in self.layers.iter_mut().flatten() {
            c.k = c.k.index_select(0, index);
            c.v = c.v.index_select(0, index);
        }
    }
}
