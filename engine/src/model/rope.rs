//! Rotary position embeddings (Su et al. 2021, "RoFormer"), in the HF "rotate half" layout,
//! with the frequency scalings real checkpoints use: `linear` (position interpolation) and
//! `llama3` (transformers `_compute_llama3_parameters`).

use tch::{Device, Kind, Tensor};

use super::config::{ModelConfig, RopeParameters};

/// Inverse frequencies of one model, kept in f32 on the model's device.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    /// Frequencies for `cfg`'s full-attention layers on `device`.
    pub fn new(cfg: &ModelConfig, device: Device) -> Self {
        Self::with(cfg.head_dim(), &cfg.rope(), device)
    }

    /// Frequencies of `rope` for heads of `head_dim` on `device`.
    pub fn with(head_dim: usize, rope: &RopeParameters, device: Device) -> Self {
        let theta = rope.rope_theta.unwrap_or(10_000.0);
        let inv = scaled_inv_freq(head_dim, theta, rope);
        Self {
            inv_freq: Tensor::from_slice(&inv).to_device(device),
        }
    }

    /// Rotates queries or keys by their positions.
    ///
    /// # Shapes
    /// - `x`: `[batch, heads, seq, head_dim]`
    /// - `positions`: `[batch, seq]` (int64)
    /// - returns the shape of `x`.
    pub fn apply(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let (cos, sin) = self.cos_sin(positions, x.kind());
        Self::rotate(x, &cos, &sin)
    }

    /// Rotates `x` (`[batch, heads, seq, head_dim]`) by precomputed [`cos_sin`](Self::cos_sin)
    /// tables, so one forward pass computes them once for all layers.
    pub fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        x * cos + rotate_half(x) * sin
    }

    /// `cos` and `sin` tables `[batch, 1, seq, head_dim]` for `positions`, computed in f32
    /// (as transformers does) then cast to `kind`.
    pub fn cos_sin(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    Tensor::cat(&[&x2.neg(), &x1], 3)
}

/// Inverse frequencies `1 / theta^(2i/d)`, scaled as `rope` says.
pub fn scaled_inv_freq(head_dim: usize, theta: f64, rope: &RopeParameters) -> Vec<f32> {
    let base: Vec<f64> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64))
        .collect();
    let factor = rope.factor.unwrap_or(1.0);
    let scaled: Vec<f64> = match rope.rope_type.as_str() {
        "linear" => base.iter().map(|f| f / factor).collect(),
        "llama3" => base.iter().map(|&f| llama3_scale(f, rope)).collect(),
        _ => base,
    };
    // transformers computes the frequencies in f32; round once at the end.
    scaled.into_iter().map(|f| f as f32).collect()
}

fn llama3_scale(inv_freq: f64, rope: &RopeParameters) -> f64 {
    // validate() guarantees these are present for llama3.
    let factor = rope.factor.unwrap_or(1.0);
    let low = rope.low_freq_factor.unwrap_or(1.0);
    let high = rope.high_freq_factor.unwrap_or(4.0);
    let old_len = rope.original_max_position_embeddings.unwrap_or(8192) as f64;
    let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
    if wavelen < old_len / high {
        inv_freq
    } else if wavelen > old_len / low {
        inv_freq / factor
    } else {
        let smooth = (old_len / wavelen - low) / (high - low);
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kind: &str) -> RopeParameters {
        RopeParameters {
            rope_type: kind.into(),
            rope_theta: None,
            factor: Some(8.0),
            low_freq_factor: Some(1.0),
            high_freq_factor: Some(4.0),
            original_max_position_embeddings: Some(8192),
        }
    }

    #[test]
    fn default_frequencies_follow_the_formula() {
        let f = scaled_inv_freq(8, 10_000.0, &params("default"));
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 0.1).abs() < 1e-7);
        assert!((f[3] - 1e-3).abs() < 1e-9);
    }

    #[test]
    fn llama3_keeps_high_and_scales_low_frequencies() {
        let base = scaled_inv_freq(128, 500_000.0, &params("default"));
        let l3 = scaled_inv_freq(128, 500_000.0, &params("llama3"));
        assert_eq!(l3[0], base[0]); // short wavelength: unchanged
        assert!((l3[63] - base[63] / 8.0).abs() < 1e-12); // long wavelength: / factor
        assert!(l3
            .iter()
            .zip(&base)
            .all(|(a, b)| a <= b && *a >= b / 8.0 - 1e-12));
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let cfg: ModelConfig = serde_json::from_str(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":16,
                "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#,
        )
        .unwrap();
        let rope = Rope::new(&cfg, Device::Cpu);
        let x = Tensor::randn([1, 2, 3, 8], (Kind::Float, Device::Cpu));
        let pos = Tensor::from_slice(&[0i64, 5, 100]).view([1, 3]);
        let y = rope.apply(&x, &pos);
        let diff = (y.norm_scalaropt_dim(2, [-1], false) - x.norm_scalaropt_dim(2, [-1], false))
            .abs()
            .max();
        assert!(diff.double_value(&[]) < 1e-5);
        let first = (y.narrow(2, 0, 1) - x.narrow(2, 0, 1)).abs().max();
        assert!(first.double_value(&[]) < 1e-7);
    }
}
