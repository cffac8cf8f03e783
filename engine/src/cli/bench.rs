//! `oxrl bench rollout`: rollout throughput on fixed prompts, EOS ignored so every completion
//! has exactly `--max-tokens` tokens, next to the memory-bandwidth floor of a decode step.

use std::time::Instant;

use tch::{Device, Kind, Tensor};

use super::bench_padding::{self, PaddingArgs};
use super::bench_turns::{self, TurnsArgs};
use super::bench_update::{self, UpdateArgs};
use super::ModelArgs;
use crate::rollout::{generate_batch, GenerationRequest, SamplingParams, StopConditions};
use crate::runtime::RuntimeSection;

/// Prompts shared with bench/hf_rollout.py; cycled to fill the batch.
pub const PROMPTS: [&str; 8] = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue in simple terms.",
    "def fibonacci(n):",
    "The three most important inventions of the twentieth century are",
    "Question: What is 17 times 23? Answer:",
    "List five fruits that are red:",
    "Once upon a time in a small village by the sea,",
];

#[derive(Debug, clap::Subcommand)]
pub(super) enum Bench {
    /// Batched sampling throughput.
    Rollout(RolloutArgs),
    /// One decode step's weight products (f32, CPU): libtorch's `linear` vs oxrl's kernel.
    Gemm(GemmArgs),
    /// GRPO updates of a random model (Qwen2.5-0.5B's shape by default): each one's time and
    /// peak memory, with the learner's memory options from flags.
    Update(UpdateArgs),
    /// Padded positions of the learner's micro-batches on drawn prompt/completion lengths,
    /// against padding-free packing.
    Padding(PaddingArgs),
    /// Multi-turn rollouts: later turns from each episode's kept KV cache vs prefilled from
    /// scratch.
    Turns(TurnsArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct GemmArgs {
    /// Input rows (the decode batch).
    #[arg(long, default_value_t = 8)]
    batch: i64,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Decoder layers, each with its own weights (the bundled model's shape by default).
    #[arg(long, default_value_t = 30)]
    layers: i64,
    #[arg(long, default_value_t = 576)]
    hidden: i64,
    #[arg(long, default_value_t = 1536)]
    intermediate: i64,
    /// Width of the k and v projections.
    #[arg(long, default_value_t = 192)]
    kv: i64,
    #[arg(long, default_value_t = 49152)]
    vocab: i64,
    /// Timed steps (the best is reported).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
}

#[derive(Debug, clap::Args)]
pub(super) struct RolloutArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Completions generated at once.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// New tokens per completion (EOS is ignored).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// libtorch intra-op threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Timed repetitions (the best is reported).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Keep the thread count fixed however busy the cores are (`runtime.adapt_threads =
    /// false`).
    #[arg(long)]
    fixed_threads: bool,
}

pub(super) fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::Rollout(args) => rollout(args),
        Bench::Gemm(args) => gemm(args),
        Bench::Update(args) => bench_update::update(args),
        Bench::Padding(args) => bench_padding::padding(args),
        Bench::Turns(args) => bench_turns::turns(args),
    }
}

fn rollout(args: RolloutArgs) -> anyhow::Result<()> {
    RuntimeSection {
        threads: args.threads.unwrap_or(0).max(0) as usize,
        adapt_threads: !args.fixed_threads,
        ..Default::default()
    }
    .apply_threads();
    let threads = tch::get_num_threads();
    let loaded = args.model.load()?;
    let prompts = PROMPTS
        .iter()
        .cycle()
        .take(args.batch)
        .map(|p| loaded.tokenizer.encode(p, false))
        .collect::<Result<Vec<_>, _>>()?;
    let mut req = GenerationRequest {
        prompts,
        n: 1,
        sampling: SamplingParams {
            temperature: args.temperature,
            ..Default::default()
        },
        max_tokens: 4,
        stop: StopConditions::default(),
        seed: 0,
        prompt_offset: 0,
    };
    generate_batch(&loaded.model, &req, None)?; // warm-up
    req.max_tokens = args.max_tokens;
    let mut best = f64::INFINITY;
    for _ in 0..args.repeats.max(1) {
        let start = Instant::now();
        let out = generate_batch(&loaded.model, &req, None)?;
        best = best.min(start.elapsed().as_secs_f64());
        assert!(
            out.iter().all(|g| g.tokens.len() == args.max_tokens),
            "EOS is ignored"
        );
    }
    let tokens = (args.batch * args.max_tokens) as f64;
    let model_bytes = param_bytes(&loaded.vs);
    let bandwidth = read_bandwidth(loaded.model.device());
    let floor = args.batch as f64 * bandwidth / model_bytes;
    println!(
        "threads={threads} (at the end: {}) batch={} max_tokens={}",
        tch::get_num_threads(),
        args.batch,
        args.max_tokens
    );
    println!("model_bytes={model_bytes:.0} read_bandwidth_bytes_per_s={bandwidth:.3e}");
    println!("bandwidth_floor_tokens_per_s={floor:.1} (one read of the weights per decode step)");
    println!("seconds={best:.3}");
    println!("tokens_per_s={:.1}", tokens / best);
    Ok(())
}

/// Times one decode step's products with distinct weights per layer (so they stream from
/// memory as in a real step) through libtorch's `linear` and through `decode_linear`, next to
/// the time it takes to read the weights once.
fn gemm(args: GemmArgs) -> anyhow::Result<()> {
    if let Some(t) = args.threads {
        tch::set_num_threads(t);
    }
    let _no_grad = tch::no_grad_guard();
    let (h, i, kv) = (args.hidden, args.intermediate, args.kv);
    let layer = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)];
    let mut weights: Vec<Tensor> = (0..args.layers)
        .flat_map(|_| layer.iter().map(|&(n, k)| Tensor::randn([n, k], FLOAT)))
        .collect();
    weights.push(Tensor::randn([args.vocab, h], FLOAT)); // the head
    let inputs: Vec<Tensor> = weights
        .iter()
        .map(|w| Tensor::randn([args.batch, w.size()[1]], FLOAT))
        .collect();
    let time = |product: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
        let mut best = f64::INFINITY;
        for _ in 0..args.repeats.max(1) + 1 {
            let start = Instant::now();
            for (x, w) in inputs.iter().zip(&weights) {
                let _ = product(x, w);
            }
            best = best.min(start.elapsed().as_secs_f64());
        }
        best * 1e3
    };
    let torch = time(&|x, w| x.linear::<Tensor>(w, None));
    let ours = time(&|x, w| {
        crate::kernels::decode_linear::linear(x, w).expect("the kernel applies (AVX-512, f32)")
    });
    let bytes: f64 = weights.iter().map(|w| w.numel() as f64 * 4.0).sum();
    let floor = bytes / read_bandwidth(Device::Cpu) * 1e3;
    println!(
        "threads={} batch={} layers={} weight_bytes={bytes:.0}",
        tch::get_num_threads(),
        args.batch,
        args.layers
    );
    println!("libtorch_linear_ms={torch:.2} oxrl_ms={ours:.2} read_floor_ms={floor:.2}");
    println!("speedup={:.2}", torch / ours);
    Ok(())
}

const FLOAT: (Kind, Device) = (Kind::Float, Device::Cpu);

fn param_bytes(vs: &tch::nn::VarStore) -> f64 {
    vs.trainable_variables()
        .iter()
        .map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as f64)
        .sum()
}

/// Bytes per second of reading a large tensor (a sum over 256 MB, more than any cache): a
/// decode step must read every weight once, so model bytes / this is its lower bound.
fn read_bandwidth(device: Device) -> f64 {
    let n = 64 * 1024 * 1024;
    let src = Tensor::ones([n], (Kind::Float, device));
    let _ = src.sum(Kind::Float).double_value(&[]); // warm-up, and synchronises on CUDA
    let reps = 5;
    let start = Instant::now();
    for _ in 0..reps {
        let _ = src.sum(Kind::Float).double_value(&[]);
    }
    (reps * n * 4) as f64 / start.elapsed().as_secs_f64()
}
