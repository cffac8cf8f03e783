//! Code tasks in the HumanEval and MBPP formats, from small datasets shipped in
//! `envs/data/` (written for oxrl; `make_code_data.py` there regenerates them).
//!
//! Rows: `prompt`, `entry_point` (HumanEval), `solution` (reference), and `tests`: HumanEval rows carry a
//! string defining `check(candidate)`; MBPP rows carry a list of `assert` lines. The
//! completion's code is its last fenced code block (or the whole text); for HumanEval, when the
//! code does not define `entry_point`, the prompt is prepended (the model continued the body).
//!
//! [`program`] assembles what to run; [`run_python`] runs it with a time limit. That is a
//! self-check for shipped items, NOT a sandbox: training scores code with `oxrl-rewards`,
//! which applies OS limits.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{RewardKind, SingleTurn, Task};
use crate::chat_template::Message;
use crate::dataset::{parse_jsonl, LoadOptions, OnBadRow};
use crate::episode::Environment;
use crate::error::{EnvError, Result};
use crate::rng::Rng;
use crate::row::Row;

const HUMANEVAL_DATA: &str = include_str!("../../data/humaneval.jsonl");
const MBPP_DATA: &str = include_str!("../../data/mbpp.jsonl");
const HUMANEVAL_REQUIRED: &[&str] = &["prompt", "entry_point", "tests"];
const MBPP_REQUIRED: &[&str] = &["prompt", "tests"];
const INSTRUCTION: &str = "Reply with the complete Python function in a ```python code block.";

/// The code of a completion: its last fenced block, else the whole text.
pub fn extract_code(completion: &str) -> &str {
    let mut blocks = completion.split("```").skip(1).step_by(2);
    let Some(last) = blocks.by_ref().last() else {
        return completion;
    };
    // Drop the info string (`python`, `py`) on the fence line.
    match last.split_once('\n') {
        Some((info, body)) if !info.trim().contains(' ') => body,
        _ => last,
    }
}

/// The Python program that passes iff `completion` solves `row`.
pub fn program(task: &str, row: &Row, completion: &str) -> Result<String> {
    let code = extract_code(completion);
    match row.get("tests") {
        Some(Value::String(check)) => {
            let entry = row.require_str(task, "entry_point")?;
            let defines = code.contains(&format!("def {entry}"));
            let head = if defines {
                ""
            } else {
                row.require_str(task, "prompt")?
            };
            Ok(format!("{head}{code}\n\n{check}\n\ncheck({entry})\n"))
        }
        Some(Value::Array(asserts)) => {
            let lines: Option<Vec<&str>> = asserts.iter().map(Value::as_str).collect();
            let lines = lines.ok_or_else(|| row.bad(task, "`tests` must hold strings"))?;
            Ok(format!("{code}\n\n{}\n", lines.join("\n")))
        }
        _ => Err(row.bad(task, "`tests` must be a string or a list of asserts")),
    }
}

/// Runs `source` with `python3`; true if it exits 0 within `timeout`.
pub fn run_python(source: &str, timeout: Duration) -> Result<bool> {
    let fail = |reason: String| EnvError::External {
        command: "python3".into(),
        reason,
    };
    let mut child = Command::new("python3")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A program that exits before reading all input is not an error here.
        let _ = stdin.write_all(source.as_bytes());
    }
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| fail(e.to_string()))? {
            return Ok(status.success());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn shipped(task: &dyn Task, data: &str, n: usize, seed: u64) -> Result<Vec<Row>> {
    let fields = Default::default();
    let opts = LoadOptions {
        fields: &fields,
        required: task.required_fields(),
        on_bad_row: OnBadRow::Stop,
    };
    let mut rows = parse_jsonl(task.name(), data.as_bytes(), opts)?
        .dataset
        .rows()
        .to_vec();
    Rng::new(seed).shuffle(&mut rows);
    rows.truncate(n);
    Ok(rows)
}

/// Which of the two formats a code task uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Signature + docstring to complete; `tests` defines `check(candidate)`.
    HumanEval,
    /// A one-line description plus example asserts; `tests` is the assert list.
    Mbpp,
}

/// A code task over one shipped dataset.
#[derive(Debug, Clone, Copy)]
pub struct CodeTask {
    name: &'static str,
    data: &'static str,
    format: Format,
}

impl CodeTask {
    /// HumanEval-format problems: complete a function from its signature and docstring.
    pub const HUMANEVAL: CodeTask = CodeTask {
        name: "humaneval",
        data: HUMANEVAL_DATA,
        format: Format::HumanEval,
    };
    /// MBPP-format problems: a one-line description plus example asserts.
    pub const MBPP: CodeTask = CodeTask {
        name: "mbpp",
        data: MBPP_DATA,
        format: Format::Mbpp,
    };
}

impl Task for CodeTask {
    fn name(&self) -> &'static str {
        self.name
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Code
    }
    /// MBPP rows need no `entry_point`: their asserts call the function by name.
    fn required_fields(&self) -> &'static [&'static str] {
        match self.format {
            Format::HumanEval => HUMANEVAL_REQUIRED,
            Format::Mbpp => MBPP_REQUIRED,
        }
    }
    fn instruction(&self) -> &'static str {
        INSTRUCTION
    }
    /// The shipped problems in seeded order; at most as many as are shipped.
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        shipped(self, self.data, n, seed)
    }
    /// HumanEval: the function to complete. MBPP: the description plus the first test, as
    /// MBPP prompts show it.
    fn opening(&self, row: &Row) -> Result<Vec<Message>> {
        let prompt = row.require_str(self.name, "prompt")?;
        let text = match self.format {
            Format::HumanEval => format!("Complete this Python function:\n```python\n{prompt}```"),
            Format::Mbpp => {
                let tests = row.get("tests").and_then(|t| t.get(0));
                let first = tests.and_then(Value::as_str).unwrap_or_default();
                format!("{prompt} Your code should pass this test:\n{first}")
            }
        };
        Ok(vec![Message::new("user", text)])
    }
    fn reference(&self, row: &Row) -> Result<Vec<String>> {
        let solution = row.require_str(self.name, "solution")?;
        Ok(vec![match self.format {
            // HumanEval solutions are the body that follows the prompt.
            Format::HumanEval => {
                let prompt = row.require_str(self.name, "prompt")?;
                format!("```python\n{prompt}{solution}```")
            }
            Format::Mbpp => format!("```python\n{solution}\n```"),
        }])
    }
    fn score(&self, row: &Row, completion: &str) -> Result<f64> {
        let ok = run_python(
            &program(self.name, row, completion)?,
            Duration::from_secs(10),
        )?;
        Ok(f64::from(u8::from(ok)))
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(SingleTurn::new(*self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_extraction() {
        assert_eq!(
            extract_code("x\n```python\na = 1\n```\nthen\n```py\nb = 2\n```"),
            "b = 2\n"
        );
        assert_eq!(extract_code("plain"), "plain");
    }

    #[test]
    fn shipped_items_pass_with_references_and_fail_with_wrong_code() {
        for task in [&CodeTask::HUMANEVAL as &dyn Task, &CodeTask::MBPP] {
            let rows = task.generate(100, 0).unwrap();
            assert_eq!(rows.len(), 10, "{} ships 10 problems", task.name());
            for row in &rows {
                let reference = task.reference(row).unwrap();
                assert_eq!(task.score(row, &reference[0]).unwrap(), 1.0, "{}", row.id());
            }
            let entry = rows[0].require_str("t", "entry_point").unwrap();
            let wrong = format!("```python\ndef {entry}(*args):\n    return None\n```");
            assert_eq!(task.score(&rows[0], &wrong).unwrap(), 0.0);
        }
    }

    #[test]
    fn humaneval_body_only_completion_gets_the_prompt_prepended() {
        let row = &CodeTask::HUMANEVAL.generate(100, 0).unwrap()[0];
        let body = row.require_str("t", "solution").unwrap();
        assert_eq!(CodeTask::HUMANEVAL.score(row, body).unwrap(), 1.0);
    }

    #[test]
    fn public_mbpp_columns_load_with_a_field_mapping() {
        let line = r#"{"task_id": 2, "text": "Write a function to add one.", "code": "def inc(x):\n    return x + 1", "test_list": ["assert inc(1) == 2", "assert inc(-1) == 0"]}"#;
        let fields = [
            ("prompt", "text"),
            ("tests", "test_list"),
            ("solution", "code"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
        let opts = LoadOptions {
            fields: &fields,
            required: CodeTask::MBPP.required_fields(),
            on_bad_row: OnBadRow::Stop,
        };
        let loaded = parse_jsonl("mbpp.jsonl", line.as_bytes(), opts).unwrap();
        let row = &loaded.dataset.rows()[0];
        assert_eq!(row.id(), "2");
        let reference = CodeTask::MBPP.reference(row).unwrap();
        assert_eq!(CodeTask::MBPP.score(row, &reference[0]).unwrap(), 1.0);
        let off_by_one = "```python\ndef inc(x):\n    return x + 2\n```";
        assert_eq!(CodeTask::MBPP.score(row, off_by_one).unwrap(), 0.0);
    }

    #[test]
    fn infinite_loop_times_out_as_failure() {
        assert!(!run_python("while True: pass", Duration::from_millis(300)).unwrap());
        assert!(run_python("assert 1 + 1 == 2", Duration::from_secs(10)).unwrap());
    }
}
