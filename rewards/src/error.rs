//! Error types: [`RewardFailure`] is a per-completion outcome that the run counts and goes on;
//! [`Error`] is a configuration or I/O problem that stops the caller.

use std::time::Duration;

/// Why one completion could not be scored. A failure never stops a run: the combination
/// scores it as its reward's `failure_score` (0 by default) and counts it by kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardFailure {
    /// Nothing scoreable could be extracted from the completion.
    #[error("parse failure: {0}")]
    Parse(String),
    /// The check ran past its time limit.
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    /// The checker (child process, external command, server) died or misbehaved.
    #[error("crash: {0}")]
    Crash(String),
    /// The reference (gold answer, tests, boxes) is missing or unusable.
    #[error("bad reference: {0}")]
    BadReference(String),
    /// A resource limit of the sandbox was hit (memory, output, file size, processes).
    #[error("resource limit: {0}")]
    ResourceLimit(String),
    /// A remote endpoint or external program answered something that is not a valid reply.
    #[error("malformed reply: {0}")]
    MalformedReply(String),
    /// A network or I/O error talking to an external scorer.
    #[error("transport: {0}")]
    Transport(String),
}

/// The kind of a [`RewardFailure`], used as a metric label (a small fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// See [`RewardFailure::Parse`].
    Parse,
    /// See [`RewardFailure::Timeout`].
    Timeout,
    /// See [`RewardFailure::Crash`].
    Crash,
    /// See [`RewardFailure::BadReference`].
    BadReference,
    /// See [`RewardFailure::ResourceLimit`].
    ResourceLimit,
    /// See [`RewardFailure::MalformedReply`].
    MalformedReply,
    /// See [`RewardFailure::Transport`].
    Transport,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 7] = [
        FailureKind::Parse,
        FailureKind::Timeout,
        FailureKind::Crash,
        FailureKind::BadReference,
        FailureKind::ResourceLimit,
        FailureKind::MalformedReply,
        FailureKind::Transport,
    ];

    /// The metric label value for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Parse => "parse",
            FailureKind::Timeout => "timeout",
            FailureKind::Crash => "crash",
            FailureKind::BadReference => "bad_reference",
            FailureKind::ResourceLimit => "resource_limit",
            FailureKind::MalformedReply => "malformed_reply",
            FailureKind::Transport => "transport",
        }
    }
}

impl RewardFailure {
    /// The kind of this failure.
    pub fn kind(&self) -> FailureKind {
        match self {
            RewardFailure::Parse(_) => FailureKind::Parse,
            RewardFailure::Timeout(_) => FailureKind::Timeout,
            RewardFailure::Crash(_) => FailureKind::Crash,
            RewardFailure::BadReference(_) => FailureKind::BadReference,
            RewardFailure::ResourceLimit(_) => FailureKind::ResourceLimit,
            RewardFailure::MalformedReply(_) => FailureKind::MalformedReply,
            RewardFailure::Transport(_) => FailureKind::Transport,
        }
    }
}

/// Errors that stop the caller: bad configuration, unknown reward names, I/O.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No reward is registered under this name.
    #[error("unknown reward `{name}` (known: {known})")]
    UnknownReward {
        /// The name asked for.
        name: String,
        /// The registered names, comma separated.
        known: String,
    },
    /// The options of a reward did not deserialize or are inconsistent.
    #[error("bad config for reward `{name}`: {message}")]
    Config {
        /// The reward whose options are bad.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// An input line could not be read as a completion.
    #[error("line {line}: {message}")]
    Input {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Reading or writing failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias for this crate's fallible set-up functions.
pub type Result<T> = std::result::Result<T, Error>;
