//! A reward computed by an external command, started once and kept running: each completion is
//! written to its stdin as one JSON line (`{"request_id": n, "prompt", "completion", ...fields}`),
//! and it answers one line per completion, echoing `request_id` (see [`super::parse_reply`] for
//! the rest of the reply). `request_id` counts up from 1 in each process; a reply is matched to
//! its request by it, never by position alone:
//! - stdout lines that are not replies (not JSON, or JSON that is neither a number nor an object
//!   with `request_id`, `score` or `error`: a banner, a debug print) are skipped, up to
//!   [`MAX_SKIPPED_LINES`](crate::json_lines::MAX_SKIPPED_LINES) per reply; more fail that completion and restart the command;
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
//! gets only those and [`BASE_ENV`](crate::json_lines::BASE_ENV)); secrets belong there, never
//! in `command` (argv is visible to every user through `ps`). The process and its protocol are
//! [`crate::json_lines`]'s.

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::json_lines::{
    check_env_allowlist, ExchangeError, JsonLinesProcess, Protocol, REQUEST_ID,
};
use crate::{Completion, Error, Reward, RewardFailure, Score};

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
    /// gets only these and [`BASE_ENV`](crate::json_lines::BASE_ENV). `None` (the default): it inherits oxrl's whole
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

/// The `command` reward.
pub struct CommandReward {
    cfg: CommandConfig,
    state: Mutex<(Option<JsonLinesProcess>, u32)>,
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

fn start(cfg: &CommandConfig) -> std::io::Result<JsonLinesProcess> {
    let mut cmd = Command::new(&cfg.command[0]);
    cmd.args(&cfg.command[1..]);
    if let Some(d) = &cfg.cwd {
        cmd.current_dir(d);
    }
    JsonLinesProcess::spawn(cmd, cfg.env.as_deref())
}

/// What a reply looks like: a number, or an object with `score` or `error`.
fn protocol(cfg: &CommandConfig) -> Protocol {
    Protocol {
        timeout: Duration::from_secs_f64(cfg.timeout_s.max(0.001)),
        reply_keys: &["score", "error"],
        numbers_are_replies: true,
        legacy_replies: cfg.legacy_replies,
    }
}

/// A failed exchange as the failure of its completion.
fn failure(e: &ExchangeError) -> RewardFailure {
    match e {
        ExchangeError::Timeout(t) => RewardFailure::Timeout(*t),
        ExchangeError::Write(_) | ExchangeError::Read(_) | ExchangeError::Exited(_) => {
            RewardFailure::Crash(format!("command: {e}"))
        }
        _ => RewardFailure::MalformedReply(e.to_string()),
    }
}

impl Reward for CommandReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        let Ok(mut state) = self.state.lock() else {
            return vec![
                Err(RewardFailure::Crash("reward state poisoned".into()));
                completions.len()
            ];
        };
        let protocol = protocol(&self.cfg);
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
            let request = match serde_json::to_value(s) {
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
            let reply = run.request(request, &protocol);
            // Out of step or dead: restart before the next completion.
            if reply.as_ref().is_err_and(ExchangeError::needs_restart) {
                if let Some(r) = state.0.take() {
                    r.kill();
                }
            }
            let reply = match reply {
                Ok(v) => super::parse_reply(&v),
                Err(e) => Err(failure(&e)),
            };
            out.push(reply);
        }
        out
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
