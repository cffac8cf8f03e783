//! A vLLM OpenAI-compatible server that oxrl launches and supervises: started as
//! `python -m vllm.entrypoints.openai.api_server` (the `vllm` console script does not work with
//! the CPU build's package name), health-checked before first use, its output kept in a log
//! file whose tail explains a failure, and stopped (its whole process group) with oxrl.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The model name requests use (`--served-model-name`).
pub const SERVED_MODEL: &str = "oxrl-policy";

/// How to start one server.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The Python that has vLLM installed (`scripts/setup_vllm.sh` prints it).
    pub python: PathBuf,
    /// An HF model directory (`oxrl import` output, or a checkpoint's weights).
    pub model_dir: PathBuf,
    /// Port on 127.0.0.1.
    pub port: u16,
    /// `--dtype` (`float32`, `bfloat16`).
    pub dtype: String,
    /// OpenMP threads of the server (its CPU backend).
    pub threads: usize,
    /// More command-line arguments for the server.
    pub extra_args: Vec<String>,
    /// Where the server's stdout and stderr go.
    pub log: PathBuf,
    /// How long start-up may take (compile warm-up: 65-105 s on a 2-core CPU).
    pub startup_timeout: Duration,
    /// A LoRA run's adapter rank: the server then takes adapters at run time
    /// (`--enable-lora`, the smallest `--max-lora-rank` vLLM offers that fits).
    pub lora_rank: Option<i64>,
}

/// The `--max-lora-rank` values vLLM accepts.
const LORA_RANKS: [i64; 9] = [1, 8, 16, 32, 64, 128, 256, 320, 512];

/// vLLM's smallest LoRA rank slot that holds adapters of rank `r`.
fn lora_rank_slot(r: i64) -> Option<i64> {
    LORA_RANKS.into_iter().find(|&slot| slot >= r)
}

/// A running server; stopped when dropped.
#[derive(Debug)]
pub struct VllmServer {
    child: Child,
    /// How it was started (a restart starts it the same way).
    spec: LaunchSpec,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The server's log file.
    pub log: PathBuf,
}

impl VllmServer {
    /// Starts a server and waits until `/health` answers.
    pub fn launch(spec: &LaunchSpec) -> anyhow::Result<Self> {
        let log = File::create(&spec.log)
            .with_context(|| format!("creating the vLLM log {}", spec.log.display()))?;
        let child = spawn(spec, log)?;
        let mut server = VllmServer {
            child,
            spec: spec.clone(),
            url: format!("http://127.0.0.1:{}", spec.port),
            log: spec.log.clone(),
        };
        server.wait_ready(spec.startup_timeout)?;
        Ok(server)
    }

    /// Starts the server again the same way (same port, so its URL stays), after stopping
    /// whatever is left of the old one; the log continues in the same file after a marker
    /// line, so the crash stays readable above it.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let mut log = File::options()
            .append(true)
            .create(true)
            .open(&self.log)
            .with_context(|| format!("opening the vLLM log {}", self.log.display()))?;
        writeln!(log, "\n===== oxrl: restarting the vLLM server =====\n")?;
        self.child = spawn(&self.spec, log)?;
        self.wait_ready(self.spec.startup_timeout)
    }

    /// Stops the server: SIGTERM to it, then SIGKILL to its whole process group once it has
    /// exited or after 10 s.
    fn stop(&mut self) {
        let leader = self.child.id() as i32;
        // The API server first: it shuts its engine processes down in order (signalled
        // together, the engine dies under it and the log fills with EngineDeadError).
        // SAFETY: signalling our own child.
        unsafe { libc::kill(leader, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.is_running() {
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: our own child's process group; whatever is left of it goes now.
        unsafe { libc::kill(-leader, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Polls `/health` until it answers 200; a server that exits or stays silent past the
    /// timeout is an error carrying its log's tail.
    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "vLLM server on {} exited during start-up ({status}); the end of {}:\n{}",
                    self.url,
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            let healthy = http
                .get(format!("{}/health", self.url))
                .send()
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "vLLM server on {} not healthy after {:.0} s; the end of {}:\n{}",
                    self.url,
                    timeout.as_secs_f64(),
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id (of the group leader).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for VllmServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns the server process of `spec`, its output going to `log`.
fn spawn(spec: &LaunchSpec, log: File) -> anyhow::Result<Child> {
    let mut cmd = Command::new(&spec.python);
    cmd.args(["-m", "vllm.entrypoints.openai.api_server", "--model"])
        .arg(&spec.model_dir)
        .args(["--served-model-name", SERVED_MODEL, "--dtype", &spec.dtype])
        // Behaviour logprobs of the distribution sampled from (after the temperature), not
        // of the raw logits: the learner scores at the same temperature.
        .args(["--logprobs-mode", "processed_logprobs"])
        .args(["--enforce-eager", "--host", "127.0.0.1", "--port"])
        .arg(spec.port.to_string())
        .args(lora_args(spec.lora_rank)?)
        .args(&spec.extra_args)
        .env("OMP_NUM_THREADS", spec.threads.to_string())
        .env("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        .env("VLLM_CPU_KVCACHE_SPACE", "2")
        // `/collective_rpc` (weight reloads) is a development route.
        .env("VLLM_SERVER_DEV_MODE", "1")
        // `/v1/load_lora_adapter` (a LoRA run's sync) exists only with this.
        .env("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")
        .env("VLLM_NO_USAGE_STATS", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so that stopping it reaches the engine processes it
        // spawns; and it dies with oxrl.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        });
    }
    cmd.spawn().with_context(|| {
        format!(
            "starting vLLM with {} (run scripts/setup_vllm.sh)",
            spec.python.display()
        )
    })
}

/// The arguments that let a server take adapters of rank `rank` at run time (one adapter per
/// request; two held, the new one and the one being replaced).
fn lora_args(rank: Option<i64>) -> anyhow::Result<Vec<String>> {
    let Some(r) = rank else { return Ok(Vec::new()) };
    let slot =
        lora_rank_slot(r).with_context(|| format!("LoRA rank {r}: vLLM serves ranks up to 512"))?;
    Ok(["--enable-lora", "--max-lora-rank", &slot.to_string()]
        .into_iter()
        .chain(["--max-loras", "1", "--max-cpu-loras", "2"])
        .map(str::to_owned)
        .collect())
}

/// The last lines of a log file (for error messages).
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A free TCP port on 127.0.0.1 (bound and released: another process could still take it).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
