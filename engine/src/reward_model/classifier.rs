//! An HF `*ForSequenceClassification` checkpoint: a decoder trunk (any architecture
//! [`ModelConfig`] supports) and a `score` head `[num_labels, hidden]` without bias, read at the
//! last non-pad token. Mirrors transformers' `GenericForSequenceClassification`
//! (`modeling_layers.py`): same weight names (`model.…`, `score.weight`), same pooling rule.

use std::path::Path;

use serde_json::{json, Value};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::random::randomize;
use crate::model::{Architecture, Llama, ModelConfig};
use crate::pretrained::LoadOptions;
use crate::weights;

const SEQ_CLS: &str = "ForSequenceClassification";

/// A sequence classifier: the trunk's final hidden state at the last non-pad token, times the
/// `score` head.
#[derive(Debug)]
pub struct SequenceClassifier {
    vs: VarStore,
    trunk: Llama,
    score: Tensor,
    pad_token_id: Option<i64>,
}

/// The trunk architecture of a sequence-classification class name: `Qwen2ForSequenceClassification`
/// runs `Qwen2ForCausalLM`'s decoder. `None` for classes oxrl does not implement.
pub fn trunk_architecture(class: &str) -> Option<Architecture> {
    let causal = match class.strip_suffix(SEQ_CLS)? {
        // Gemma 3's text-only classifier; `Gemma3ForSequenceClassification` is the multimodal
        // one (a vision tower, weights under `model.language_model`), which oxrl does not load.
        "Gemma3Text" => "Gemma3".to_owned(),
        "Gemma3" => return None,
        base => base.to_owned(),
    };
    Architecture::from_hf_name(&format!("{causal}ForCausalLM"))
}

/// The sequence-classification class name whose trunk is `arch`.
pub fn classifier_name(arch: Architecture) -> String {
    let base = arch.hf_name().trim_end_matches("ForCausalLM");
    match arch {
        Architecture::Gemma3 => format!("{base}Text{SEQ_CLS}"),
        _ => format!("{base}{SEQ_CLS}"),
    }
}

/// Every supported sequence-classification class, comma separated, for error messages.
fn supported() -> String {
    Architecture::supported()
        .split(", ")
        .filter_map(Architecture::from_hf_name)
        .map(classifier_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a classifier's `config.json` as its trunk's config: `architectures[0]` becomes the
/// matching `…ForCausalLM`, and embeddings count as tied so the trunk asks for no
/// `lm_head.weight` (a classifier has `score` instead). Also returns the number of labels the
/// config declares (`id2label`, else `num_labels`), if it declares one.
fn read_config(path: &Path) -> Result<(ModelConfig, Option<usize>)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_file(path, format!("invalid JSON: {e}")))?;
    let class = json["architectures"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let arch = trunk_architecture(&class).ok_or_else(|| Error::UnsupportedArchitecture {
        path: path.to_owned(),
        arch: class.clone(),
        supported: supported(),
    })?;
    json["architectures"] = json!([arch.hf_name()]);
    json["tie_word_embeddings"] = json!(true);
    let labels = match (&json["id2label"], &json["num_labels"]) {
        (Value::Object(names), _) => Some(names.len()),
        (_, n) => n.as_u64().map(|n| n as usize),
    };
    let config: ModelConfig = serde_json::from_value(json)
        .map_err(|e| Error::bad_file(path, format!("invalid model config: {e}")))?;
    config
        .validate()
        .map_err(|msg| Error::bad_file(path, msg))?;
    Ok((config, labels))
}

/// The rows of the checkpoint's `score.weight`: the number of labels.
fn score_rows(tensors: &[(String, Tensor)], weights_path: &Path) -> Result<i64> {
    let (_, score) = tensors
        .iter()
        .find(|(name, _)| name == "score.weight")
        .ok_or_else(|| {
            Error::bad_file(
                weights_path,
                "no `score.weight`: not a sequence-classification checkpoint \
                 (a causal LM has `lm_head`, a reward model a `score` head)",
            )
        })?;
    match score.size().as_slice() {
        [rows, _] if *rows > 0 => Ok(*rows),
        shape => Err(Error::bad_file(
            weights_path,
            format!("`score.weight` has shape {shape:?}, expected [num_labels, hidden]"),
        )),
    }
}

impl SequenceClassifier {
    /// Loads an HF `*ForSequenceClassification` directory (`config.json` + safetensors), failing
    /// with a per-tensor report if a trunk or head weight is missing or mis-shaped. The pad id
    /// is the config's `pad_token_id` (see [`set_pad_token_id`](Self::set_pad_token_id)).
    pub fn load(dir: &Path, opts: LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::bad_file(
                dir,
                "not a directory (a reward model is an HF directory: config.json, safetensors, tokenizer files)",
            ));
        }
        let config_path = dir.join("config.json");
        let (config, declared) = read_config(&config_path)?;
        let (weights_path, tensors) = weights::read_checkpoint_dir(dir)?;
        let labels = score_rows(&tensors, &weights_path)?;
        if let Some(n) = declared.filter(|&n| n as i64 != labels) {
            return Err(Error::bad_file(
                &config_path,
                format!("declares {n} labels but score.weight has {labels} rows"),
            ));
        }
        let mut model = Self::build(&config, labels, opts.device);
        let report = weights::load_into(&model.vs, tensors);
        if !report.is_complete() {
            return Err(Error::WeightMismatch {
                path: weights_path,
                report: report.describe(),
            });
        }
        for name in &report.unexpected {
            eprintln!("warning: {}: unused tensor {name}", weights_path.display());
        }
        if opts.kind != Kind::Float {
            model.vs.set_kind(opts.kind);
        }
        Ok(model)
    }

    /// A classifier of `config`'s trunk (a causal LM config) with `num_labels` outputs and seeded
    /// random weights, as [`randomize`] draws them (tests; no download).
    pub fn random(config: &ModelConfig, num_labels: i64, seed: i64, scale: f64) -> Self {
        let mut config = config.clone();
        config.tie_word_embeddings = Some(true);
        let model = Self::build(&config, num_labels, Device::Cpu);
        randomize(&model.vs, seed, scale);
        model
    }

    /// The parameters: the trunk under `model.`, the head as `score.weight`. Frozen: a reward
    /// model is only ever read.
    fn build(config: &ModelConfig, num_labels: i64, device: Device) -> Self {
        let mut vs = VarStore::new(device);
        let root = vs.root();
        let trunk = Llama::new(&root, config);
        let hidden = config.hidden_size as i64;
        let score = (&root / "score").zeros("weight", &[num_labels, hidden]);
        vs.freeze();
        Self {
            vs,
            trunk,
            score,
            pad_token_id: config.pad_token_id,
        }
    }

    /// Writes `config.json` and `model.safetensors` as transformers' `save_pretrained` of the
    /// classifier would: `architectures` names the classifier class, `id2label` the outputs,
    /// `pad_token_id` the pad id.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let config = self.trunk.config();
        let mut json = config.to_hf_json();
        let arch = config.architecture().unwrap_or(Architecture::Llama);
        json["architectures"] = json!([classifier_name(arch)]);
        let names: Vec<String> = (0..self.num_labels())
            .map(|i| format!("LABEL_{i}"))
            .collect();
        json["id2label"] = names
            .iter()
            .enumerate()
            .map(|(i, n)| (i.to_string(), json!(n)))
            .collect();
        json["label2id"] = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), json!(i)))
            .collect();
        json["pad_token_id"] = json!(self.pad_token_id);
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&json).expect("JSON values always serialize");
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        weights::save_safetensors(&self.vs, &dir.join("model.safetensors"), None)
    }

    /// The pad id that marks where a sequence ends (see [`last_token`]).
    pub fn pad_token_id(&self) -> Option<i64> {
        self.pad_token_id
    }

    /// Sets the pad id. TRL sets the model's `pad_token_id` to its tokenizer's before scoring,
    /// since the last non-pad token is found by this id.
    pub fn set_pad_token_id(&mut self, id: Option<i64>) {
        self.pad_token_id = id;
    }

    /// Number of outputs (rows of `score.weight`).
    pub fn num_labels(&self) -> usize {
        self.score.size()[0] as usize
    }

    /// The trunk's configuration (its `…ForCausalLM` architecture).
    pub fn config(&self) -> &ModelConfig {
        self.trunk.config()
    }

    /// Scores every sequence, `batch_size` at a time (sequences of similar length batched
    /// together, so little is padded): one row of `num_labels` f32 values per sequence, in
    /// order. Every sequence needs at least one token.
    pub fn score_all(&self, sequences: &[Vec<i64>], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        if let Some(i) = sequences.iter().position(Vec::is_empty) {
            return Err(Error::Invalid(format!("sequence {i} has no tokens")));
        }
        let mut order: Vec<usize> = (0..sequences.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(sequences[i].len()));
        let mut rows = vec![Vec::new(); sequences.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[i64]> = chunk.iter().map(|&i| sequences[i].as_slice()).collect();
            let scores = self.score_batch(&batch)?;
            for (&i, row) in chunk.iter().zip(scores) {
                rows[i] = row;
            }
        }
        Ok(rows)
    }

    /// One right-padded forward pass; see [`score_all`](Self::score_all).
    ///
    /// # Shapes
    /// - builds tokens, positions and key mask `[batch, longest]`
    /// - returns `batch` rows of `num_labels`
    fn score_batch(&self, batch: &[&[i64]]) -> Result<Vec<Vec<f32>>> {
        let device = self.trunk.device();
        let (n, width) = (
            batch.len(),
            batch.iter().map(|s| s.len()).max().unwrap_or(1),
        );
        let pad = self.pad_token_id.unwrap_or(0);
        let mut ids = vec![pad; n * width];
        let mut real = vec![false; n * width];
        for (row, seq) in batch.iter().enumerate() {
            ids[row * width..][..seq.len()].copy_from_slice(seq);
            real[row * width..][..seq.len()].fill(true);
        }
        let last: Vec<i64> = batch
            .iter()
            .map(|seq| last_token(seq, self.pad_token_id) as i64)
            .collect();
        let shape = [n as i64, width as i64];
        let tokens = Tensor::from_slice(&ids).view(shape).to_device(device);
        let key_mask = Tensor::from_slice(&real).view(shape).to_device(device);
        // Right padding: every real token sits at its own index, as transformers' default
        // position ids (0..width) put it.
        let positions = Tensor::arange(width as i64, (Kind::Int64, device))
            .unsqueeze(0)
            .expand(shape, false);
        let logits = tch::no_grad(|| -> Result<Tensor> {
            let hidden = self
                .trunk
                .forward_hidden(&tokens, &positions, Some(&key_mask), None);
            let rows = Tensor::arange(n as i64, (Kind::Int64, device));
            let cols = Tensor::from_slice(&last).to_device(device);
            let pooled = hidden.f_index(&[Some(rows), Some(cols)])?;
            Ok(pooled.f_linear::<Tensor>(&self.score, None)?)
        })?;
        let logits = logits.to_kind(Kind::Float).to_device(Device::Cpu);
        Ok(Vec::<Vec<f32>>::try_from(&logits)?)
    }
}

/// Where transformers reads a sequence's score: the rightmost token that is not the pad id
/// (`(token_indices * (input_ids != pad_token_id)).argmax(-1)`, so 0 when every token is the
/// pad id); with no pad id, the last token. Right padding only appends pad ids, so the padded
/// row and the sequence itself give the same index.
pub fn last_token(sequence: &[i64], pad_token_id: Option<i64>) -> usize {
    match pad_token_id {
        Some(pad) => sequence.iter().rposition(|&id| id != pad).unwrap_or(0),
        None => sequence.len().saturating_sub(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_config(arch: &str) -> ModelConfig {
        serde_json::from_value(json!({
            "architectures": [arch], "vocab_size": 40, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 128, "pad_token_id": 0
        }))
        .unwrap()
    }

    #[test]
    fn the_last_token_is_the_rightmost_non_pad_one() {
        assert_eq!(last_token(&[5, 6, 7], Some(0)), 2);
        // A pad id inside the text is skipped over only at the end, as transformers does.
        assert_eq!(last_token(&[5, 0, 7], Some(0)), 2);
        assert_eq!(last_token(&[5, 7, 0, 0], Some(0)), 1);
        assert_eq!(last_token(&[0, 0], Some(0)), 0);
        assert_eq!(last_token(&[5, 0, 0], None), 2);
    }

    #[test]
    fn class_names_map_to_trunks_and_back() {
        for (class, causal) in [
            ("LlamaForSequenceClassification", "LlamaForCausalLM"),
            ("Qwen2ForSequenceClassification", "Qwen2ForCausalLM"),
            ("Qwen3ForSequenceClassification", "Qwen3ForCausalLM"),
            ("Gemma3TextForSequenceClassification", "Gemma3ForCausalLM"),
        ] {
            let arch = trunk_architecture(class).unwrap();
            assert_eq!(arch.hf_name(), causal);
            assert_eq!(classifier_name(arch), class);
        }
        for class in [
            "Gemma3ForSequenceClassification",
            "BertForSequenceClassification",
            "Qwen2ForCausalLM",
        ] {
            assert_eq!(trunk_architecture(class), None, "{class}");
        }
    }

    #[test]
    fn batched_scores_equal_one_at_a_time_and_read_the_last_non_pad_token() {
        let model = SequenceClassifier::random(&tiny_config("Qwen2ForCausalLM"), 2, 7, 0.2);
        let seqs = vec![
            vec![3, 4, 5, 6, 7],
            vec![8, 9],
            vec![10, 0, 11, 0, 0],
            vec![12],
        ];
        let batched = model.score_all(&seqs, 3).unwrap();
        for (seq, row) in seqs.iter().zip(&batched) {
            let alone = &model.score_all(std::slice::from_ref(seq), 1).unwrap()[0];
            for (a, b) in row.iter().zip(alone) {
                assert!((a - b).abs() < 1e-5, "{row:?} vs {alone:?}");
            }
        }
        // Trailing pad ids are not read: [10, 0, 11, 0, 0] scores as [10, 0, 11].
        let cut = &model.score_all(&[vec![10, 0, 11]], 1).unwrap()[0];
        for (a, b) in batched[2].iter().zip(cut) {
            assert!((a - b).abs() < 1e-5);
        }
        assert!(batched.iter().flatten().all(|x| x.is_finite()));
        assert_ne!(batched[0], batched[1]);
        assert!(model.score_all(&[vec![]], 1).is_err());
    }

    #[test]
    fn a_saved_classifier_loads_back_with_the_same_scores() {
        let dir = tempfile::tempdir().unwrap();
        let model = SequenceClassifier::random(&tiny_config("LlamaForCausalLM"), 3, 1, 0.2);
        model.save(dir.path()).unwrap();
        let saved: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(saved["architectures"][0], "LlamaForSequenceClassification");
        assert_eq!(saved["id2label"].as_object().unwrap().len(), 3);
        let loaded = SequenceClassifier::load(dir.path(), LoadOptions::default()).unwrap();
        assert_eq!(loaded.num_labels(), 3);
        assert_eq!(loaded.pad_token_id(), Some(0));
        let seqs = vec![vec![1, 2, 3], vec![4, 5]];
        assert_eq!(
            model.score_all(&seqs, 2).unwrap(),
            loaded.score_all(&seqs, 2).unwrap()
        );
    }

    #[test]
    fn checkpoints_that_are_not_classifiers_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let err = |p: &Path| {
            SequenceClassifier::load(p, LoadOptions::default())
                .unwrap_err()
                .to_string()
        };
        assert!(err(&path.join("absent")).contains("absent"));

        let model = SequenceClassifier::random(&tiny_config("Qwen2ForCausalLM"), 1, 1, 0.2);
        model.save(path).unwrap();
        // A causal LM's weights: no score head.
        let mut tensors = weights::read_safetensors(&path.join("model.safetensors")).unwrap();
        tensors.retain(|(n, _)| n != "score.weight");
        Tensor::write_safetensors(&tensors, path.join("model.safetensors")).unwrap();
        let msg = err(path);
        assert!(
            msg.contains("no `score.weight`") && msg.contains("model.safetensors"),
            "{msg}"
        );

        let config = path.join("config.json");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace(
                "Qwen2ForSequenceClassification",
                "BertForSequenceClassification",
            ),
        )
        .unwrap();
        let msg = err(path);
        assert!(
            msg.contains("BertForSequenceClassification")
                && msg.contains("Qwen2ForSequenceClassification")
                && msg.contains("config.json"),
            "{msg}"
        );
    }

    #[test]
    fn a_head_that_disagrees_with_the_config_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = SequenceClassifier::random(&tiny_config("Qwen2ForCausalLM"), 2, 1, 0.2);
        model.save(dir.path()).unwrap();
        let config = dir.path().join("config.json");
        let mut json: Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        json["id2label"] = json!({"0": "LABEL_0"});
        std::fs::write(&config, json.to_string()).unwrap();
        let msg = SequenceClassifier::load(dir.path(), LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("declares 1 labels but score.weight has 2 rows"),
            "{msg}"
        );
    }
}
