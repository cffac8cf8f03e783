//! `oxrl bench padding`: replays the learner's micro-batching (`batch::prompt_micro_batches`,
//! padded as `batch::collate` pads) on drawn prompt and completion lengths and counts the
//! positions the decoder runs, against padding-free packing with and without a shared prompt.

use std::collections::BTreeMap;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::learner::batch::{prompt_micro_batches, sort_within_groups};
use crate::sample::{FinishReason, Sample};

/// Lengths drawn uniformly from `MIN-MAX` (inclusive), or one length `N`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lengths {
    min: usize,
    max: usize,
}

impl Lengths {
    fn draw(self, rng: &mut ChaCha8Rng) -> usize {
        rng.random_range(self.min..=self.max)
    }
}

impl FromStr for Lengths {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected N or MIN-MAX");
        let (min, max) = s.split_once('-').unwrap_or((s, s));
        let min = min.trim().parse().map_err(|_| bad())?;
        let max = max.trim().parse().map_err(|_| bad())?;
        if min > max || max == 0 {
            return Err(bad());
        }
        Ok(Self { min, max })
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct PaddingArgs {
    /// Prompts (GRPO groups) per step.
    #[arg(long, default_value_t = 8)]
    prompts: usize,
    /// Completions per prompt.
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Prompt lengths, uniform: `MIN-MAX` or `N`.
    #[arg(long, default_value = "64-256")]
    prompt_tokens: Lengths,
    /// Completion lengths, uniform: `MIN-MAX` or `N`.
    #[arg(long, default_value = "100-512")]
    completion_tokens: Lengths,
    /// Fraction of completions cut at the longest length (`max_tokens` reached) instead of
    /// drawn.
    #[arg(long, default_value_t = 0.0)]
    capped: f64,
    /// `max_tokens_per_micro_batch` values to compare; 0 = unset (one micro-batch per group).
    #[arg(long, value_delimiter = ',', default_value = "0,16384,8192,4096,2048")]
    budgets: Vec<usize>,
    /// Steps drawn (their positions are summed).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Token positions a set of micro-batches runs through the decoder.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Positions {
    /// What oxrl computes: a shared-prompt micro-batch runs its prompt once and pads every
    /// completion to the longest; any other pads every row to the longest row (`collate`).
    computed: usize,
    /// Padding-free packing, each row's prompt and completion (TRL's `padding_free`, verl's
    /// `use_remove_padding`: no prompt is shared).
    packed: usize,
    /// Padding-free packing that still runs a shared prompt once.
    packed_shared: usize,
}

impl std::ops::AddAssign for Positions {
    fn add_assign(&mut self, o: Self) {
        self.computed += o.computed;
        self.packed += o.packed;
        self.packed_shared += o.packed_shared;
    }
}

/// The positions of one micro-batch, as `batch::collate` and `batch::token_logprobs` lay it
/// out (a prompt is shared when every row has the same `group_id` and there are 2 or more).
fn micro_positions(rows: &[&Sample]) -> Positions {
    let (p, c): (Vec<usize>, Vec<usize>) = rows
        .iter()
        .map(|s| (s.prompt_ids.len(), s.completion_ids.len()))
        .unzip();
    let packed = p.iter().sum::<usize>() + c.iter().sum::<usize>();
    let shared = rows.len() > 1 && rows.iter().all(|s| s.group_id == rows[0].group_id);
    if !shared {
        let longest = p.iter().zip(&c).map(|(p, c)| p + c).max().unwrap_or(0);
        return Positions {
            computed: rows.len() * longest,
            packed,
            packed_shared: packed,
        };
    }
    let longest = c.iter().copied().max().unwrap_or(0);
    Positions {
        computed: p[0] + rows.len() * longest,
        packed,
        packed_shared: p[0] + c.iter().sum::<usize>(),
    }
}

/// One step's samples: `prompts` groups of `group_size`, consecutive as the trainer orders
/// them. Only the lengths and group ids matter here.
fn draw_step(args: &PaddingArgs, step: usize, rng: &mut ChaCha8Rng) -> Vec<Sample> {
    let mut out = Vec::with_capacity(args.prompts * args.group_size);
    for g in 0..args.prompts {
        let prompt = vec![0u32; args.prompt_tokens.draw(rng)];
        for _ in 0..args.group_size {
            let c = match rng.random::<f64>() < args.capped {
                true => args.completion_tokens.max,
                false => args.completion_tokens.draw(rng),
            };
            out.push(Sample {
                prompt_ids: prompt.clone(),
                completion_ids: vec![0; c],
                loss_mask: vec![true; c],
                behaviour_logprobs: vec![0.0; c],
                learner_logprobs: None,
                policy_version: 0,
                group_id: (step * args.prompts + g) as u64,
                finish_reason: FinishReason::Length,
                reward: 0.0,
                rewards: BTreeMap::new(),
                turn_rewards: Vec::new(),
            });
        }
    }
    out
}

/// The positions of a step's micro-batches under `budget`, as the learner splits them.
fn step_positions(samples: &[Sample], budget: Option<usize>) -> (Positions, usize) {
    let refs: Vec<&Sample> = samples.iter().collect();
    let micros = prompt_micro_batches(&refs, 1, budget);
    let mut total = Positions::default();
    for r in &micros {
        total += micro_positions(&refs[r.clone()]);
    }
    (total, micros.len())
}

/// Prints, per budget, the positions oxrl computes (and would without sorting each group by
/// length), how much of it is padding, and what packing with and without a shared prompt
/// would run.
pub(super) fn padding(args: PaddingArgs) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.capped), "--capped is a fraction");
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let steps: Vec<Vec<Sample>> = (0..args.steps.max(1))
        .map(|i| draw_step(&args, i, &mut rng))
        .collect();
    println!(
        "prompts={} group_size={} prompt_tokens={}-{} completion_tokens={}-{} capped={} steps={}",
        args.prompts,
        args.group_size,
        args.prompt_tokens.min,
        args.prompt_tokens.max,
        args.completion_tokens.min,
        args.completion_tokens.max,
        args.capped,
        steps.len()
    );
    println!("| budget | micro-batches/step | rows in sampling order / packed | oxrl / packed | padding share of oxrl | packed + shared prompt / packed |");
    println!("|---|---|---|---|---|---|");
    for &budget in &args.budgets {
        let budget = (budget > 0).then_some(budget);
        let (mut now, mut oxrl, mut micros) = (Positions::default(), Positions::default(), 0);
        for samples in &steps {
            now += step_positions(samples, budget).0;
            // The learner sorts a group's rows by length when a budget may split the group.
            let mut by_length = samples.clone();
            if budget.is_some() {
                sort_within_groups(&mut by_length, |s| s);
            }
            let (p, n) = step_positions(&by_length, budget);
            oxrl += p;
            micros += n;
        }
        let per = |x: usize| x as f64 / now.packed as f64;
        println!(
            "| {} | {:.1} | {:.2} | {:.2} | {:.1}% | {:.2} |",
            budget.map_or("unset".to_string(), |b| b.to_string()),
            micros as f64 / steps.len() as f64,
            per(now.computed),
            per(oxrl.computed),
            100.0 * (oxrl.computed - oxrl.packed_shared) as f64 / oxrl.computed as f64,
            per(now.packed_shared),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(group: u64, p: usize, c: usize) -> Sample {
        Sample {
            prompt_ids: vec![0; p],
            completion_ids: vec![0; c],
            loss_mask: vec![true; c],
            behaviour_logprobs: vec![0.0; c],
            learner_logprobs: None,
            policy_version: 0,
            group_id: group,
            finish_reason: FinishReason::Length,
            reward: 0.0,
            rewards: BTreeMap::new(),
            turn_rewards: Vec::new(),
        }
    }

    #[test]
    fn positions_count_a_shared_prompt_once_and_pad_to_the_longest() {
        let (a, b) = (sample(0, 10, 5), sample(0, 10, 3));
        let shared = micro_positions(&[&a, &b]);
        assert_eq!(
            shared,
            Positions {
                computed: 10 + 2 * 5,
                packed: 28,
                packed_shared: 18
            }
        );
        let c = sample(1, 4, 2);
        let mixed = micro_positions(&[&a, &c]);
        assert_eq!(
            mixed,
            Positions {
                computed: 2 * 15,
                packed: 21,
                packed_shared: 21
            }
        );
        assert_eq!(micro_positions(&[&c]).computed, 6);
    }

    #[test]
    fn lengths_parse() {
        let l: Lengths = "100-512".parse().unwrap();
        assert_eq!((l.min, l.max), (100, 512));
        let l: Lengths = "64".parse().unwrap();
        assert_eq!((l.min, l.max), (64, 64));
        assert!("9-3".parse::<Lengths>().is_err());
    }
}
