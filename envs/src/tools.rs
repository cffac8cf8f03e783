//! Tools for single-turn tasks (`[env.tools]`): the model may call a Python interpreter or a
//! calculator any number of times before it answers (tool-integrated reasoning, as in ToRL
//! and ReTool). Each call's result comes back as the next message; the first turn without a
//! call is the answer, which ends the episode and is scored by the task's `[[rewards]]` (the
//! environment itself rewards nothing).
//!
//! Python runs in the code reward's sandbox (`oxrl_rewards::code::sandbox`: a fresh
//! directory, rlimits, namespaces and cgroups where the machine allows) with a per-call time
//! limit; its output is cut to `max_output_chars`. A call that fails (an exception, a time
//! limit, a bad expression, malformed JSON) returns an error observation and counts as a tool
//! failure; the episode goes on.
//!
//! Call syntax (`syntax`):
//! - `tags`: `<python>CODE</python>` → `<output>...</output>` (or `<error>...</error>`), and
//!   `<calc>EXPR</calc>` → `<result>V</result>`, answered in a user message;
//! - `hermes`: the `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` format of the
//!   Qwen2.5/Qwen3 and Hermes chat templates, with the tools declared to the template (its
//!   `tools` variable) and results in `tool` messages, as those templates render them.

use std::sync::Arc;

use oxrl_rewards::code::sandbox::{Exit, Limits, RunSpec, Sandbox};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::chat_template::Message;
use crate::episode::{Environment, StepResult};
use crate::error::{EnvError, Result};
use crate::expr;
use crate::row::Row;
use crate::tasks::{extract_tag, RewardKind, Task};

/// `[env.tools]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// How calls are written (default `tags`).
    #[serde(default)]
    pub syntax: ToolSyntax,
    /// `[env.tools.python]`: the Python tool (absent: off).
    #[serde(default)]
    pub python: Option<PythonToolConfig>,
    /// The calculator tool (`+ - * / ^`, parentheses, exact rationals).
    #[serde(default)]
    pub calculator: bool,
}

/// How tool calls are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ToolSyntax {
    /// `<python>...</python>`, `<calc>...</calc>`.
    #[default]
    Tags,
    /// `<tool_call>{"name": ..., "arguments": ...}</tool_call>`, results as `tool` messages.
    Hermes,
}

/// `[env.tools.python]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PythonToolConfig {
    /// The interpreter.
    pub program: String,
    /// Wall-clock limit of one call, seconds.
    pub timeout_s: f64,
    /// Most characters of output returned to the model (the rest is cut, and says so).
    pub max_output_chars: usize,
    /// Memory of one call, bytes.
    pub memory_bytes: u64,
}

impl Default for PythonToolConfig {
    fn default() -> Self {
        Self {
            program: "python3".into(),
            timeout_s: 5.0,
            max_output_chars: 1000,
            memory_bytes: 1 << 30,
        }
    }
}

impl ToolsConfig {
    /// The tools, ready to serve episodes (the Python sandbox probes this machine once).
    pub fn build(&self) -> Result<Arc<Tools>> {
        if self.python.is_none() && !self.calculator {
            return Err(EnvError::Config(
                "[env.tools] enables no tool: add [env.tools.python] or calculator = true".into(),
            ));
        }
        let python = match &self.python {
            Some(p) if p.timeout_s <= 0.0 || p.max_output_chars == 0 => {
                return Err(EnvError::Config(
                    "env.tools.python: timeout_s and max_output_chars must be positive".into(),
                ))
            }
            Some(p) => {
                let limits = Limits {
                    timeout_s: p.timeout_s,
                    cpu_s: p.timeout_s.ceil() as u64,
                    memory_bytes: p.memory_bytes,
                    max_output_bytes: 4 * p.max_output_chars + 4096,
                    ..Limits::default()
                };
                let sandbox = Sandbox::for_program(limits, &[&p.program, "-c", "pass"]);
                Some((p.clone(), sandbox))
            }
            None => None,
        };
        Ok(Arc::new(Tools {
            syntax: self.syntax,
            python,
            calculator: self.calculator,
        }))
    }
}

/// The enabled tools.
#[derive(Debug)]
pub struct Tools {
    syntax: ToolSyntax,
    python: Option<(PythonToolConfig, Sandbox)>,
    calculator: bool,
}

/// One parsed call.
#[derive(Debug, PartialEq)]
enum Call {
    Python(String),
    Calculator(String),
    /// A call that could not be read (unknown tool, malformed JSON): its error.
    Malformed(String),
}

impl Tools {
    /// What the instruction tells the model about the tools.
    pub fn instruction(&self) -> String {
        let mut lines = Vec::new();
        if self.syntax == ToolSyntax::Tags {
            if self.python.is_some() {
                lines.push("To run Python, reply with only <python>CODE</python> and wait for its printed <output>.");
            }
            if self.calculator {
                lines.push("To calculate, reply with only <calc>EXPRESSION</calc> (numbers, + - * / ^ and parentheses) and wait for the <result>.");
            }
        } else {
            lines.push("You may call the tools you are given before you answer.");
        }
        lines.push("When you know the answer, reply without a tool call.");
        lines.join(" ")
    }

    /// The tools' JSON schemas, for a chat template's `tools` variable (`hermes` syntax).
    pub fn schemas(&self) -> Vec<Value> {
        let mut schemas = Vec::new();
        if self.python.is_some() {
            schemas.push(schema(
                "python",
                "Runs Python code and returns what it prints.",
                "code",
                "The program; print the values you need.",
            ));
        }
        if self.calculator {
            schemas.push(schema(
                "calculator",
                "Evaluates an arithmetic expression exactly.",
                "expression",
                "Numbers, + - * / ^ and parentheses.",
            ));
        }
        schemas
    }

    /// The first tool call in `action`, if any.
    fn parse(&self, action: &str) -> Option<Call> {
        match self.syntax {
            ToolSyntax::Tags => {
                let python = self.python.as_ref().and(first_tag(action, "python"));
                let calc = if self.calculator {
                    first_tag(action, "calc")
                } else {
                    None
                };
                match (python, calc) {
                    (Some(p), Some(c)) if c.0 < p.0 => Some(Call::Calculator(c.1)),
                    (Some(p), _) => Some(Call::Python(p.1)),
                    (None, Some(c)) => Some(Call::Calculator(c.1)),
                    (None, None) => None,
                }
            }
            ToolSyntax::Hermes => {
                first_tag(action, "tool_call").map(|(_, body)| self.hermes(&body))
            }
        }
    }

    /// A `<tool_call>` body: `{"name": ..., "arguments": {...}}` (arguments may be a JSON string).
    fn hermes(&self, body: &str) -> Call {
        let Ok(call) = serde_json::from_str::<Value>(body) else {
            return Call::Malformed("the tool call is not JSON".into());
        };
        let arguments = match &call["arguments"] {
            Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
            other => other.clone(),
        };
        let argument = |key: &str| arguments[key].as_str().map(str::to_owned);
        match call["name"].as_str() {
            Some("python") if self.python.is_some() => argument("code").map_or(
                Call::Malformed("python needs a string argument `code`".into()),
                Call::Python,
            ),
            Some("calculator") if self.calculator => argument("expression").map_or(
                Call::Malformed("calculator needs a string argument `expression`".into()),
                Call::Calculator,
            ),
            Some(name) => Call::Malformed(format!("no tool named `{name}`")),
            None => Call::Malformed("the tool call has no `name`".into()),
        }
    }

    /// Runs `call`: the result's text, and whether it failed.
    fn run(&self, call: Call) -> (String, bool) {
        match call {
            Call::Python(code) => self.python(&code),
            Call::Calculator(e) => match expr::evaluate(&e) {
                Ok(v) => (v.to_string(), false),
                Err(e) => (e.to_string(), true),
            },
            Call::Malformed(why) => (why, true),
        }
    }

    fn python(&self, code: &str) -> (String, bool) {
        let Some((cfg, sandbox)) = &self.python else {
            return ("the python tool is off".into(), true);
        };
        let spec = RunSpec {
            argv: vec![cfg.program.clone(), "main.py".into()],
            files: vec![("main.py", code.as_bytes())],
            ..RunSpec::default()
        };
        let out = match sandbox.run(&spec) {
            Ok(out) => out,
            Err(e) => return (format!("could not start python: {e}"), true),
        };
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let (output, failed) = match out.exit {
            Exit::Code(0) => (text(&out.stdout), false),
            Exit::Code(_) | Exit::Signal(_) => {
                let stderr = text(&out.stderr);
                // The traceback's last lines say what went wrong.
                let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                (format!("{}{}", text(&out.stdout), tail.join("\n")), true)
            }
            Exit::Timeout => (format!("timed out after {} s", cfg.timeout_s), true),
            Exit::OutputLimit => ("the output was too long".into(), true),
        };
        (cut(output.trim_end(), cfg.max_output_chars), failed)
    }

    /// The environment's answer to a call's result.
    fn reply(&self, tool: &str, result: String, failed: bool) -> StepResult {
        let message = match self.syntax {
            ToolSyntax::Tags => {
                let tag = match (failed, tool) {
                    (true, _) => "error",
                    (false, "calculator") => "result",
                    (false, _) => "output",
                };
                Message::new("user", format!("<{tag}>{result}</{tag}>"))
            }
            ToolSyntax::Hermes => Message::new("tool", result),
        };
        StepResult {
            observation: vec![message],
            ..StepResult::default()
        }
        .tool_result(failed)
    }
}

/// A function schema as chat templates expect it.
fn schema(name: &str, description: &str, argument: &str, argument_description: &str) -> Value {
    json!({"type": "function", "function": {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": {argument: {"type": "string", "description": argument_description}},
            "required": [argument],
        },
    }})
}

/// The first `<tag>...</tag>` in `text`: where it starts and its trimmed body.
fn first_tag(text: &str, tag: &str) -> Option<(usize, String)> {
    let start = text.find(&format!("<{tag}>"))?;
    let body = extract_tag(&text[start..], tag).or_else(|| {
        // An unclosed call (the model stopped at the closing tag): the rest is the body.
        Some(text[start + tag.len() + 2..].trim())
    })?;
    Some((start, body.to_owned()))
}

/// `text` cut to `max` characters, saying so.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}... [output cut at {max} characters]", &text[..at]),
        None => text.to_owned(),
    }
}

/// A single-turn task whose episodes may call tools before answering.
pub struct ToolTask {
    inner: Arc<dyn Task>,
    tools: Arc<Tools>,
    instruction: &'static str,
}

impl ToolTask {
    /// `inner` with `tools`.
    pub fn new(inner: Box<dyn Task>, tools: Arc<Tools>) -> Self {
        // Task::instruction hands out a 'static str; a run builds its task once.
        let text = format!("{} {}", inner.instruction(), tools.instruction());
        Self {
            inner: Arc::from(inner),
            tools,
            instruction: Box::leak(text.trim().to_owned().into_boxed_str()),
        }
    }

    /// The tools' schemas for the chat template's `tools` variable (`hermes` syntax).
    pub fn template_tools(&self) -> Option<Vec<Value>> {
        (self.tools.syntax == ToolSyntax::Hermes).then(|| self.tools.schemas())
    }
}

impl Task for ToolTask {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Environment
    }
    fn required_fields(&self) -> &'static [&'static str] {
        self.inner.required_fields()
    }
    fn instruction(&self) -> &'static str {
        self.instruction
    }
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        self.inner.generate(n, seed)
    }
    fn opening(&self, row: &Row) -> Result<Vec<Message>> {
        self.inner.opening(row)
    }
    fn reference(&self, row: &Row) -> Result<Vec<String>> {
        self.inner.reference(row)
    }
    fn score(&self, row: &Row, completion: &str) -> Result<f64> {
        self.inner.score(row, completion)
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(ToolEnv {
            task: self.inner.clone(),
            tools: self.tools.clone(),
        }))
    }
}

/// One episode of a [`ToolTask`]: answers tool calls until a turn makes none.
pub struct ToolEnv {
    task: Arc<dyn Task>,
    tools: Arc<Tools>,
}

impl Environment for ToolEnv {
    fn reset(&mut self, row: &Row) -> Result<Vec<Message>> {
        self.task.opening(row)
    }

    fn step(&mut self, action: &str) -> Result<StepResult> {
        let Some(call) = self.tools.parse(action) else {
            // No call: this is the answer, for the task's [[rewards]] to score.
            return Ok(StepResult::finish(0.0));
        };
        let tool = match &call {
            Call::Calculator(_) => "calculator",
            _ => "python",
        };
        let (result, failed) = self.tools.run(call);
        Ok(self.tools.reply(tool, result, failed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(syntax: ToolSyntax) -> Arc<Tools> {
        ToolsConfig {
            syntax,
            python: Some(PythonToolConfig {
                timeout_s: 2.0,
                max_output_chars: 40,
                ..PythonToolConfig::default()
            }),
            calculator: true,
        }
        .build()
        .unwrap()
    }

    fn env(syntax: ToolSyntax) -> ToolEnv {
        ToolEnv {
            task: Arc::from(crate::tasks::builtin(crate::TaskKind::Arithmetic).unwrap()),
            tools: tools(syntax),
        }
    }

    fn answer(step: &StepResult) -> (&str, &str, usize, usize) {
        let m = &step.observation[0];
        (&m.role, &m.content, step.tool_calls, step.tool_failures)
    }

    #[test]
    fn python_runs_in_the_sandbox_and_its_output_comes_back() {
        let mut env = env(ToolSyntax::Tags);
        let ok = env
            .step("Let me compute. <python>print(12 * 34)</python>")
            .unwrap();
        assert_eq!(answer(&ok), ("user", "<output>408</output>", 1, 0));
        let raised = env.step("<python>1/0</python>").unwrap();
        let (_, text, calls, failures) = answer(&raised);
        assert!(
            text.starts_with("<error>") && text.contains("ZeroDivisionError"),
            "{text}"
        );
        assert_eq!((calls, failures), (1, 1));
        let slow = env.step("<python>while True: pass</python>").unwrap();
        assert_eq!(
            answer(&slow),
            ("user", "<error>timed out after 2 s</error>", 1, 1)
        );
        let long = env.step("<python>print('x' * 100)</python>").unwrap();
        assert!(
            answer(&long).1.contains("[output cut at 40 characters]"),
            "{long:?}"
        );
        let calc = env.step("<calc>2^10 - 24</calc>").unwrap();
        assert_eq!(answer(&calc), ("user", "<result>1000</result>", 1, 0));
        let done = env.step("The answer is 408.").unwrap();
        assert!(done.done && done.observation.is_empty() && done.reward == 0.0);
    }

    #[test]
    fn hermes_calls_are_json_and_results_are_tool_messages() {
        let mut env = env(ToolSyntax::Hermes);
        let call = r#"<tool_call>
{"name": "python", "arguments": {"code": "print(sum(range(10)))"}}
</tool_call>"#;
        assert_eq!(answer(&env.step(call).unwrap()), ("tool", "45", 1, 0));
        let as_string = r#"<tool_call>{"name": "calculator", "arguments": "{\"expression\": \"7*6\"}"}</tool_call>"#;
        assert_eq!(answer(&env.step(as_string).unwrap()), ("tool", "42", 1, 0));
        let unknown = env
            .step(r#"<tool_call>{"name": "shell", "arguments": {}}</tool_call>"#)
            .unwrap();
        assert_eq!(answer(&unknown), ("tool", "no tool named `shell`", 1, 1));
        let broken = env.step("<tool_call>{not json</tool_call>").unwrap();
        assert_eq!(answer(&broken), ("tool", "the tool call is not JSON", 1, 1));
        assert!(env.step("#### 45").unwrap().done);
        let names: Vec<Value> = tools(ToolSyntax::Hermes)
            .schemas()
            .iter()
            .map(|s| s["function"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("python"), json!("calculator")]);
    }

    #[test]
    fn a_config_without_tools_is_refused() {
        let err = ToolsConfig::default().build().unwrap_err().to_string();
        assert!(err.contains("enables no tool"), "{err}");
    }
}
