//! Advantage estimators: GRPO's group-relative advantages (Shao et al. 2024, DeepSeekMath;
//! TRL `GRPOTrainer._generate_and_score_completions`), GAE (Schulman et al. 2016; verl
//! `core_algos.compute_gae_advantage_return`) and masked whitening.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How GRPO scales the centred rewards (TRL `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    /// Divide by the group's standard deviation (GRPO).
    #[default]
    Group,
    /// Divide by the whole batch's standard deviation (Liu et al. recommend it over group).
    Batch,
    /// Do not scale (Dr. GRPO).
    None,
}

/// What GRPO subtracts from each reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Baseline {
    /// The group's mean reward (GRPO).
    #[default]
    GroupMean,
    /// The mean of the group's other rewards (RLOO, Ahmadian et al. 2024; TRL `RLOOTrainer`'s
    /// advantage): `G / (G - 1)` times the centred reward.
    LeaveOneOut,
}

/// Turns group-mean-centred advantages into leave-one-out ones in place:
/// `r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean_j r_j)` for a group of `G >= 2`
/// (any scaling by a standard deviation commutes with the factor).
pub fn leave_one_out(advantages: &mut [f64], group_ids: &[u64]) {
    let mut sizes: BTreeMap<u64, usize> = BTreeMap::new();
    for &g in group_ids {
        *sizes.entry(g).or_default() += 1;
    }
    for (a, g) in advantages.iter_mut().zip(group_ids) {
        let n = sizes[g] as f64;
        if n >= 2.0 {
            *a *= n / (n - 1.0);
        }
    }
}

/// Epsilon added to the standard deviation, as TRL.
pub const STD_EPS: f64 = 1e-4;

/// Group-relative advantages and the group statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAdvantages {
    /// One advantage per sample, in input order.
    pub advantages: Vec<f64>,
    /// Per sample: whether its group's rewards are all equal (zero advantage, no signal).
    pub zero_std: Vec<bool>,
    /// Fraction of groups whose rewards are all equal.
    pub frac_zero_std: f64,
}

pub(crate) fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len().max(1) as f64
}

/// Unbiased standard deviation (torch's `std`), 0 for fewer than two values.
pub(crate) fn std_unbiased(x: &[f64]) -> f64 {
    if x.len() < 2 {
        return 0.0;
    }
    let m = mean(x);
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// `A_i = (r_i - mean_group(r)) / (std + 1e-4)`, the std being the group's (`Group`), the
/// batch's (`Batch`) or none (`None`, no division). Groups are the samples that share a
/// `group_id`, in any order.
pub fn group_advantages(
    rewards: &[f64],
    group_ids: &[u64],
    scale: ScaleRewards,
) -> GroupAdvantages {
    group_advantages_with(rewards, group_ids, scale, std_unbiased(rewards))
}

/// [`group_advantages`] with the batch's std given (`Batch` scaling across the ranks of a
/// data-parallel job, whose batch is more than these rewards).
pub fn group_advantages_with(
    rewards: &[f64],
    group_ids: &[u64],
    scale: ScaleRewards,
    batch_std: f64,
) -> GroupAdvantages {
    let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, &g) in group_ids.iter().enumerate() {
        groups.entry(g).or_default().push(i);
    }
    let mut advantages = vec![0.0; rewards.len()];
    let mut zero_std = vec![false; rewards.len()];
    let mut zero_groups = 0usize;
    for members in groups.values() {
        let r: Vec<f64> = members.iter().map(|&i| rewards[i]).collect();
        let (m, s) = (mean(&r), std_unbiased(&r));
        let all_equal = r
            .iter()
            .all(|&v| (v - r[0]).abs() <= 1e-8 * (1.0 + r[0].abs()));
        if all_equal {
            zero_groups += 1;
        }
        for &i in members {
            let centred = rewards[i] - m;
            advantages[i] = match scale {
                ScaleRewards::Group => centred / (s + STD_EPS),
                ScaleRewards::Batch => centred / (batch_std + STD_EPS),
                ScaleRewards::None => centred,
            };
            zero_std[i] = all_equal;
        }
    }
    GroupAdvantages {
        advantages,
        zero_std,
        frac_zero_std: zero_groups as f64 / groups.len().max(1) as f64,
    }
}

/// Generalised advantage estimation over one sequence, backwards:
/// `delta_t = r_t + gamma V_{t+1} - V_t`, `A_t = delta_t + gamma lambda A_{t+1}`, `V_T = 0`.
/// Returns `(advantages, returns = A + V)`.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        last = delta + gamma * lambda * last;
        adv[t] = last;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Whitens `x` over the masked entries: `(x - mean) / sqrt(var + 1e-8)` (verl
/// `masked_whiten`, unbiased variance); unmasked entries are left as they are.
pub fn whiten(x: &mut [f64], mask: &[bool]) {
    let vals = masked(x, mask);
    if vals.is_empty() {
        return;
    }
    whiten_with(x, mask, mean(&vals), std_unbiased(&vals));
}

/// The masked entries of `x`.
pub fn masked(x: &[f64], mask: &[bool]) -> Vec<f64> {
    x.iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&v, _)| v)
        .collect()
}

/// [`whiten`] with the mean and unbiased std given (those of a whole data-parallel batch).
pub fn whiten_with(x: &mut [f64], mask: &[bool], m: f64, std: f64) {
    let scale = (std.powi(2) + 1e-8).sqrt();
    for (v, &keep) in x.iter_mut().zip(mask) {
        if keep {
            *v = (*v - m) / scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_subtracts_the_mean_of_the_other_rewards() {
        let rewards = [1.0, 0.0, 0.5, 1.0, 0.3, 0.9, 0.2];
        let ids = [4, 4, 4, 4, 9, 9, 11];
        let mut adv = group_advantages(&rewards, &ids, ScaleRewards::None).advantages;
        leave_one_out(&mut adv, &ids);
        for i in 0..rewards.len() {
            let others: Vec<f64> = (0..rewards.len())
                .filter(|&j| j != i && ids[j] == ids[i])
                .map(|j| rewards[j])
                .collect();
            let want = match others.is_empty() {
                true => 0.0, // a group of one has no baseline and no signal
                false => rewards[i] - mean(&others),
            };
            assert!(
                (adv[i] - want).abs() < 1e-12,
                "sample {i}: {} vs {want}",
                adv[i]
            );
        }
    }

    #[test]
    fn group_advantages_match_hand_values() {
        // Two groups of two (interleaved ids) and one constant group.
        let r = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5];
        let g = [7, 7, 3, 3, 9, 9];
        let a = group_advantages(&r, &g, ScaleRewards::Group);
        let s = std_unbiased(&[1.0, 0.0]); // sqrt(0.5)
        assert!((a.advantages[0] - 0.5 / (s + STD_EPS)).abs() < 1e-12);
        assert!((a.advantages[2] + 0.5 / (s + STD_EPS)).abs() < 1e-12);
        assert_eq!(a.advantages[4], 0.0);
        assert_eq!(a.zero_std, vec![false, false, false, false, true, true]);
        assert!((a.frac_zero_std - 1.0 / 3.0).abs() < 1e-12);
        let none = group_advantages(&r, &g, ScaleRewards::None);
        assert_eq!(none.advantages, vec![0.5, -0.5, -0.5, 0.5, 0.0, 0.0]);
        let batch = group_advantages(&r, &g, ScaleRewards::Batch);
        let bs = std_unbiased(&r);
        assert!((batch.advantages[0] - 0.5 / (bs + STD_EPS)).abs() < 1e-12);
    }

    #[test]
    fn gae_matches_hand_recursion() {
        let (a, ret) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.4], 1.0, 0.5);
        // t2: delta = 1 - 0.4 = 0.6; t1: delta = 0 + 0.4 - 0.2 = 0.2, A = 0.2 + 0.5*0.6 = 0.5;
        // t0: delta = 0.2 - 0.5 = -0.3, A = -0.3 + 0.5*0.5 = -0.05.
        let want = [-0.05, 0.5, 0.6];
        for (x, y) in a.iter().zip(want) {
            assert!((x - y).abs() < 1e-12);
        }
        assert!((ret[0] - 0.45).abs() < 1e-12);
        let mut w = vec![1.0, 2.0, 3.0, 100.0];
        whiten(&mut w, &[true, true, true, false]);
        assert!((w[0] + 1.0).abs() < 1e-6 && w[1].abs() < 1e-12 && w[3] == 100.0);
    }
}
