//! PPO with a learned critic for LLMs (Schulman et al. 2017; Ouyang et al. 2022; the
//! setting of ReFT and the Echo Chamber study). Follows TRL `trl/experimental/ppo/
//! ppo_trainer.py` and verl `core_algos.py`, as summarised in `docs/formulas.md` ("PPO"):
//!
//! - per-token reward `r_t = -kl_coef * kl_t` on trained tokens (`kl_t = mu_t - ref_t` for
//!   k1, `exp(ref - mu) - 1 - (ref - mu)` for k3), plus the sequence score on the last
//!   completion token (a multi-turn episode's: each turn's reward on its last token);
//! - GAE(gamma, lam) per sequence over its trained tokens (an episode's environment tokens
//!   are skipped, as verl's multi-turn GAE), returns = A + V, advantages whitened over the
//!   batch's trained tokens;
//! - loss = masked mean of `max(-A r, -A clip(r, 1 - c, 1 + c))`
//!   + `vf_coef * 0.5 * masked mean of max((V - R)^2, (clip(V, V_old +- cv) - R)^2)`.
//!
//! The masked means are over the optimizer step's trained tokens (exact under gradient
//! accumulation; TRL averages per micro-batch). The critic is a value head (`score`, one
//! scalar per token) on its own policy-shaped trunk, initialised from the policy.

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::advantages::{masked, whiten_with};
use super::algorithm::{
    aggregate, mask_count, masked_sum, Algorithm, BatchContext, CriticTargets, LossInput,
    LossOutput, LossType, Prepared, PreparedRow,
};
use super::batch::{predicting_hidden, Rows};
use super::metrics::{self as m, Stats};
use super::recompute::CheckpointedStack;
use crate::error::{Error, Result};
use crate::model::replica::replica;
use crate::model::Llama;
use crate::sample::Sample;

/// KL estimator in the per-token reward (TRL `kl_estimator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `log mu - log ref`.
    #[default]
    K1,
    /// `exp(ref - mu) - 1 - (ref - mu)` (unbiased, non-negative).
    K3,
}

/// PPO options (TRL `PPOConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Weight of the per-token KL penalty in the reward.
    pub kl_coef: f64,
    /// KL estimator.
    pub kl_estimator: KlEstimator,
    /// Discount.
    pub gamma: f64,
    /// GAE lambda.
    pub lam: f64,
    /// Policy ratio clip range.
    pub cliprange: f64,
    /// Value clip range around the rollout-time values.
    pub cliprange_value: f64,
    /// Weight of the value loss.
    pub vf_coef: f64,
    /// Passes over each batch (PPO epochs).
    pub num_ppo_epochs: usize,
    /// Whiten advantages over the batch.
    pub whiten_advantages: bool,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K1,
            gamma: 1.0,
            lam: 0.95,
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            num_ppo_epochs: 4,
            whiten_advantages: true,
        }
    }
}

/// The PPO algorithm.
#[derive(Debug, Clone)]
pub struct Ppo {
    /// Its options.
    pub cfg: PpoConfig,
}

/// Advantages and returns per sample (one value per completion token).
#[derive(Debug, Clone, PartialEq)]
pub struct PpoTargets {
    /// Whitened (if configured) GAE advantages.
    pub advantages: Vec<Vec<f32>>,
    /// `A + V` before whitening.
    pub returns: Vec<Vec<f32>>,
    /// Mean per-token KL (the chosen estimator) over trained tokens.
    pub kl: f64,
}

/// KL-shaped rewards, GAE and whitening for a batch.
pub fn ppo_targets(
    cfg: &PpoConfig,
    samples: &[Sample],
    reference: &[Vec<f32>],
    values: &[Vec<f32>],
) -> PpoTargets {
    ppo_targets_in(cfg, samples, reference, values, &BatchContext::default())
        .expect("one process computes its statistics alone")
}

/// [`ppo_targets`], whitening with the mean and std of `ctx`'s whole batch (every rank's
/// advantages in a data-parallel job).
pub fn ppo_targets_in(
    cfg: &PpoConfig,
    samples: &[Sample],
    reference: &[Vec<f32>],
    values: &[Vec<f32>],
    ctx: &BatchContext,
) -> Result<PpoTargets> {
    let (mut adv_all, mut ret_all, mut mask_all) = (Vec::new(), Vec::new(), Vec::new());
    let mut shapes = Vec::new();
    let (mut kl_sum, mut kl_n) = (0.0, 0.0);
    for ((s, rf), v) in samples.iter().zip(reference).zip(values) {
        let n = s.completion_ids.len();
        let mut r = vec![0.0; n];
        for t in 0..n {
            if s.loss_mask[t] {
                let d = rf[t] as f64 - s.behaviour_logprobs[t] as f64; // ref - mu
                let kl = match cfg.kl_estimator {
                    KlEstimator::K1 => -d,
                    KlEstimator::K3 => d.exp() - 1.0 - d,
                };
                kl_sum += kl;
                kl_n += 1.0;
                r[t] = -cfg.kl_coef * kl;
            }
        }
        // The sequence's reward on its last trained token (its last token, but for an
        // episode cut inside an environment turn); an episode's on each turn's last token.
        match s.loss_mask.iter().rposition(|&m| m) {
            Some(last) if s.turn_rewards.is_empty() => r[last] += s.reward,
            _ => s
                .turn_rewards
                .iter()
                .for_each(|&(t, reward)| r[t] += reward),
        }
        let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        let (a, ret) = gae_over(&r, &v, &s.loss_mask, cfg.gamma, cfg.lam);
        adv_all.extend(a);
        ret_all.extend(ret);
        mask_all.extend(s.loss_mask.iter().copied());
        shapes.push(n);
    }
    if cfg.whiten_advantages {
        // Every rank takes part, even one without trained tokens.
        let (m, std) = ctx.mean_std(&masked(&adv_all, &mask_all))?;
        whiten_with(&mut adv_all, &mask_all, m, std);
    }
    let split = |flat: &[f64]| {
        let mut out = Vec::new();
        let mut at = 0;
        for &n in &shapes {
            out.push(flat[at..at + n].iter().map(|&x| x as f32).collect());
            at += n;
        }
        out
    };
    Ok(PpoTargets {
        advantages: split(&adv_all),
        returns: split(&ret_all),
        kl: if kl_n > 0.0 { kl_sum / kl_n } else { 0.0 },
    })
}

/// GAE over the trained tokens alone, as verl's `compute_gae_advantage_return` ("skip values
/// and TD-error on observation tokens"): an episode's environment tokens are not the
/// policy's actions, so each model token's next value is the next model token's, across any
/// environment turn between them; an environment token carries the advantage of the model
/// token after it (it is not trained). With every token trained this is plain GAE.
fn gae_over(
    rewards: &[f64],
    values: &[f64],
    mask: &[bool],
    gamma: f64,
    lam: f64,
) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let (mut adv, mut next_value, mut last) = (vec![0.0; n], 0.0, 0.0);
    for t in (0..n).rev() {
        if mask[t] {
            last = rewards[t] + gamma * next_value - values[t] + gamma * lam * last;
            next_value = values[t];
        }
        adv[t] = last;
    }
    let returns = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, returns)
}

impl Algorithm for Ppo {
    fn name(&self) -> &'static str {
        "ppo"
    }

    fn needs_reference(&self) -> bool {
        self.cfg.kl_coef != 0.0
    }

    fn needs_critic(&self) -> bool {
        true
    }

    fn passes(&self) -> usize {
        self.cfg.num_ppo_epochs.max(1)
    }

    fn prepare(
        &self,
        samples: &[Sample],
        ctx: &BatchContext,
        stats: &mut Stats,
    ) -> Result<Prepared> {
        let values = ctx
            .values
            .ok_or_else(|| Error::Invalid("ppo: no critic values".into()))?;
        let zeros: Vec<Vec<f32>>;
        let reference = match ctx.reference {
            Some(r) => r,
            None => {
                // kl_coef = 0: the reference is not needed; a zero KL term.
                zeros = samples
                    .iter()
                    .map(|s| s.behaviour_logprobs.clone())
                    .collect();
                &zeros
            }
        };
        let t = ppo_targets_in(&self.cfg, samples, reference, values, ctx)?;
        stats.set(m::KL, t.kl);
        let rows = t
            .advantages
            .into_iter()
            .zip(t.returns)
            .zip(values)
            .enumerate()
            .map(|(index, ((advantages, returns), old_values))| PreparedRow {
                index,
                advantages,
                critic: Some(CriticTargets {
                    old_values: old_values.clone(),
                    returns,
                }),
            })
            .collect();
        Ok(Prepared { rows })
    }

    fn loss(&self, input: &LossInput) -> Result<LossOutput> {
        ppo_loss(&self.cfg, input)
    }
}

/// The PPO policy + value loss of one micro-batch.
///
/// # Shapes
/// inputs `[B, T]` (`critic` required); the loss is a scalar.
pub fn ppo_loss(cfg: &PpoConfig, x: &LossInput) -> Result<LossOutput> {
    let mask = x.mask;
    let a = x.advantages;
    let ratio = (x.logp - x.old_logp).exp();
    let clipped = ratio.clamp(1.0 - cfg.cliprange, 1.0 + cfg.cliprange);
    let pg_per_token = x.corrected((-a * &ratio).maximum(&(-a * clipped)));
    let pg = aggregate(&pg_per_token, mask, LossType::Dapo, &x.scale);
    let critic = x.critic("ppo")?;
    let (v, v_old, ret) = (critic.values, critic.old_values, critic.returns);
    let v_clipped = v.clamp_tensor(
        Some(&(v_old - cfg.cliprange_value)),
        Some(&(v_old + cfg.cliprange_value)),
    );
    let vf1 = (v - ret).pow_tensor_scalar(2);
    let vf2 = (&v_clipped - ret).pow_tensor_scalar(2);
    let vf = aggregate(&vf1.maximum(&vf2), mask, LossType::Dapo, &x.scale) * 0.5;
    let loss = &pg + &vf * cfg.vf_coef;
    let mut stats = Stats::default();
    let tokens = mask_count(mask);
    tch::no_grad(|| {
        let r = ratio.detach();
        let out = r
            .lt(1.0 - cfg.cliprange)
            .logical_and(&a.lt(0.0))
            .to_kind(r.kind());
        let high = r
            .gt(1.0 + cfg.cliprange)
            .logical_and(&a.gt(0.0))
            .to_kind(r.kind());
        stats.mean(m::CLIP_FRACTION_LOW, masked_sum(&out, mask), tokens);
        stats.mean(m::CLIP_FRACTION_HIGH, masked_sum(&high, mask), tokens);
        stats.mean(m::CLIP_FRACTION, masked_sum(&(out + high), mask), tokens);
        let vclip = vf2.gt_tensor(&vf1).to_kind(r.kind());
        stats.mean(m::VALUE_CLIP_FRACTION, masked_sum(&vclip, mask), tokens);
        stats.mean(m::RATIO_MEAN, masked_sum(&r, mask), tokens);
        stats.mean(m::ADVANTAGE_MEAN, masked_sum(a, mask), tokens);
        // Weight 1/micro-batches: a step's shares add up to one mean entry per step.
        let share = 1.0 / x.scale.micro_batches.max(1) as f64;
        stats.mean(m::VALUE_LOSS, vf.double_value(&[]), share);
    });
    Ok(LossOutput {
        policy_loss: pg.double_value(&[]),
        loss,
        stats,
    })
}

/// A critic: a policy-shaped trunk with a scalar value head `score` (`[1, hidden]`, zeros at
/// start, so first values are 0), in its own `VarStore` (names `model.*`, `score.weight`).
#[derive(Debug)]
pub struct Critic {
    /// The critic's variables.
    pub vs: VarStore,
    trunk: Llama,
    score: Tensor,
}

impl Critic {
    /// A critic whose trunk starts as a copy of `policy_vs`.
    pub fn from_policy(policy_vs: &VarStore, policy: &Llama) -> Result<Self> {
        let h = policy.config().hidden_size as i64;
        // The trunk starts as the policy; the head has no counterpart in it.
        let (vs, (trunk, score)) = replica(
            policy_vs,
            |root| {
                let trunk = Llama::new(root, policy.config());
                (trunk, (root / "score").zeros("weight", &[1, h]))
            },
            |name| name.starts_with("score."),
        )?;
        Ok(Self { vs, trunk, score })
    }

    /// Values at the positions that predict each completion token.
    ///
    /// # Shapes
    /// returns float `[B, T]`.
    pub fn values(&self, rows: &Rows) -> Tensor {
        self.head(&predicting_hidden(&self.trunk, rows))
    }

    /// [`values`](Self::values) with the trunk checkpointed (as the policy's with
    /// `gradient_checkpointing`): call [`finish_backward`](Self::finish_backward) with the
    /// stack after `loss.backward()`.
    pub fn checkpointed_values(&self, rows: &Rows) -> (Tensor, CheckpointedStack) {
        let (stack, hidden) = CheckpointedStack::forward(&self.trunk, rows);
        (self.head(&hidden), stack)
    }

    /// Completes the backward into the checkpointed trunk.
    pub fn finish_backward(&self, stack: CheckpointedStack) {
        stack.backward(&self.trunk);
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        hidden
            .matmul(&self.score.tr())
            .squeeze_dim(-1)
            .to_kind(Kind::Float)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::FinishReason;

    /// An episode of two model turns (tokens 0-1 and 4) around two environment tokens.
    fn episode() -> Sample {
        Sample {
            completion_ids: vec![5, 6, 7, 8, 9],
            loss_mask: vec![true, true, false, false, true],
            behaviour_logprobs: vec![-1.0, -1.0, 0.0, 0.0, -1.0],
            finish_reason: FinishReason::Environment,
            turn_rewards: vec![(1, 0.5), (4, 1.0)],
            ..Sample::for_test(0, 1.5)
        }
    }

    #[test]
    fn an_episode_earns_each_turn_reward_on_its_last_token_and_gae_skips_environment_tokens() {
        let cfg = PpoConfig {
            kl_coef: 0.0,
            gamma: 1.0,
            lam: 1.0,
            whiten_advantages: false,
            ..PpoConfig::default()
        };
        let values = vec![0.1, 0.2, 9.0, 9.0, 0.3];
        let t = ppo_targets(&cfg, &[episode()], &[vec![0.0; 5]], &[values]);
        // gamma = lam = 1: A_t = the rewards from t on - V_t, over the model's tokens alone
        // (rewards 0, 0.5, 1.0; values 0.1, 0.2, 0.3); the environment's values never enter,
        // its tokens carry the next model token's advantage.
        let expected = [1.4, 1.3, 0.7, 0.7, 0.7];
        for (a, e) in t.advantages[0].iter().zip(expected) {
            assert!((*a as f64 - e).abs() < 1e-6, "{:?}", t.advantages[0]);
        }
        assert!((t.returns[0][1] - 1.5).abs() < 1e-6, "{:?}", t.returns[0]);
        // gamma < 1 discounts across the environment's turn as one step.
        let discounted = PpoConfig { gamma: 0.5, ..cfg };
        let t = ppo_targets(&discounted, &[episode()], &[vec![0.0; 5]], &[vec![0.0; 5]]);
        assert!(
            (t.advantages[0][1] - (0.5 + 0.5 * 1.0)).abs() < 1e-6,
            "{:?}",
            t.advantages[0]
        );
    }
}
