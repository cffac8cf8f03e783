//! The interface GRPO, PPO, TOPR, DPO and expert iteration share: choose and weight the samples of
//! a batch once ([`Algorithm::prepare`]), then turn per-token log-probabilities of a
//! micro-batch into a loss ([`Algorithm::loss`]). The [`Learner`](super::Learner) owns the
//! model, micro-batching, reference log-probabilities and the optimizer.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::advantages::{mean, std_unbiased};
use super::metrics::Stats;
use crate::dist::{ProcessGroup, ReduceOp};
use crate::error::{Error, Result};
use crate::sample::Sample;

/// How per-token losses become one scalar (TRL `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over sequences of each sequence's masked token mean (the GRPO paper).
    Grpo,
    /// Masked token sum / masked tokens of the micro-batch, averaged over micro-batches
    /// (TRL's `bnpo`: normalised by the local batch).
    Bnpo,
    /// Masked token sum / (sequences x `max_completion_length`) (Dr. GRPO).
    DrGrpo,
    /// Masked token sum / masked tokens of the whole optimizer-step batch (DAPO; TRL's
    /// default).
    #[default]
    Dapo,
}

/// Sizes of the batch one optimizer step trains on, so that per-micro-batch losses add up
/// to the loss of the whole batch (exact gradient accumulation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScale {
    /// Sequences in the optimizer step.
    pub sequences: usize,
    /// Trained (masked) tokens in the optimizer step.
    pub tokens: usize,
    /// Micro-batches in the optimizer step.
    pub micro_batches: usize,
    /// Length Dr. GRPO divides by.
    pub max_completion_length: usize,
}

impl StepScale {
    /// The scale of a single micro-batch that is the whole step.
    pub fn single(mask: &Tensor, max_completion_length: usize) -> Self {
        Self {
            sequences: mask.size()[0] as usize,
            tokens: mask.sum(None::<Kind>).double_value(&[]) as usize,
            micro_batches: 1,
            max_completion_length,
        }
    }
}

/// Reduces a per-token loss to this micro-batch's share of the step loss.
///
/// # Shapes
/// `per_token`, `mask`: `[B, T]`; returns a scalar.
pub fn aggregate(per_token: &Tensor, mask: &Tensor, loss_type: LossType, s: &StepScale) -> Tensor {
    let masked = per_token * mask;
    match loss_type {
        LossType::Grpo => {
            let lens = mask.sum_dim_intlist(-1, false, None::<Kind>).clamp_min(1.0);
            (masked.sum_dim_intlist(-1, false, None::<Kind>) / lens).sum(masked.kind())
                / s.sequences.max(1) as f64
        }
        LossType::Bnpo => {
            let tokens = mask.sum(mask.kind()).clamp_min(1.0);
            masked.sum(masked.kind()) / tokens / s.micro_batches.max(1) as f64
        }
        LossType::DrGrpo => {
            masked.sum(masked.kind()) / (s.sequences.max(1) * s.max_completion_length.max(1)) as f64
        }
        LossType::Dapo => masked.sum(masked.kind()) / s.tokens.max(1) as f64,
    }
}

/// What a loss needs about one micro-batch.
///
/// # Shapes
/// All `[B, T]` (rows x longest completion), float.
#[derive(Debug)]
pub struct LossInput<'a> {
    /// Current policy log-probabilities (differentiable).
    pub logp: &'a Tensor,
    /// The sampling policy's log-probabilities as the learner computes them (`pi_old`; the
    /// behaviour logprobs when the learner's own engine sampled).
    pub old_logp: &'a Tensor,
    /// The rollout correction `pi_old / mu` (truncated or masked; `[B, T]`, or `[B, 1]` per
    /// sequence) when another engine sampled: every policy-gradient term is multiplied by it
    /// (see [`corrected`](Self::corrected)). `None`: no correction.
    pub rollout_weight: Option<&'a Tensor>,
    /// 1 on trained tokens.
    pub mask: &'a Tensor,
    /// Per-token advantages (or per-sequence weights repeated over tokens) from `prepare`.
    pub advantages: &'a Tensor,
    /// Sizes of the optimizer step this micro-batch belongs to.
    pub scale: StepScale,
    /// Reference log-probabilities: present exactly when the algorithm's
    /// [`needs_reference`](Algorithm::needs_reference) says so (read them with
    /// [`reference`](Self::reference)).
    pub ref_logp: Option<&'a Tensor>,
    /// The critic's side: present exactly for algorithms that
    /// [`needs_critic`](Algorithm::needs_critic) (read it with [`critic`](Self::critic)).
    pub critic: Option<CriticInput<'a>>,
}

/// What a loss with a value model needs about one micro-batch.
///
/// # Shapes
/// All `[B, T]`, float.
#[derive(Debug, Clone, Copy)]
pub struct CriticInput<'a> {
    /// Critic values (differentiable).
    pub values: &'a Tensor,
    /// Critic values at rollout time (value clipping).
    pub old_values: &'a Tensor,
    /// Value targets.
    pub returns: &'a Tensor,
}

impl<'a> LossInput<'a> {
    /// A per-token (or per-sequence) policy-gradient term with the rollout correction applied.
    pub fn corrected(&self, pg: Tensor) -> Tensor {
        match self.rollout_weight {
            Some(w) => pg * w,
            None => pg,
        }
    }

    /// The reference log-probabilities, or an error naming `algorithm` when the learner was
    /// not asked for them.
    pub fn reference(&self, algorithm: &str) -> Result<&'a Tensor> {
        self.ref_logp.ok_or_else(|| {
            Error::Invalid(format!("{algorithm}: the loss needs reference logprobs"))
        })
    }

    /// The critic's inputs, or an error naming `algorithm` when there is no critic.
    pub fn critic(&self, algorithm: &str) -> Result<CriticInput<'a>> {
        self.critic
            .ok_or_else(|| Error::Invalid(format!("{algorithm}: the loss needs a critic")))
    }
}

/// Per-sample data the learner computes before `prepare` (in input order).
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchContext<'a> {
    /// Reference log-probabilities per completion token, when the algorithm needs them.
    pub reference: Option<&'a [Vec<f32>]>,
    /// Critic values per completion token, when the algorithm has a critic.
    pub values: Option<&'a [Vec<f32>]>,
    /// A data-parallel job's group, when this batch is one rank's share of the job's.
    pub ranks: Option<&'a ProcessGroup>,
}

impl BatchContext<'_> {
    /// Mean and unbiased standard deviation of `xs` over the whole batch: this rank's values
    /// with every other rank's in a data-parallel job (two all-reduces: the mean, then the
    /// squared deviations from it), or `xs` alone.
    pub fn mean_std(&self, xs: &[f64]) -> Result<(f64, f64)> {
        let Some(group) = self.ranks else {
            return Ok((mean(xs), std_unbiased(xs)));
        };
        let sums = group.all_reduce_values(&[xs.len() as f64, xs.iter().sum()], ReduceOp::Sum)?;
        let (n, m) = (sums[0], sums[1] / sums[0].max(1.0));
        let squares: f64 = xs.iter().map(|x| (x - m).powi(2)).sum();
        let squares = group.all_reduce_values(&[squares], ReduceOp::Sum)?[0];
        let std = match n < 2.0 {
            true => 0.0,
            false => (squares / (n - 1.0)).sqrt(),
        };
        Ok((m, std))
    }
}

/// A micro-batch loss and its metrics.
#[derive(Debug)]
pub struct LossOutput {
    /// This micro-batch's share of the step loss (back-propagate it as is).
    pub loss: Tensor,
    /// Its policy-gradient part (without KL), same scaling.
    pub policy_loss: f64,
    /// Token- or pair-weighted metrics (KL, clip fractions, ratios, ...).
    pub stats: Stats,
}

/// A value model's targets for one sample, one value per completion token.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CriticTargets {
    /// The critic's values at rollout time.
    pub old_values: Vec<f32>,
    /// Value targets.
    pub returns: Vec<f32>,
}

/// One sample an algorithm chose to train on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PreparedRow {
    /// Index into the input batch.
    pub index: usize,
    /// One advantage per completion token.
    pub advantages: Vec<f32>,
    /// Value targets (algorithms with a critic).
    pub critic: Option<CriticTargets>,
}

/// The samples an algorithm trains on, in training order (pairs adjacent for DPO), each at
/// most once.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    /// The chosen samples with their advantages.
    pub rows: Vec<PreparedRow>,
}

impl Prepared {
    /// `order` with one advantage per sample (`advantage(i)` for sample `i`), broadcast over
    /// its completion tokens: the shape of every critic-free algorithm.
    pub fn per_sample(
        samples: &[Sample],
        order: Vec<usize>,
        advantage: impl Fn(usize) -> f32,
    ) -> Self {
        let rows = order
            .into_iter()
            .map(|index| PreparedRow {
                index,
                advantages: vec![advantage(index); samples[index].completion_ids.len()],
                critic: None,
            })
            .collect();
        Self { rows }
    }
}

/// One learning algorithm.
pub trait Algorithm: Send + std::fmt::Debug {
    /// The algorithm's name (a metric label).
    fn name(&self) -> &'static str;
    /// Whether the loss needs reference-model log-probabilities.
    fn needs_reference(&self) -> bool;
    /// Whether the algorithm trains a critic (value model).
    fn needs_critic(&self) -> bool {
        false
    }
    /// Items that must stay in one micro-batch (2 for DPO pairs).
    fn unit(&self) -> usize {
        1
    }
    /// Optimisation passes over one batch (TRL `num_iterations`, PPO epochs).
    fn passes(&self) -> usize {
        1
    }
    /// Completion length Dr. GRPO normalises by, if configured.
    fn max_completion_length(&self) -> Option<usize> {
        None
    }
    /// Picks the samples to train on and computes their advantages; records batch metrics.
    fn prepare(
        &self,
        samples: &[Sample],
        ctx: &BatchContext,
        stats: &mut Stats,
    ) -> Result<Prepared>;
    /// The loss of one micro-batch.
    fn loss(&self, input: &LossInput) -> Result<LossOutput>;
}

/// Masked mean, sum and count helpers for metrics.
pub(crate) fn masked_sum(x: &Tensor, mask: &Tensor) -> f64 {
    (x.detach() * mask).sum(None::<Kind>).double_value(&[])
}

/// Number of trained tokens in `mask`.
pub(crate) fn mask_count(mask: &Tensor) -> f64 {
    mask.sum(None::<Kind>).double_value(&[])
}
