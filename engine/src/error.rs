//! The engine's error type.

use std::path::PathBuf;

/// Errors from loading and running models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file exists but its content is not what it should be.
    #[error("{path}: {msg}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The model's `architectures[0]` is not one oxrl implements.
    #[error("{path}: unsupported architecture {arch:?} (supported: {supported})")]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// The architecture named there.
        arch: String,
        /// The supported ones.
        supported: String,
    },
    /// Weights do not fit the model: missing, unexpected or mis-shaped tensors.
    #[error("{path}: weights do not match the model:\n{report}")]
    WeightMismatch {
        /// The weights file (or directory).
        path: PathBuf,
        /// One line per problem, naming the tensor.
        report: String,
    },
    /// A tokenizer problem.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Invalid input from the caller.
    #[error("{0}")]
    Invalid(String),
    /// A c10d operation failed on this rank: a peer died or hung past the timeout, or the
    /// ranks could not meet.
    #[error("rank {rank}: {op} failed: {msg}")]
    Collective {
        /// This process's rank.
        rank: usize,
        /// The operation (`rendezvous`, `all_reduce`, `broadcast`, `barrier`).
        op: &'static str,
        /// c10d's message.
        msg: String,
    },
    /// A libtorch error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A complaint about the content of `path`.
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadFile {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
