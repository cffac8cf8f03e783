//! A reward computed by an external command, started once and kept running: each completion is
//! written to its stdin as one JSON line (`{"request_id": n, "prompt", "completion", ...fields}`),
//! and it answers one line per completion, echoing `request_id` (see [`super::parse_reply`] for
//! the rest of the reply). `request_id` counts up from 1 in each process; a reply is matched to
//! its request by it, never by position alone:
//! - stdout lines that are not replies (not JSON, or JSON that is neither a number nor an object
//!   with `request_id`, `score` or `error`: a banner, a debug print) are skipped, up to
//!   [`MAX_SKIPPED_LINES`] per reply; more fail that completion and restart the command;
//! - a reply whose `request_id` is not the request's fails that completion (`MalformedReply`)
//!   and restarts the command, so the next completion cannot read a stale reply;
//! - a reply without `request_id` (a bare number, `{"score": x}`) fails its completion
//!   (`MalformedReply`, telling the author to echo the id) unless the config sets
//!   `legacy_replies = true`, which accepts such replies in order, as before ids existed;
//! - a reply that does not come within `timeout_s`, or a command that exits, fails that
//!   completion and the command is restarted for the next one; a reply with the right id but
//!   no numeric score fails that completion only.
//!
//! The command inherits oxrl's environment unless `env` lists the variables to pass (then it
//! gets only those and [`BASE_ENV`]); secrets belong there, never in `command` (argv is visible
//! to every user through `ps`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use serde_json::Value;

use crate::{Completion, Error, Reward, RewardFailure, Score};

/// Non-reply stdout lines skipped while waiting for one reply; one more fails the completion and
/// restarts the command.
pub const MAX_SKIPPED_LINES: usize = 32;

/// The key each request carries and each reply must echo.
pub const REQUEST_ID: &str = "request_id";

/// Variables a command with an `env` allowlist still gets from oxrl's environment (when set):
/// enough to find programs and run an interpreter with the usual locale and temp dir.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR"];

/// Gives `cmd` a clean environment holding only [`BASE_ENV`] and `allow` (each copied from this
/// process's environment when set there), or leaves it inheriting everything when `allow` is
/// `None`. Used by the `command` reward and by external environments.
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
pub fn check_env_allowlist(allow: Option<&[String]>) -> std::result::Result<(), String> {
    for key in allow.unwrap_or_default() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("`env` entry {key:?} is not a variable name"));
        }
    }
    Ok(())
}

/// Options of the `command` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// Program and arguments, e.g. `["python3", "examples/rewards/length_reward.py"]`.
    pub command: Vec<String>,
    /// Seconds to wait for each reply.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Working directory of the command.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Most restarts over the reward's life before every completion fails fast.
    #[serde(default = "default_restarts")]
    pub max_restarts: u32,
    /// Variables passed from oxrl's environment (e.g. `["OPENAI_API_KEY"]`); the command then
    /// gets only these and [`BASE_ENV`]. `None` (the default): it inherits oxrl's whole
    /// environment.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Accept replies without `request_id`, in order (programs written before ids existed).
    /// Replies that do carry one are still checked.
    #[serde(default)]
    pub legacy_replies: bool,
}

fn default_timeout() -> f64 {
    30.0
}
fn default_restarts() -> u32 {
    100
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    /// The last `request_id` sent to this process.
    last_id: u64,
}

impl Running {
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `command` reward.
pub struct CommandReward {
    cfg: CommandConfig,
    state: Mutex<(Option<Running>, u32)>,
}

impl CommandReward {
    /// Starts the command; fails when it cannot be started.
    pub fn new(name: &str, cfg: CommandConfig) -> crate::Result<Self> {
        if cfg.command.is_empty() {
            return Err(Error::Config {
                name: name.into(),
                message: "`command` is empty".into(),
            });
        }
        check_env_allowlist(cfg.env.as_deref()).map_err(|message| Error::Config {
            name: name.into(),
            message,
        })?;
        let running = start(&cfg).map_err(|e| Error::Config {
            name: name.into(),
            message: format!("cannot start {:?}: {e}", cfg.command),
        })?;
        Ok(CommandReward {
            cfg,
            state: Mutex::new((Some(running), 0)),
        })
    }

    /// How many times the command was restarted.
    pub fn restarts(&self) -> u32 {
        self.state.lock().map(|s| s.1).unwrap_or(0)
    }
}

fn start(cfg: &CommandConfig) -> std::io::Result<Running> {
    let mut cmd = Command::new(&cfg.command[0]);
    cmd.args(&cfg.command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(d) = &cfg.cwd {
        cmd.current_dir(d);
    }
    apply_env_allowlist(&mut cmd, cfg.env.as_deref());
    let mut child = cmd.spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(Running {
        child,
        stdin,
        lines: rx,
        last_id: 0,
    })
}

impl Reward for CommandReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        let Ok(mut state) = self.state.lock() else {
            return vec![
                Err(RewardFailure::Crash("reward state poisoned".into()));
                completions.len()
            ];
        };
        let timeout = Duration::from_secs_f64(self.cfg.timeout_s.max(0.001));
        let mut out = Vec::with_capacity(completions.len());
        for s in completions {
            if state.0.is_none() {
                if state.1 >= self.cfg.max_restarts {
                    out.push(Err(RewardFailure::Crash(format!(
                        "command gave up after {} restarts",
                        state.1
                    ))));
                    continue;
                }
                state.1 += 1;
                match start(&self.cfg) {
                    Ok(r) => state.0 = Some(r),
                    Err(e) => {
                        out.push(Err(RewardFailure::Crash(format!("restart failed: {e}"))));
                        continue;
                    }
                }
            }
            let Some(run) = state.0.as_mut() else {
                continue;
            };
            if s.fields.contains_key(REQUEST_ID) {
                out.push(Err(RewardFailure::BadReference(format!(
                    "task field `{REQUEST_ID}` is reserved by the command protocol"
                ))));
                continue;
            }
            let mut request = match serde_json::to_value(s) {
                Ok(Value::Object(o)) => o,
                Ok(other) => {
                    let msg = format!("completion is not a JSON object: {other}");
                    out.push(Err(RewardFailure::BadReference(msg)));
                    continue;
                }
                Err(e) => {
                    out.push(Err(RewardFailure::BadReference(e.to_string())));
                    continue;
                }
            };
            run.last_id += 1;
            let id = run.last_id;
            request.insert(REQUEST_ID.into(), Value::from(id));
            let line = Value::Object(request).to_string();
            let sent = writeln!(run.stdin, "{line}").and_then(|_| run.stdin.flush());
            let (reply, restart) = match sent {
                Err(e) => (
                    Err(RewardFailure::Crash(format!("command stdin closed: {e}"))),
                    true,
                ),
                Ok(()) => await_reply(run, id, timeout, self.cfg.legacy_replies),
            };
            // Out of step or dead: restart before the next completion.
            if restart {
                if let Some(r) = state.0.take() {
                    r.kill();
                }
            }
            out.push(reply);
        }
        out
    }
}

/// What one stdout line is, while waiting for a reply.
enum Line {
    /// Not a reply (not JSON, or JSON without any reply key): skipped.
    Other,
    /// A reply, with its `request_id` if it has one.
    Reply(Value, Option<Value>),
}

fn classify(text: &str) -> Line {
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Number(_)) => Line::Reply(v, None),
        Ok(Value::Object(mut o)) => match o.remove(REQUEST_ID) {
            Some(id) => Line::Reply(Value::Object(o), Some(id)),
            None if o.contains_key("score") || o.contains_key("error") => {
                Line::Reply(Value::Object(o), None)
            }
            None => Line::Other,
        },
        _ => Line::Other,
    }
}

fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

/// Reads lines until the reply to request `id`; returns its score and whether the command must
/// be restarted (dead, hung, or out of step).
fn await_reply(run: &mut Running, id: u64, timeout: Duration, legacy: bool) -> (Score, bool) {
    let deadline = Instant::now() + timeout;
    let mut skipped = 0usize;
    let mut first_skipped = String::new();
    loop {
        let text = match run
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                return (
                    Err(RewardFailure::Crash(format!("reading reply: {e}"))),
                    true,
                )
            }
            Err(RecvTimeoutError::Timeout) if skipped > 0 => {
                return (
                    Err(RewardFailure::MalformedReply(format!(
                        "no reply with {REQUEST_ID} {id} within {timeout:?}; the command printed \
                         {skipped} stdout line(s) that are not replies (first: {first_skipped:?}); \
                         write logs to stderr"
                    ))),
                    true,
                )
            }
            Err(RecvTimeoutError::Timeout) => return (Err(RewardFailure::Timeout(timeout)), true),
            Err(RecvTimeoutError::Disconnected) => {
                let status = run.child.try_wait().ok().flatten();
                return (
                    Err(RewardFailure::Crash(format!("command exited ({status:?})"))),
                    true,
                );
            }
        };
        match classify(&text) {
            Line::Other => {
                if skipped == 0 {
                    first_skipped = clip(&text);
                }
                skipped += 1;
                if skipped > MAX_SKIPPED_LINES {
                    return (
                        Err(RewardFailure::MalformedReply(format!(
                            "more than {MAX_SKIPPED_LINES} stdout lines that are not replies \
                             while waiting for {REQUEST_ID} {id} (first: {first_skipped:?}); \
                             write logs to stderr"
                        ))),
                        true,
                    );
                }
            }
            Line::Reply(v, Some(got)) if got.as_u64() == Some(id) => {
                return (super::parse_reply(&v), false)
            }
            Line::Reply(_, Some(got)) => {
                return (
                    Err(RewardFailure::MalformedReply(format!(
                        "reply carries {REQUEST_ID} {got}, expected {id} (echo the request's \
                         {REQUEST_ID} unchanged); restarting the command to resynchronise: {}",
                        clip(&text)
                    ))),
                    true,
                )
            }
            Line::Reply(v, None) if legacy => return (super::parse_reply(&v), false),
            Line::Reply(_, None) => {
                return (
                    Err(RewardFailure::MalformedReply(format!(
                        "reply has no `{REQUEST_ID}`: echo the request's `{REQUEST_ID}` in every \
                         reply, e.g. {{\"{REQUEST_ID}\": {id}, \"score\": 0.5}} (or set \
                         `legacy_replies = true`): {}",
                        clip(&text)
                    ))),
                    false,
                )
            }
        }
    }
}

impl Drop for CommandReward {
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(r) = s.0.take() {
                r.kill();
            }
        }
    }
}
