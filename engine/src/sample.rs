//! The unit of RL data that flows from rollouts through rewards to the learner.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence or stop token.
    Stop,
    /// A stop string matched.
    StopString,
    /// `max_tokens` reached (the completion is truncated).
    Length,
    /// An environment ended the episode.
    Environment,
}

/// One completion with everything the learner needs to compute exact off-policy corrections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Prompt token ids (including any chat markup).
    pub prompt_ids: Vec<u32>,
    /// Completion token ids: what follows the prompt, model and environment turns alike.
    pub completion_ids: Vec<u32>,
    /// Per completion token: true where the loss applies (model-generated), false for
    /// environment/tool tokens.
    pub loss_mask: Vec<bool>,
    /// Per completion token: log-probability under the policy that sampled it (behaviour
    /// policy, mu). Environment tokens carry 0.
    pub behaviour_logprobs: Vec<f32>,
    /// Per completion token: the learner's own log-probability under the weights that sampled
    /// it, when another engine (vLLM) sampled and its `behaviour_logprobs` may differ from the
    /// learner's. The learner's ratios then start from these, and the rollout correction
    /// weights each token by `pi_old / mu` (`learner::rollout_correction`). `None` when the
    /// learner's own engine sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learner_logprobs: Option<Vec<f32>>,
    /// Version of the policy weights that generated the sample.
    pub policy_version: u64,
    /// Samples of the same prompt share a group id (the GRPO group).
    pub group_id: u64,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Total (weighted) reward.
    pub reward: f64,
    /// Each named reward's score.
    pub rewards: BTreeMap<String, f64>,
    /// A multi-turn episode's rewards where they were earned: (completion index of the
    /// turn's last token, reward), summing to `reward`. Empty: `reward` is earned at the
    /// last token (single-turn). PPO places them on those tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub turn_rewards: Vec<(usize, f64)>,
}

impl Sample {
    /// Number of completion tokens that count in the loss.
    pub fn trained_tokens(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }
}

#[cfg(test)]
impl Sample {
    /// A one-token sample of `group_id` with `reward`, for unit tests.
    pub(crate) fn for_test(group_id: u64, reward: f64) -> Self {
        Self {
            prompt_ids: vec![1],
            completion_ids: vec![2],
            loss_mask: vec![true],
            behaviour_logprobs: vec![-1.0],
            learner_logprobs: None,
            policy_version: 0,
            group_id,
            finish_reason: FinishReason::Stop,
            reward,
            rewards: BTreeMap::new(),
            turn_rewards: Vec::new(),
        }
    }
}
