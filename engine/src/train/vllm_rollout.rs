//! `rollout.engine = "vllm"`: the run's vLLM servers (launched and supervised by oxrl, or
//! already running), generation on them with retries, the learner's weights synced to them
//! after every update, and the measured gap between their logprobs and the learner's.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::config::{RunConfig, VllmSection};
use super::step_record::LogprobMismatch;
use crate::learner::Learner;
use crate::rollout::logprobs::batch_completion_logprobs;
use crate::rollout::vllm::{free_port, Fleet, LaunchSpec, VllmServer};
use crate::rollout::{Generated, GenerationRequest};

/// The servers a run generates on.
pub struct VllmRollout {
    fleet: Fleet,
    /// Launched servers; stopped with the run.
    _servers: Vec<VllmServer>,
    /// Where synced weights are written (`v{version}` directories, the newest kept).
    sync_root: PathBuf,
    retries: usize,
}

impl VllmRollout {
    /// Connects to `rollout.vllm.urls`, or launches `replicas` servers on `model_dir` (an HF
    /// directory of the current policy, logs in `output_dir/vllm/`). Connected servers get
    /// the learner's weights at once (a resumed run continues from its checkpoint's).
    pub fn start(cfg: &RunConfig, model_dir: &Path, learner: &Learner) -> anyhow::Result<Self> {
        let section = cfg.rollout.vllm.clone().unwrap_or_default();
        let root = cfg.output_dir.join("vllm");
        std::fs::create_dir_all(&root)?;
        let timeout = Duration::from_secs_f64(section.request_timeout_s);
        let (fleet, servers) = if section.urls.is_empty() {
            let servers = launch(&section, model_dir, &root)?;
            let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
            (Fleet::connect(&urls, timeout)?, servers)
        } else {
            (Fleet::connect(&section.urls, timeout)?, Vec::new())
        };
        let rollout = VllmRollout {
            fleet,
            _servers: servers,
            sync_root: root.join("sync"),
            retries: section.retries,
        };
        if !section.urls.is_empty() {
            rollout.sync(learner, 0)?;
        }
        Ok(rollout)
    }

    /// Generates `req` on the fleet; a failed request is retried `rollout.vllm.retries`
    /// times (each try on the least busy replica) before the error ends the step.
    pub fn generate(&self, req: &GenerationRequest) -> anyhow::Result<Vec<Generated>> {
        let mut tries = 0;
        loop {
            match self.fleet.generate(req) {
                Ok(done) => return Ok(done),
                Err(e) if tries < self.retries => {
                    tries += 1;
                    eprintln!(
                        "warning: vLLM generation failed ({e:#}); retry {tries} of {}",
                        self.retries
                    );
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("vLLM generation failed {} times", self.retries + 1)
                    })
                }
            }
        }
    }

    /// Pushes the learner's weights (policy version `version`) to every replica; the
    /// seconds it took.
    pub fn sync(&self, learner: &Learner, version: u64) -> anyhow::Result<f64> {
        let start = Instant::now();
        self.fleet
            .sync_weights(
                learner.var_store(),
                learner.policy().config(),
                &self.sync_root,
                version,
            )
            .with_context(|| format!("syncing policy version {version} to vLLM"))?;
        Ok(start.elapsed().as_secs_f64())
    }
}

fn launch(section: &VllmSection, model_dir: &Path, root: &Path) -> anyhow::Result<Vec<VllmServer>> {
    let python = match &section.python {
        Some(p) => p.clone(),
        None => std::env::var_os("OXRL_VLLM_PYTHON")
            .map(PathBuf::from)
            .context(
                "rollout.vllm: no python to launch vLLM with: set rollout.vllm.python or \
             $OXRL_VLLM_PYTHON (`make vllm` installs vLLM's CPU build and prints its python)",
            )?,
    };
    (0..section.replicas)
        .map(|i| {
            let spec = LaunchSpec {
                python: python.clone(),
                model_dir: model_dir.to_owned(),
                port: free_port()?,
                dtype: section.dtype.clone(),
                threads: section.threads,
                extra_args: section.extra_args.clone(),
                log: root.join(format!("server-{i}.log")),
                startup_timeout: Duration::from_secs_f64(section.startup_timeout_s),
            };
            VllmServer::launch(&spec).with_context(|| format!("vLLM replica {i}"))
        })
        .collect()
}

/// How far the engine's behaviour logprobs are from the learner's for the same tokens under
/// the same weights: mean and largest |Δ| per token, and the KL(engine ‖ learner) estimate
/// `E[exp(r) - 1 - r]`, r = learner - engine (k3, never negative). Rows go through the
/// learner's policy 8 at a time.
pub fn measure_mismatch(
    learner: &Learner,
    req: &GenerationRequest,
    generated: &[Generated],
) -> anyhow::Result<LogprobMismatch> {
    let (mut sum, mut max, mut kl, mut count) = (0f64, 0f64, 0f64, 0usize);
    for chunk in generated.chunks(8) {
        let pairs: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|g| (req.prompts[g.prompt_index].as_slice(), g.tokens.as_slice()))
            .collect();
        let ours = batch_completion_logprobs(learner.policy(), &pairs, 1.0)?;
        for (g, ours) in chunk.iter().zip(ours) {
            for (&theirs, mine) in g.logprobs.iter().zip(ours) {
                let r = (mine - theirs) as f64;
                sum += r.abs();
                max = max.max(r.abs());
                kl += r.exp() - 1.0 - r;
                count += 1;
            }
        }
    }
    let n = count.max(1) as f64;
    Ok(LogprobMismatch {
        mean_abs: sum / n,
        max_abs: max,
        kl: kl / n,
    })
}
