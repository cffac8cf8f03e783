//! The bundled SmolLM2-135M-Instruct (GGUF, Q4_1/Q8_0) against transformers loading the same
//! file: per-token logprobs within 1e-4, greedy continuations token-identical, tokenizer
//! encodes and chat rendering identical; and `oxrl import` writes a directory transformers
//! loads to the same logits.

use std::path::Path;
use std::process::Command;

use oxrl::rollout::logprobs::completion_logprobs;
use oxrl::rollout::single::{generate, SamplingConfig};
use oxrl::{LoadOptions, Pretrained};
use oxrl_envs::Message;
use oxrl_tests::{hf_reference, oxrl_bin, smollm2_gguf};
use serde_json::{json, Value};

const TEXTS: [&str; 8] = [
    "Hello, world! The answer is 42.",
    "Ünïcödé: café, naïve, 日本語のテキスト, emoji 🚀🔥, Ελληνικά, Привет",
    "12345 + 678.9 = 13023.9; 1,000,000 and 3.14159e-10 or $1,234.56 (50%)",
    "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)\n\n\tprint(fib(10))  # done",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>",
    "   leading spaces and trailing   \n\n\nnewlines\r\n",
    "Mixed-CASE words, don't won't it's we'll THEY'RE <html><body>x&amp;y</body></html>",
    "\\frac{1}{2} + \\sqrt{x^2} = \\boxed{3}",
];

const PAIRS: [(&str, &str); 4] = [
    (
        "The capital of France is",
        " Paris, a city known for its art and food.",
    ),
    (
        "Question: what is 12 * 7?\nAnswer:",
        " 12 * 7 = 84. The answer is 84.",
    ),
    (
        "<|im_start|>user\nName a prime number.<|im_end|>\n<|im_start|>assistant\n",
        "7 is a prime number.<|im_end|>",
    ),
    ("def add(a, b):\n", "    return a + b\n"),
];

const GREEDY: [&str; 3] = [
    "Once upon a time",
    "The three primary colors are",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
];
const GREEDY_TOKENS: usize = 32;

fn import(gguf: &Path, out: &Path) {
    let status = Command::new(oxrl_bin())
        .arg("import")
        .arg(gguf)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success(), "oxrl import failed");
}

#[test]
fn smollm2_matches_transformers() {
    let gguf = smollm2_gguf();
    let imported = tempfile::tempdir().unwrap();
    import(&gguf, imported.path());
    let ours = Pretrained::load(&gguf, LoadOptions::default()).unwrap();
    let chat = [Message::new("user", "What is 7 * 6?")];
    let reference = hf_reference(&json!({
        "op": "smollm2", "gguf": gguf, "imported": imported.path(),
        "pairs": PAIRS, "greedy_prompts": GREEDY, "greedy_tokens": GREEDY_TOKENS,
        "texts": TEXTS, "chat": chat,
    }));

    check_encodes(&ours, &reference["encodes"], "transformers (GGUF)");
    check_encodes(
        &ours,
        &reference["imported_encodes"],
        "transformers (imported dir)",
    );
    assert_eq!(
        ours.tokenizer.apply_chat_template(&chat, true).unwrap(),
        reference["chat"].as_str().unwrap(),
        "chat template rendering"
    );
    check_logprobs(&ours, &reference["pairs"]);
    check_greedy(&ours, &reference["greedy"]);
    let import_diff = reference["import_max_diff"].as_f64().unwrap();
    assert!(
        import_diff < 1e-5,
        "imported dir logits differ from GGUF by {import_diff}"
    );
    check_imported_dir_matches_gguf(&ours, imported.path());
}

fn encode(model: &Pretrained, text: &str) -> Vec<u32> {
    model.tokenizer.encode(text, false).unwrap()
}

fn check_encodes(ours: &Pretrained, reference: &Value, what: &str) {
    for (text, want) in TEXTS.iter().zip(reference.as_array().unwrap()) {
        let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
        assert_eq!(encode(ours, text), want, "encode {text:?} vs {what}");
        assert_eq!(
            ours.tokenizer.decode(&want, false).unwrap(),
            *text,
            "decode round trip"
        );
    }
}

fn check_logprobs(ours: &Pretrained, reference: &Value) {
    for ((prompt, completion), want) in PAIRS.iter().zip(reference.as_array().unwrap()) {
        let tokens = encode(ours, completion);
        assert_eq!(
            serde_json::to_value(&tokens).unwrap(),
            want["tokens"],
            "{completion:?}"
        );
        let got = completion_logprobs(&ours.model, &encode(ours, prompt), &tokens).unwrap();
        let want: Vec<f64> = serde_json::from_value(want["logprobs"].clone()).unwrap();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (*g as f64 - w).abs())
            .fold(0.0, f64::max);
        eprintln!("{prompt:?}: max |logprob diff| vs transformers = {worst:.2e}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - w).abs() < 1e-4,
                "{prompt:?} token {i}: oxrl {g} vs transformers {w}"
            );
        }
    }
}

fn check_greedy(ours: &Pretrained, reference: &Value) {
    let cfg = SamplingConfig {
        temperature: 0.0,
        max_tokens: GREEDY_TOKENS,
        seed: 0,
    };
    for (prompt, want) in GREEDY.iter().zip(reference.as_array().unwrap()) {
        let got = generate(&ours.model, &encode(ours, prompt), &cfg, &[]).unwrap();
        let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
        assert_eq!(got, want, "greedy continuation of {prompt:?}");
    }
}

fn check_imported_dir_matches_gguf(gguf_model: &Pretrained, dir: &Path) {
    let from_dir = Pretrained::load(dir, LoadOptions::default()).unwrap();
    for text in TEXTS {
        assert_eq!(encode(&from_dir, text), encode(gguf_model, text));
    }
    let (prompt, completion) = PAIRS[0];
    let a = completion_logprobs(
        &gguf_model.model,
        &encode(gguf_model, prompt),
        &encode(gguf_model, completion),
    )
    .unwrap();
    let b = completion_logprobs(
        &from_dir.model,
        &encode(&from_dir, prompt),
        &encode(&from_dir, completion),
    )
    .unwrap();
    assert_eq!(a, b, "imported directory gives different logprobs");
}

#[test]
fn logprobs_cli_writes_one_line_per_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines: Vec<String> = PAIRS[..2]
        .iter()
        .map(|(p, c)| json!({"prompt": p, "completion": c}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(oxrl_bin())
        .args(["logprobs", "--model"])
        .arg(smollm2_gguf())
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let model = Pretrained::load(&smollm2_gguf(), LoadOptions::default()).unwrap();
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for ((prompt, completion), row) in PAIRS.iter().zip(&rows) {
        let tokens = encode(&model, completion);
        let want = completion_logprobs(&model.model, &encode(&model, prompt), &tokens).unwrap();
        assert_eq!(row["tokens"], json!(tokens));
        let got: Vec<f32> = serde_json::from_value(row["logprobs"].clone()).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn cached_decoding_equals_full_forward_on_smollm2() {
    use tch::{Kind, Tensor};
    let model = Pretrained::load(&smollm2_gguf(), LoadOptions::default()).unwrap();
    let ids: Vec<i64> = encode(&model, TEXTS[3])
        .into_iter()
        .map(i64::from)
        .collect();
    let n = ids.len() as i64;
    let tokens = Tensor::from_slice(&ids).unsqueeze(0);
    let positions = |start: i64, len: i64| {
        Tensor::arange_start(start, start + len, (Kind::Int64, tch::Device::Cpu)).unsqueeze(0)
    };
    tch::no_grad(|| {
        let full = model.model.forward(&tokens, &positions(0, n), None, None);
        let mut cache = model.model.new_cache();
        let prefill = 5;
        let mut parts = vec![model.model.forward(
            &tokens.narrow(1, 0, prefill),
            &positions(0, prefill),
            None,
            Some(&mut cache),
        )];
        for t in prefill..n {
            parts.push(model.model.forward(
                &tokens.narrow(1, t, 1),
                &positions(t, 1),
                None,
                Some(&mut cache),
            ));
        }
        let diff = (Tensor::cat(&parts, 1) - &full)
            .abs()
            .max()
            .double_value(&[]);
        let scale = full.abs().max().double_value(&[]);
        eprintln!("SmolLM2 cached vs full: max |logit diff| {diff:.2e}, logit scale {scale:.1}, {n} tokens");
        // 30 layers of GEMMs with different shapes (1 row vs n rows) round differently, so the
        // bound is relative to the logits' magnitude; tiny models meet 1e-5 absolute.
        assert!(
            diff < 1e-5 * scale,
            "cached vs full: {diff} at scale {scale}"
        );
    });
}
