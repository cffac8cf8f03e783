//! A reward computed by an external command, started once and kept running: each completion is
//! written to its stdin as one JSON line (`{"prompt", "completion", ...fields}`), and it
//! answers one line per completion, in order (see [`super::parse_reply`]). A reply that does not
//! come within `timeout_s` fails that completion; a command that exits or times out is restarted
//! for the next completion; a reply that is not valid JSON fails that completion only.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

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
            let line = match serde_json::to_string(s) {
                Ok(l) => l,
                Err(e) => {
                    out.push(Err(RewardFailure::BadReference(e.to_string())));
                    continue;
                }
            };
            let sent = writeln!(run.stdin, "{line}").and_then(|_| run.stdin.flush());
            let deadline = Instant::now() + timeout;
            let reply = match sent {
                Err(e) => Err(RewardFailure::Crash(format!("command stdin closed: {e}"))),
                Ok(()) => match run
                    .lines
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    Ok(Ok(text)) => match serde_json::from_str(&text) {
                        Ok(v) => super::parse_reply(&v),
                        Err(e) => {
                            let t: String = text.chars().take(200).collect();
                            Err(RewardFailure::MalformedReply(format!("{e}: {t}")))
                        }
                    },
                    Ok(Err(e)) => Err(RewardFailure::Crash(format!("reading reply: {e}"))),
                    Err(RecvTimeoutError::Timeout) => Err(RewardFailure::Timeout(timeout)),
                    Err(RecvTimeoutError::Disconnected) => {
                        let status = run.child.try_wait().ok().flatten();
                        Err(RewardFailure::Crash(format!("command exited ({status:?})")))
                    }
                },
            };
            // Out of sync or dead: restart before the next completion.
            if matches!(
                reply,
                Err(RewardFailure::Timeout(_)) | Err(RewardFailure::Crash(_))
            ) && !matches!(&reply, Err(RewardFailure::Crash(m)) if m.starts_with("scorer reported"))
            {
                if let Some(r) = state.0.take() {
                    r.kill();
                }
            }
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
