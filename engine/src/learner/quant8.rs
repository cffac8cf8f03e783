//! Block-wise 8-bit dynamic quantization (Dettmers et al. 2022, "8-bit Optimizers via
//! Block-wise Quantization"), the storage of bitsandbytes' `AdamW8bit` moments: a flat tensor
//! is cut into blocks of [`BLOCK`] values, each block is scaled by its absolute maximum, and
//! each scaled value is stored as the index of the nearest entry of a 256-entry map whose
//! entries are spaced by a dynamic exponent (fine near 0, coarse near 1). The maps equal
//! bitsandbytes' bit for bit and a value's code is its nearest entry, as bitsandbytes'
//! reference (PyTorch) kernel codes it; its CPU kernel's approximate search differs for under
//! 1% of the values (tests/learner_optim_8bit.rs).

use tch::{Device, Kind, Tensor};

/// Values per block (bitsandbytes' blocksize for 8-bit optimizers).
pub const BLOCK: i64 = 256;

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)`: for each
/// exponent `10^(i-6)`, `i = 0..7`, the midpoints of `2^i + 1` (signed; `2^(i+1) + 1` unsigned)
/// points spaced evenly over [0.1, 1], scaled by it; then 0 and 1; sorted, 256 entries.
pub fn dynamic_map(signed: bool) -> Tensor {
    let mut parts = Vec::new();
    for i in 0..7 {
        let points = if signed {
            (1 << i) + 1
        } else {
            (1 << (i + 1)) + 1
        };
        let edges = Tensor::linspace(0.1, 1.0, points, (Kind::Float, Device::Cpu));
        let means = (edges.narrow(0, 0, points - 1) + edges.narrow(0, 1, points - 1)) / 2.0;
        let scaled = means * 10f64.powf(f64::from(i - 6));
        if signed {
            parts.push(-&scaled);
        }
        parts.push(scaled);
    }
    parts.push(Tensor::from_slice(&[0f32, 1.0]));
    Tensor::cat(&parts, 0).sort(0, false).0
}

/// A map and its code table, on one device; cheap to clone (the tensors are shared), so every
/// parameter's moments use one copy.
pub struct Codebook {
    /// The 256 values a code stands for (before the block's scale), sorted.
    map: Tensor,
    /// Per table cell (the top [`CELL_BITS`] bits of an f32): how many of the map's bounds (the
    /// midpoints between neighbouring entries) lie below the cell, as i32.
    below: Tensor,
    /// Per cell: the one bound inside it, or +inf.
    bound: Tensor,
    /// The map has no negative entries (a second moment's): positive values are never coded
    /// as 0 (see [`Quantized::write`]).
    unsigned: bool,
}

/// The bits of an f32 that name its table cell: sign, exponent and 8 mantissa bits, so a
/// cell's values lie within 0.4% of each other, while the map's closest bounds (near 1 in the
/// unsigned map) are 0.7% apart: no cell holds two bounds.
const CELL_BITS: u32 = 17;

impl Codebook {
    /// The [`dynamic_map`] (signed: a first moment's; unsigned: a second moment's) and its
    /// table on `device`.
    pub fn dynamic(signed: bool, device: Device) -> Self {
        Self::new(&dynamic_map(signed), device)
    }

    /// The code table of `map` (a [`dynamic_map`]) on `device`.
    pub fn new(map: &Tensor, device: Device) -> Self {
        let bounds = Vec::<f32>::try_from((map.narrow(0, 0, 255) + map.narrow(0, 1, 255)) / 2.0)
            .expect("a 1-d f32 map");
        let cells = 1usize << CELL_BITS;
        let (mut below, mut bound) = (vec![0i32; cells], vec![f32::INFINITY; cells]);
        let shift = 32 - CELL_BITS;
        for cell in 0..cells {
            // The cell's first and last bit patterns: its ends (in either order: sign bit).
            let first = (cell as u32) << shift;
            let (a, b) = (
                f32::from_bits(first),
                f32::from_bits(first | ((1 << shift) - 1)),
            );
            if !(a.is_finite() && b.is_finite()) {
                continue;
            }
            let (lo, hi) = (a.min(b), a.max(b));
            let n = bounds.partition_point(|&x| x < lo);
            let inside = bounds[n..].iter().take_while(|&&x| x <= hi).count();
            assert!(inside <= 1, "cell {cell} holds {inside} bounds");
            below[cell] = n as i32;
            if inside == 1 {
                bound[cell] = bounds[n];
            }
        }
        Self {
            map: map.to_device(device),
            below: Tensor::from_slice(&below).to_device(device),
            bound: Tensor::from_slice(&bound).to_device(device),
            unsigned: map.double_value(&[0]) >= 0.0,
        }
    }

    /// The index of the nearest map entry for each value of `scaled` (f32 in [-1, 1]), as
    /// i32; on a tie the lower one. Equals `scaled.bucketize(bounds)` (the count of bounds
    /// below each value), found by table in a few branch-free passes rather than a binary
    /// search per value.
    pub fn nearest(&self, scaled: &Tensor) -> Tensor {
        let shift = i64::from(32 - CELL_BITS);
        let cell = scaled
            .view_dtype(Kind::Int)
            .bitwise_right_shift_tensor_scalar(shift)
            .bitwise_and((1i64 << CELL_BITS) - 1);
        let above = scaled.gt_tensor(&self.bound.index_select(0, &cell));
        self.below.index_select(0, &cell) + above
    }

    /// Another handle on the same tensors.
    pub fn shallow_clone(&self) -> Self {
        Self {
            map: self.map.shallow_clone(),
            below: self.below.shallow_clone(),
            bound: self.bound.shallow_clone(),
            unsigned: self.unsigned,
        }
    }
}

/// A flat f32 tensor stored in 8 bits: one code per value, one absolute maximum per block.
pub struct Quantized {
    /// `[n]` u8: indices into `map`.
    codes: Tensor,
    /// `[ceil(n / BLOCK)]` f32: each block's absolute maximum.
    absmax: Tensor,
    /// What the codes stand for.
    book: Codebook,
}

impl Quantized {
    /// `n` zeros, coded with `book` (on the device of its tensors).
    pub fn zeros(n: i64, book: &Codebook) -> Self {
        let device = book.map.device();
        Self {
            // Any code with a zero scale decodes to 0.
            codes: Tensor::zeros([n], (Kind::Uint8, device)),
            absmax: Tensor::zeros([(n + BLOCK - 1) / BLOCK], (Kind::Float, device)),
            book: book.shallow_clone(),
        }
    }

    /// The values `start .. start + len` (`start` a multiple of [`BLOCK`]), as f32.
    pub fn read(&self, start: i64, len: i64) -> Tensor {
        let codes = self.codes.narrow(0, start, len).to_kind(Kind::Int64);
        let scale = self
            .block_scales(start, len)
            .repeat_interleave_self_int(BLOCK, 0, None)
            .narrow(0, 0, len);
        self.book.map.take(&codes) * scale
    }

    /// Stores `values` (f32, flat) as the values `start ..` (`start` a multiple of
    /// [`BLOCK`]), rescaling their blocks: each value takes the nearest entry, except that
    /// with an unsigned map a positive value takes at least the smallest positive entry. A
    /// second moment coded as 0 beside a nonzero first moment would make Adam divide by `eps`
    /// alone: the "zero-point problem" (Li et al. 2023, "Memory Efficient Optimizers with
    /// 4-bit States"), which strikes values below 1.6e-7 of their block's maximum here.
    pub fn write(&mut self, start: i64, values: &Tensor) {
        let len = values.size()[0];
        let full = len / BLOCK * BLOCK;
        let mut absmax = Vec::with_capacity(2);
        let mut scaled = Vec::with_capacity(2);
        // bitsandbytes' reference kernel multiplies full blocks by the reciprocal and divides
        // the last, partial block: the same here, for the same codes.
        if full > 0 {
            let blocks = values.narrow(0, 0, full).view([-1, BLOCK]);
            let max = blocks.abs().amax([1], false);
            let inverse = max.clamp_min(1e-38).reciprocal().unsqueeze(1);
            scaled.push((blocks * inverse).clamp(-1.0, 1.0).view([-1]));
            absmax.push(max);
        }
        if len > full {
            let rest = values.narrow(0, full, len - full);
            let max = rest.abs().amax([0], true);
            scaled.push((&rest / max.clamp_min(1e-38)).clamp(-1.0, 1.0));
            absmax.push(max);
        }
        let scaled = Tensor::cat(&scaled, 0);
        let mut codes = self.book.nearest(&scaled);
        if self.book.unsigned {
            codes = codes.maximum(&scaled.gt(0.0).to_kind(Kind::Int));
        }
        self.codes.narrow(0, start, len).copy_(&codes);
        self.block_scales(start, len)
            .copy_(&Tensor::cat(&absmax, 0));
    }

    /// The absolute maxima of the blocks that hold values `start .. start + len`.
    fn block_scales(&self, start: i64, len: i64) -> Tensor {
        self.absmax
            .narrow(0, start / BLOCK, (len + BLOCK - 1) / BLOCK)
    }

    /// The codes and block maxima (for checkpoints).
    pub fn parts(&self) -> (&Tensor, &Tensor) {
        (&self.codes, &self.absmax)
    }

    /// Values stored as `codes` and `absmax` (what [`parts`](Self::parts) returned), coded with
    /// `book`; `None` when their sizes do not fit each other.
    pub fn from_parts(codes: &Tensor, absmax: &Tensor, book: &Codebook) -> Option<Self> {
        let mut q = Self::zeros(codes.numel() as i64, book);
        q.set_parts(&codes.view([-1]), &absmax.view([-1]))?;
        Some(q)
    }

    /// Restores what [`parts`](Self::parts) returned; `None` when the shapes differ.
    pub fn set_parts(&mut self, codes: &Tensor, absmax: &Tensor) -> Option<()> {
        if codes.size() != self.codes.size() || absmax.size() != self.absmax.size() {
            return None;
        }
        self.codes.copy_(codes);
        self.absmax.copy_(absmax);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_have_256_sorted_entries_from_minus_one_or_zero_to_one() {
        for (signed, low) in [(true, -0.99297), (false, 0.0)] {
            let map = dynamic_map(signed);
            assert_eq!(map.size(), [256]);
            assert!((map.double_value(&[0]) - low).abs() < 1e-4, "{signed}");
            assert_eq!(map.double_value(&[255]), 1.0);
            let steps = map.narrow(0, 1, 255) - map.narrow(0, 0, 255);
            assert!(steps.min().double_value(&[]) >= 0.0);
        }
    }

    #[test]
    fn round_trip_error_is_within_a_map_step_of_each_block_max() {
        tch::manual_seed(0);
        // 3 full blocks and a partial one, blocks of very different scales.
        let x = Tensor::randn([3 * BLOCK + 40], (Kind::Float, Device::Cpu))
            * Tensor::from_slice(&[1e-4f32, 1.0, 30.0, 0.5])
                .repeat_interleave_self_int(BLOCK, 0, None)
                .narrow(0, 0, 3 * BLOCK + 40);
        let mut q = Quantized::zeros(x.size()[0], &Codebook::dynamic(true, Device::Cpu));
        assert_eq!(q.read(0, x.size()[0]).abs().max().double_value(&[]), 0.0);
        q.write(0, &x);
        let back = q.read(0, x.size()[0]);
        for (b, scale) in [(0, 1e-4), (1, 1.0), (2, 30.0), (3, 0.5)] {
            let len = if b == 3 { 40 } else { BLOCK };
            let (x, y) = (x.narrow(0, b * BLOCK, len), back.narrow(0, b * BLOCK, len));
            let max = x.abs().max().double_value(&[]);
            let err = (&x - &y).abs().max().double_value(&[]);
            // The map's widest step is 0.1 (near 1): half of it, relative to the block max.
            assert!(
                err <= 0.05 * max + 1e-12,
                "block {b} (scale {scale}): err {err}, max {max}"
            );
            // The block's largest value is exact, or -0.993 of it when negative (the signed
            // map's lowest entry).
            let top = y.abs().max().double_value(&[]);
            assert!(
                top == max || (top / max - 0.99297).abs() < 1e-5,
                "block {b}: {top} for {max}"
            );
        }
        // A write at an offset leaves the other blocks alone.
        let before = q.read(0, BLOCK);
        q.write(
            2 * BLOCK,
            &Tensor::zeros([BLOCK + 40], (Kind::Float, Device::Cpu)),
        );
        assert_eq!(
            (q.read(0, BLOCK) - before).abs().max().double_value(&[]),
            0.0
        );
        assert_eq!(
            q.read(2 * BLOCK, BLOCK + 40).abs().max().double_value(&[]),
            0.0
        );
    }

    #[test]
    fn an_unsigned_map_never_codes_a_positive_value_as_zero() {
        let x = Tensor::from_slice(&[1.0f32, 1e-9, 0.0, 2e-7]);
        let mut q = Quantized::zeros(4, &Codebook::dynamic(false, Device::Cpu));
        q.write(0, &x);
        let back = q.read(0, 4);
        assert!(back.double_value(&[1]) > 0.0 && back.double_value(&[3]) > 0.0);
        assert_eq!(back.double_value(&[2]), 0.0);
        // A signed map (a first moment's) codes to the nearest entry, 0 included.
        let mut s = Quantized::zeros(4, &Codebook::dynamic(true, Device::Cpu));
        s.write(0, &x);
        assert_eq!(s.read(0, 4).double_value(&[1]), 0.0);
    }

    #[test]
    fn the_code_table_finds_what_a_binary_search_finds() {
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        for signed in [true, false] {
            let map = dynamic_map(signed);
            let bounds = (map.narrow(0, 0, 255) + map.narrow(0, 1, 255)) / 2.0;
            // Uniform values, magnitudes spread over 12 decades, every bound and its two
            // neighbouring floats, zeros of both signs and the ends.
            let spread = Tensor::rand([200_000], opts) * -12.0;
            let sign = Tensor::rand([200_000], opts).gt(0.5).to_kind(Kind::Float) * 2.0 - 1.0;
            let up = bounds.nextafter(&Tensor::ones_like(&bounds));
            let down = bounds.nextafter(&(-Tensor::ones_like(&bounds)));
            let values = Tensor::cat(
                &[
                    Tensor::rand([200_000], opts) * 2.0 - 1.0,
                    Tensor::from_slice(&[10f32]).pow(&spread) * sign,
                    bounds.shallow_clone(),
                    up,
                    down,
                    Tensor::from_slice(&[0f32, -0.0, 1.0, -1.0, 1e-38, -1e-38]),
                ],
                0,
            )
            .clamp(-1.0, 1.0);
            let book = Codebook::dynamic(signed, Device::Cpu);
            let table = book.nearest(&values).to_kind(Kind::Int64);
            let search = values.bucketize(&bounds, false, false);
            let differ = table.ne_tensor(&search).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(differ, 0, "signed {signed}: {differ} codes differ");
        }
    }
}
