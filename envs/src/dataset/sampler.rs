//! Epoch-wise seeded sampling with a cursor that fully determines the rest of the stream, so a
//! run restored from a checkpoint sees exactly the prompts it would have seen.

use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::error::{EnvError, Result};
use crate::rng::Rng;

/// Where a sampler is: save it in a checkpoint (it is plain serde) and restore with
/// [`Sampler::restore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Shuffle seed.
    pub seed: u64,
    /// Whether each epoch is shuffled.
    pub shuffle: bool,
    /// Completed passes over the data.
    pub epoch: u64,
    /// Rows already drawn in the current epoch.
    pub position: usize,
    /// Dataset length when the cursor was saved.
    pub len: usize,
    /// [`Dataset::fingerprint`] when the cursor was saved.
    pub fingerprint: u64,
}

/// Draws row indices epoch by epoch; each epoch is a fresh seeded permutation.
#[derive(Debug, Clone)]
pub struct Sampler {
    cursor: Cursor,
    order: Vec<usize>,
}

impl Sampler {
    /// A sampler at the start of epoch 0.
    pub fn new(dataset: &Dataset, seed: u64, shuffle: bool) -> Result<Self> {
        Self::restore(
            dataset,
            Cursor {
                seed,
                shuffle,
                epoch: 0,
                position: 0,
                len: dataset.len(),
                fingerprint: dataset.fingerprint(),
            },
        )
    }

    /// A sampler continuing from `cursor`; errors if the cursor was saved for other data.
    pub fn restore(dataset: &Dataset, cursor: Cursor) -> Result<Self> {
        if dataset.is_empty() {
            return Err(EnvError::Empty(dataset.name().to_owned()));
        }
        if cursor.len != dataset.len() || cursor.fingerprint != dataset.fingerprint() {
            return Err(EnvError::CursorMismatch(format!(
                "saved for {} rows (fingerprint {:x}), dataset `{}` has {} rows (fingerprint {:x})",
                cursor.len,
                cursor.fingerprint,
                dataset.name(),
                dataset.len(),
                dataset.fingerprint()
            )));
        }
        if cursor.position > cursor.len {
            return Err(EnvError::CursorMismatch(format!(
                "position {} > {}",
                cursor.position, cursor.len
            )));
        }
        let order = epoch_order(&cursor);
        Ok(Self { cursor, order })
    }

    /// The state to save.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// The next row index, moving to a new epoch (and permutation) at the end of one.
    pub fn next_index(&mut self) -> usize {
        if self.cursor.position == self.cursor.len {
            self.cursor.epoch += 1;
            self.cursor.position = 0;
            self.order = epoch_order(&self.cursor);
        }
        let i = self.order[self.cursor.position];
        self.cursor.position += 1;
        i
    }

    /// The next `n` row indices.
    pub fn next_indices(&mut self, n: usize) -> Vec<usize> {
        (0..n).map(|_| self.next_index()).collect()
    }
}

fn epoch_order(c: &Cursor) -> Vec<usize> {
    let mut order: Vec<usize> = (0..c.len).collect();
    if c.shuffle {
        Rng::derive(c.seed, c.epoch).shuffle(&mut order);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(n: usize) -> Dataset {
        super::super::numbered(n)
    }

    #[test]
    fn each_epoch_is_a_permutation_and_epochs_differ() {
        let d = ds(10);
        let mut s = Sampler::new(&d, 3, true).unwrap();
        let e0 = s.next_indices(10);
        let e1 = s.next_indices(10);
        assert_eq!(s.cursor().epoch, 1);
        for e in [&e0, &e1] {
            let mut sorted = e.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(e0, e1);
        assert_ne!(e0, (0..10).collect::<Vec<_>>());
        let mut plain = Sampler::new(&d, 3, false).unwrap();
        assert_eq!(plain.next_indices(10), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn restored_cursor_continues_the_same_stream() {
        let d = ds(7);
        let mut a = Sampler::new(&d, 42, true).unwrap();
        a.next_indices(11); // mid second epoch
        let saved = serde_json::to_string(a.cursor()).unwrap();
        let expected = a.next_indices(20);
        let cursor: Cursor = serde_json::from_str(&saved).unwrap();
        let mut b = Sampler::restore(&d, cursor).unwrap();
        assert_eq!(b.next_indices(20), expected);
    }

    #[test]
    fn cursor_from_other_data_is_refused() {
        let mut cursor = Sampler::new(&ds(7), 1, true).unwrap().cursor().clone();
        assert!(matches!(
            Sampler::restore(&ds(8), cursor.clone()),
            Err(EnvError::CursorMismatch(_))
        ));
        cursor.fingerprint ^= 1;
        assert!(matches!(
            Sampler::restore(&ds(7), cursor),
            Err(EnvError::CursorMismatch(_))
        ));
    }
}
