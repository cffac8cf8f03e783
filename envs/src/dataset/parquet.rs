//! Parquet files (what the HF hub serves), read with the `parquet` crate's row API. Each row
//! becomes a JSON object — strings, numbers, booleans, lists, structs as nested objects, null
//! as null — and then goes through the same field mapping and checks as a JSONL line; row
//! numbers are 1-based within the file, across row groups, and stand where JSONL has line
//! numbers (in errors and in the fallback id `file:row`).

use std::fs::File;
use std::path::Path;

use ::parquet::basic::Compression;
use ::parquet::file::metadata::ParquetMetaData;
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use ::parquet::record::Row as ParquetRow;
use serde_json::{Map, Value};

use super::fields::to_row;
use super::load::RowSink;
use super::{LoadOptions, Loaded};
use crate::error::{EnvError, Result};

/// Loads a Parquet file.
pub fn load_parquet(path: &Path, opts: LoadOptions<'_>) -> Result<Loaded> {
    let mut sink = RowSink::new(opts.on_bad_row);
    read_parquet(path, opts, &mut sink)?;
    sink.finish(path.display().to_string())
}

/// Reads the Parquet file at `path` into `sink`. A file that is not Parquet, is damaged or uses
/// a codec this build lacks fails whatever the bad-row policy: the rows after the damage cannot
/// be trusted.
pub(crate) fn read_parquet(path: &Path, opts: LoadOptions<'_>, sink: &mut RowSink) -> Result<()> {
    let file = File::open(path).map_err(|source| EnvError::Io {
        path: path.to_owned(),
        source,
    })?;
    let unreadable = |reason: String| EnvError::Parquet {
        path: path.to_owned(),
        reason,
    };
    let reader = SerializedFileReader::new(file).map_err(|e| unreadable(e.to_string()))?;
    check_codecs(reader.metadata()).map_err(unreadable)?;
    let name = path.display().to_string();
    for (i, row) in reader.into_iter().enumerate() {
        let row = row.map_err(|e| unreadable(format!("row {}: {e}", i + 1)))?;
        sink.push(to_row(&name, i + 1, object(&row), opts))?;
    }
    Ok(())
}

/// Refuses, before reading, a file with a column compressed by a codec that is not compiled
/// in (the `parquet` features in Cargo.toml: the hub's snappy and zstd), naming the column.
fn check_codecs(metadata: &ParquetMetaData) -> std::result::Result<(), String> {
    let columns = metadata.row_groups().iter().flat_map(|g| g.columns());
    for column in columns {
        let supported = matches!(
            column.compression(),
            Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::ZSTD(_)
        );
        if !supported {
            return Err(format!(
                "column `{}` is compressed with {:?}; oxrl reads uncompressed, snappy and zstd \
                 Parquet (rewrite it, e.g. pyarrow's write_table(..., compression=\"zstd\"))",
                column.column_path().string(),
                column.compression_codec()
            ));
        }
    }
    Ok(())
}

/// The row's columns as a JSON object (nested groups and lists converted by the crate).
fn object(row: &ParquetRow) -> Map<String, Value> {
    row.get_column_iter()
        .map(|(name, field)| (name.clone(), field.to_json_value()))
        .collect()
}

/// Small Parquet files written with the crate's own writer, for unit tests here and in
/// `config` (pyarrow-written files are tested in envs/tests/parquet_pyarrow.rs).
#[cfg(test)]
pub(crate) mod testing {
    use std::fs::File;
    use std::path::Path;
    use std::sync::Arc;

    use ::parquet::basic::Compression;
    use ::parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use ::parquet::file::properties::WriterProperties;
    use ::parquet::file::writer::SerializedFileWriter;
    use ::parquet::schema::parser::parse_message_type;

    /// `(question, answer, n)`; `None` is a null.
    pub(crate) type Record<'a> = (&'a str, Option<&'a str>, Option<i64>);

    const SCHEMA: &str = "message rows {
        REQUIRED BYTE_ARRAY question (UTF8);
        OPTIONAL BYTE_ARRAY answer (UTF8);
        OPTIONAL INT64 n;
    }";

    /// Writes `groups` to `path`, one row group per slice.
    pub(crate) fn write_parquet(path: &Path, compression: Compression, groups: &[&[Record<'_>]]) {
        let schema = Arc::new(parse_message_type(SCHEMA).unwrap());
        let props = WriterProperties::builder()
            .set_compression(compression)
            .build();
        let file = File::create(path).unwrap();
        let mut writer = SerializedFileWriter::new(file, schema, Arc::new(props)).unwrap();
        for group in groups {
            let mut rg = writer.next_row_group().unwrap();
            let questions: Vec<ByteArray> = group.iter().map(|r| r.0.into()).collect();
            let answers: Vec<ByteArray> =
                group.iter().filter_map(|r| r.1).map(Into::into).collect();
            let ns: Vec<i64> = group.iter().filter_map(|r| r.2).collect();
            let answer_defs: Vec<i16> = group.iter().map(|r| i16::from(r.1.is_some())).collect();
            let n_defs: Vec<i16> = group.iter().map(|r| i16::from(r.2.is_some())).collect();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>()
                .write_batch(&questions, None, None)
                .unwrap();
            col.close().unwrap();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<ByteArrayType>()
                .write_batch(&answers, Some(&answer_defs), None)
                .unwrap();
            col.close().unwrap();
            let mut col = rg.next_column().unwrap().unwrap();
            col.typed::<Int64Type>()
                .write_batch(&ns, Some(&n_defs), None)
                .unwrap();
            col.close().unwrap();
            rg.close().unwrap();
        }
        writer.close().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ::parquet::basic::{Compression, ZstdLevel};
    use serde_json::json;

    use super::testing::write_parquet;
    use super::*;
    use crate::dataset::OnBadRow;

    fn mapping() -> BTreeMap<String, String> {
        BTreeMap::from([("prompt".to_owned(), "question".to_owned())])
    }

    fn opts(fields: &BTreeMap<String, String>, on_bad_row: OnBadRow) -> LoadOptions<'_> {
        LoadOptions {
            fields,
            required: &["prompt", "answer"],
            on_bad_row,
        }
    }

    /// Two row groups; row 4 (the first of the second group) has a null answer.
    fn sample(dir: &Path, compression: Compression) -> std::path::PathBuf {
        let path = dir.join("rows.parquet");
        write_parquet(
            &path,
            compression,
            &[
                &[
                    ("1+1?", Some("2"), Some(1)),
                    ("2+2?", Some("4"), None),
                    ("3+3?", Some("6"), Some(3)),
                ],
                &[("4+4?", None, Some(4)), ("5+5?", Some("10"), Some(5))],
            ],
        );
        path
    }

    #[test]
    fn rows_become_objects_under_canonical_names() {
        let dir = tempfile::tempdir().unwrap();
        let codecs = [
            Compression::SNAPPY,
            Compression::ZSTD(ZstdLevel::default()),
            Compression::UNCOMPRESSED,
        ];
        for compression in codecs {
            let path = sample(dir.path(), compression);
            let fields = mapping();
            let loaded = load_parquet(&path, opts(&fields, OnBadRow::Skip)).unwrap();
            let rows = loaded.dataset.rows();
            assert_eq!(rows.len(), 4, "{compression:?}");
            let name = path.display().to_string();
            let first = rows[0].fields();
            assert_eq!(
                Value::Object(first.clone()),
                json!({"prompt": "1+1?", "answer": "2", "n": 1, "id": format!("{name}:1")})
            );
            assert_eq!(rows[1].get("n"), Some(&Value::Null), "a null stays null");
            assert_eq!(
                rows[3].id(),
                format!("{name}:5"),
                "numbered across row groups"
            );
            assert_eq!(loaded.skipped.len(), 1);
            assert_eq!(
                loaded.skipped[0].to_string(),
                format!("{name}:4: missing required field `answer` (read from column `answer`)")
            );
        }
    }

    #[test]
    fn stop_policy_fails_on_the_first_bad_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path(), Compression::SNAPPY);
        let fields = mapping();
        let err = load_parquet(&path, opts(&fields, OnBadRow::Stop)).unwrap_err();
        assert!(
            matches!(&err, EnvError::MissingField { line: 4, field, .. } if field == "answer"),
            "{err}"
        );
    }

    #[test]
    fn files_that_are_not_parquet_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read(sample(dir.path(), Compression::SNAPPY)).unwrap();
        let mut damaged = good.clone();
        for b in &mut damaged[8..good.len() / 2] {
            *b = !*b; // page headers and data, footer intact
        }
        let cases = [
            ("text.parquet", b"{\"question\": \"1+1?\"}\n".to_vec()),
            ("truncated.parquet", good[..good.len() - 20].to_vec()),
            ("damaged.parquet", damaged),
        ];
        let fields = mapping();
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = load_parquet(&path, opts(&fields, OnBadRow::Skip)).unwrap_err();
            assert!(matches!(err, EnvError::Parquet { .. }), "{name}: {err}");
            assert!(
                err.to_string().starts_with(&path.display().to_string()),
                "{err}"
            );
        }
    }
}
