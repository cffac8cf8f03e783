//! Token selection: temperature, top-k, top-p, min-p or greedy, with the random draws coming
//! from per-sequence seeded generators so that a sequence's tokens depend only on the seed and
//! its own index, never on what else shares the batch.
//!
//! The behaviour logprob recorded for each token is `log_softmax(logits / T)` at that token
//! (T = 1 for greedy): the tempered, *untruncated* distribution. That is what the learner
//! recomputes (TRL and verl likewise divide the logits by the rollout temperature and do not
//! re-apply top-k/top-p), so importance ratios are exactly 1 on-policy. With top-k/top-p/min-p
//! the token was drawn from the truncated distribution; its logprob is still the untruncated one.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// How tokens are chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens with this much mass (1 = off).
    pub top_p: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
        }
    }
}

impl SamplingParams {
    /// Checks ranges, naming the bad option.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(what));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1), got {}", self.min_p));
        }
        Ok(())
    }

    fn greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// The temperature the behaviour logprobs are computed at.
    pub fn logprob_temperature(&self) -> f64 {
        if self.greedy() {
            1.0
        } else {
            self.temperature
        }
    }
}

/// One random stream per sequence, derived from the run seed and the sequence's identity.
#[derive(Debug, Clone)]
pub struct SequenceRng(ChaCha8Rng);

impl SequenceRng {
    /// The stream of sequence `index` under `seed`.
    pub fn new(seed: u64, index: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index);
        Self(rng)
    }

    pub(crate) fn uniform(&mut self) -> f64 {
        self.0.random::<f64>()
    }
}

/// Chosen tokens (int64 `[batch]`) and their behaviour logprobs (f32 `[batch]`).
///
/// # Shapes
/// - `logits`: `[batch, vocab]`; `rngs.len() == batch`
pub fn draw_tokens(
    logits: &Tensor,
    params: &SamplingParams,
    rngs: &mut [SequenceRng],
) -> (Tensor, Tensor) {
    crate::kernels::token_draw::draw(logits, params, rngs)
        .unwrap_or_else(|| sample_torch(logits, params, rngs))
}

/// [`sample`] in libtorch ops: any device, dtype and truncation.
fn sample_torch(
    logits: &Tensor,
    params: &SamplingParams,
    rngs: &mut [SequenceRng],
) -> (Tensor, Tensor) {
    let logits = logits.to_kind(Kind::Float);
    let scaled = if params.logprob_temperature() == 1.0 {
        logits
    } else {
        logits / params.logprob_temperature()
    };
    let logp = scaled.log_softmax(-1, Kind::Float);
    let tokens = if params.greedy() {
        logp.argmax(-1, false)
    } else {
        draw(&truncate(&logp, params), rngs)
    };
    let chosen = logp.gather(1, &tokens.unsqueeze(1), false).squeeze_dim(1);
    (tokens, chosen)
}

/// Log-probabilities with the tokens top-k/top-p/min-p exclude set to -inf.
fn truncate(logp: &Tensor, params: &SamplingParams) -> Tensor {
    let vocab = logp.size()[1];
    let mut logp = logp.shallow_clone();
    if params.top_k > 0 && (params.top_k as i64) < vocab {
        let (kth, _) = logp.topk(params.top_k as i64, -1, true, true);
        let threshold = kth.narrow(1, params.top_k as i64 - 1, 1);
        logp = logp.masked_fill(&logp.lt_tensor(&threshold), f64::NEG_INFINITY);
    }
    if params.min_p > 0.0 {
        let max = logp.amax([-1].as_slice(), true);
        let threshold = max + params.min_p.ln();
        logp = logp.masked_fill(&logp.lt_tensor(&threshold), f64::NEG_INFINITY);
    }
    if params.top_p < 1.0 {
        let (sorted, order) = logp.sort(-1, true);
        let probs = sorted.exp();
        // Drop a token when the mass strictly before it already reaches top_p.
        let before = probs.cumsum(-1, Kind::Float) - &probs;
        let drop_sorted = before.ge(params.top_p);
        let drop = drop_sorted.scatter(1, &order, &drop_sorted);
        logp = logp.masked_fill(&drop, f64::NEG_INFINITY);
    }
    logp
}

/// Inverse-CDF draws: row i picks the first token whose cumulative mass exceeds u_i.
fn draw(logp: &Tensor, rngs: &mut [SequenceRng]) -> Tensor {
    let probs = logp.exp();
    let cdf = probs.cumsum(-1, Kind::Float);
    let total = cdf.narrow(1, cdf.size()[1] - 1, 1);
    let u: Vec<f32> = rngs.iter_mut().map(|r| r.uniform() as f32).collect();
    let u = Tensor::from_slice(&u).to_device(logp.device()).unsqueeze(1) * total;
    let idx = u
        .searchsorted(&cdf, false, true, "right", None::<Tensor>)
        .squeeze_dim(1);
    // Rounding can put u past the last nonzero bucket; step back to a token with mass.
    let idx = idx.clamp_max(cdf.size()[1] - 1);
    let ok = probs
        .gather(1, &idx.unsqueeze(1), false)
        .squeeze_dim(1)
        .gt(0.0);
    if bool::try_from(ok.all()).unwrap_or(false) {
        idx // the usual case: no second pass over the vocabulary
    } else {
        idx.where_self(&ok, &probs.argmax(-1, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn rngs(n: u64) -> Vec<SequenceRng> {
        (0..n).map(|i| SequenceRng::new(7, i)).collect()
    }

    fn logits() -> Tensor {
        Tensor::from_slice(&[2.0f32, 1.0, 0.5, 0.0, -1.0, -3.0])
            .view([1, 6])
            .repeat([4000, 1])
    }

    fn histogram(tokens: &Tensor) -> Vec<f64> {
        let counts = tokens.bincount::<Tensor>(None, 6).to_kind(Kind::Double);
        let n = tokens.size()[0] as f64;
        Vec::<f64>::try_from(counts / n).unwrap()
    }

    #[test]
    fn sampling_follows_the_tempered_distribution() {
        let params = SamplingParams {
            temperature: 0.7,
            ..Default::default()
        };
        let (tokens, logp) = draw_tokens(&logits(), &params, &mut rngs(4000));
        let want = Vec::<f64>::try_from((logits().get(0) / 0.7).softmax(-1, Kind::Double)).unwrap();
        for (got, want) in histogram(&tokens).iter().zip(&want) {
            assert!((got - want).abs() < 0.03, "{got} vs {want}");
        }
        let expected = (logits() / 0.7)
            .log_softmax(-1, Kind::Float)
            .gather(1, &tokens.unsqueeze(1), false)
            .squeeze_dim(1);
        assert!(logp.allclose(&expected, 1e-6, 1e-6, false));
    }

    #[test]
    fn truncation_excludes_tokens_but_logprobs_stay_untruncated() {
        let cases = [
            (
                SamplingParams {
                    top_k: 2,
                    ..Default::default()
                },
                2,
            ),
            (
                SamplingParams {
                    top_p: 0.6,
                    ..Default::default()
                },
                2,
            ), // p = .53 .20 .12 ...
            (
                SamplingParams {
                    min_p: 0.3,
                    ..Default::default()
                },
                2,
            ), // .20/.53 > .3 > .12/.53
        ];
        for (params, kept) in cases {
            let (tokens, logp) = draw_tokens(&logits(), &params, &mut rngs(4000));
            let hist = histogram(&tokens);
            assert!(
                hist[..kept].iter().all(|&p| p > 0.1),
                "{params:?}: {hist:?}"
            );
            assert!(
                hist[kept..].iter().all(|&p| p == 0.0),
                "{params:?}: {hist:?}"
            );
            let full = logits()
                .log_softmax(-1, Kind::Float)
                .gather(1, &tokens.unsqueeze(1), false)
                .squeeze_dim(1);
            assert!(logp.allclose(&full, 1e-6, 1e-6, false));
        }
    }

    #[test]
    fn greedy_picks_the_argmax_and_draws_are_reproducible() {
        let params = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        let (tokens, _) = draw_tokens(&logits(), &params, &mut rngs(4000));
        assert_eq!(tokens.max().int64_value(&[]), 0);
        let x = Tensor::randn([3, 50], (Kind::Float, Device::Cpu));
        let a = draw_tokens(&x, &SamplingParams::default(), &mut rngs(3)).0;
        let b = draw_tokens(&x, &SamplingParams::default(), &mut rngs(3)).0;
        assert!(a.equal(&b));
    }

    #[test]
    fn the_cpu_kernel_draws_what_libtorch_draws() {
        let x = Tensor::randn([64, 50], (Kind::Float, Device::Cpu)) * 2;
        for temperature in [0.0, 0.6, 1.0] {
            let params = SamplingParams {
                temperature,
                ..Default::default()
            };
            let (tokens, logp) = draw_tokens(&x, &params, &mut rngs(64));
            let (want_tokens, want_logp) = sample_torch(&x, &params, &mut rngs(64));
            assert!(tokens.equal(&want_tokens), "temperature {temperature}");
            assert!(logp.allclose(&want_logp, 1e-6, 1e-6, false));
        }
    }

    #[test]
    fn bad_options_are_named() {
        let bad = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
    }
}
