//! The unit a reward scores: a completion, its prompt, and the task's reference fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One completion to score: the model's text plus whatever reference fields its task carries
/// (`answer` for math, `tests`/`entry_point` for code, `boxes` for IoU, ...).
///
/// Deserializes straight from a JSONL line such as `{"completion": "...", "answer": "72"}`:
/// every field other than `prompt` and `completion` lands in `fields`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The prompt text (optional; HumanEval-style code tasks use it as the function header).
    #[serde(default)]
    pub prompt: String,
    /// The completion text.
    pub completion: String,
    /// Task fields (reference answer, tests, boxes, ...).
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Completion {
    /// A completion with just its text and no other fields.
    pub fn new(completion: impl Into<String>) -> Self {
        Completion {
            completion: completion.into(),
            ..Completion::default()
        }
    }

    /// Adds (or replaces) a task field; builder style.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// Sets the prompt; builder style.
    pub fn with_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.prompt = prompt.into();
        self
    }

    /// A task field, if present.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.fields.get(key)
    }

    /// A task field as text: strings as they are, numbers in their JSON form.
    pub fn field_text(&self, key: &str) -> Option<String> {
        match self.fields.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
}
