//! Reading named tensors (safetensors, single file or sharded index) and copying them into a
//! `VarStore` by name, reporting missing, unexpected and mis-shaped tensors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tch::{nn::VarStore, Tensor};

use crate::error::{Error, Result};

/// Tensors that checkpoints carry but that are derived, not learned.
const DERIVED_SUFFIXES: [&str; 1] = ["rotary_emb.inv_freq"];

/// What happened when weights were copied into a model.
#[derive(Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Model parameters with no tensor in the file.
    pub missing: Vec<String>,
    /// File tensors the model has no parameter for.
    pub unexpected: Vec<String>,
    /// `name: file shape vs model shape`.
    pub mismatched: Vec<String>,
}

impl LoadReport {
    /// Missing or mis-shaped tensors make a model unusable; unexpected ones do not.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty()
    }

    /// One line per problem.
    pub fn describe(&self) -> String {
        let lines = self
            .missing
            .iter()
            .map(|n| format!("  missing tensor: {n}"));
        let lines = lines.chain(
            self.mismatched
                .iter()
                .map(|n| format!("  shape mismatch: {n}")),
        );
        let lines = lines.chain(
            self.unexpected
                .iter()
                .map(|n| format!("  unexpected tensor: {n}")),
        );
        lines.collect::<Vec<_>>().join("\n")
    }
}

/// Copies `tensors` into the variables of `vs` with the same names, converting dtype and
/// device. Nothing is copied unless every parameter is present with the right shape.
pub fn load_into(vs: &VarStore, tensors: Vec<(String, Tensor)>) -> LoadReport {
    let vars = vs.variables();
    let file: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    let mut report = LoadReport::default();
    for (name, var) in &vars {
        match file.get(name) {
            None => report.missing.push(name.clone()),
            Some(t) if t.size() != var.size() => report.mismatched.push(format!(
                "{name}: file {:?} vs model {:?}",
                t.size(),
                var.size()
            )),
            Some(_) => {}
        }
    }
    let known: BTreeSet<&String> = vars.keys().collect();
    report.unexpected = file
        .keys()
        .filter(|n| !known.contains(n) && !DERIVED_SUFFIXES.iter().any(|s| n.ends_with(s)))
        .cloned()
        .collect();
    report.missing.sort();
    report.mismatched.sort();
    if report.is_complete() {
        tch::no_grad(|| {
            for (name, mut var) in vars {
                var.copy_(&file[&name]);
            }
        });
    }
    report
}

/// Reads every tensor of a checkpoint directory: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn read_checkpoint_dir(dir: &Path) -> Result<(PathBuf, Vec<(String, Tensor)>)> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok((single.clone(), read_safetensors(&single)?));
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Err(Error::bad_file(
            dir,
            "no weights: expected model.safetensors or model.safetensors.index.json",
        ));
    }
    let mut tensors = Vec::new();
    for shard in shard_files(&index)? {
        tensors.extend(read_safetensors(&dir.join(shard))?);
    }
    Ok((index, tensors))
}

/// The distinct shard files named by a sharded checkpoint's index, in order.
fn shard_files(index: &Path) -> Result<BTreeSet<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let parsed: Index = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(index, format!("invalid shard index: {e}")))?;
    Ok(parsed.weight_map.into_values().collect())
}

/// Reads one safetensors file.
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(Error::io(path, std::io::ErrorKind::NotFound.into()));
    }
    Tensor::read_safetensors(path)
        .map_err(|e| Error::bad_file(path, format!("unreadable safetensors: {e}")))
}

/// Writes the variables of `vs` as one safetensors file, in `kind` if given. Names are the
/// HF keys; with tied embeddings only `model.embed_tokens.weight` is written.
pub fn save_safetensors(vs: &VarStore, path: &Path, kind: Option<tch::Kind>) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| {
            let t = t.detach().to_device(tch::Device::Cpu);
            (
                n,
                kind.map_or(t.shallow_clone(), |k| t.to_kind(k))
                    .contiguous(),
            )
        })
        .collect();
    Tensor::write_safetensors(&tensors, path)
        .map_err(|e| Error::bad_file(path, format!("cannot write safetensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device, Kind};

    fn store() -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = (&root / "a").zeros("weight", &[2, 3]);
        let _ = (&root / "b").zeros("bias", &[3]);
        vs
    }

    #[test]
    fn complete_weights_are_copied() {
        let vs = store();
        let a = Tensor::ones([2, 3], (Kind::Double, Device::Cpu));
        let b = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let report = load_into(&vs, vec![("a.weight".into(), a), ("b.bias".into(), b)]);
        assert_eq!(report, LoadReport::default());
        let vars = vs.variables();
        assert_eq!(vars["a.weight"].kind(), Kind::Float);
        assert_eq!(vars["b.bias"].double_value(&[2]), 3.0);
    }

    #[test]
    fn problems_are_reported_by_name_and_nothing_is_copied() {
        let vs = store();
        let a = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        let extra = Tensor::ones([1], (Kind::Float, Device::Cpu));
        let inv = Tensor::ones([1], (Kind::Float, Device::Cpu));
        let report = load_into(
            &vs,
            vec![
                ("a.weight".into(), a),
                ("c.weight".into(), extra),
                ("model.rotary_emb.inv_freq".into(), inv),
            ],
        );
        assert_eq!(report.missing, vec!["b.bias"]);
        assert_eq!(report.unexpected, vec!["c.weight"]);
        assert_eq!(
            report.mismatched,
            vec!["a.weight: file [3, 2] vs model [2, 3]"]
        );
        assert!(!report.is_complete());
        assert_eq!(vs.variables()["a.weight"].double_value(&[0, 0]), 0.0);
        let text = report.describe();
        assert!(
            text.contains("missing tensor: b.bias") && text.contains("unexpected tensor: c.weight")
        );
        let _ = nn::Init::Const(0.0);
    }

    #[test]
    fn missing_checkpoint_names_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_checkpoint_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains(&dir.path().display().to_string())
        );
    }
}
