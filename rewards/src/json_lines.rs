//! A long-lived child process that speaks JSON lines: one request object per line on its
//! stdin, one reply per request on its stdout, matched by the `request_id` each request
//! carries and each reply echoes (1, 2, ... in each process). Shared by the `command` reward
//! and by external environments (`oxrl-envs`), which differ only in what a reply holds.
//!
//! While waiting for a reply, stdout lines that are not replies (not JSON, or JSON that is not
//! an object with `request_id` or one of the protocol's reply keys: a banner, a debug print)
//! are skipped, up to [`MAX_SKIPPED_LINES`]. Stderr is inherited. The process inherits oxrl's
//! environment unless an `env` allowlist names what to pass ([`apply_env_allowlist`]).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// The key each request carries and each reply must echo.
pub const REQUEST_ID: &str = "request_id";

/// Non-reply stdout lines skipped while waiting for one reply; one more is an error.
pub const MAX_SKIPPED_LINES: usize = 32;

/// Variables a process with an `env` allowlist still gets from oxrl's environment (when set):
/// enough to find programs and run an interpreter with the usual locale and temp dir.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"];

/// Gives `cmd` a clean environment holding only [`BASE_ENV`] and `allow` (each copied from this
/// process's environment when set there), or leaves it inheriting everything when `allow` is
/// `None`.
pub fn apply_env_allowlist(cmd: &mut Command, allow: Option<&[String]>) {
    let Some(allow) = allow else {
        return;
    };
    cmd.env_clear();
    for key in BASE_ENV
        .iter()
        .copied()
        .chain(allow.iter().map(String::as_str))
    {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
}

/// Checks an `env` allowlist: names must be non-empty and free of `=` and NUL.
pub fn check_env_allowlist(allow: Option<&[String]>) -> Result<(), String> {
    for key in allow.unwrap_or_default() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("`env` entry {key:?} is not a variable name"));
        }
    }
    Ok(())
}

/// How one protocol's replies look and how long they may take.
#[derive(Debug, Clone, Copy)]
pub struct Protocol {
    /// Longest wait for one reply.
    pub timeout: Duration,
    /// Keys that make an object without `request_id` an (id-less) reply, not a stray print.
    pub reply_keys: &'static [&'static str],
    /// Whether a bare JSON number is an (id-less) reply.
    pub numbers_are_replies: bool,
    /// Accept id-less replies, in order (programs written before ids existed).
    pub legacy_replies: bool,
}

/// Why a request got no reply.
#[derive(Debug)]
pub enum ExchangeError {
    /// The request could not be written.
    Write(std::io::Error),
    /// Stdout could not be read.
    Read(std::io::Error),
    /// Nothing came within the timeout.
    Timeout(Duration),
    /// Only non-reply lines came within the timeout.
    OnlyStrayLines {
        /// The request's id.
        id: u64,
        /// Lines skipped.
        skipped: usize,
        /// The first of them, clipped.
        first: String,
    },
    /// More than [`MAX_SKIPPED_LINES`] non-reply lines.
    TooManyStrayLines {
        /// The request's id.
        id: u64,
        /// The first of them, clipped.
        first: String,
    },
    /// The process exited.
    Exited(Option<ExitStatus>),
    /// A reply for another request: the streams are out of step.
    WrongId {
        /// The request's id.
        expected: u64,
        /// The id the reply carried.
        got: Value,
        /// The reply, clipped.
        text: String,
    },
    /// A reply without an id (and `legacy_replies` off).
    NoId {
        /// The request's id.
        expected: u64,
        /// The reply, clipped.
        text: String,
    },
}

impl ExchangeError {
    /// Whether the process must be stopped: it is dead, hung or out of step. Only a reply
    /// that forgot its id leaves the streams in step.
    pub fn needs_restart(&self) -> bool {
        !matches!(self, ExchangeError::NoId { .. })
    }
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Write(e) => write!(f, "cannot write request: {e}"),
            Self::Read(e) => write!(f, "cannot read reply: {e}"),
            Self::Timeout(t) => write!(f, "no reply within {t:?}"),
            Self::OnlyStrayLines { id, skipped, first } => write!(
                f,
                "no reply with {REQUEST_ID} {id}; the process printed {skipped} stdout line(s) \
                 that are not JSON replies (first: {first:?}); write logs to stderr"
            ),
            Self::TooManyStrayLines { id, first } => write!(
                f,
                "more than {MAX_SKIPPED_LINES} stdout lines that are not JSON replies while \
                 waiting for {REQUEST_ID} {id} (first: {first:?}); write logs to stderr"
            ),
            Self::Exited(status) => write!(f, "process exited ({status:?}) without replying"),
            Self::WrongId {
                expected,
                got,
                text,
            } => write!(
                f,
                "reply carries {REQUEST_ID} {got}, expected {expected} (echo the request's \
                 {REQUEST_ID} unchanged); the process is stopped, being out of step: {text}"
            ),
            Self::NoId { expected, text } => write!(
                f,
                "reply has no `{REQUEST_ID}`: echo the request's `{REQUEST_ID}` in every reply, \
                 e.g. {{\"{REQUEST_ID}\": {expected}, ...}} (or set `legacy_replies = true`): \
                 {text}"
            ),
        }
    }
}

/// A running JSON-lines process.
#[derive(Debug)]
pub struct JsonLinesProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    last_id: u64,
}

fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

impl JsonLinesProcess {
    /// Starts `cmd` with piped stdin/stdout, inherited stderr and the `env` allowlist.
    pub fn spawn(mut cmd: Command, env: Option<&[String]>) -> std::io::Result<Self> {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        apply_env_allowlist(&mut cmd, env);
        let mut child = cmd.spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("no stdin or stdout"));
        };
        let (tx, lines) = mpsc::channel();
        // A reader thread lets `request` wait with a timeout; it ends when stdout closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            lines,
            last_id: 0,
        })
    }

    /// Sends `request` with the next `request_id` and waits for the reply that echoes it;
    /// returns the reply without its id.
    pub fn request(
        &mut self,
        mut request: Map<String, Value>,
        protocol: &Protocol,
    ) -> Result<Value, ExchangeError> {
        self.last_id += 1;
        let id = self.last_id;
        request.insert(REQUEST_ID.into(), Value::from(id));
        writeln!(self.stdin, "{}", Value::Object(request))
            .and_then(|()| self.stdin.flush())
            .map_err(ExchangeError::Write)?;
        let deadline = Instant::now() + protocol.timeout;
        let mut skipped = 0usize;
        let mut first = String::new();
        loop {
            let text = match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(Ok(text)) => text,
                Ok(Err(e)) => return Err(ExchangeError::Read(e)),
                Err(RecvTimeoutError::Timeout) if skipped > 0 => {
                    return Err(ExchangeError::OnlyStrayLines { id, skipped, first })
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ExchangeError::Timeout(protocol.timeout))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ExchangeError::Exited(self.child.try_wait().ok().flatten()))
                }
            };
            let Some((reply, got)) = classify(&text, protocol) else {
                if skipped == 0 {
                    first = clip(&text);
                }
                skipped += 1;
                if skipped > MAX_SKIPPED_LINES {
                    return Err(ExchangeError::TooManyStrayLines { id, first });
                }
                continue;
            };
            return match got {
                Some(got) if got.as_u64() == Some(id) => Ok(reply),
                Some(got) => Err(ExchangeError::WrongId {
                    expected: id,
                    got,
                    text: clip(&text),
                }),
                None if protocol.legacy_replies => Ok(reply),
                None => Err(ExchangeError::NoId {
                    expected: id,
                    text: clip(&text),
                }),
            };
        }
    }

    /// Kills the process and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its stdin (the shutdown signal), gives it `grace` to exit, then kills it.
    pub fn close(self, grace: Duration) {
        let Self {
            mut child, stdin, ..
        } = self;
        drop(stdin);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A reply (without its id) and its `request_id`, or `None` for a stray line.
fn classify(text: &str, protocol: &Protocol) -> Option<(Value, Option<Value>)> {
    match serde_json::from_str::<Value>(text).ok()? {
        v @ Value::Number(_) if protocol.numbers_are_replies => Some((v, None)),
        Value::Object(mut o) => match o.remove(REQUEST_ID) {
            Some(id) => Some((Value::Object(o), Some(id))),
            None if protocol.reply_keys.iter().any(|k| o.contains_key(*k)) => {
                Some((Value::Object(o), None))
            }
            None => None,
        },
        _ => None,
    }
}
