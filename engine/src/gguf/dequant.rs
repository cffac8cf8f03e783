//! Dequantization of ggml tensor types to f32, following ggml's reference
//! `dequantize_row_*` routines (ggml-quants.c): F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, and the K-quants Q4_K, Q5_K, Q6_K.

use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml storage type: its id, name and block geometry.
#[derive(Debug, Clone, Copy)]
pub struct GgmlType {
    /// ggml's numeric id.
    pub id: u32,
    /// ggml's name.
    pub name: &'static str,
    /// Elements per block.
    pub block_elems: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    decode: fn(&[u8], &mut [f32]),
}

const QK_K: usize = 256;

/// Every type oxrl can read.
pub const TYPES: [GgmlType; 11] = [
    GgmlType {
        id: 0,
        name: "F32",
        block_elems: 1,
        block_bytes: 4,
        decode: decode_f32,
    },
    GgmlType {
        id: 1,
        name: "F16",
        block_elems: 1,
        block_bytes: 2,
        decode: decode_f16,
    },
    GgmlType {
        id: 30,
        name: "BF16",
        block_elems: 1,
        block_bytes: 2,
        decode: decode_bf16,
    },
    GgmlType {
        id: 2,
        name: "Q4_0",
        block_elems: 32,
        block_bytes: 18,
        decode: decode_q4_0,
    },
    GgmlType {
        id: 3,
        name: "Q4_1",
        block_elems: 32,
        block_bytes: 20,
        decode: decode_q4_1,
    },
    GgmlType {
        id: 6,
        name: "Q5_0",
        block_elems: 32,
        block_bytes: 22,
        decode: decode_q5_0,
    },
    GgmlType {
        id: 7,
        name: "Q5_1",
        block_elems: 32,
        block_bytes: 24,
        decode: decode_q5_1,
    },
    GgmlType {
        id: 8,
        name: "Q8_0",
        block_elems: 32,
        block_bytes: 34,
        decode: decode_q8_0,
    },
    GgmlType {
        id: 12,
        name: "Q4_K",
        block_elems: QK_K,
        block_bytes: 144,
        decode: decode_q4_k,
    },
    GgmlType {
        id: 13,
        name: "Q5_K",
        block_elems: QK_K,
        block_bytes: 176,
        decode: decode_q5_k,
    },
    GgmlType {
        id: 14,
        name: "Q6_K",
        block_elems: QK_K,
        block_bytes: 210,
        decode: decode_q6_k,
    },
];

impl GgmlType {
    /// The type with ggml id `id`, if supported.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().copied().find(|t| t.id == id)
    }

    /// Bytes needed for `numel` elements, or `None` if `numel` is not a whole number of blocks.
    pub fn byte_len(&self, numel: usize) -> Option<usize> {
        numel
            .is_multiple_of(self.block_elems)
            .then(|| numel / self.block_elems * self.block_bytes)
    }

    /// Decodes `bytes` (a whole number of blocks) into f32 values.
    pub fn dequantize(&self, bytes: &[u8]) -> Vec<f32> {
        let blocks = bytes.len() / self.block_bytes;
        let mut out = vec![0f32; blocks * self.block_elems];
        // Chunks of many blocks keep rayon's per-task overhead small for scalar types.
        let per_task = (4096 / self.block_elems).max(1);
        out.par_chunks_mut(per_task * self.block_elems)
            .zip(bytes.par_chunks(per_task * self.block_bytes))
            .for_each(|(out, bytes)| {
                for (o, b) in out
                    .chunks_mut(self.block_elems)
                    .zip(bytes.chunks(self.block_bytes))
                {
                    (self.decode)(b, o);
                }
            });
        out
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn decode_f32(b: &[u8], y: &mut [f32]) {
    y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

fn decode_f16(b: &[u8], y: &mut [f32]) {
    y[0] = f16_at(b, 0);
}

fn decode_bf16(b: &[u8], y: &mut [f32]) {
    y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32();
}

fn decode_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn decode_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Q5 blocks: 4 low bits in `qs`, the fifth bit of element j in bit j of `qh`.
fn decode_q5(qh: u32, qs: &[u8], y: &mut [f32], scale: f32, offset: f32) {
    for (j, &q) in qs.iter().enumerate() {
        let hi0 = ((qh >> j) << 4) & 0x10;
        let hi1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((q & 0xF) as u32 | hi0) as f32 * scale + offset;
        y[j + 16] = ((q >> 4) as u32 | hi1) as f32 * scale + offset;
    }
}

fn decode_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    decode_q5(qh, &b[6..22], y, d, -16.0 * d);
}

fn decode_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    decode_q5(qh, &b[8..24], y, d, m);
}

fn decode_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = q as i8 as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` in a K-quant's packed 12-byte `scales`.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (sc as f32, m as f32)
}

fn decode_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (chunk, (q, y)) in b[16..144].chunks(32).zip(y.chunks_mut(64)).enumerate() {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        for l in 0..32 {
            y[l] = d * s1 * (q[l] & 0xF) as f32 - dmin * m1;
            y[l + 32] = d * s2 * (q[l] >> 4) as f32 - dmin * m2;
        }
    }
}

fn decode_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (chunk, (ql, y)) in b[48..176].chunks(32).zip(y.chunks_mut(64)).enumerate() {
        let (s1, m1) = scale_min_k4(2 * chunk, scales);
        let (s2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d * s1 * ((ql[l] & 0xF) + hi1) as f32 - dmin * m1;
            y[l + 32] = d * s2 * ((ql[l] >> 4) + hi2) as f32 - dmin * m2;
        }
    }
}

fn decode_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q = [
                (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, &q) in q.iter().enumerate() {
                y[l + 32 * k] = d * (sc[is + 2 * k] as i8 as f32) * (q as i32 - 32) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_block_decodes_by_hand() {
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = GgmlType::from_id(8).unwrap().dequantize(&block);
        assert_eq!(y.len(), 32);
        assert_eq!(y[0], -8.0);
        assert_eq!(y[31], 7.5);
    }

    #[test]
    fn q4_1_block_decodes_by_hand() {
        let mut block = f16::from_f32(2.0).to_le_bytes().to_vec();
        block.extend(f16::from_f32(-1.0).to_le_bytes());
        block.extend([0x3Au8; 16]); // low nibble 10, high nibble 3
        let y = GgmlType::from_id(3).unwrap().dequantize(&block);
        assert_eq!(y[0], 19.0);
        assert_eq!(y[16], 5.0);
    }

    #[test]
    fn byte_len_requires_whole_blocks() {
        let q4_0 = GgmlType::from_id(2).unwrap();
        assert_eq!(q4_0.byte_len(64), Some(36));
        assert_eq!(q4_0.byte_len(33), None);
        assert!(GgmlType::from_id(99).is_none());
    }
}
