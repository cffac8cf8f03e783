//! The crate's error type. Every error names where it came from (file and line for data,
//! command for external environments) so a run's log says what to fix.

use std::path::PathBuf;

use crate::chat_template::ChatTemplateError;

/// Errors from loading data, formatting prompts and running environments.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A data file could not be opened or read.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A JSONL line is not a JSON object.
    #[error("{source_name}:{line}: not a JSON object: {reason}")]
    BadLine {
        /// The file (or other source) name.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// A row lacks a field the task needs.
    #[error(
        "{source_name}:{line}: missing required field `{field}` (read from column `{column}`)"
    )]
    MissingField {
        /// The file (or other source) name.
        source_name: String,
        /// 1-based line number (JSONL) or row number within the file (Parquet).
        line: usize,
        /// The task's name for the field.
        field: String,
        /// The column it is read from (after field mapping).
        column: String,
    },
    /// A Parquet file could not be read: not Parquet, damaged, or compressed with a codec this
    /// build lacks.
    #[error("{path}: cannot read Parquet: {reason}", path = path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// What the reader said (with the row number when it failed mid-file).
        reason: String,
    },
    /// A dataset directory has no data files, or not the split asked for.
    #[error("dataset directory {dir}: {reason}", dir = dir.display())]
    DatasetDir {
        /// The directory.
        dir: PathBuf,
        /// What is missing (the splits it has, when a split is not there).
        reason: String,
    },
    /// A dataset has no rows (after skipping bad ones), or a split left a side empty.
    #[error("dataset `{0}` has no rows")]
    Empty(String),
    /// A configuration value is out of range or inconsistent.
    #[error("invalid environment config: {0}")]
    Config(String),
    /// A saved cursor does not belong to this dataset.
    #[error("cursor does not match the dataset: {0}")]
    CursorMismatch(String),
    /// The chat template failed.
    #[error(transparent)]
    ChatTemplate(#[from] ChatTemplateError),
    /// The plain prompt template failed to compile or render.
    #[error("plain prompt template: {0:#}")]
    PlainTemplate(#[from] minijinja::Error),
    /// A row is malformed for its task (e.g. an answer field of the wrong type).
    #[error("task `{task}`, row `{row}`: {reason}")]
    BadRow {
        /// Task name.
        task: String,
        /// Row id.
        row: String,
        /// What was wrong.
        reason: String,
    },
    /// An episode was driven out of order (a step after done, a model turn twice ...).
    #[error("episode: {0}")]
    Episode(String),
    /// The chat template does not write the last assistant message once a message follows it,
    /// so there is no continuation to append (see `episode` docs).
    #[error("chat template is not append-only: it does not write the last assistant message once the environment answers, so the episode cannot be continued")]
    TemplateNotAppendOnly,
    /// An external environment process failed, timed out or broke the protocol.
    #[error("external environment `{command}`: {reason}")]
    External {
        /// The command line.
        command: String,
        /// What went wrong.
        reason: String,
    },
}

/// Result with [`EnvError`].
pub type Result<T> = std::result::Result<T, EnvError>;
