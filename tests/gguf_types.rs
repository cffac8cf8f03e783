//! Every ggml type oxrl reads dequantizes to exactly what ggml's own Python package (`gguf`)
//! produces, on random blocks written by `reference/gguf_fixture.py`.

use std::collections::BTreeMap;
use std::process::Command;

use oxrl::gguf::dequant::GgmlType;
use oxrl::gguf::GgufFile;
use oxrl_tests::python;

#[test]
fn every_type_matches_the_gguf_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (file, json) = (dir.path().join("types.gguf"), dir.path().join("types.json"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/reference/gguf_fixture.py");
    let status = Command::new(python())
        .arg(script)
        .arg(&file)
        .arg(&json)
        .status()
        .unwrap();
    assert!(status.success(), "fixture script failed");
    let reference: BTreeMap<String, Vec<f32>> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let gguf = GgufFile::open(&file).unwrap();
    assert_eq!(gguf.tensors.len(), 11, "one tensor per supported type");
    for info in &gguf.tensors {
        let ty = GgmlType::from_id(info.ggml_type).unwrap();
        assert_eq!(ty.name, info.name);
        let numel = info.numel() as usize;
        let bytes = gguf
            .tensor_bytes(info, ty.byte_len(numel).unwrap())
            .unwrap();
        let ours = ty.dequantize(bytes);
        let want = &reference[&info.name];
        assert_eq!(ours.len(), want.len(), "{}", info.name);
        for (i, (a, b)) in ours.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{} element {i}: oxrl {a} vs gguf {b}",
                info.name
            );
        }
    }
}

#[test]
fn a_truncated_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, b"GGUF\x03\x00\x00\x00\x05").unwrap();
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(
        err.contains("broken.gguf") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&path, b"PK\x03\x04 not a gguf").unwrap();
    let err = GgufFile::open(&path).unwrap_err().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");
}
