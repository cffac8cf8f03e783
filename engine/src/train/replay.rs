//! Training from logged samples (`rollout.source = "dataset"` with `rollout.samples_path`):
//! the groups of a `replay.jsonl` that a run wrote with `log.samples = "all"` (or any file of
//! `Sample` lines) stand in for rollouts. Step `s` trains groups `s * P .. (s + 1) * P` of the
//! file (P = `rollout.prompts_per_step`), in file order, wrapping around: a function of the
//! step alone, so a resumed run continues exactly with no cursor to save. The learner's
//! ratios start from each sample's logged behaviour logprobs: TOPR's taper, expert
//! iteration's best of each group and DPO's pairs (the best and worst of each group) work as
//! on fresh rollouts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;

use crate::learner::data::read_samples_jsonl;
use crate::sample::Sample;

/// A file's samples by group, in the order each group first appears.
#[derive(Debug)]
pub struct Replay {
    groups: Vec<Vec<Sample>>,
}

impl Replay {
    /// Reads `path`; a line that is not a sample, or whose token ids, logprobs and mask
    /// differ in length, is reported with its line number.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let samples = read_samples_jsonl(path)
            .with_context(|| format!("reading rollout.samples_path {}", path.display()))?;
        let mut order = Vec::new();
        let mut by_id: BTreeMap<u64, Vec<Sample>> = BTreeMap::new();
        for s in samples {
            let group = by_id.entry(s.group_id).or_default();
            if group.is_empty() {
                order.push(s.group_id);
            }
            group.push(s);
        }
        if order.is_empty() {
            anyhow::bail!("rollout.samples_path {}: no samples", path.display());
        }
        let groups = order
            .into_iter()
            .filter_map(|id| by_id.remove(&id))
            .collect();
        Ok(Self { groups })
    }

    /// Logged groups in the file.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Step `step`'s `per_step` groups, renumbered `step * per_step + i` so that a group
    /// met twice in one step (a small file) stays two groups.
    pub fn step(&self, step: usize, per_step: usize) -> Vec<Sample> {
        (0..per_step)
            .flat_map(|i| {
                let id = (step * per_step + i) as u64;
                self.groups[id as usize % self.groups.len()]
                    .iter()
                    .map(move |s| Sample {
                        group_id: id,
                        ..s.clone()
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_walk_the_groups_in_file_order_and_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.jsonl");
        let lines: Vec<String> = [(7, 1.0), (7, 0.0), (3, 0.5), (9, 0.25), (3, 0.0)]
            .iter()
            .map(|&(g, r)| {
                let mut v = serde_json::to_value(Sample::for_test(g, r)).unwrap();
                v["step"] = 0.into();
                v.to_string()
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        let replay = Replay::read(&path).unwrap();
        assert_eq!(replay.groups(), 3);
        let rewards = |s: &[Sample]| s.iter().map(|s| (s.group_id, s.reward)).collect::<Vec<_>>();
        assert_eq!(
            rewards(&replay.step(0, 2)),
            [(0, 1.0), (0, 0.0), (1, 0.5), (1, 0.0)]
        );
        assert_eq!(rewards(&replay.step(1, 2)), [(2, 0.25), (3, 1.0), (3, 0.0)]);
    }

    #[test]
    fn a_bad_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.jsonl");
        let good = serde_json::to_string(&Sample::for_test(0, 1.0)).unwrap();
        let mut short = Sample::for_test(0, 0.0);
        short.behaviour_logprobs.clear();
        let short = serde_json::to_string(&short).unwrap();
        std::fs::write(&path, format!("{good}\n{short}\n")).unwrap();
        let err = format!("{:#}", Replay::read(&path).unwrap_err());
        assert!(err.contains("line 2"), "{err}");
        std::fs::write(&path, format!("{good}\n{{\"prompt_ids\": [1]}}\n")).unwrap();
        let err = format!("{:#}", Replay::read(&path).unwrap_err());
        assert!(
            err.contains("line 2") && err.contains("missing field"),
            "{err}"
        );
    }
}
