//! Loading rows from what the config names: a JSONL file, a Parquet file, or one split of a
//! dataset directory (HF hub layout). Every format goes through the same field mapping and the
//! same skip-or-stop policy for bad rows.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{hub, jsonl, parquet, Dataset};
use crate::error::{EnvError, Result};
use crate::row::Row;

/// The split read from a dataset directory when none is named.
pub const DEFAULT_SPLIT: &str = "train";

/// What to do with a malformed line or a row missing a required field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    /// Fail the load with the line's error (the default: bad data should be noticed).
    #[default]
    Stop,
    /// Drop the row and report it in [`Loaded::skipped`].
    Skip,
}

/// How to read rows.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Canonical field name → column in the file (e.g. `prompt = "question"`); a dotted column
    /// (`reward_model.ground_truth`) reaches into nested objects. Unmapped columns keep their
    /// names.
    pub fields: &'a BTreeMap<String, String>,
    /// Canonical fields every row must have.
    pub required: &'a [&'a str],
    /// Skip or stop on a bad row.
    pub on_bad_row: OnBadRow,
}

/// A loaded dataset plus the rows that were skipped (each error names its file and line or row).
#[derive(Debug)]
pub struct Loaded {
    /// The good rows.
    pub dataset: Dataset,
    /// One error per skipped row (empty under [`OnBadRow::Stop`]).
    pub skipped: Vec<EnvError>,
}

/// Loads `path`: a directory is read as a dataset directory at `split` (default
/// [`DEFAULT_SPLIT`]), its shards in name order; a `.parquet` file as Parquet; any other file as
/// JSONL. `split` with a file is an error (a file has no splits).
pub fn load(path: &Path, split: Option<&str>, opts: LoadOptions<'_>) -> Result<Loaded> {
    let mut sink = RowSink::new(opts.on_bad_row);
    if !path.is_dir() {
        if let Some(split) = split {
            return Err(EnvError::Config(format!(
                "split `{split}` is for dataset directories; {} is a file",
                path.display()
            )));
        }
        read_file(path, opts, &mut sink)?;
        return sink.finish(path.display().to_string());
    }
    let split = split.unwrap_or(DEFAULT_SPLIT);
    for shard in hub::shards(path, split)? {
        read_file(&shard, opts, &mut sink)?;
    }
    sink.finish(format!("{}[split={split}]", path.display()))
}

/// Reads one file by its extension into `sink`.
fn read_file(path: &Path, opts: LoadOptions<'_>, sink: &mut RowSink) -> Result<()> {
    if path.extension().is_some_and(|e| e == "parquet") {
        parquet::read_parquet(path, opts, sink)
    } else {
        jsonl::read_jsonl_file(path, opts, sink)
    }
}

/// Collects rows across files, applying the bad-row policy.
#[derive(Debug)]
pub(crate) struct RowSink {
    on_bad_row: OnBadRow,
    rows: Vec<Row>,
    skipped: Vec<EnvError>,
}

impl RowSink {
    pub(crate) fn new(on_bad_row: OnBadRow) -> Self {
        Self {
            on_bad_row,
            rows: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// Keeps a good row; a bad one is recorded under `skip` and returned under `stop`.
    pub(crate) fn push(&mut self, row: Result<Row>) -> Result<()> {
        match row {
            Ok(row) => self.rows.push(row),
            Err(e) if self.on_bad_row == OnBadRow::Skip => self.skipped.push(e),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The dataset named `name`; no good rows at all is an error.
    pub(crate) fn finish(self, name: String) -> Result<Loaded> {
        if self.rows.is_empty() {
            return Err(EnvError::Empty(name));
        }
        Ok(Loaded {
            dataset: Dataset::new(name, self.rows),
            skipped: self.skipped,
        })
    }
}
