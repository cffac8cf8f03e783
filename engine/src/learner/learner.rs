//! The learner: one [`Learner::update`] turns a batch of scored [`Sample`]s into optimizer
//! steps of the configured [`Algorithm`] — reference log-probabilities once per batch,
//! `passes` x `mini_batches` optimizer steps, each accumulating gradients over micro-batches
//! sized by a token budget so that their losses add up exactly to the step's loss.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::algorithm::{
    mask_count, masked_sum, Algorithm, BatchContext, CriticInput, CriticTargets, LossInput,
    StepScale,
};
use super::batch::{
    collate, prompt_micro_batches, sort_within_groups, token_logprobs, validate, validate_batch,
    Rows,
};
use super::data_parallel;
use super::dpo::{Dpo, DpoConfig};
use super::expert::{ExpertIteration, ExpertIterationConfig};
use super::grpo::{Grpo, GrpoConfig};
use super::metrics::{self as m, Metrics, Stats};
use super::optim::{AdamW, OptimConfig, Optimizer};
use super::ppo::{Critic, Ppo, PpoConfig};
use super::precision::Precision;
use super::recompute::ScoreOptions;
use super::rollout_correction::{GapMeter, LogprobGap, RolloutCorrection};
use super::sft::Sft;
use super::topr::{Topr, ToprConfig};
use crate::dist::ProcessGroup;
use crate::error::{Error, Result};
use crate::model::replica::replica;
use crate::model::Llama;
use crate::sample::Sample;

/// Which algorithm the learner runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlgorithmKind {
    /// Group Relative Policy Optimization and its variants.
    #[default]
    Grpo,
    /// Tapered Off-Policy REINFORCE.
    Topr,
    /// Direct Preference Optimization (offline pairs or online ranked samples).
    Dpo,
    /// Rejection-sampling fine-tuning.
    ExpertIteration,
    /// PPO with a critic.
    Ppo,
    /// Supervised fine-tuning on reference completions.
    Sft,
}

impl AlgorithmKind {
    /// The name in a config (`learner.algorithm = "ppo"`), which also names the algorithm's
    /// options table (`[learner.ppo]`; SFT has none).
    pub fn name(self) -> &'static str {
        match self {
            Self::Grpo => "grpo",
            Self::Topr => "topr",
            Self::Dpo => "dpo",
            Self::ExpertIteration => "expert_iteration",
            Self::Ppo => "ppo",
            Self::Sft => "sft",
        }
    }
}

/// Learner options: `[learner]` in a run config, with one table per algorithm.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnerConfig {
    /// The algorithm to run.
    pub algorithm: AlgorithmKind,
    /// `[learner.grpo]`.
    pub grpo: GrpoConfig,
    /// `[learner.topr]`.
    pub topr: ToprConfig,
    /// `[learner.dpo]`.
    pub dpo: DpoConfig,
    /// `[learner.expert_iteration]`.
    pub expert_iteration: ExpertIterationConfig,
    /// `[learner.ppo]`.
    pub ppo: PpoConfig,
    /// `[learner.optim]`: AdamW, schedule, clipping.
    pub optim: OptimConfig,
    /// `[learner.rollout_correction]`: how samples another engine (vLLM) drew are weighted.
    pub rollout_correction: RolloutCorrection,
    /// Optimizer steps per pass over a batch (the batch is split into this many mini-batches;
    /// verl's `ppo_mini_batch_size` expressed as a count). 0 is taken as 1.
    pub mini_batches: usize,
    /// Token budget of a micro-batch (rows x longest row); gradients are accumulated over
    /// micro-batches. Unset = the whole mini-batch at once.
    pub max_tokens_per_micro_batch: Option<usize>,
    /// Reshuffle the samples (DPO pairs stay together) before each pass, so mini-batches
    /// differ between passes (verl `shuffle`).
    pub shuffle: bool,
    /// Seed of that shuffle.
    pub seed: u64,
    /// Keep only each decoder layer's input in the forward and recompute the layer in the
    /// backward: activation memory of one layer instead of all (about a third more compute).
    pub gradient_checkpointing: bool,
    /// Compute head + log-softmax + gather over chunks of this many tokens, recomputed in the
    /// backward, so `[tokens, vocab]` logits never exist for a whole micro-batch. Unset = one
    /// piece.
    pub logprob_chunk_tokens: Option<usize>,
    /// The temperature completions were sampled at: logits are divided by it for the policy,
    /// the old policy and the reference. Set by the trainer from `rollout.sampling` (not a
    /// `[learner]` key); 1 when unset.
    #[serde(skip)]
    pub temperature: Option<f64>,
    /// In which dtype AdamW updates the weights: `auto` (default), `pure` or `bf16-mixed`
    /// (f32 master weights for a bf16/f16 model; see [`Precision`]).
    pub precision: Precision,
}

impl LearnerConfig {
    /// How training forward passes score completions.
    pub fn score_options(&self) -> ScoreOptions {
        ScoreOptions {
            temperature: self.temperature.unwrap_or(1.0),
            checkpoint_layers: self.gradient_checkpointing,
            chunk_tokens: self.logprob_chunk_tokens,
        }
    }

    /// The algorithm tables among `tables` (the keys of a config's `[learner]`) that the
    /// configured algorithm does not read, e.g. `grpo` in a PPO run: still validated, but
    /// their options change nothing, which a user should be told.
    pub fn unread_tables<'a>(&self, tables: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
        const ALGORITHM_TABLES: [&str; 5] = ["grpo", "topr", "dpo", "expert_iteration", "ppo"];
        let read = self.algorithm.name();
        tables
            .into_iter()
            .filter(|t| ALGORITHM_TABLES.contains(t) && *t != read)
            .collect()
    }

    /// The configured algorithm.
    pub fn build_algorithm(&self) -> Box<dyn Algorithm> {
        match self.algorithm {
            AlgorithmKind::Grpo => Box::new(Grpo {
                cfg: self.grpo.clone(),
            }),
            AlgorithmKind::Topr => Box::new(Topr {
                cfg: self.topr.clone(),
            }),
            AlgorithmKind::Dpo => Box::new(Dpo {
                cfg: self.dpo.clone(),
            }),
            AlgorithmKind::ExpertIteration => Box::new(ExpertIteration {
                cfg: self.expert_iteration.clone(),
            }),
            AlgorithmKind::Ppo => Box::new(Ppo {
                cfg: self.ppo.clone(),
            }),
            AlgorithmKind::Sft => Box::new(Sft),
        }
    }
}

/// The frozen reference: a copy of the initial policy, or (LoRA) the policy's own base
/// weights with adapters off.
#[derive(Debug)]
struct Reference {
    /// `None`: use the policy with adapters off.
    copy: Option<(VarStore, Llama)>,
    /// Cached per-sample reference logprobs (DPO: computed once per pair).
    cache: Option<HashMap<u64, Vec<f32>>>,
}

/// Trains a policy.
#[derive(Debug)]
pub struct Learner {
    cfg: LearnerConfig,
    algorithm: Box<dyn Algorithm>,
    vs: VarStore,
    policy: Llama,
    reference: Option<Reference>,
    critic: Option<Critic>,
    optimizer: AdamW,
    /// Data parallelism: the job this learner is one rank of (`join`).
    dist: Option<ProcessGroup>,
}

fn sample_key(s: &Sample) -> u64 {
    let mut h = DefaultHasher::new();
    s.prompt_ids.hash(&mut h);
    s.completion_ids.hash(&mut h);
    h.finish()
}

/// Pads per-sample rows of per-token values to `[B, T]`.
fn pad_rows(rows: &[&[f32]], t: i64, device: Device) -> Tensor {
    let t = t as usize;
    let mut out = vec![0f32; rows.len() * t];
    for (i, r) in rows.iter().enumerate() {
        out[i * t..i * t + r.len()].copy_from_slice(r);
    }
    Tensor::from_slice(&out)
        .view([rows.len() as i64, t as i64])
        .to_device(device)
}

impl Learner {
    /// A learner for `policy` (whose parameters live in `vs`). All trainable variables of
    /// `vs` are optimised (with f32 master copies when `cfg.precision` resolves to mixed for
    /// their dtype); when the algorithm needs a reference, a frozen copy of the current
    /// weights is made now.
    pub fn new(vs: VarStore, policy: Llama, cfg: LearnerConfig) -> Result<Self> {
        cfg.validate()?;
        if cfg.gradient_checkpointing && policy.adapter_dropout() > 0.0 {
            return Err(Error::Invalid(
                "learner.gradient_checkpointing with model.lora.dropout > 0: a recomputed layer would draw new dropout masks, so its gradients would not be the forward's; set lora.dropout = 0".into(),
            ));
        }
        let algorithm = cfg.build_algorithm();
        let reference = if algorithm.needs_reference() && policy.has_adapters() {
            Some(Reference {
                copy: None,
                cache: (cfg.algorithm == AlgorithmKind::Dpo).then(HashMap::new),
            })
        } else if algorithm.needs_reference() {
            let (mut rvs, model) =
                replica(&vs, |root| Llama::new(root, policy.config()), |_| false)?;
            rvs.freeze();
            let cache = (cfg.algorithm == AlgorithmKind::Dpo).then(HashMap::new);
            Some(Reference {
                copy: Some((rvs, model)),
                cache,
            })
        } else {
            None
        };
        let critic = if algorithm.needs_critic() {
            Some(Critic::from_policy(&vs, &policy)?)
        } else {
            None
        };
        let optimizer = build_optimizer(&vs, critic.as_ref(), cfg.precision, cfg.optim.optim)?;
        Ok(Self {
            cfg,
            algorithm,
            vs,
            policy,
            reference,
            critic,
            optimizer,
            dist: None,
        })
    }

    /// Makes this learner one rank of a data-parallel job (`learner::data_parallel`): rank
    /// 0's weights (policy, reference, critic) are copied to every rank now, and from then
    /// on each optimizer step normalises the loss by the whole job's batch and sums the
    /// gradients across ranks before the same AdamW step on every rank. Every rank must call
    /// [`train`](Self::train) as often, each with its share of the batch in whole groups (or
    /// DPO pairs), possibly empty; algorithms that normalise over the whole batch (PPO's
    /// advantage whitening, GRPO's `scale_rewards = "batch"`) would see only the rank's share.
    pub fn join(&mut self, group: ProcessGroup) -> Result<()> {
        let mut stores = vec![&self.vs];
        if let Some((rvs, _)) = self.reference.as_ref().and_then(|r| r.copy.as_ref()) {
            stores.push(rvs);
        }
        if let Some(critic) = &self.critic {
            stores.push(&critic.vs);
        }
        data_parallel::broadcast_weights(&group, &stores)?;
        self.optimizer.reset_masters();
        data_parallel::allocate_gradients(self.optimizer.parameters());
        self.dist = Some(group);
        Ok(())
    }

    /// The data-parallel job this learner is a rank of, if any.
    pub fn process_group(&self) -> Option<&ProcessGroup> {
        self.dist.as_ref()
    }

    /// The policy being trained.
    pub fn policy(&self) -> &Llama {
        &self.policy
    }

    /// The policy's variables (to save or to copy into rollout workers).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The configuration.
    pub fn config(&self) -> &LearnerConfig {
        &self.cfg
    }

    /// Optimizer steps taken so far.
    pub fn steps(&self) -> usize {
        self.optimizer.steps()
    }

    /// The optimizer: its master weights (mixed precision) are what training continues from.
    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Saves the optimizer state (moments, master weights, step) for resuming; the weights are
    /// saved with the model (`pretrained::save_model_dir`), the critic's with
    /// [`critic_var_store`].
    ///
    /// [`critic_var_store`]: Self::critic_var_store
    pub fn save_optimizer(&self, path: &std::path::Path) -> Result<()> {
        self.optimizer.save(path)
    }

    /// Restores the optimizer state written by [`save_optimizer`](Self::save_optimizer).
    pub fn load_optimizer(&mut self, path: &std::path::Path) -> Result<()> {
        self.optimizer.load(path)
    }

    /// The critic's variables (PPO), to checkpoint them.
    pub fn critic_var_store(&self) -> Option<&VarStore> {
        self.critic.as_ref().map(|c| &c.vs)
    }

    /// Per-token log-probabilities of each sample's completion under the current policy.
    pub fn logprobs(&self, samples: &[Sample]) -> Result<Vec<Vec<f32>>> {
        validate_batch(samples)?;
        let refs: Vec<&Sample> = samples.iter().collect();
        self.logprobs_with(&self.policy, &refs)
    }

    fn logprobs_with(&self, model: &Llama, samples: &[&Sample]) -> Result<Vec<Vec<f32>>> {
        let opts = ScoreOptions {
            checkpoint_layers: false, // no backward here
            ..self.cfg.score_options()
        };
        self.per_token(samples, model.device(), |rows| {
            token_logprobs(model, rows, opts).logp
        })
    }

    /// Critic values per completion token of `samples` (PPO only; each sample is checked with
    /// [`validate`](super::batch::validate)).
    pub fn values(&self, samples: &[&Sample]) -> Result<Vec<Vec<f32>>> {
        samples.iter().try_for_each(|s| validate(s))?;
        self.critic_values(samples)
    }

    fn critic_values(&self, samples: &[&Sample]) -> Result<Vec<Vec<f32>>> {
        let critic = self
            .critic
            .as_ref()
            .ok_or_else(|| Error::Invalid("learner: no critic".into()))?;
        self.per_token(samples, critic.vs.device(), |rows| critic.values(rows))
    }

    /// `f`'s per-token values of each sample's completion tokens, without gradients, in
    /// micro-batches of the configured budget.
    fn per_token(
        &self,
        samples: &[&Sample],
        device: Device,
        f: impl Fn(&Rows) -> Tensor,
    ) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(samples.len());
        for r in prompt_micro_batches(samples, 1, self.cfg.max_tokens_per_micro_batch) {
            crate::runtime::adapt_threads();
            let rows = collate(&samples[r.clone()], device)?;
            let t = rows.mask.size()[1] as usize;
            let values = tch::no_grad(|| f(&rows))
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
                .view([-1]);
            let flat = Vec::<f32>::try_from(&values)?;
            for (i, s) in samples[r].iter().enumerate() {
                out.push(flat[i * t..i * t + s.completion_ids.len()].to_vec());
            }
        }
        Ok(out)
    }

    /// Reference logprobs of `samples` (cached when the reference keeps a cache).
    fn reference_logprobs(&mut self, samples: &[&Sample]) -> Result<Vec<Vec<f32>>> {
        let reference = self
            .reference
            .as_ref()
            .ok_or_else(|| Error::Invalid("learner: no reference model".into()))?;
        let run = |samples: &[&Sample]| match &reference.copy {
            Some((_, model)) => self.logprobs_with(model, samples),
            None => {
                self.policy.set_adapters_enabled(false);
                let out = self.logprobs_with(&self.policy, samples);
                self.policy.set_adapters_enabled(true);
                out
            }
        };
        let Some(cache) = &reference.cache else {
            return run(samples);
        };
        let missing: Vec<&Sample> = samples
            .iter()
            .copied()
            .filter(|s| !cache.contains_key(&sample_key(s)))
            .collect();
        let fresh = run(&missing)?;
        let Some(cache) = self.reference.as_mut().and_then(|r| r.cache.as_mut()) else {
            return Err(Error::Invalid(
                "learner: the reference cache vanished".into(),
            ));
        };
        for (s, lp) in missing.iter().zip(fresh) {
            cache.insert(sample_key(s), lp);
        }
        Ok(samples
            .iter()
            .map(|s| cache[&sample_key(s)].clone())
            .collect())
    }

    /// One learner update on a batch of scored samples; returns the update's metrics
    /// (names in [`metrics`](super::metrics)). [`train`](Self::train) also says what each
    /// sample was trained with.
    pub fn update(&mut self, samples: &[Sample]) -> Result<Metrics> {
        Ok(self.train(samples)?.metrics)
    }

    /// One learner update on a batch of scored samples.
    pub fn train(&mut self, samples: &[Sample]) -> Result<Update> {
        validate_batch(samples)?;
        let mut stats = Stats::default();
        let rows = self.training_rows(samples, &mut stats)?;
        let mut advantages = vec![None; samples.len()];
        for row in &rows {
            advantages[row.index] = Some(row.mean_advantage());
        }
        let mut gap = GapMeter::default();
        // A rank with nothing to train still takes every step with the others.
        let steps = match rows.is_empty() && self.dist.is_none() {
            true => 0,
            false => self.optimize(&rows, &mut stats, &mut gap)?,
        };
        stats.set(m::OPTIMIZER_STEPS, steps as f64);
        let tokens: usize = rows.iter().map(|r| r.sample.trained_tokens()).sum();
        stats.set(m::TRAINED_TOKENS, tokens as f64);
        Ok(Update {
            metrics: stats.finish(),
            stats,
            advantages,
            behaviour_gap: gap.finish(),
        })
    }

    /// The loss one optimizer step over the whole of `samples` would take, and its gradient
    /// by trainable parameter name (parameters the loss does not reach are left out), without
    /// changing the weights or the optimizer: what a reference implementation's loss code is
    /// compared against (the algorithm's first pass and first mini-batch when `mini_batches`
    /// is 1).
    pub fn gradients(&mut self, samples: &[Sample]) -> Result<(f64, Vec<(String, Tensor)>)> {
        validate_batch(samples)?;
        let mut stats = Stats::default();
        let rows = self.training_rows(samples, &mut stats)?;
        let max_len = self.max_completion_length(&rows);
        let rows: Vec<&TrainingRow> = rows.iter().collect();
        let (loss, _) = self.accumulate(&rows, max_len, &mut stats, None)?;
        let grads = self
            .optimizer
            .names()
            .zip(self.optimizer.parameters())
            .map(|(name, p)| (name, p.grad()))
            .filter(|(_, grad)| grad.defined())
            .map(|(name, grad)| (name.to_string(), grad.detach().copy()))
            .collect();
        self.optimizer.zero_grad();
        Ok((loss, grads))
    }

    /// The completion length Dr. GRPO divides by: the algorithm's setting, else the longest
    /// completion of `rows` (this rank's).
    fn max_completion_length(&self, rows: &[TrainingRow]) -> usize {
        self.algorithm.max_completion_length().unwrap_or_else(|| {
            rows.iter()
                .map(|r| r.sample.completion_ids.len())
                .max()
                .unwrap_or(1)
        })
    }

    /// `passes` x `mini_batches` optimizer steps over `rows`; returns how many were taken.
    /// The first step, before any weight changes, also measures `gap`.
    fn optimize(
        &mut self,
        rows: &[TrainingRow],
        stats: &mut Stats,
        gap: &mut GapMeter,
    ) -> Result<usize> {
        let unit = self.algorithm.unit();
        let mut max_len = self.max_completion_length(rows);
        let minis = match &self.dist {
            Some(group) => {
                if self.algorithm.max_completion_length().is_none() {
                    max_len = data_parallel::max(group, max_len)?;
                }
                // As many steps on every rank, whatever its share (empty mini-batches too).
                split_exact(rows.len(), unit, self.cfg.mini_batches.max(1))
            }
            None => split_even(rows.len(), unit, self.cfg.mini_batches.max(1)),
        };
        let mut steps = 0;
        for pass in 0..self.algorithm.passes() {
            // Optionally reshuffle (whole units) so mini-batches differ between passes.
            let order: Vec<&TrainingRow> = match self.cfg.shuffle {
                true => {
                    let seed = self.cfg.seed ^ ((self.steps() as u64) << 20) ^ pass as u64;
                    unit_permutation(rows.len(), unit, seed)
                        .into_iter()
                        .map(|i| &rows[i])
                        .collect()
                }
                false => rows.iter().collect(),
            };
            for mini in &minis {
                let measure = (steps == 0).then_some(&mut *gap);
                self.optimizer_step(&order[mini.clone()], max_len, stats, measure)?;
                steps += 1;
            }
        }
        Ok(steps)
    }

    /// The algorithm's choice of samples, each carrying everything its loss needs.
    fn training_rows<'s>(
        &mut self,
        samples: &'s [Sample],
        stats: &mut Stats,
    ) -> Result<Vec<TrainingRow<'s>>> {
        let all: Vec<&Sample> = samples.iter().collect();
        let needed = !samples.is_empty();
        let mut references = match self.algorithm.needs_reference() && needed {
            true => Some(self.reference_logprobs(&all)?),
            false => None,
        };
        let values = match (self.critic.is_some(), needed) {
            (true, true) => Some(self.critic_values(&all)?),
            // An empty share (a data-parallel rank's) has no values to compute.
            (true, false) => Some(Vec::new()),
            (false, _) => None,
        };
        let ctx = BatchContext {
            reference: references.as_deref(),
            values: values.as_deref(),
            ranks: self.dist.as_ref(),
        };
        reward_stats(samples, stats);
        let prepared = self.algorithm.prepare(samples, &ctx, stats)?;
        let mut seen = vec![false; samples.len()];
        let mut rows = Vec::with_capacity(prepared.rows.len());
        for p in prepared.rows {
            if std::mem::replace(&mut seen[p.index], true) {
                return Err(Error::Invalid(format!(
                    "learner: {} chose sample {} twice",
                    self.algorithm.name(),
                    p.index
                )));
            }
            rows.push(TrainingRow {
                index: p.index,
                sample: &samples[p.index],
                reference: references.as_mut().map(|r| std::mem::take(&mut r[p.index])),
                advantages: p.advantages,
                critic: p.critic,
            });
        }
        Ok(rows)
    }

    /// The gradient of one optimizer step's loss over `rows`, accumulated micro-batch by
    /// micro-batch into `.grad` (summed over the ranks of a job); returns the loss and its
    /// policy-gradient part.
    fn accumulate(
        &mut self,
        rows: &[&TrainingRow],
        max_completion_length: usize,
        stats: &mut Stats,
        mut gap: Option<&mut GapMeter>,
    ) -> Result<(f64, f64)> {
        let mut rows = rows.to_vec();
        if self.cfg.max_tokens_per_micro_batch.is_some() && self.algorithm.unit() == 1 {
            sort_within_groups(&mut rows, |r| r.sample);
        }
        let samples: Vec<&Sample> = rows.iter().map(|r| r.sample).collect();
        let micros = prompt_micro_batches(
            &samples,
            self.algorithm.unit(),
            self.cfg.max_tokens_per_micro_batch,
        );
        let mut scale = StepScale {
            sequences: samples.len(),
            tokens: samples.iter().map(|s| s.trained_tokens()).sum(),
            micro_batches: micros.len(),
            max_completion_length,
        };
        if let Some(group) = &self.dist {
            scale = data_parallel::global_scale(group, scale)?;
        }
        self.optimizer.zero_grad();
        let (mut loss_sum, mut pg_sum) = (0.0, 0.0);
        for r in micros {
            crate::runtime::adapt_threads();
            let micro = (&rows[r.clone()], &samples[r]);
            let (loss, pg) = self.micro_step(micro, scale, stats, gap.as_deref_mut())?;
            loss_sum += loss;
            pg_sum += pg;
        }
        if let Some(group) = &self.dist {
            group.all_reduce_buckets(&self.optimizer.gradients(), false)?;
            let sums = data_parallel::sum(group, &[loss_sum, pg_sum])?;
            (loss_sum, pg_sum) = (sums[0], sums[1]);
        }
        Ok((loss_sum, pg_sum))
    }

    fn optimizer_step(
        &mut self,
        rows: &[&TrainingRow],
        max_completion_length: usize,
        stats: &mut Stats,
        gap: Option<&mut GapMeter>,
    ) -> Result<()> {
        let (loss_sum, pg_sum) = self.accumulate(rows, max_completion_length, stats, gap)?;
        let grad_norm = self.optimizer.clip_grad_norm(self.cfg.optim.max_grad_norm);
        if !(grad_norm.is_finite() && loss_sum.is_finite()) {
            // A NaN/inf would poison the weights and Adam's moments: drop this step.
            self.optimizer.zero_grad();
            stats.sum(m::SKIPPED_STEPS, 1.0);
            return Ok(());
        }
        stats.sum(m::SKIPPED_STEPS, 0.0);
        let lr = self.cfg.optim.lr_at(self.optimizer.steps());
        self.optimizer.step(lr, &self.cfg.optim);
        stats.mean(m::LOSS, loss_sum, 1.0);
        stats.mean(m::POLICY_LOSS, pg_sum, 1.0);
        stats.mean(m::GRAD_NORM, grad_norm, 1.0);
        stats.set(m::LEARNING_RATE, lr);
        Ok(())
    }

    /// One micro-batch's loss, back-propagated; its total and policy-gradient parts. With
    /// `gap`, the policy's logprobs are also compared with the behaviour logprobs.
    fn micro_step(
        &mut self,
        (rows, samples): (&[&TrainingRow], &[&Sample]),
        scale: StepScale,
        stats: &mut Stats,
        gap: Option<&mut GapMeter>,
    ) -> Result<(f64, f64)> {
        let device = self.policy.device();
        let batch: Rows = collate(samples, device)?;
        let t = batch.mask.size()[1];
        let pad = |field: for<'r> fn(&'r TrainingRow<'_>) -> Option<&'r [f32]>| {
            let per_row: Option<Vec<&[f32]>> = rows.iter().map(|r| field(r)).collect();
            per_row.map(|v| pad_rows(&v, t, device))
        };
        let advantages = pad_rows(
            &rows
                .iter()
                .map(|r| r.advantages.as_slice())
                .collect::<Vec<_>>(),
            t,
            device,
        );
        let ref_logp = pad(|r| r.reference.as_deref());
        let old_values = pad(|r| r.critic.as_ref().map(|c| c.old_values.as_slice()));
        let returns = pad(|r| r.critic.as_ref().map(|c| c.returns.as_slice()));
        let (values, critic_stack) = match &self.critic {
            Some(c) if self.cfg.gradient_checkpointing => {
                let (values, stack) = c.checkpointed_values(&batch);
                (Some(values), Some(stack))
            }
            Some(c) => (Some(c.values(&batch)), None),
            None => (None, None),
        };
        let critic = match (&values, &old_values, &returns) {
            (Some(values), Some(old_values), Some(returns)) => Some(CriticInput {
                values,
                old_values,
                returns,
            }),
            _ => None,
        };
        self.policy.set_training(true);
        let tl = token_logprobs(&self.policy, &batch, self.cfg.score_options());
        self.policy.set_training(false);
        if let Some(gap) = gap {
            let behaviour = batch.engine_logp.as_ref().unwrap_or(&batch.old_logp);
            gap.add_masked(&tl.logp, behaviour, &batch.mask);
        }
        let correction = &self.cfg.rollout_correction;
        let rollout_weight = batch
            .engine_logp
            .as_ref()
            .and_then(|mu| correction.weights(&batch.old_logp, mu, &batch.mask, stats));
        let out = self.algorithm.loss(&LossInput {
            logp: &tl.logp,
            old_logp: &batch.old_logp,
            rollout_weight: rollout_weight.as_ref(),
            mask: &batch.mask,
            advantages: &advantages,
            scale,
            ref_logp: ref_logp.as_ref(),
            critic,
        })?;
        if !out.loss.requires_grad() {
            return Err(Error::Invalid(
                "learner: the loss does not depend on any trainable parameter".into(),
            ));
        }
        out.loss.backward();
        stats.merge(&out.stats);
        let tokens = mask_count(&batch.mask);
        stats.mean(m::ENTROPY, masked_sum(&tl.entropy, &batch.mask), tokens);
        tl.finish_backward(&self.policy, &batch);
        if let (Some(critic), Some(stack)) = (&self.critic, critic_stack) {
            critic.finish_backward(stack);
        }
        Ok((out.loss.double_value(&[]), out.policy_loss))
    }
}

/// AdamW over every trainable variable of the policy and the critic (`critic.` names),
/// with f32 master weights when `precision` resolves to mixed for their dtype and the moments
/// stored as `optim` says.
fn build_optimizer(
    vs: &VarStore,
    critic: Option<&Critic>,
    precision: Precision,
    optim: Optimizer,
) -> Result<AdamW> {
    let mut params: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    if let Some(c) = critic {
        params.extend(
            c.vs.variables()
                .into_iter()
                .filter(|(_, t)| t.requires_grad())
                .map(|(n, t)| (format!("critic.{n}"), t)),
        );
    }
    // The trainable parameters share the model's dtype (LoRA adapters and the critic are made
    // in it too); an empty set is f32 for the check's sake.
    let kind = params.first().map_or(Kind::Float, |(_, t)| t.kind());
    Ok(AdamW::build(params, precision.master_weights(kind)?, optim))
}

/// What one update did.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The update's metrics (names in [`metrics`](super::metrics)).
    pub metrics: Metrics,
    /// What they were computed from (sums and weights), to combine a data-parallel job's.
    pub stats: Stats,
    /// Per input sample: the mean advantage over its trained tokens that the algorithm
    /// trained it with, `None` for samples it dropped.
    pub advantages: Vec<Option<f64>>,
    /// How far the learner's logprobs were from the samples' behaviour logprobs before this
    /// update changed the weights: over the trained tokens of its first optimizer step, a free
    /// by-product of that step's forward pass. `None` when nothing was trained.
    pub behaviour_gap: Option<LogprobGap>,
}

/// One sample's training data, carried together so that one permutation moves one thing.
struct TrainingRow<'s> {
    /// Index of the sample in the update's batch.
    index: usize,
    sample: &'s Sample,
    /// One advantage per completion token.
    advantages: Vec<f32>,
    /// Reference logprobs per completion token, when the algorithm needs them.
    reference: Option<Vec<f32>>,
    /// Value targets, for algorithms with a critic.
    critic: Option<CriticTargets>,
}

impl TrainingRow<'_> {
    /// Mean advantage over the trained tokens (0 when none are trained).
    fn mean_advantage(&self) -> f64 {
        let trained = self
            .advantages
            .iter()
            .zip(&self.sample.loss_mask)
            .filter(|(_, &m)| m)
            .map(|(&a, _)| a as f64);
        let (sum, n) = trained.fold((0.0, 0usize), |(s, n), a| (s + a, n + 1));
        sum / n.max(1) as f64
    }
}

/// The batch's reward mean/std and size, for every algorithm (DPO then counts its pairs' samples).
fn reward_stats(samples: &[Sample], stats: &mut Stats) {
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().map(|s| s.reward).sum::<f64>() / n;
    let var = samples
        .iter()
        .map(|s| (s.reward - mean).powi(2))
        .sum::<f64>()
        / n;
    stats.set(m::REWARD_MEAN, mean);
    stats.set(m::REWARD_STD, var.sqrt());
    stats.set(m::SAMPLES, samples.len() as f64);
}

/// A seeded permutation of `0..n` that moves whole units of `unit` consecutive items
/// (splitmix64 + Fisher-Yates; no global RNG involved).
fn unit_permutation(n: usize, unit: usize, seed: u64) -> Vec<usize> {
    let units = n.div_ceil(unit.max(1));
    let mut order: Vec<usize> = (0..units).collect();
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..units).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
        .into_iter()
        .flat_map(|u| (u * unit..((u + 1) * unit).min(n)).collect::<Vec<_>>())
        .collect()
}

/// Splits `n` items (in units of `unit`) into `parts` nearly equal consecutive ranges.
/// `n` items cut into exactly `parts` consecutive ranges of whole units, as even as they go
/// (some empty when there are fewer units than parts).
fn split_exact(n: usize, unit: usize, parts: usize) -> Vec<Range<usize>> {
    let units = n.div_ceil(unit);
    (0..parts)
        .map(|p| (units * p / parts * unit).min(n)..(units * (p + 1) / parts * unit).min(n))
        .collect()
}

fn split_even(n: usize, unit: usize, parts: usize) -> Vec<Range<usize>> {
    let units = n.div_ceil(unit);
    let parts = parts.min(units).max(1);
    (0..parts)
        .map(|p| {
            let a = (units * p / parts * unit).min(n);
            let b = (units * (p + 1) / parts * unit).min(n);
            a..b
        })
        .filter(|r| !r.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_permutation_moves_whole_units() {
        let p = unit_permutation(7, 2, 42);
        let mut sorted = p.clone();
        sorted.sort();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
        let mut i = 0;
        while i < p.len() {
            assert_eq!(p[i] % 2, 0, "units start on even items: {p:?}");
            if p[i] + 1 < 7 {
                assert_eq!(p[i + 1], p[i] + 1, "{p:?}");
                i += 2;
            } else {
                i += 1;
            }
        }
        assert_ne!(unit_permutation(40, 1, 1), (0..40).collect::<Vec<_>>());
        assert_eq!(unit_permutation(40, 1, 1), unit_permutation(40, 1, 1));
        assert_eq!(split_even(7, 2, 2), vec![0..4, 4..7]);
    }

    #[test]
    fn tables_of_other_algorithms_are_reported_unread() {
        use AlgorithmKind::*;
        for kind in [Grpo, Topr, Dpo, ExpertIteration, Ppo, Sft] {
            let serde_name = toml::Value::try_from(kind).unwrap();
            assert_eq!(serde_name.as_str(), Some(kind.name()));
        }
        let tables = ["optim", "grpo", "ppo", "rollout_correction"];
        let cfg = |algorithm| LearnerConfig {
            algorithm,
            ..Default::default()
        };
        assert_eq!(cfg(Ppo).unread_tables(tables), vec!["grpo"]);
        assert_eq!(cfg(Grpo).unread_tables(tables), vec!["ppo"]);
        assert_eq!(cfg(Sft).unread_tables(tables), vec!["grpo", "ppo"]);
        assert!(cfg(Grpo).unread_tables(["optim", "grpo"]).is_empty());
    }
}
