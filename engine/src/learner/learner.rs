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

use super::algorithm::{mask_count, masked_sum, Algorithm, BatchContext, LossInput, StepScale};
use super::batch::{collate, prompt_micro_batches, token_logprobs, validate, Rows};
use super::dpo::{Dpo, DpoConfig};
use super::expert::{ExpertIteration, ExpertIterationConfig};
use super::grpo::{Grpo, GrpoConfig};
use super::metrics::{self as m, Metrics, Stats};
use super::optim::{AdamW, OptimConfig};
use super::ppo::{Critic, Ppo, PpoConfig};
use super::topr::{Topr, ToprConfig};
use crate::error::{Error, Result};
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
}

impl LearnerConfig {
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
    /// `vs` are optimised; when the algorithm needs a reference, a frozen copy of the current
    /// weights is made now.
    pub fn new(vs: VarStore, policy: Llama, cfg: LearnerConfig) -> Result<Self> {
        let algorithm = cfg.build_algorithm();
        let reference = if algorithm.needs_reference() && policy.has_adapters() {
            Some(Reference {
                copy: None,
                cache: (cfg.algorithm == AlgorithmKind::Dpo).then(HashMap::new),
            })
        } else if algorithm.needs_reference() {
            let mut rvs = VarStore::new(vs.device());
            let model = Llama::new(&rvs.root(), policy.config());
            if let Some(kind) = vs.variables().values().next().map(|t| t.kind()) {
                rvs.set_kind(kind);
            }
            rvs.copy(&vs)?;
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
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        if let Some(c) = &critic {
            params.extend(
                c.vs.variables()
                    .into_iter()
                    .filter(|(_, t)| t.requires_grad())
                    .map(|(n, t)| (format!("critic.{n}"), t)),
            );
        }
        Ok(Self {
            cfg,
            algorithm,
            vs,
            policy,
            reference,
            critic,
            optimizer: AdamW::new(params),
        })
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

    /// Saves the optimizer state (moments, step) for resuming; the weights are saved with
    /// the model (`pretrained::save_model_dir`), the critic's with [`critic_var_store`].
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
        let refs: Vec<&Sample> = samples.iter().collect();
        self.logprobs_with(&self.policy, &refs)
    }

    fn logprobs_with(&self, model: &Llama, samples: &[&Sample]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(samples.len());
        for r in prompt_micro_batches(samples, 1, self.cfg.max_tokens_per_micro_batch) {
            let rows = collate(&samples[r.clone()], model.device())?;
            let logp = tch::no_grad(|| token_logprobs(model, &rows).logp)
                .to_device(Device::Cpu)
                .to_kind(Kind::Float);
            for (i, s) in samples[r].iter().enumerate() {
                let row = Vec::<f32>::try_from(logp.get(i as i64))?;
                out.push(row[..s.completion_ids.len()].to_vec());
            }
        }
        Ok(out)
    }

    /// Critic values per completion token of `samples` (PPO only).
    pub fn values(&self, samples: &[&Sample]) -> Result<Vec<Vec<f32>>> {
        let critic = self
            .critic
            .as_ref()
            .ok_or_else(|| Error::Invalid("learner: no critic".into()))?;
        let mut out = Vec::with_capacity(samples.len());
        for r in prompt_micro_batches(samples, 1, self.cfg.max_tokens_per_micro_batch) {
            let rows = collate(&samples[r.clone()], critic.vs.device())?;
            let v = tch::no_grad(|| critic.values(&rows)).to_device(Device::Cpu);
            for (i, s) in samples[r].iter().enumerate() {
                let row = Vec::<f32>::try_from(v.get(i as i64))?;
                out.push(row[..s.completion_ids.len()].to_vec());
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
        let cache = self
            .reference
            .as_mut()
            .and_then(|r| r.cache.as_mut())
            .expect("checked above");
        for (s, lp) in missing.iter().zip(fresh) {
            cache.insert(sample_key(s), lp);
        }
        Ok(samples
            .iter()
            .map(|s| cache[&sample_key(s)].clone())
            .collect())
    }

    /// One learner update on a batch of scored samples; returns the update's metrics
    /// (names in [`metrics`](super::metrics)).
    pub fn update(&mut self, samples: &[Sample]) -> Result<Metrics> {
        let mut stats = Stats::default();
        for s in samples {
            validate(s)?;
        }
        let all: Vec<&Sample> = samples.iter().collect();
        let all_refs = if self.algorithm.needs_reference() && !samples.is_empty() {
            Some(self.reference_logprobs(&all)?)
        } else {
            None
        };
        let all_values = if self.critic.is_some() && !samples.is_empty() {
            Some(self.values(&all)?)
        } else {
            None
        };
        let ctx = BatchContext {
            reference: all_refs.as_deref(),
            values: all_values.as_deref(),
        };
        let prepared = self.algorithm.prepare(samples, &ctx, &mut stats)?;
        let chosen: Vec<&Sample> = prepared.order.iter().map(|&i| &samples[i]).collect();
        if chosen.is_empty() {
            stats.set(m::OPTIMIZER_STEPS, 0.0);
            stats.set(m::TRAINED_TOKENS, 0.0);
            return Ok(stats.finish());
        }
        let refs: Option<Vec<Vec<f32>>> =
            all_refs.map(|r| prepared.order.iter().map(|&i| r[i].clone()).collect());
        let targets = match (&prepared.returns, &prepared.old_values) {
            (Some(r), Some(v)) => Some((r.as_slice(), v.as_slice())),
            _ => None,
        };
        let unit = self.algorithm.unit();
        let max_len = self.algorithm.max_completion_length().unwrap_or_else(|| {
            chosen
                .iter()
                .map(|s| s.completion_ids.len())
                .max()
                .unwrap_or(1)
        });
        let minis = split_even(chosen.len(), unit, self.cfg.mini_batches.max(1));
        let mut steps = 0;
        for pass in 0..self.algorithm.passes() {
            // Optionally reshuffle (whole units) so mini-batches differ between passes.
            let perm = if self.cfg.shuffle {
                let seed = self.cfg.seed ^ ((self.steps() as u64) << 20) ^ pass as u64;
                unit_permutation(chosen.len(), unit, seed)
            } else {
                (0..chosen.len()).collect()
            };
            let pick =
                |v: &[Vec<f32>]| -> Vec<Vec<f32>> { perm.iter().map(|&i| v[i].clone()).collect() };
            let samples_p: Vec<&Sample> = perm.iter().map(|&i| chosen[i]).collect();
            let adv_p = pick(&prepared.advantages);
            let refs_p = refs.as_deref().map(pick);
            let targets_p = targets.map(|(r, v)| (pick(r), pick(v)));
            for mini in &minis {
                let part = Part {
                    samples: &samples_p[mini.clone()],
                    advantages: &adv_p[mini.clone()],
                    refs: refs_p.as_ref().map(|r| &r[mini.clone()]),
                    targets: targets_p
                        .as_ref()
                        .map(|(r, v)| (&r[mini.clone()], &v[mini.clone()])),
                };
                self.optimizer_step(&part, max_len, &mut stats)?;
                steps += 1;
            }
        }
        stats.set(m::OPTIMIZER_STEPS, steps as f64);
        let tokens: usize = chosen.iter().map(|s| s.trained_tokens()).sum();
        stats.set(m::TRAINED_TOKENS, tokens as f64);
        Ok(stats.finish())
    }

    fn optimizer_step(
        &mut self,
        part: &Part,
        max_completion_length: usize,
        stats: &mut Stats,
    ) -> Result<()> {
        let samples = part.samples;
        let micros = prompt_micro_batches(
            samples,
            self.algorithm.unit(),
            self.cfg.max_tokens_per_micro_batch,
        );
        let scale = StepScale {
            sequences: samples.len(),
            tokens: samples.iter().map(|s| s.trained_tokens()).sum(),
            micro_batches: micros.len(),
            max_completion_length,
        };
        self.optimizer.zero_grad();
        let (mut loss_sum, mut pg_sum) = (0.0, 0.0);
        for r in micros {
            let (loss, pg) = self.micro_step(part, r, scale, stats)?;
            loss_sum += loss;
            pg_sum += pg;
        }
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

    fn micro_step(
        &mut self,
        part: &Part,
        r: Range<usize>,
        scale: StepScale,
        stats: &mut Stats,
    ) -> Result<(f64, f64)> {
        let device = self.policy.device();
        let rows: Rows = collate(&part.samples[r.clone()], device)?;
        let t = rows.mask.size()[1];
        let pad = |v: &[Vec<f32>]| {
            let rr: Vec<&[f32]> = v[r.clone()].iter().map(|a| a.as_slice()).collect();
            pad_rows(&rr, t, device)
        };
        let adv = pad(part.advantages);
        let ref_logp = part.refs.map(pad);
        let returns = part.targets.map(|(ret, _)| pad(ret));
        let old_values = part.targets.map(|(_, v)| pad(v));
        let values = self.critic.as_ref().map(|c| c.values(&rows));
        self.policy.set_training(true);
        let tl = token_logprobs(&self.policy, &rows);
        self.policy.set_training(false);
        let out = self.algorithm.loss(&LossInput {
            logp: &tl.logp,
            old_logp: &rows.old_logp,
            ref_logp: ref_logp.as_ref(),
            mask: &rows.mask,
            advantages: &adv,
            values: values.as_ref(),
            old_values: old_values.as_ref(),
            returns: returns.as_ref(),
            scale,
        });
        if !out.loss.requires_grad() {
            return Err(Error::Invalid(
                "learner: the loss does not depend on any trainable parameter".into(),
            ));
        }
        out.loss.backward();
        stats.merge(&out.stats);
        let tokens = mask_count(&rows.mask);
        stats.mean(m::ENTROPY, masked_sum(&tl.entropy, &rows.mask), tokens);
        Ok((out.loss.double_value(&[]), out.policy_loss))
    }
}

/// Per-sample (returns, old values).
type Targets<'a> = (&'a [Vec<f32>], &'a [Vec<f32>]);

/// The slice of a prepared batch one optimizer step trains on.
struct Part<'a> {
    samples: &'a [&'a Sample],
    advantages: &'a [Vec<f32>],
    refs: Option<&'a [Vec<f32>]>,
    /// (returns, old values) for algorithms with a critic.
    targets: Option<Targets<'a>>,
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
}
