//! Each rank's live phase in a data-parallel run, published in the job's store (c10d's
//! TCPStore) whenever it changes, so that rank 0's `/status` shows where every rank is: a
//! rank still generating while the others wait for it in a collective stands out.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::dist::{ProcessGroup, Store};

/// This rank's reporter, and every rank's reader.
#[derive(Clone)]
pub struct RankStatus {
    store: Arc<Store>,
    rank: usize,
    world_size: usize,
}

impl RankStatus {
    /// The status of `group`'s ranks.
    pub fn new(group: &ProcessGroup) -> Self {
        Self {
            store: Arc::new(group.store()),
            rank: group.rank(),
            world_size: group.world_size(),
        }
    }

    /// Records that this rank entered `phase` of step `step`. Advisory: when the store
    /// cannot be reached (rank 0 is gone), the next collective fails and names it.
    pub fn enter(&self, phase: &str, step: usize) {
        let value = json!({"phase": phase, "step": step, "since": now()});
        let _ = self
            .store
            .set(&key(self.rank), value.to_string().as_bytes());
    }

    /// Every rank's last report, by rank: `rank`, `phase`, `step` and `seconds` in the
    /// phase (`phase` "unknown" before a rank's first report or when the store is gone).
    pub fn all(&self) -> Value {
        let now = now();
        let ranks: Vec<Value> = (0..self.world_size)
            .map(|rank| {
                let report = self.store.get(&key(rank)).ok().flatten();
                let report: Value = report
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .unwrap_or_else(|| json!({"phase": "unknown"}));
                let seconds = report["since"].as_f64().map(|since| (now - since).max(0.0));
                json!({"rank": rank, "phase": report["phase"], "step": report["step"],
                       "seconds": seconds})
            })
            .collect();
        Value::Array(ranks)
    }
}

fn key(rank: usize) -> String {
    format!("oxrl/status/{rank}")
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
