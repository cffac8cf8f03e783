//! The vLLM engine against the real vLLM CPU build (`scripts/setup_vllm.sh`, run by
//! `make test`; `OXRL_VLLM_PYTHON` names its python). One server for the whole test binary,
//! serving the bundled model imported as an HF directory: start-up takes about a minute.
//! Tests share it one at a time (a weight sync changes what every test would see).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use oxrl::rollout::logprobs::completion_logprobs;
use oxrl::rollout::vllm::{free_port, Fleet, LaunchSpec, VllmServer};
use oxrl::rollout::{GenerationRequest, SamplingParams, StopConditions};
use oxrl::{LoadOptions, Pretrained};
use oxrl_envs::Message;
use oxrl_tests::oxrl_bin;

struct Shared {
    url: String,
    model_dir: PathBuf,
    _dir: tempfile::TempDir,
}

/// The shared server, started on first use, and the lock that gives one test at a time.
fn server() -> (MutexGuard<'static, ()>, &'static Shared) {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    let turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let shared = SHARED.get_or_init(start);
    (turn, shared)
}

fn start() -> Shared {
    let python = std::env::var("OXRL_VLLM_PYTHON")
        .expect("OXRL_VLLM_PYTHON is not set: run `make test` (it runs scripts/setup_vllm.sh)");
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let gguf = std::env::var("OXRL_SMOLLM2_GGUF").unwrap();
    let imported = Command::new(oxrl_bin())
        .arg("import")
        .arg(&gguf)
        .arg(&model_dir)
        .status()
        .unwrap();
    assert!(imported.success(), "oxrl import failed");
    let spec = LaunchSpec {
        python: python.into(),
        model_dir: model_dir.clone(),
        port: free_port().unwrap(),
        dtype: "float32".into(),
        threads: 2,
        extra_args: vec!["--max-model-len".into(), "1024".into()],
        log: dir.path().join("vllm.log"),
        startup_timeout: Duration::from_secs(600),
        lora_rank: None,
    };
    // The server dies with the thread that started it (PR_SET_PDEATHSIG): start it on one
    // that lives as long as the test binary.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let server = VllmServer::launch(&spec);
        let url = server
            .as_ref()
            .map(|s| s.url.clone())
            .map_err(|e| format!("{e:#}"));
        tx.send(url).unwrap();
        let _keep = server;
        loop {
            std::thread::park();
        }
    });
    let url = rx.recv().unwrap().unwrap_or_else(|e| panic!("{e}"));
    Shared {
        url,
        model_dir,
        _dir: dir,
    }
}

fn load(dir: &Path) -> Pretrained {
    Pretrained::load(dir, LoadOptions::default()).unwrap()
}

fn prompts(model: &Pretrained) -> Vec<Vec<u32>> {
    ["What is 7 + 5?", "Name a prime number."]
        .iter()
        .map(|q| {
            let text = model
                .tokenizer
                .apply_chat_template(&[Message::new("user", *q)], true)
                .unwrap();
            model.tokenizer.encode(&text, false).unwrap()
        })
        .collect()
}

/// Completions come back as token ids with the engine's logprobs; oxrl's own forward pass
/// gives the same logprobs for those tokens (both f32), and a stop ends on an EOS token.
#[test]
fn completions_are_token_ids_whose_logprobs_oxrl_reproduces() {
    let (_turn, shared) = server();
    let model = load(&shared.model_dir);
    let fleet =
        Fleet::connect(std::slice::from_ref(&shared.url), Duration::from_secs(120)).unwrap();
    let request = GenerationRequest {
        prompts: prompts(&model),
        n: 4,
        sampling: SamplingParams::default(),
        max_tokens: 24,
        stop: StopConditions {
            token_ids: model.tokenizer.eos_token_ids().to_vec(),
            strings: vec![],
        },
        seed: 7,
        prompt_offset: 0,
    };
    let generated = fleet.generate_all(&request).unwrap();
    assert_eq!(generated.len(), 8);
    let (mut worst, mut total, mut count) = (0f32, 0f32, 0usize);
    for g in &generated {
        assert!(!g.tokens.is_empty() && g.tokens.len() <= 24, "{g:?}");
        assert_eq!(g.tokens.len(), g.logprobs.len());
        let prompt = &request.prompts[g.prompt_index];
        let ours = completion_logprobs(&model.model, prompt, &g.tokens).unwrap();
        for (a, b) in ours.iter().zip(&g.logprobs) {
            worst = worst.max((a - b).abs());
            total += (a - b).abs();
            count += 1;
        }
    }
    let mean = total / count as f32;
    println!("vLLM vs oxrl logprobs over {count} tokens: mean |d| {mean:.2e}, max {worst:.2e}");
    assert!(mean < 1e-3 && worst < 2e-2, "mean {mean}, max {worst}");
    // Every prompt got its own group of 4.
    for i in 0..2 {
        let group: Vec<_> = generated.iter().filter(|g| g.prompt_index == i).collect();
        assert_eq!(group.len(), 4);
    }
}

/// After a sync the server computes with the new weights: its teacher-forced logprobs of a
/// fixed completion match oxrl's for the new weights and differ from the old ones; syncing
/// the original weights back restores them.
#[test]
fn a_weight_sync_really_swaps_the_servers_weights() {
    let (_turn, shared) = server();
    let model = load(&shared.model_dir);
    let fleet =
        Fleet::connect(std::slice::from_ref(&shared.url), Duration::from_secs(120)).unwrap();
    let prompt = prompts(&model).swap_remove(0);
    let completion = model.tokenizer.encode("7 + 5 = 12.", false).unwrap();
    let text: Vec<u32> = prompt.iter().chain(&completion).copied().collect();
    let served = |fleet: &Fleet| {
        let all = fleet.replicas()[0].score(&text).unwrap();
        all[prompt.len() - 1..].to_vec()
    };
    let before = served(&fleet);
    let ours = completion_logprobs(&model.model, &prompt, &completion).unwrap();
    assert_close(&before, &ours, "original weights");

    // A different policy: the last layer's MLP and the (tied) embeddings scaled. vLLM's
    // in-place reload keeps a tied output layer it gets no weight for: the sync writes it.
    let changed = load(&shared.model_dir);
    assert!(changed.model.config().tied_embeddings());
    tch::no_grad(|| {
        for (name, mut t) in changed.vs.variables() {
            if name.contains("layers.29.mlp") || name.contains("embed_tokens") {
                let scaled = &t * 1.5;
                t.copy_(&scaled);
            }
        }
    });
    let sync = tempfile::tempdir().unwrap();
    let config = changed.model.config();
    let (_, failed) = fleet
        .sync_weights(&changed.vs, config, sync.path(), 1)
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let after = served(&fleet);
    let theirs = completion_logprobs(&changed.model, &prompt, &completion).unwrap();
    assert_close(&after, &theirs, "synced weights");
    let moved: f32 = after.iter().zip(&before).map(|(a, b)| (a - b).abs()).sum();
    assert!(moved > 0.05, "the sync changed nothing: {moved}");

    let (_, failed) = fleet
        .sync_weights(&model.vs, model.model.config(), sync.path(), 2)
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_close(&served(&fleet), &ours, "original weights again");
    let left: Vec<_> = std::fs::read_dir(sync.path()).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "older sync directories are removed");
}

fn assert_close(served: &[f32], ours: &[f32], what: &str) {
    assert_eq!(served.len(), ours.len(), "{what}");
    let worst = served
        .iter()
        .zip(ours)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 2e-3, "{what}: vLLM {served:?} vs oxrl {ours:?}");
}
