//! Shared helpers for oxrl's end-to-end tests: the set-up's Python (with transformers), the
//! bundled model, the `oxrl` binary, and tiny random models written as HF directories.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use oxrl::model::random::randomize;
use oxrl::pretrained::save_model_dir;
use oxrl::{Llama, ModelConfig};
use serde_json::Value;
use tch::nn::VarStore;

fn setup_env(var: &str) -> PathBuf {
    let value = std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the tests with `make test`, which runs scripts/setup.sh")
    });
    PathBuf::from(value)
}

/// The set-up's Python interpreter (torch 2.11.0 + transformers).
pub fn python() -> PathBuf {
    setup_env("OXRL_PYTHON")
}

/// The bundled SmolLM2-135M-Instruct GGUF file.
pub fn smollm2_gguf() -> PathBuf {
    setup_env("OXRL_SMOLLM2_GGUF")
}

/// Runs `tests/reference/hf_reference.py` with `request` and returns its answer.
pub fn hf_reference(request: &Value) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/hf_reference.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the reference script");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(request.to_string().as_bytes())
        .expect("writing the request");
    drop(stdin);
    let out = child
        .wait_with_output()
        .expect("running the reference script");
    assert!(
        out.status.success(),
        "reference script failed: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("reference answer is JSON")
}

/// The `oxrl` binary built beside this test executable.
pub fn oxrl_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/oxrl
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("oxrl");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build` first",
        bin.display()
    );
    bin
}

/// A tiny model for `config_json`, randomly initialised with `seed`, saved as an HF directory
/// (config.json + model.safetensors) in `dir`.
pub fn tiny_model(config_json: &Value, seed: i64, dir: &Path) -> (VarStore, Llama) {
    let config: ModelConfig = serde_json::from_value(config_json.clone()).expect("valid config");
    config.validate().expect("valid config");
    let vs = VarStore::new(tch::Device::Cpu);
    let model = Llama::new(&vs.root(), &config);
    randomize(&vs, seed, 0.2);
    save_model_dir(&vs, &config, dir, None).expect("saving the tiny model");
    (vs, model)
}

/// `--set` overrides that swap a shipped config's model for a tiny random one with the bundled
/// tokenizer, so a real config runs in seconds.
pub const TINY_MODEL: [&str; 7] = [
    "model.path=\"${OXRL_SMOLLM2_GGUF}\"",
    "model.device=cpu",
    "model.random.hidden_size=32",
    "model.random.num_hidden_layers=1",
    "model.random.num_attention_heads=4",
    "model.random.num_key_value_heads=2",
    "model.random.intermediate_size=64",
];

/// `configs/smoke.toml`: a tiny random model with the bundled tokenizer.
pub fn smoke_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml")
}

/// `oxrl train configs/smoke.toml --set output_dir=OUT --set S...` for each of `sets`; add more
/// arguments (`--resume auto`) to the returned command.
pub fn smoke_train(out: &Path, sets: &[&str]) -> Command {
    train_command(&smoke_config(), out, sets)
}

/// `oxrl train CONFIG --set output_dir=OUT --set S...` for each of `sets`.
pub fn train_command(config: &Path, out: &Path, sets: &[&str]) -> Command {
    let mut cmd = Command::new(oxrl_bin());
    cmd.arg("train")
        .arg(config)
        .arg("--set")
        .arg(format!("output_dir={}", out.display()));
    for set in sets {
        cmd.args(["--set", set]);
    }
    cmd
}

/// A plain HTTP/1.1 GET: the status code and body, or None when the connection fails.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    Some((status, body.to_owned()))
}

/// Sends SIGTERM to a run and asserts that it saved and exited cleanly.
pub fn terminate_cleanly(mut child: std::process::Child) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill")
        .success());
    assert!(
        child.wait().expect("waiting for the run").success(),
        "SIGTERM ends the run cleanly"
    );
}

/// The parsed lines of a run's `metrics.jsonl`.
pub fn metrics_lines(output_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(output_dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Whether a `metrics.jsonl` line is an evaluation (`[eval]`) rather than a training step.
pub fn is_eval_line(line: &Value) -> bool {
    line.get("eval/pass_at_1").is_some()
}

/// The training-step lines of a run's `metrics.jsonl` (without the eval lines).
pub fn training_lines(output_dir: &Path) -> Vec<Value> {
    metrics_lines(output_dir)
        .into_iter()
        .filter(|l| !is_eval_line(l))
        .collect()
}
