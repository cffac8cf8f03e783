//! Environments in another process, speaking JSON lines over stdin/stdout, so environments can
//! be written in Python (or anything). One process serves one episode at a time; a new
//! `reset` starts the next episode in the same process.
//!
//! Protocol (one JSON object per line; the process must flush after each reply). Every request
//! carries `request_id` (1, 2, ... in each process) and every reply must echo it:
//! - `{"request_id": 1, "op": "reset", "row": {...}}` →
//!   `{"request_id": 1, "messages": [{"role": "user", "content": "..."}]}`
//! - `{"request_id": 2, "op": "step", "action": "..."}` →
//!   `{"request_id": 2, "observation": [{"role": ..., "content": ...}], "reward": 0.0, "done": false}`
//!   (`observation` and `reward` may be omitted; `done` defaults to false)
//! - Either reply may instead be `{"request_id": n, "error": "..."}`.
//! - Stdout lines that are not replies (not JSON, or JSON that is not an object with
//!   `request_id` or a reply key) are skipped, up to [`MAX_SKIPPED_LINES`] per reply.
//! - A reply with another `request_id`, one without it (unless `legacy_replies = true`), too many
//!   skipped lines, a timeout or an exit fail the call and stop the process; the next `reset`
//!   starts a fresh one (a `step` fails: the episode's state died with the process).
//! - When the environment is dropped, stdin is closed; the process should exit. It is killed
//!   if it has not exited shortly after.
//!
//! Stderr is inherited (it shows in the run's log). Each reply must arrive within `timeout_s`.
//! The process inherits oxrl's environment unless `env` lists the variables to pass (see
//! [`oxrl_rewards::json_lines::apply_env_allowlist`]); secrets go there, not in `command`. The
//! process and the id matching are [`oxrl_rewards::json_lines`]'s, shared with the `command`
//! reward.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use oxrl_rewards::json_lines::{check_env_allowlist, JsonLinesProcess, Protocol};
pub use oxrl_rewards::json_lines::{MAX_SKIPPED_LINES, REQUEST_ID};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::chat_template::Message;
use crate::episode::{Environment, StepResult};
use crate::error::{EnvError, Result};
use crate::row::Row;
use crate::tasks::{RewardKind, Task};

/// Keys that make an object without `request_id` an (id-less) reply rather than a stray print.
const REPLY_KEYS: &[&str] = &["messages", "observation", "reward", "done", "error"];

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
    /// Variables passed from oxrl's environment (e.g. `["OPENAI_API_KEY"]`); the process then
    /// gets only these plus `PATH`, `HOME`, `LANG`, `LC_ALL`, `TMPDIR`. `None` (the default):
    /// it inherits oxrl's whole environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Accept replies without `request_id` (processes written before ids existed); replies
    /// that carry one are still checked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_replies: bool,
}

/// A running external environment process.
pub struct ExternalEnv {
    cfg: ExternalConfig,
    cwd: Option<PathBuf>,
    command: String,
    /// `None` after a failure stopped the process (the next `reset` starts a new one).
    process: Option<JsonLinesProcess>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct ResetReply {
    messages: Vec<Message>,
}

fn start_process(
    cfg: &ExternalConfig,
    cwd: Option<&Path>,
) -> std::result::Result<JsonLinesProcess, String> {
    let (program, args) = cfg
        .command
        .split_first()
        .ok_or_else(|| "empty command".to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    JsonLinesProcess::spawn(cmd, cfg.env.as_deref()).map_err(|e| format!("cannot start: {e}"))
}

impl ExternalEnv {
    /// Starts the process (in `cwd` when given).
    pub fn spawn(cfg: &ExternalConfig, cwd: Option<&Path>) -> Result<Self> {
        let command = cfg.command.join(" ");
        let fail = |reason: String| EnvError::External {
            command: command.clone(),
            reason,
        };
        if !(cfg.timeout_s > 0.0 && cfg.timeout_s.is_finite()) {
            return Err(fail(format!(
                "timeout_s must be positive, got {}",
                cfg.timeout_s
            )));
        }
        check_env_allowlist(cfg.env.as_deref()).map_err(fail)?;
        let process = start_process(cfg, cwd).map_err(fail)?;
        Ok(Self {
            cfg: cfg.clone(),
            cwd: cwd.map(Path::to_path_buf),
            command,
            process: Some(process),
            timeout: Duration::from_secs_f64(cfg.timeout_s),
        })
    }

    fn fail(&self, reason: impl Into<String>) -> EnvError {
        EnvError::External {
            command: self.command.clone(),
            reason: reason.into(),
        }
    }

    /// Sends one request (with a fresh `request_id`) and waits for the reply that echoes it.
    /// A reply that is late, missing, for another request or without an id leaves the streams
    /// out of step, so the process is stopped (never reading a stale reply as a fresh one); a
    /// later `reset` starts a new process, a later `step` fails.
    fn request(&mut self, request: Value) -> Result<Value> {
        if self.process.is_none() && request["op"] == "reset" {
            let process = start_process(&self.cfg, self.cwd.as_deref())
                .map_err(|e| self.fail(format!("restarting after an earlier failure: {e}")))?;
            self.process = Some(process);
        }
        let reply = match self.exchange(request) {
            Ok(reply) => reply,
            Err(reason) => {
                self.stop();
                return Err(self.fail(reason));
            }
        };
        if let Some(err) = reply.get("error").filter(|e| !e.is_null()) {
            return Err(self.fail(format!("environment error: {err}")));
        }
        Ok(reply)
    }

    /// Writes `request` and reads lines until its reply; `Err` says what went wrong.
    fn exchange(&mut self, request: Value) -> std::result::Result<Value, String> {
        let protocol = Protocol {
            timeout: self.timeout,
            reply_keys: REPLY_KEYS,
            numbers_are_replies: false,
            legacy_replies: self.cfg.legacy_replies,
        };
        let process = self
            .process
            .as_mut()
            .ok_or("the process was stopped after an earlier failure")?;
        let Value::Object(request) = request else {
            return Err("a request must be a JSON object".into());
        };
        process
            .request(request, &protocol)
            .map_err(|e| e.to_string())
    }

    /// Closes the process's input and kills it.
    fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill();
        }
    }
}

impl Environment for ExternalEnv {
    fn reset(&mut self, row: &Row) -> Result<Vec<Message>> {
        let reply = self.request(json!({"op": "reset", "row": row}))?;
        let parsed: ResetReply = serde_json::from_value(reply)
            .map_err(|e| self.fail(format!("bad reset reply: {e}")))?;
        Ok(parsed.messages)
    }

    fn step(&mut self, action: &str) -> Result<StepResult> {
        let reply = self.request(json!({"op": "step", "action": action}))?;
        serde_json::from_value(reply).map_err(|e| self.fail(format!("bad step reply: {e}")))
    }
}

impl Drop for ExternalEnv {
    fn drop(&mut self) {
        // Closing stdin is the shutdown signal; give the process a moment, then kill it.
        if let Some(p) = self.process.take() {
            p.close(Duration::from_millis(500));
        }
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
            env: None,
            legacy_replies: false,
        }
    }

    #[test]
    fn error_replies_bad_json_silence_and_exit_are_errors() {
        let row = Row::from_pairs("r", []);
        // Generous timeouts where a reply is due (a loaded CI machine starts Python slowly).
        let cases = [
            (
                "import json, sys\nfor l in sys.stdin: print(json.dumps({'request_id': json.loads(l)['request_id'], 'error': 'nope'}), flush=True)",
                30.0,
                &["environment error: \"nope\""][..],
            ),
            // A stray line is skipped; the reply it stood for never comes.
            (
                "import sys\nfor l in sys.stdin: print('hello', flush=True)",
                1.0,
                &["not JSON"],
            ),
            (
                "import sys\nfor l in sys.stdin: print('{\"messages\": []}', flush=True)",
                30.0,
                &["no `request_id`"],
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
        let slow = "import json, sys, time\nfor l in sys.stdin:\n    time.sleep(1.0)\n    print(json.dumps({'request_id': json.loads(l)['request_id'], 'messages': []}), flush=True)";
        let mut env = ExternalEnv::spawn(&python(slow, 0.3), None).unwrap();
        let row = Row::from_pairs("r", []);
        assert!(env
            .reset(&row)
            .unwrap_err()
            .to_string()
            .contains("no reply"));
        std::thread::sleep(Duration::from_millis(1200)); // the late reply has arrived by now
                                                         // The episode died with the process: a step cannot go on.
        let err = env.step("x").unwrap_err().to_string();
        assert!(err.contains("stopped after an earlier failure"), "{err}");
        // A reset starts a fresh process (as slow): the old process's late reply is never read.
        let err = env.reset(&row).unwrap_err().to_string();
        assert!(err.contains("no reply"), "{err}");
    }

    /// A guessing-free echo environment: `reset` opens with the row's `text`, `step` replies
    /// with the action, optionally after stray stdout lines or with a wrong id.
    const ECHO_ENV: &str = r#"import json, sys
for line in sys.stdin:
    req = json.loads(line)
    rid = req.get("request_id")
    if req["op"] == "reset":
        reply = {"messages": [{"role": "user", "content": req["row"]["text"]}]}
    else:
        a = req["action"]
        if a == "debug":
            print("debug: got", a, flush=True)
        if a == "wrong":
            rid = (rid or 0) + 1000
        reply = {"observation": [{"role": "user", "content": "echo " + a}], "reward": len(a)}
    print(json.dumps({"request_id": rid, **reply}), flush=True)
"#;

    fn echo_row(text: &str) -> Row {
        Row::from_pairs("r", [("text", json!(text))])
    }

    fn observed(r: &StepResult) -> (String, f64) {
        (r.observation[0].content.clone(), r.reward)
    }

    #[test]
    fn banner_and_debug_lines_do_not_shift_replies() {
        let banner = "import json\nprint('env v0.1 starting', flush=True)\nprint(json.dumps({'log': 'ready'}), flush=True)\n";
        let script = format!("{banner}{ECHO_ENV}");
        let mut env = ExternalEnv::spawn(&python(&script, 30.0), None).unwrap();
        let opening = env.reset(&echo_row("hello")).unwrap();
        assert_eq!(opening[0].content, "hello", "the banner is skipped");
        assert_eq!(observed(&env.step("ab").unwrap()), ("echo ab".into(), 2.0));
        assert_eq!(
            observed(&env.step("debug").unwrap()),
            ("echo debug".into(), 5.0)
        );
        assert_eq!(
            observed(&env.step("abc").unwrap()),
            ("echo abc".into(), 3.0)
        );
    }

    #[test]
    fn a_wrong_id_fails_the_call_and_the_next_reset_restarts_the_process() {
        let mut env = ExternalEnv::spawn(&python(ECHO_ENV, 30.0), None).unwrap();
        env.reset(&echo_row("one")).unwrap();
        let err = env.step("wrong").unwrap_err().to_string();
        assert!(err.contains("request_id"), "{err}");
        let err = env.step("ab").unwrap_err().to_string();
        assert!(err.contains("stopped after an earlier failure"), "{err}");
        let opening = env.reset(&echo_row("two")).unwrap();
        assert_eq!(
            opening[0].content, "two",
            "a fresh process serves the next episode"
        );
        assert_eq!(observed(&env.step("ab").unwrap()), ("echo ab".into(), 2.0));
    }

    #[test]
    fn missing_program_and_bad_timeout_are_reported() {
        let mut cfg = python("", 1.0);
        cfg.command = vec!["/nonexistent/program".into()];
        assert!(ExternalEnv::spawn(&cfg, None).is_err());
        assert!(ExternalEnv::spawn(&python("", 0.0), None).is_err());
    }
}
