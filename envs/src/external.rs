//! Environments in another process, speaking JSON lines over stdin/stdout, so environments can
//! be written in Python (or anything). One process serves one episode at a time; a new
//! `reset` starts the next episode in the same process.
//!
//! Protocol (one JSON object per line; the process must flush after each reply):
//! - `{"op": "reset", "row": {...}}` → `{"messages": [{"role": "user", "content": "..."}]}`
//! - `{"op": "step", "action": "..."}` →
//!   `{"observation": [{"role": ..., "content": ...}], "reward": 0.0, "done": false}`
//!   (`observation` and `reward` may be omitted; `done` defaults to false)
//! - Either reply may instead be `{"error": "..."}`.
//! - When the environment is dropped, stdin is closed; the process should exit. It is killed
//!   if it has not exited shortly after.
//!
//! Stderr is inherited (it shows in the run's log). Each reply must arrive within `timeout_s`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::chat_template::Message;
use crate::episode::{Environment, StepResult};
use crate::error::{EnvError, Result};
use crate::row::Row;
use crate::tasks::{RewardKind, Task};

fn default_timeout() -> f64 {
    30.0
}

/// `[env.external]` in a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// Program and arguments, e.g. `["python3", "examples/envs/guess_env.py"]`.
    pub command: Vec<String>,
    /// Seconds to wait for each reply (default 30).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// Fields each dataset row must have (checked at load time, with line numbers).
    #[serde(default)]
    pub required_fields: Vec<String>,
}

/// A running external environment process.
pub struct ExternalEnv {
    command: String,
    child: Child,
    stdin: Option<ChildStdin>,
    replies: Receiver<std::io::Result<String>>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ResetReply {
    messages: Vec<Message>,
}

impl ExternalEnv {
    /// Starts the process (in `cwd` when given).
    pub fn spawn(cfg: &ExternalConfig, cwd: Option<&Path>) -> Result<Self> {
        let command = cfg.command.join(" ");
        let fail = |reason: String| EnvError::External {
            command: command.clone(),
            reason,
        };
        let (program, args) = cfg
            .command
            .split_first()
            .ok_or_else(|| fail("empty command".into()))?;
        if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) {
            return Err(fail(format!(
                "timeout_s must be positive, got {}",
                cfg.timeout_s
            )));
        }
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot start: {e}")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no stdout".into()))?;
        let (tx, replies) = mpsc::channel();
        // A reader thread lets `request` wait with a timeout; it ends when stdout closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            stdin: child.stdin.take(),
            command,
            child,
            replies,
            timeout: Duration::from_secs_f64(cfg.timeout_s),
        })
    }

    fn fail(&self, reason: impl Into<String>) -> EnvError {
        EnvError::External {
            command: self.command.clone(),
            reason: reason.into(),
        }
    }

    /// Sends one request line and waits for one reply object. A reply that is late, missing
    /// or not JSON leaves request and reply streams out of step, so the process is stopped
    /// and every later request fails (never reading a stale reply as a fresh one).
    fn request(&mut self, request: &Value) -> Result<Value> {
        let text = match self.exchange(request) {
            Ok(text) => text,
            Err(reason) => {
                self.stop();
                return Err(self.fail(reason));
            }
        };
        let reply: Value = match serde_json::from_str(&text) {
            Ok(reply) => reply,
            Err(e) => {
                self.stop();
                return Err(self.fail(format!("reply is not JSON ({e}): {text}")));
            }
        };
        if let Some(err) = reply.get("error") {
            return Err(self.fail(format!("environment error: {err}")));
        }
        Ok(reply)
    }

    /// Writes `request` and reads one line; `Err` says what went wrong.
    fn exchange(&mut self, request: &Value) -> std::result::Result<String, String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or("the process was stopped after an earlier failure")?;
        let line = format!("{request}\n");
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| format!("cannot write request: {e}"))?;
        match self.replies.recv_timeout(self.timeout) {
            Ok(Ok(text)) => Ok(text),
            Ok(Err(e)) => Err(format!("cannot read reply: {e}")),
            Err(RecvTimeoutError::Timeout) => Err(format!("no reply within {:?}", self.timeout)),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.child.try_wait().ok().flatten();
                Err(format!("process exited ({status:?}) without replying"))
            }
        }
    }

    /// Closes the process's input and kills it.
    fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Environment for ExternalEnv {
    fn reset(&mut self, row: &Row) -> Result<Vec<Message>> {
        let reply = self.request(&json!({"op": "reset", "row": row}))?;
        let parsed: ResetReply = serde_json::from_value(reply)
            .map_err(|e| self.fail(format!("bad reset reply: {e}")))?;
        Ok(parsed.messages)
    }

    fn step(&mut self, action: &str) -> Result<StepResult> {
        let reply = self.request(&json!({"op": "step", "action": action}))?;
        serde_json::from_value(reply).map_err(|e| self.fail(format!("bad step reply: {e}")))
    }
}

impl Drop for ExternalEnv {
    fn drop(&mut self) {
        // Closing stdin is the shutdown signal; give the process a moment, then kill it.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The task behind `task = "external"`: rows come from the data file (or are generated as
/// `{"id", "seed"}` so the process can make its own problem), episodes from the process.
#[derive(Debug, Clone)]
pub struct ExternalTask {
    cfg: ExternalConfig,
    cwd: Option<PathBuf>,
}

impl ExternalTask {
    /// A task whose environments run `cfg.command` in `cwd`.
    pub fn new(cfg: ExternalConfig, cwd: Option<PathBuf>) -> Self {
        Self { cfg, cwd }
    }

    /// Fields the config says each row must have.
    pub fn config_required_fields(&self) -> &[String] {
        &self.cfg.required_fields
    }
}

impl Task for ExternalTask {
    fn name(&self) -> &'static str {
        "external"
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Environment
    }
    fn required_fields(&self) -> &'static [&'static str] {
        &[]
    }
    fn instruction(&self) -> &'static str {
        ""
    }
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        Ok((0..n)
            .map(|i| {
                Row::from_pairs(
                    format!("external-{seed}-{i}"),
                    [("seed", json!(seed.wrapping_add(i as u64)))],
                )
            })
            .collect())
    }
    fn opening(&self, _row: &Row) -> Result<Vec<Message>> {
        Err(EnvError::Config(
            "external tasks open episodes through their process".into(),
        ))
    }
    fn reference(&self, _row: &Row) -> Result<Vec<String>> {
        Err(EnvError::Config(
            "external environments have no reference solution".into(),
        ))
    }
    fn score(&self, _row: &Row, _completion: &str) -> Result<f64> {
        Err(EnvError::Config(
            "external environments are scored by their process".into(),
        ))
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(ExternalEnv::spawn(
            &self.cfg,
            self.cwd.as_deref(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(script: &str, timeout_s: f64) -> ExternalConfig {
        ExternalConfig {
            command: vec!["python3".into(), "-c".into(), script.into()],
            timeout_s,
            required_fields: vec![],
        }
    }

    #[test]
    fn error_replies_bad_json_silence_and_exit_are_errors() {
        let row = Row::from_pairs("r", []);
        // Generous timeouts where a reply is due (a loaded CI machine starts Python slowly).
        let cases = [
            (
                "import sys\nfor l in sys.stdin: print('{\"error\": \"nope\"}', flush=True)",
                30.0,
                &["nope"][..],
            ),
            (
                "import sys\nfor l in sys.stdin: print('hello', flush=True)",
                30.0,
                &["not JSON"],
            ),
            ("import time\ntime.sleep(60)", 0.5, &["no reply"]),
            // Exiting at once: the write or the read fails, depending on timing.
            ("pass", 30.0, &["exited", "cannot write"]),
        ];
        for (script, timeout_s, expected) in cases {
            let mut env = ExternalEnv::spawn(&python(script, timeout_s), None).unwrap();
            let err = env.reset(&row).unwrap_err().to_string();
            assert!(expected.iter().any(|e| err.contains(e)), "{script}: {err}");
        }
    }

    #[test]
    fn a_late_reply_is_never_taken_for_the_next_one() {
        let slow = "import sys, time\nfor l in sys.stdin:\n    time.sleep(1.0)\n    print('{\"messages\": []}', flush=True)";
        let mut env = ExternalEnv::spawn(&python(slow, 0.3), None).unwrap();
        let row = Row::from_pairs("r", []);
        assert!(env
            .reset(&row)
            .unwrap_err()
            .to_string()
            .contains("no reply"));
        std::thread::sleep(Duration::from_millis(1200)); // the late reply has arrived by now
        let err = env.reset(&row).unwrap_err().to_string();
        assert!(err.contains("stopped after an earlier failure"), "{err}");
    }

    #[test]
    fn missing_program_and_bad_timeout_are_reported() {
        let mut cfg = python("", 1.0);
        cfg.command = vec!["/nonexistent/program".into()];
        assert!(ExternalEnv::spawn(&cfg, None).is_err());
        assert!(ExternalEnv::spawn(&python("", 0.0), None).is_err());
    }
}
