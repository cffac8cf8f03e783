//! JSONL files: one JSON object per line (blank lines ignored); a line that is not an object is
//! a bad row reported with its line number.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use super::fields::to_row;
use super::load::RowSink;
use super::{LoadOptions, Loaded};
use crate::error::{EnvError, Result};
use crate::row::Row;

/// Loads a JSONL file.
pub fn load_jsonl(path: &Path, opts: LoadOptions<'_>) -> Result<Loaded> {
    let mut sink = RowSink::new(opts.on_bad_row);
    read_jsonl_file(path, opts, &mut sink)?;
    sink.finish(path.display().to_string())
}

/// Parses JSONL from any reader; `source_name` appears in errors and row ids.
pub fn parse_jsonl(
    source_name: &str,
    reader: impl BufRead,
    opts: LoadOptions<'_>,
) -> Result<Loaded> {
    let mut sink = RowSink::new(opts.on_bad_row);
    read_jsonl(source_name, reader, opts, &mut sink)?;
    sink.finish(source_name.to_owned())
}

/// Reads the JSONL file at `path` into `sink` (a file with no rows adds none).
pub(crate) fn read_jsonl_file(
    path: &Path,
    opts: LoadOptions<'_>,
    sink: &mut RowSink,
) -> Result<()> {
    let file = File::open(path).map_err(|source| EnvError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_jsonl(
        &path.display().to_string(),
        BufReader::new(file),
        opts,
        sink,
    )
}

fn read_jsonl(
    source_name: &str,
    reader: impl BufRead,
    opts: LoadOptions<'_>,
    sink: &mut RowSink,
) -> Result<()> {
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|source| EnvError::Io {
            path: source_name.into(),
            source,
        })?;
        if !line.trim().is_empty() {
            sink.push(parse_row(source_name, i + 1, &line, opts))?;
        }
    }
    Ok(())
}

fn parse_row(source_name: &str, line: usize, text: &str, opts: LoadOptions<'_>) -> Result<Row> {
    let bad = |reason: String| EnvError::BadLine {
        source_name: source_name.to_owned(),
        line,
        reason,
    };
    match serde_json::from_str::<Value>(text).map_err(|e| bad(e.to_string()))? {
        Value::Object(obj) => to_row(source_name, line, obj, opts),
        other => Err(bad(format!("found {}", type_name(&other)))),
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
    use crate::dataset::OnBadRow;
    use std::collections::BTreeMap;

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
