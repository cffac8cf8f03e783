//! Dataset directories as `datasets` and `huggingface-cli download` leave them: data files
//! (`.parquet`, `.jsonl`) anywhere below the directory, each in the split its file name starts
//! with, up to the first `-` (`data/train-00000-of-00002.parquet` and `test.jsonl` are `train`
//! and `test`; `train_sft-00000-of-00003.parquet` is `train_sft`). A file named by number
//! only (`train/0000.parquet`, the hub's Parquet conversion) is in its folder's split. Hidden
//! entries (`.cache/`, `.git/`) are skipped, and so is every other file (README.md, ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{EnvError, Result};

/// Extensions of the files a dataset directory's splits are made of.
const DATA_EXTENSIONS: [&str; 2] = ["parquet", "jsonl"];

/// The shards of `split` in `dir`, in name order. Errors if `dir` has no data files, if it has
/// no such split (the message lists the splits it has), or if the split's shards sit in more
/// than one folder (two configs of one dataset, e.g. gsm8k's `main/` and `socratic/`).
pub fn shards(dir: &Path, split: &str) -> Result<Vec<PathBuf>> {
    let mut all = splits(dir)?;
    let Some(shards) = all.remove(split) else {
        let found: Vec<String> = all.into_keys().collect();
        return Err(dir_error(
            dir,
            format!("no split `{split}` (splits found: {})", found.join(", ")),
        ));
    };
    let mut folders: Vec<&Path> = shards.iter().filter_map(|p| p.parent()).collect();
    folders.sort();
    folders.dedup();
    if folders.len() > 1 {
        let names: Vec<String> = folders.iter().map(|f| relative(dir, f)).collect();
        return Err(dir_error(
            dir,
            format!(
                "split `{split}` has shards in several folders ({}): point the path at one of them",
                names.join(", ")
            ),
        ));
    }
    Ok(shards)
}

/// Every split in `dir` with its shards in name order; no data file at all is an error.
pub fn splits(dir: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut files = Vec::new();
    collect_data_files(dir, &mut files)?;
    if files.is_empty() {
        return Err(dir_error(dir, "no .parquet or .jsonl files".into()));
    }
    files.sort();
    let mut splits: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for file in files {
        splits.entry(split_of(&file)).or_default().push(file);
    }
    Ok(splits)
}

/// The split a data file belongs to, from its name (or its folder's, for numbered shards).
fn split_of(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let stem = name.split(['-', '.']).next().unwrap_or_default();
    if !stem.is_empty() && !stem.bytes().all(|b| b.is_ascii_digit()) {
        return stem.to_owned();
    }
    file.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Data files below `dir` (symlinks followed: the hub cache's snapshots are links to blobs).
fn collect_data_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io_err = |source| EnvError::Io {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_data_files(&path, out)?;
        } else if is_data_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_data_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| DATA_EXTENSIONS.iter().any(|d| e == *d))
}

fn relative(dir: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    if rel.as_os_str().is_empty() {
        ".".into()
    } else {
        rel.display().to_string()
    }
}

fn dir_error(dir: &Path, reason: String) -> EnvError {
    EnvError::DatasetDir {
        dir: dir.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory holding empty files at `paths`.
    fn tree(paths: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for p in paths {
            let path = dir.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        }
        dir
    }

    fn names(dir: &Path, files: &[PathBuf]) -> Vec<String> {
        files.iter().map(|f| relative(dir, f)).collect()
    }

    #[test]
    fn hub_layout_splits_by_file_name_in_shard_order() {
        let dir = tree(&[
            "data/train-00001-of-00002.parquet",
            "data/train-00000-of-00002.parquet",
            "data/test-00000-of-00001.parquet",
            "data/train_sft-00000-of-00001-5a1b.parquet",
            "README.md",
            ".cache/huggingface/download/data/train-00000-of-00002.parquet",
        ]);
        let splits = splits(dir.path()).unwrap();
        assert_eq!(
            splits.keys().collect::<Vec<_>>(),
            ["test", "train", "train_sft"]
        );
        let train = shards(dir.path(), "train").unwrap();
        assert_eq!(
            names(dir.path(), &train),
            [
                "data/train-00000-of-00002.parquet",
                "data/train-00001-of-00002.parquet"
            ]
        );
    }

    #[test]
    fn numbered_shards_take_their_folder_and_top_level_files_work() {
        let dir = tree(&["train/0000.parquet", "train/0001.parquet", "test.jsonl"]);
        let train = shards(dir.path(), "train").unwrap();
        assert_eq!(
            names(dir.path(), &train),
            ["train/0000.parquet", "train/0001.parquet"]
        );
        assert_eq!(
            names(dir.path(), &shards(dir.path(), "test").unwrap()),
            ["test.jsonl"]
        );
    }

    #[test]
    fn a_missing_split_lists_the_ones_found() {
        let dir = tree(&["data/test-00000-of-00001.parquet", "data/validation.jsonl"]);
        let err = shards(dir.path(), "train").unwrap_err().to_string();
        assert!(
            err.ends_with("no split `train` (splits found: test, validation)"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tree(&["README.md"]);
        let err = shards(dir.path(), "train").unwrap_err().to_string();
        assert!(
            err.contains(&dir.path().display().to_string())
                && err.ends_with("no .parquet or .jsonl files"),
            "{err}"
        );
    }

    #[test]
    fn a_split_across_two_configs_is_refused() {
        let dir = tree(&[
            "main/train-00000-of-00001.parquet",
            "socratic/train-00000-of-00001.parquet",
        ]);
        let err = shards(dir.path(), "train").unwrap_err().to_string();
        assert!(err.contains("several folders (main, socratic)"), "{err}");
        let main = shards(&dir.path().join("main"), "train").unwrap();
        assert_eq!(main.len(), 1);
    }
}
