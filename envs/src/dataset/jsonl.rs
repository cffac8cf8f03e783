//! JSONL loading: one JSON object per line, columns renamed to the task's canonical field
//! names, rows missing a required field reported with their line number and either skipped or
//! fatal, as the config says.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Dataset;
use crate::error::{EnvError, Result};
use crate::row::Row;

/// What to do with a malformed line or a row missing a required field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBadRow {
    /// Fail the load with the line's error (the default: bad data should be noticed).
    #[default]
    Stop,
    /// Drop the row and report it in [`Loaded::skipped`].
    Skip,
}

/// How to read rows.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Canonical field name → column in the file (e.g. `prompt = "question"`). Unmapped
    /// columns keep their names.
    pub fields: &'a BTreeMap<String, String>,
    /// Canonical fields every row must have.
    pub required: &'a [&'a str],
    /// Skip or stop on a bad row.
    pub on_bad_row: OnBadRow,
}

/// A loaded dataset plus the rows that were skipped (each error names its line).
#[derive(Debug)]
pub struct Loaded {
    /// The good rows.
    pub dataset: Dataset,
    /// One error per skipped row (empty under [`OnBadRow::Stop`]).
    pub skipped: Vec<EnvError>,
}

/// Loads a JSONL file.
pub fn load_jsonl(path: &Path, opts: LoadOptions<'_>) -> Result<Loaded> {
    let io_err = |source| EnvError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    parse_jsonl(&path.display().to_string(), BufReader::new(file), opts)
}

/// Parses JSONL from any reader; `source_name` appears in errors and row ids.
pub fn parse_jsonl(
    source_name: &str,
    reader: impl BufRead,
    opts: LoadOptions<'_>,
) -> Result<Loaded> {
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|source| EnvError::Io {
            path: source_name.into(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_row(source_name, line_no, &line, opts) {
            Ok(row) => rows.push(row),
            Err(e) if opts.on_bad_row == OnBadRow::Skip => skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    if rows.is_empty() {
        return Err(EnvError::Empty(source_name.to_owned()));
    }
    Ok(Loaded {
        dataset: Dataset::new(source_name, rows),
        skipped,
    })
}

fn parse_row(source_name: &str, line: usize, text: &str, opts: LoadOptions<'_>) -> Result<Row> {
    let bad = |reason: String| EnvError::BadLine {
        source_name: source_name.to_owned(),
        line,
        reason,
    };
    let mut obj = match serde_json::from_str::<Value>(text).map_err(|e| bad(e.to_string()))? {
        Value::Object(obj) => obj,
        other => return Err(bad(format!("found {}", type_name(&other)))),
    };
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
            if let Some(v) = obj.remove(column) {
                obj.insert(canonical.clone(), v);
            }
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = r#####"{"question": "1+1?", "solution": "#### 2"}

{"question": "2+2?"}
[1, 2]
{"question": "3+3?", "solution": "#### 6", "id": 7}
"#####;

    fn opts<'a>(fields: &'a BTreeMap<String, String>, policy: OnBadRow) -> LoadOptions<'a> {
        LoadOptions {
            fields,
            required: &["prompt", "answer"],
            on_bad_row: policy,
        }
    }

    fn mapping() -> BTreeMap<String, String> {
        [("prompt", "question"), ("answer", "solution")]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    #[test]
    fn stop_policy_reports_the_first_bad_line() {
        let fields = mapping();
        let err =
            parse_jsonl("d.jsonl", DATA.as_bytes(), opts(&fields, OnBadRow::Stop)).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, EnvError::MissingField { line: 3, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("d.jsonl:3") && msg.contains("`answer`") && msg.contains("`solution`"),
            "{msg}"
        );
    }

    #[test]
    fn skip_policy_keeps_good_rows_and_lists_bad_lines() {
        let fields = mapping();
        let loaded =
            parse_jsonl("d.jsonl", DATA.as_bytes(), opts(&fields, OnBadRow::Skip)).unwrap();
        let ds = &loaded.dataset;
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.rows()[0].get("prompt").unwrap(), "1+1?");
        assert!(
            ds.rows()[0].get("question").is_none(),
            "mapped column is renamed, not copied"
        );
        assert_eq!(ds.rows()[0].id(), "d.jsonl:1");
        assert_eq!(ds.rows()[1].id(), "7");
        let lines: Vec<usize> = loaded
            .skipped
            .iter()
            .map(|e| match e {
                EnvError::MissingField { line, .. } | EnvError::BadLine { line, .. } => *line,
                other => panic!("unexpected {other}"),
            })
            .collect();
        assert_eq!(lines, vec![3, 4]);
    }

    #[test]
    fn all_rows_bad_is_an_empty_dataset_error() {
        let fields = mapping();
        let err =
            parse_jsonl("e", "{\"x\":1}\n".as_bytes(), opts(&fields, OnBadRow::Skip)).unwrap_err();
        assert!(matches!(err, EnvError::Empty(_)));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let fields = mapping();
        let err = load_jsonl(
            Path::new("/nonexistent/x.jsonl"),
            opts(&fields, OnBadRow::Stop),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.jsonl"));
    }
}
