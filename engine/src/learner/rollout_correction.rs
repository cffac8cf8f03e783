//! When another engine (vLLM) sampled the tokens, its logprobs `mu` differ slightly from the
//! learner's own `pi_old` for the same weights (kernels, precision, batching). The learner's
//! ratios then start from `pi_old` (recomputed by the trainer), and each token's policy-gradient
//! term is weighted by the truncated importance weight `min(pi_old / mu, cap)` (TRL's
//! `vllm_importance_sampling_correction`, verl's rollout correction; Yao et al. 2025, "Your
//! efficient RL framework secretly brings you off-policy RL training"). This module holds
//! that weight, and the measure of the gap itself (mean and largest |Δ|, KL) that the
//! trainer logs for every engine.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::metrics::{self as m, Stats};

/// How the importance weight `pi_old / mu` is applied (TRL `vllm_importance_sampling_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionMode {
    /// No weight: the engine's samples are trained as if the learner had drawn them.
    Off,
    /// Per token, `min(w_t, cap)` (truncated importance sampling).
    #[default]
    TokenTruncate,
    /// Per token, `w_t`, or 0 where `w_t > cap` (the token drops out of the loss).
    TokenMask,
    /// Per sequence, `min(prod_t w_t, cap)` shared by its tokens.
    SequenceTruncate,
    /// Per sequence, `prod_t w_t`, or 0 where it exceeds `cap`.
    SequenceMask,
}

/// `[learner.rollout_correction]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutCorrection {
    /// How the weight is applied.
    pub mode: CorrectionMode,
    /// The largest weight kept (TRL `vllm_importance_sampling_cap`, default 3).
    pub tis_cap: f64,
}

impl Default for RolloutCorrection {
    fn default() -> Self {
        Self {
            mode: CorrectionMode::TokenTruncate,
            tis_cap: 3.0,
        }
    }
}

impl RolloutCorrection {
    /// The weight of each token's policy-gradient term (`[B, T]`, or `[B, 1]` per sequence),
    /// from the learner's `old` logprobs and the engine's `engine` logprobs on the tokens of
    /// `mask`; `None` when the mode is off. Records the mean weight and the fraction of
    /// tokens (or sequences) whose weight was truncated or masked.
    ///
    /// # Shapes
    /// `old`, `engine`, `mask`: `[B, T]`.
    pub fn weights(
        &self,
        old: &Tensor,
        engine: &Tensor,
        mask: &Tensor,
        stats: &mut Stats,
    ) -> Option<Tensor> {
        let log_w = (old - engine) * mask;
        let (log_w, count) = match self.mode {
            CorrectionMode::Off => return None,
            CorrectionMode::TokenTruncate | CorrectionMode::TokenMask => {
                (log_w, mask.shallow_clone())
            }
            CorrectionMode::SequenceTruncate | CorrectionMode::SequenceMask => {
                let per_seq = log_w.sum_dim_intlist(-1, true, None::<Kind>);
                let has_tokens = mask.sum_dim_intlist(-1, true, None::<Kind>).gt(0.0);
                (per_seq, has_tokens.to_kind(Kind::Float))
            }
        };
        let w = log_w.exp();
        let over = w.gt(self.tis_cap);
        let weights = match self.mode {
            CorrectionMode::TokenTruncate | CorrectionMode::SequenceTruncate => {
                w.clamp_max(self.tis_cap)
            }
            _ => w.masked_fill(&over, 0.0),
        };
        let n = count.sum(Kind::Float).double_value(&[]);
        let sum = |t: &Tensor| (t * &count).sum(Kind::Float).double_value(&[]);
        stats.mean(m::ROLLOUT_IS_WEIGHT_MEAN, sum(&weights), n);
        stats.mean(
            m::ROLLOUT_IS_CLIPPED_FRACTION,
            sum(&over.to_kind(Kind::Float)),
            n,
        );
        Some(weights)
    }
}

/// How far an engine's behaviour logprobs are from the learner's for the same tokens under the
/// same weights.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LogprobGap {
    /// Mean |learner - engine| per token.
    pub mean_abs: f64,
    /// Largest |learner - engine|.
    pub max_abs: f64,
    /// KL(engine ‖ learner), the k3 estimate `E[exp(r) - 1 - r]`, r = learner - engine, over
    /// the sampled tokens (never negative).
    pub kl: f64,
    /// Tokens compared.
    pub tokens: usize,
}

/// Accumulates a [`LogprobGap`] token by token or tensor by tensor.
#[derive(Debug, Clone, Copy, Default)]
pub struct GapMeter {
    abs_sum: f64,
    max_abs: f64,
    kl_sum: f64,
    tokens: usize,
}

impl GapMeter {
    /// Adds one token: the learner's and the engine's logprob of it.
    pub fn add(&mut self, learner: f32, engine: f32) {
        let r = learner as f64 - engine as f64;
        self.abs_sum += r.abs();
        self.max_abs = self.max_abs.max(r.abs());
        self.kl_sum += r.exp() - 1.0 - r;
        self.tokens += 1;
    }

    /// Adds the tokens of `mask` (`[B, T]` each).
    pub fn add_masked(&mut self, learner: &Tensor, engine: &Tensor, mask: &Tensor) {
        tch::no_grad(|| {
            let r = (learner.detach().to_kind(Kind::Double) - engine.to_kind(Kind::Double))
                * mask.to_kind(Kind::Double);
            let tokens = mask.sum(Kind::Double).double_value(&[]) as usize;
            if tokens == 0 {
                return;
            }
            let abs = r.abs();
            self.abs_sum += abs.sum(Kind::Double).double_value(&[]);
            self.max_abs = self.max_abs.max(abs.max().double_value(&[]));
            // exp(0) - 1 - 0 = 0 on masked-out entries.
            self.kl_sum += (r.exp() - 1.0 - &r).sum(Kind::Double).double_value(&[]);
            self.tokens += tokens;
        })
    }

    /// The gap so far; `None` when no token was compared.
    pub fn finish(&self) -> Option<LogprobGap> {
        (self.tokens > 0).then(|| LogprobGap {
            mean_abs: self.abs_sum / self.tokens as f64,
            max_abs: self.max_abs,
            kl: self.kl_sum / self.tokens as f64,
            tokens: self.tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[&[f32]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    fn values(x: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&x.contiguous().view([-1])).unwrap()
    }

    /// The weights against TRL's formulas written out by hand: token modes use
    /// `exp(old - mu)` per token, sequence modes `exp(sum_t (old - mu))` per row.
    #[test]
    fn weights_follow_the_truncation_and_mask_formulas() {
        let old = t(&[&[-1.0, -2.0, -0.5], &[-0.1, -0.2, 0.0]]);
        let mu = t(&[&[-1.5, -0.5, -0.5], &[-0.3, -0.4, -9.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
        let cap = 1.4f64;
        let run = |mode| {
            let mut stats = Stats::default();
            let w = RolloutCorrection { mode, tis_cap: cap }
                .weights(&old, &mu, &mask, &mut stats)
                .map(|w| values(&w));
            (w, stats.finish())
        };
        let e = |x: f64| x.exp() as f32;
        let (w, stats) = run(CorrectionMode::TokenTruncate);
        let expect = [1.4, e(-1.5), 1.0, e(0.2), e(0.2), 1.0];
        for (a, b) in w.unwrap().iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // One of the five trained tokens (exp(0.5) = 1.65) is over the cap.
        assert!((stats[m::ROLLOUT_IS_CLIPPED_FRACTION] - 0.2).abs() < 1e-9);
        let (w, _) = run(CorrectionMode::TokenMask);
        assert_eq!(w.unwrap()[0], 0.0);
        let (w, stats) = run(CorrectionMode::SequenceTruncate);
        let w = w.unwrap();
        assert_eq!(w.len(), 2, "one weight per sequence");
        // Row 0: exp(0.5 - 1.5 + 0); row 1: exp(0.2 + 0.2) = 1.49, over the cap.
        assert!((w[0] - e(-1.0)).abs() < 1e-6 && (w[1] - 1.4).abs() < 1e-6);
        assert!((stats[m::ROLLOUT_IS_CLIPPED_FRACTION] - 0.5).abs() < 1e-9);
        let (w, _) = run(CorrectionMode::SequenceMask);
        assert_eq!(w.unwrap()[1], 0.0);
        assert!(run(CorrectionMode::Off).0.is_none());
    }

    #[test]
    fn the_gap_meter_agrees_token_by_token_and_by_tensor() {
        let learner = t(&[&[-1.0, -2.0], &[-0.5, -3.0]]);
        let engine = t(&[&[-1.1, -2.0], &[-0.25, -7.0]]);
        let mask = t(&[&[1.0, 1.0], &[1.0, 0.0]]);
        let mut by_tensor = GapMeter::default();
        by_tensor.add_masked(&learner, &engine, &mask);
        let mut by_token = GapMeter::default();
        for (l, e) in [(-1.0, -1.1), (-2.0, -2.0), (-0.5, -0.25)] {
            by_token.add(l, e);
        }
        let (a, b) = (by_tensor.finish().unwrap(), by_token.finish().unwrap());
        assert_eq!(a.tokens, 3);
        assert!((a.mean_abs - b.mean_abs).abs() < 1e-7 && (a.mean_abs - 0.35 / 3.0).abs() < 1e-6);
        assert!((a.max_abs - 0.25).abs() < 1e-6 && (a.kl - b.kl).abs() < 1e-9 && a.kl > 0.0);
        assert!(GapMeter::default().finish().is_none());
    }
}
