//! Datasets: rows in memory, loading with field mapping (JSONL and Parquet files, HF dataset
//! directories), train/eval splits, and a seeded sampler whose cursor checkpoints can save and
//! restore.

mod fields;
pub mod hub;
mod jsonl;
mod load;
mod parquet;
mod sampler;

pub use self::parquet::load_parquet;
#[cfg(test)]
pub(crate) use self::parquet::testing::write_parquet;
pub use jsonl::{load_jsonl, parse_jsonl};
pub use load::{load, LoadOptions, Loaded, OnBadRow, DEFAULT_SPLIT};
pub use sampler::{Cursor, Sampler};

use crate::error::{EnvError, Result};
use crate::rng::Rng;
use crate::row::Row;

/// An ordered, immutable list of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    name: String,
    rows: Vec<Row>,
}

impl Dataset {
    /// A dataset named `name` (a file path, `<dir>[split=<split>]` or `builtin:<task>`; used
    /// in messages).
    pub fn new(name: impl Into<String>, rows: Vec<Row>) -> Self {
        Self {
            name: name.into(),
            rows,
        }
    }

    /// The name given at construction.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// All rows.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Row `i`.
    pub fn get(&self, i: usize) -> Option<&Row> {
        self.rows.get(i)
    }

    /// FNV-1a hash of the row ids in order: a cheap identity check for restored cursors.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for row in &self.rows {
            for b in row.id().bytes().chain(std::iter::once(0xff)) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// Splits off `eval_size` rows chosen by a seeded shuffle; both sides keep file order.
    /// Errors if the train side would be empty.
    pub fn split(self, eval_size: usize, seed: u64) -> Result<(Dataset, Dataset)> {
        if eval_size >= self.rows.len() && eval_size > 0 {
            return Err(EnvError::Config(format!(
                "eval split of {eval_size} rows leaves no training rows in `{}` ({} rows)",
                self.name,
                self.rows.len()
            )));
        }
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        Rng::derive(seed, 0x5EED_5B17).shuffle(&mut order);
        let mut is_eval = vec![false; self.rows.len()];
        for &i in &order[..eval_size] {
            is_eval[i] = true;
        }
        let (mut train, mut eval) = (Vec::new(), Vec::new());
        for (row, e) in self.rows.into_iter().zip(is_eval) {
            if e {
                eval.push(row)
            } else {
                train.push(row)
            }
        }
        Ok((
            Dataset::new(format!("{}[train]", self.name), train),
            Dataset::new(format!("{}[eval]", self.name), eval),
        ))
    }
}

/// `n` rows with ids `r0`, `r1`, ... (tests of this module and the sampler).
#[cfg(test)]
pub(crate) fn numbered(n: usize) -> Dataset {
    let rows = (0..n)
        .map(|i| Row::from_pairs(format!("r{i}"), [("prompt", serde_json::json!(i))]))
        .collect();
    Dataset::new("test", rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(n: usize) -> Dataset {
        numbered(n)
    }

    #[test]
    fn split_is_disjoint_complete_and_seeded() {
        let (train, eval) = ds(20).split(5, 1).unwrap();
        assert_eq!((train.len(), eval.len()), (15, 5));
        let mut ids: Vec<String> = train
            .rows()
            .iter()
            .chain(eval.rows())
            .map(|r| r.id().to_owned())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 20);
        let (_, eval_again) = ds(20).split(5, 1).unwrap();
        let (_, eval_other) = ds(20).split(5, 2).unwrap();
        assert_eq!(eval, eval_again);
        assert_ne!(eval, eval_other);
    }

    #[test]
    fn split_that_empties_train_is_an_error() {
        assert!(ds(3).split(3, 0).is_err());
        assert_eq!(ds(3).split(0, 0).unwrap().1.len(), 0);
    }

    #[test]
    fn fingerprint_tracks_ids_and_order() {
        let a = ds(4);
        let mut rows = a.rows().to_vec();
        rows.swap(0, 1);
        assert_eq!(a.fingerprint(), ds(4).fingerprint());
        assert_ne!(a.fingerprint(), Dataset::new("x", rows).fingerprint());
    }
}
