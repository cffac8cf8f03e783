//! One dataset row: a JSON object under canonical field names (`id`, `prompt`, `answer`,
//! `tests`, `boxes`, ...; the schema per task is in docs/envs.md). The whole row travels with a
//! sample as its metadata, which is what the rewards crate reads.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{EnvError, Result};

/// A dataset row. Always has a string `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Row(Map<String, Value>);

impl Row {
    /// A row from an object. Its `id` is the object's `id` (numbers become strings), else its
    /// `task_id` (HumanEval, MBPP), else `fallback_id`.
    pub fn new(mut fields: Map<String, Value>, fallback_id: impl Into<String>) -> Self {
        let id = match (fields.get("id"), fields.get("task_id")) {
            (Some(Value::String(_)), _) => None,
            // Numeric ids (common in JSONL dumps) become strings so ids have one type.
            (Some(Value::Number(n)), _) | (None, Some(Value::Number(n))) => Some(n.to_string()),
            (None, Some(Value::String(t))) => Some(t.clone()),
            _ => Some(fallback_id.into()),
        };
        if let Some(id) = id {
            fields.insert("id".into(), Value::String(id));
        }
        Self(fields)
    }

    /// Builds a row from `(name, value)` pairs (generators use this).
    pub fn from_pairs(
        id: impl Into<String>,
        pairs: impl IntoIterator<Item = (&'static str, Value)>,
    ) -> Self {
        let fields: Map<String, Value> =
            pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        Self::new(fields, id)
    }

    /// The row's id.
    pub fn id(&self) -> &str {
        // `new` guarantees a string id.
        self.0.get("id").and_then(Value::as_str).unwrap_or_default()
    }

    /// A field by canonical name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// All fields.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.0
    }

    /// The row as a JSON value (sample metadata).
    pub fn to_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    /// The row plus `completion`: the JSON object a reward's [`oxrl_rewards::Completion`] is
    /// read from (it deserializes exactly this shape; `prompt` stays the row's question, which
    /// the code reward uses as the HumanEval function header).
    pub fn with_completion(&self, completion: &str) -> Value {
        let mut obj = self.0.clone();
        obj.insert("completion".into(), Value::String(completion.to_owned()));
        Value::Object(obj)
    }

    /// A string field, or a `BadRow` error naming `task`.
    pub fn require_str(&self, task: &str, name: &str) -> Result<&str> {
        self.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| self.bad(task, format!("field `{name}` must be a string")))
    }

    /// An integer field (JSON integer, or a string holding one), or a `BadRow` error.
    pub fn require_i64(&self, task: &str, name: &str) -> Result<i64> {
        let v = self.get(name);
        v.and_then(Value::as_i64)
            .or_else(|| {
                v.and_then(Value::as_str)
                    .and_then(|s| s.trim().parse().ok())
            })
            .ok_or_else(|| self.bad(task, format!("field `{name}` must be an integer")))
    }

    /// A `BadRow` error for this row.
    pub fn bad(&self, task: &str, reason: impl Into<String>) -> EnvError {
        EnvError::BadRow {
            task: task.to_owned(),
            row: self.id().to_owned(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_always_strings() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(Row::new(obj(json!({"id": "a"})), "x").id(), "a");
        assert_eq!(Row::new(obj(json!({"id": 12})), "x").id(), "12");
        assert_eq!(Row::new(obj(json!({"q": 1})), "file:3").id(), "file:3");
        assert_eq!(
            Row::new(obj(json!({"task_id": "HumanEval/0"})), "x").id(),
            "HumanEval/0"
        );
        assert_eq!(Row::new(obj(json!({"task_id": 11})), "x").id(), "11");
    }

    #[test]
    fn reward_sample_is_the_row_plus_the_completion() {
        let r = Row::from_pairs("r1", [("prompt", json!("q")), ("answer", json!("#### 2"))]);
        let sample = r.with_completion("#### 2");
        assert_eq!(
            sample,
            json!({"id": "r1", "prompt": "q", "answer": "#### 2", "completion": "#### 2"})
        );
    }

    #[test]
    fn typed_getters_report_the_row() {
        let r = Row::from_pairs("r1", [("n", json!("42")), ("s", json!(5))]);
        assert_eq!(r.require_i64("t", "n").unwrap(), 42);
        let err = r.require_str("t", "s").unwrap_err().to_string();
        assert!(err.contains("r1") && err.contains("`s`"), "{err}");
    }
}
