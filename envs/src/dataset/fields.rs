//! One raw record (a JSONL object or a Parquet row) to a [`Row`]: columns renamed to the task's
//! canonical field names, required fields checked. Shared by every file format so a mapping
//! means the same thing whatever the data is stored in.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::LoadOptions;
use crate::error::{EnvError, Result};
use crate::row::Row;

/// The row for record number `line` (1-based line or row) of `source_name`; its fallback id
/// is `source_name:line`.
pub(crate) fn to_row(
    source_name: &str,
    line: usize,
    mut obj: Map<String, Value>,
    opts: LoadOptions<'_>,
) -> Result<Row> {
    apply_mapping(&mut obj, opts.fields);
    for &field in opts.required {
        if obj.get(field).is_none_or(Value::is_null) {
            return Err(EnvError::MissingField {
                source_name: source_name.to_owned(),
                line,
                field: field.to_owned(),
                column: opts
                    .fields
                    .get(field)
                    .map_or(field, String::as_str)
                    .to_owned(),
            });
        }
    }
    Ok(Row::new(obj, format!("{source_name}:{line}")))
}

/// Moves each mapped column to its canonical name (the source column is removed so the
/// metadata does not carry two copies).
fn apply_mapping(obj: &mut Map<String, Value>, fields: &BTreeMap<String, String>) {
    for (canonical, column) in fields {
        if canonical != column {
            if let Some(v) = take(obj, column) {
                obj.insert(canonical.clone(), v);
            }
        }
    }
}

/// Removes the value at `column`: a top-level key, else a dotted path into nested objects
/// (`reward_model.ground_truth` in verl-style files).
fn take(obj: &mut Map<String, Value>, column: &str) -> Option<Value> {
    if let Some(v) = obj.remove(column) {
        return Some(v);
    }
    let (head, rest) = column.split_once('.')?;
    match obj.get_mut(head)? {
        Value::Object(inner) => take(inner, rest),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::OnBadRow;
    use serde_json::json;

    fn mapping(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn dotted_columns_reach_into_nested_objects() {
        let fields = mapping(&[("prompt", "extra.question"), ("answer", "rm.truth")]);
        let opts = LoadOptions {
            fields: &fields,
            required: &["prompt", "answer"],
            on_bad_row: OnBadRow::Stop,
        };
        let raw = json!({"extra": {"question": "1+1?", "index": 3}, "rm": {"truth": "2"}});
        let row = to_row("f", 1, obj(raw), opts).unwrap();
        assert_eq!(row.get("prompt").unwrap(), "1+1?");
        assert_eq!(row.get("answer").unwrap(), "2");
        assert_eq!(
            row.get("extra").unwrap(),
            &json!({"index": 3}),
            "leaf moved"
        );
        assert_eq!(row.get("rm").unwrap(), &json!({}));
        assert_eq!(row.id(), "f:1");
    }

    #[test]
    fn a_literal_dotted_key_wins_over_the_path() {
        let fields = mapping(&[("answer", "a.b")]);
        let mut raw = obj(json!({"a.b": "top", "a": {"b": "nested"}}));
        apply_mapping(&mut raw, &fields);
        assert_eq!(raw["answer"], "top");
        assert_eq!(raw["a"], json!({"b": "nested"}));
    }

    #[test]
    fn missing_or_null_required_fields_name_the_column() {
        let fields = mapping(&[("answer", "rm.truth")]);
        let opts = LoadOptions {
            fields: &fields,
            required: &["answer"],
            on_bad_row: OnBadRow::Stop,
        };
        for raw in [
            json!({"rm": {"truth": null}}),
            json!({"rm": "x"}),
            json!({}),
        ] {
            let err = to_row("f.parquet", 17, obj(raw), opts).unwrap_err();
            assert_eq!(
                err.to_string(),
                "f.parquet:17: missing required field `answer` (read from column `rm.truth`)"
            );
        }
    }
}
