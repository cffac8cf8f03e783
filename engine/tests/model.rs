//! Model behaviour on tiny random models (no downloads, fixed seeds): cached decoding equals a
//! full forward, padding is invisible, reduced precision stays close to f32, sharded and
//! single-file checkpoints load the same, and bad checkpoints fail with named causes.

use std::path::Path;

use oxrl::device::test_device;
use oxrl::model::random::randomize;
use oxrl::pretrained::{load_model_dir, save_model_dir, LoadOptions};
use oxrl::{Llama, ModelConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn config() -> ModelConfig {
    serde_json::from_str(
        r#"{"architectures":["LlamaForCausalLM"],"vocab_size":61,"hidden_size":32,
            "intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,
            "num_key_value_heads":2,"rope_theta":10000.0,"tie_word_embeddings":true,
            "max_position_embeddings":128}"#,
    )
    .unwrap()
}

fn tiny(seed: i64) -> (VarStore, Llama) {
    let vs = VarStore::new(test_device());
    let model = Llama::new(&vs.root(), &config());
    randomize(&vs, seed, 0.2);
    (vs, model)
}

fn tokens(rows: &[&[i64]]) -> Tensor {
    Tensor::from_slice2(rows).to_device(test_device())
}

fn arange(b: i64, t: i64, start: i64) -> Tensor {
    Tensor::arange_start(start, start + t, (Kind::Int64, test_device()))
        .unsqueeze(0)
        .expand([b, t], false)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn cached_decoding_equals_full_forward() {
    let (_vs, model) = tiny(1);
    let seq: [&[i64]; 2] = [
        &[5, 9, 13, 2, 7, 40, 41, 3, 0, 60],
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    ];
    let ids = tokens(&seq);
    tch::no_grad(|| {
        let full = model.forward(&ids, &arange(2, 10, 0), None, None);
        let mut cache = model.new_cache();
        // Prefill 4, then one chunk of 3 (cache + causal mask), then single tokens.
        let mut parts = vec![model.forward(
            &ids.narrow(1, 0, 4),
            &arange(2, 4, 0),
            None,
            Some(&mut cache),
        )];
        parts.push(model.forward(
            &ids.narrow(1, 4, 3),
            &arange(2, 3, 4),
            None,
            Some(&mut cache),
        ));
        for t in 7..10 {
            parts.push(model.forward(
                &ids.narrow(1, t, 1),
                &arange(2, 1, t),
                None,
                Some(&mut cache),
            ));
        }
        assert_eq!(cache.seq_len(), 10);
        let cached = Tensor::cat(&parts, 1);
        let diff = max_diff(&cached, &full);
        assert!(diff < 1e-5, "cached vs full forward: {diff}");
    });
}

#[test]
fn left_padding_does_not_change_real_tokens() {
    let (_vs, model) = tiny(2);
    let short: &[i64] = &[11, 12, 13, 14];
    let long: &[i64] = &[21, 22, 23, 24, 25, 26, 27];
    let pad = 0;
    let padded = tokens(&[&[pad, pad, pad, 11, 12, 13, 14], long]);
    let mask = Tensor::from_slice2(&[[false, false, false, true, true, true, true], [true; 7]])
        .to_device(test_device());
    // Positions count real tokens only: padded rows start at 0 where their text starts.
    let positions = (mask.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0);
    tch::no_grad(|| {
        let mut cache = model.new_cache();
        let batch = model.forward(&padded, &positions, Some(&mask), Some(&mut cache));
        let alone_short = model.forward(&tokens(&[short]), &arange(1, 4, 0), None, None);
        let alone_long = model.forward(&tokens(&[long]), &arange(1, 7, 0), None, None);
        assert!(max_diff(&batch.get(0).narrow(0, 3, 4), &alone_short.get(0)) < 1e-5);
        assert!(max_diff(&batch.get(1), &alone_long.get(0)) < 1e-5);

        // One decode step on top of the padded cache.
        let next = tokens(&[&[15], &[28]]);
        let step_pos = Tensor::from_slice2(&[[4i64], [7]]).to_device(test_device());
        let step_mask = Tensor::cat(
            &[&mask, &Tensor::ones([2, 1], (Kind::Bool, test_device()))],
            1,
        );
        let step = model.forward(&next, &step_pos, Some(&step_mask), Some(&mut cache));
        let ref_short = model.forward(
            &tokens(&[&[11, 12, 13, 14, 15]]),
            &arange(1, 5, 0),
            None,
            None,
        );
        assert!(max_diff(&step.get(0).get(0), &ref_short.get(0).get(4)) < 1e-5);
    });
}

#[test]
fn reduced_precision_stays_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, _model) = tiny(3);
    save_model_dir(&vs, &config(), dir.path(), None).unwrap();
    let ids = tokens(&[&[3, 1, 4, 1, 5, 9, 2, 6]]);
    let logits = |kind: Kind| {
        let (_vs, m) = load_model_dir(
            dir.path(),
            LoadOptions {
                device: test_device(),
                kind,
            },
        )
        .unwrap();
        tch::no_grad(|| m.forward(&ids, &arange(1, 8, 0), None, None)).to_kind(Kind::Float)
    };
    let reference = logits(Kind::Float);
    let scale = reference.abs().max().double_value(&[]);
    for kind in [Kind::BFloat16, Kind::Half] {
        let diff = max_diff(&logits(kind), &reference);
        assert!(
            diff < 0.05 * scale,
            "{kind:?}: max diff {diff} at logit scale {scale}"
        );
    }
}

fn shard(single: &Path, out: &Path) {
    let tensors = Tensor::read_safetensors(single).unwrap();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        Tensor::write_safetensors(part, out.join(file)).unwrap();
        for (name, _) in part {
            map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(out.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::copy(
        single.with_file_name("config.json"),
        out.join("config.json"),
    )
    .unwrap();
}

#[test]
fn sharded_checkpoint_loads_like_single_file() {
    let (single, sharded) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (vs, model) = tiny(4);
    save_model_dir(&vs, &config(), single.path(), None).unwrap();
    shard(&single.path().join("model.safetensors"), sharded.path());
    let (_vs2, loaded) = load_model_dir(
        sharded.path(),
        LoadOptions {
            device: test_device(),
            ..Default::default()
        },
    )
    .unwrap();
    let ids = tokens(&[&[7, 8, 9]]);
    let (a, b) = tch::no_grad(|| {
        (
            model.forward(&ids, &arange(1, 3, 0), None, None),
            loaded.forward(&ids, &arange(1, 3, 0), None, None),
        )
    });
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn bad_checkpoints_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (vs, _) = tiny(5);
    save_model_dir(&vs, &config(), dir.path(), None).unwrap();
    let weights = dir.path().join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&weights).unwrap();
    tensors.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    tensors.push((
        "model.layers.9.extra.weight".into(),
        Tensor::zeros([2], (Kind::Float, Device::Cpu)),
    ));
    Tensor::write_safetensors(&tensors, &weights).unwrap();
    let err = load_model_dir(dir.path(), LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(
        err.contains("missing tensor: model.layers.1.mlp.up_proj.weight"),
        "{err}"
    );
    assert!(
        err.contains("unexpected tensor: model.layers.9.extra.weight"),
        "{err}"
    );

    let config_path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("LlamaForCausalLM", "MambaForCausalLM");
    std::fs::write(&config_path, text).unwrap();
    let err = load_model_dir(dir.path(), LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("MambaForCausalLM"),
        "{err}"
    );

    let err = load_model_dir(&dir.path().join("nope"), LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("config.json"), "{err}");
}
