//! `oxrl bench update`: GRPO updates (`Learner::train`) of a random model of a given shape
//! (Qwen2.5-0.5B's by default) on one synthetic group, each update's wall and CPU time and the
//! process's peak resident memory (`VmHWM`, reset just before the update; CPU memory only, so
//! on CUDA it does not show the GPU's). bench/learner_memory.sh runs it next to TRL's
//! `GRPOTrainer` (bench/trl_update_memory.py).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;

use crate::device::{parse_device, parse_kind};
use crate::learner::metrics as m;
use crate::learner::optim::{OptimConfig, Optimizer};
use crate::learner::{AlgorithmKind, Learner, LearnerConfig};
use crate::model::{Llama, ModelConfig};
use crate::sample::{FinishReason, Sample};

#[derive(Debug, clap::Args)]
pub(super) struct UpdateArgs {
    /// Model width (the defaults are Qwen2.5-0.5B's shape, embeddings tied).
    #[arg(long, default_value_t = 896)]
    hidden: usize,
    #[arg(long, default_value_t = 24)]
    layers: usize,
    #[arg(long, default_value_t = 14)]
    heads: usize,
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    #[arg(long, default_value_t = 4864)]
    intermediate: usize,
    #[arg(long, default_value_t = 151_936)]
    vocab: usize,
    /// Completions of the one group (the GRPO group size).
    #[arg(long, default_value_t = 4)]
    group: usize,
    /// Tokens of the group's shared random prompt.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens of every completion (all trained).
    #[arg(long, default_value_t = 512)]
    completion_tokens: usize,
    /// `[learner] gradient_checkpointing = true`.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// `[learner] logprob_chunk_tokens`.
    #[arg(long)]
    logprob_chunk_tokens: Option<usize>,
    /// `[learner] max_tokens_per_micro_batch`.
    #[arg(long)]
    max_tokens_per_micro_batch: Option<usize>,
    /// `[learner.optim] optim`: adamw_torch (f32 moments) or adamw_8bit.
    #[arg(long, default_value = "adamw_torch", value_parser = parse_optimizer)]
    optim: Optimizer,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Parameter dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Seed of the weights and the tokens.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Updates run one after the other on the same group (the first allocates the gradients;
    /// later ones are what every step of a run costs).
    #[arg(long, default_value_t = 2)]
    updates: usize,
    /// Also sample the RSS every this many milliseconds during the update and print the
    /// samples (`rss_trace=seconds:RSS/live ...`, MiB; live is what malloc has handed out), to
    /// see which phase holds the peak and how much of it is memory malloc keeps.
    #[arg(long)]
    rss_trace_ms: Option<u64>,
}

/// Runs `--updates` GRPO updates and prints the settings, then per update its time, peak
/// memory and a few metrics (ratio 1 shows the behaviour logprobs are the model's own); the
/// last line is the last update's (`update_seconds=.. peak_rss_mib=.. baseline_rss_mib=..`).
pub(super) fn update(args: UpdateArgs) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let (vs, model) = random_qwen2(&args)?;
    let param_mib = param_bytes(&vs) / MIB;
    // What building the model freed (an f32 draw cast to bf16) is not part of the baseline.
    release_free_memory();
    let baseline = status_mib("VmRSS");
    let cfg = LearnerConfig {
        algorithm: AlgorithmKind::Grpo,
        gradient_checkpointing: args.gradient_checkpointing,
        logprob_chunk_tokens: args.logprob_chunk_tokens,
        max_tokens_per_micro_batch: args.max_tokens_per_micro_batch,
        optim: OptimConfig {
            optim: args.optim,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut learner = Learner::new(vs, model, cfg)?;
    let opt = |v: Option<usize>| v.map_or("none".to_string(), |v| v.to_string());
    println!(
        "threads={} group={} prompt_tokens={} completion_tokens={} gradient_checkpointing={} logprob_chunk_tokens={} max_tokens_per_micro_batch={} optim={:?} dtype={} param_mib={param_mib:.0} learner_rss_mib={:.0}",
        tch::get_num_threads(),
        args.group,
        args.prompt_tokens,
        args.completion_tokens,
        args.gradient_checkpointing,
        opt(args.logprob_chunk_tokens),
        opt(args.max_tokens_per_micro_batch),
        args.optim,
        args.dtype,
        status_mib("VmRSS"),
    );
    let mut samples = group_samples(&args);
    let mut last = None;
    for i in 1..=args.updates.max(1) {
        let measured = measure_update(&mut learner, &mut samples, args.rss_trace_ms)?;
        println!("update={i} {}", measured.summary());
        last = Some(measured);
    }
    let last = last.expect("at least one update ran");
    println!(
        "update_seconds={:.2} update_cpu_seconds={:.1} peak_rss_mib={:.0} baseline_rss_mib={baseline:.0}",
        last.seconds, last.cpu_seconds, last.peak
    );
    Ok(())
}

/// An `optim` name as the config takes it.
fn parse_optimizer(name: &str) -> Result<Optimizer, String> {
    serde_json::from_value(serde_json::Value::String(name.into())).map_err(|e| e.to_string())
}

/// One update's measurements.
struct Measured {
    seconds: f64,
    /// CPU time of the process (all threads, user + system): less sensitive than wall time
    /// to other work on the machine.
    cpu_seconds: f64,
    /// RSS when the update began (after the behaviour pass's memory was released), MiB.
    start_rss: f64,
    /// Peak RSS during the update, MiB.
    peak: f64,
    peak_reset: bool,
    metrics: crate::learner::Metrics,
    trace: Option<String>,
}

impl Measured {
    fn summary(&self) -> String {
        let metric = |name: &str| self.metrics.get(name).copied().unwrap_or(f64::NAN);
        let mut line = format!(
            "seconds={:.2} cpu_seconds={:.1} peak_rss_mib={:.0} start_rss_mib={:.0} peak_reset={} ratio_mean={:.6} loss={:.6} grad_norm={:.4}",
            self.seconds,
            self.cpu_seconds,
            self.peak,
            self.start_rss,
            self.peak_reset,
            metric(m::RATIO_MEAN),
            metric(m::LOSS),
            metric(m::GRAD_NORM),
        );
        if let Some(trace) = &self.trace {
            line += &format!(" rss_trace={trace}");
        }
        line
    }
}

/// Fills `samples`' behaviour logprobs with the policy's own (an on-policy batch: ratio 1),
/// then times one `Learner::train` and reads its peak RSS. The behaviour pass is set-up:
/// the memory it freed is handed back to the OS (it would otherwise stay resident in malloc's
/// arenas and be counted) and the peak is reset before the update starts.
fn measure_update(
    learner: &mut Learner,
    samples: &mut [Sample],
    rss_trace_ms: Option<u64>,
) -> anyhow::Result<Measured> {
    let behaviour = learner.logprobs(samples)?;
    for (s, logp) in samples.iter_mut().zip(behaviour) {
        s.behaviour_logprobs = logp;
    }
    release_free_memory();
    let start_rss = status_mib("VmRSS");
    let peak_reset = reset_peak();
    let trace = rss_trace_ms.map(RssTrace::start);
    let (start, cpu_start) = (Instant::now(), cpu_seconds());
    let metrics = learner.train(samples)?.metrics;
    Ok(Measured {
        seconds: start.elapsed().as_secs_f64(),
        cpu_seconds: cpu_seconds() - cpu_start,
        start_rss,
        peak: status_mib("VmHWM"),
        peak_reset,
        metrics,
        trace: trace.map(RssTrace::finish),
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// A Qwen2 decoder of `args`' shape (tied embeddings, q/k/v biases, RoPE base 1e6) with
/// seeded N(0, 0.02) weights, norm weights around 1.
fn random_qwen2(args: &UpdateArgs) -> anyhow::Result<(VarStore, Llama)> {
    let cfg: ModelConfig = serde_json::from_value(serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": args.vocab,
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "tie_word_embeddings": true,
        "use_sliding_window": false,
    }))?;
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("model shape: {e}"))?;
    let mut vs = VarStore::new(parse_device(&args.device)?);
    let model = Llama::new(&vs.root(), &cfg);
    init_weights(&vs, args.seed as i64);
    let kind = parse_kind(&args.dtype)?;
    if kind != tch::Kind::Float {
        vs.set_kind(kind);
    }
    Ok((vs, model))
}

/// Seeded N(0, 0.02) weights (norm weights 1 + N(0, 0.02)) drawn by libtorch's generator:
/// `model::random::randomize` draws every value in Rust, which at 0.5B parameters takes
/// longer than the update being measured.
fn init_weights(vs: &VarStore, seed: i64) {
    tch::manual_seed(seed);
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0)); // HashMap order would make the seed meaningless
    tch::no_grad(|| {
        for (name, mut var) in vars {
            let mean = if name.contains("norm") { 1.0 } else { 0.0 };
            let _ = var.normal_(mean, 0.02);
        }
    });
}

/// One GRPO group: `args.group` completions of `args.completion_tokens` random tokens after
/// one shared random prompt, rewards spread over [0, 1] so every advantage is non-zero.
/// Behaviour logprobs are left at 0 for the caller to fill.
fn group_samples(args: &UpdateArgs) -> Vec<Sample> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let vocab = args.vocab as u32;
    let mut tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab)).collect() };
    let prompt = tokens(args.prompt_tokens);
    let n = args.completion_tokens;
    (0..args.group)
        .map(|i| Sample {
            prompt_ids: prompt.clone(),
            completion_ids: tokens(n),
            loss_mask: vec![true; n],
            behaviour_logprobs: vec![0.0; n],
            learner_logprobs: None,
            policy_version: 0,
            group_id: 0,
            finish_reason: FinishReason::Length,
            reward: i as f64 / (args.group.max(2) - 1) as f64,
            rewards: BTreeMap::new(),
            turn_rewards: Vec::new(),
        })
        .collect()
}

fn param_bytes(vs: &VarStore) -> f64 {
    vs.trainable_variables()
        .iter()
        .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as f64)
        .sum()
}

/// A `kB` field of /proc/self/status (`VmRSS`: resident now, `VmHWM`: the peak) in MiB;
/// NaN where there is no procfs.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resets the peak (`VmHWM`) to the current RSS: Linux (4.0+) does so when `5` is written to
/// /proc/self/clear_refs. false where that is refused (the peak then includes the set-up).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// User + system CPU seconds of this process so far (all threads); NaN if unavailable.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is zeroed plain data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Returns memory malloc holds but nobody uses to the OS (glibc's `malloc_trim`), so the RSS
/// is what is live. bench/trl_update_memory.py does the same before TRL's update.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What malloc has handed out and not had back (`mallinfo2`: arena chunks in use plus mmapped
/// blocks) in MiB: the live part of the RSS, the rest being code and memory malloc keeps.
/// NaN outside glibc.
fn malloc_live_mib() -> f64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads malloc's counters.
        let info = unsafe { libc::mallinfo2() };
        (info.uordblks + info.hblkhd) as f64 / MIB
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    f64::NAN
}

/// VmRSS and malloc's live bytes sampled on a thread until [`finish`](Self::finish).
struct RssTrace {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(f64, f64, f64)>>,
}

impl RssTrace {
    fn start(every_ms: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (start, mut samples) = (Instant::now(), Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let now = start.elapsed().as_secs_f64();
                samples.push((now, status_mib("VmRSS"), malloc_live_mib()));
                std::thread::sleep(std::time::Duration::from_millis(every_ms.max(1)));
            }
            samples
        });
        Self { stop, thread }
    }

    /// The samples as `seconds:RSS/live` words (MiB).
    fn finish(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.thread.join().unwrap_or_default(); // a panicked sampler: no trace
        let words: Vec<String> = samples
            .iter()
            .map(|(t, mib, live)| format!("{t:.1}:{mib:.0}/{live:.0}"))
            .collect();
        words.join(" ")
    }
}
