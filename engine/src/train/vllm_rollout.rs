//! `rollout.engine = "vllm"`: the run's vLLM servers (launched and supervised by oxrl, or
//! already running), generation on them with retries, the learner's weights synced to them
//! after every update, and the learner's own logprobs of what they generated (the rollout
//! correction's `pi_old`, and the measure of the gap between the two). In a data-parallel
//! run rank 0 owns the fleet (launches, syncs, heals it) and the other ranks follow it: they
//! generate their share on the same servers and never touch them otherwise.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{unbounded, Receiver, Sender};

use super::config::{RunConfig, VllmSection};
use crate::learner::lora::LoraConfig;
use crate::learner::Learner;
use crate::rollout::logprobs::batch_completion_logprobs;
use crate::rollout::vllm::{free_port, log_tail, Fleet, LaunchSpec, VllmServer, SERVED_MODEL};
use crate::rollout::{Generated, GenerationRequest};

/// The servers a run generates on.
pub struct VllmRollout {
    fleet: Fleet,
    /// Launched servers (`servers[i]` serves `fleet.replicas()[i]`); stopped with the run.
    servers: Vec<VllmServer>,
    /// `output_dir/vllm`: server logs, `servers.json`, and `sync/` where synced weights are
    /// written (`v{version}` directories, the newest kept).
    dir: PathBuf,
    /// The newest synced weights: what a replica that comes back is re-synced to. `None`
    /// until the first sync (launched servers start from the current policy).
    synced: Option<PathBuf>,
    /// The policy version the servers hold.
    version: u64,
    /// A LoRA run's adapter options: the servers serve the frozen base, and each sync loads
    /// the adapters under a new name.
    lora: Option<LoraConfig>,
    /// The model requests name: the served base, or the newest adapter of a LoRA run.
    model: String,
    retries: usize,
    /// Whether this process launched or connected the fleet and syncs it; false on the
    /// other ranks of a data-parallel run ([`VllmRollout::follow`]).
    owner: bool,
}

impl VllmRollout {
    /// Connects to `rollout.vllm.urls`, or launches `replicas` servers on `model_dir` (an HF
    /// directory of the current policy, version `version`; logs in `output_dir/vllm/`, their
    /// pids and ports in `output_dir/vllm/servers.json`). Connected servers get the learner's
    /// weights at once (a resumed run continues from its checkpoint's).
    pub fn start(
        cfg: &RunConfig,
        model_dir: &Path,
        learner: &Learner,
        version: u64,
    ) -> anyhow::Result<Self> {
        let section = cfg.rollout.vllm.clone().unwrap_or_default();
        let root = cfg.output_dir.join("vllm");
        std::fs::create_dir_all(&root)?;
        let timeout = Duration::from_secs_f64(section.request_timeout_s);
        let (fleet, servers) = if section.urls.is_empty() {
            let lora_rank = cfg.model.lora.as_ref().map(|l| l.r);
            let servers = launch(&section, model_dir, &root, lora_rank)?;
            let urls: Vec<String> = servers.iter().map(|s| s.url.clone()).collect();
            (Fleet::connect(&urls, timeout)?, servers)
        } else {
            (Fleet::connect(&section.urls, timeout)?, Vec::new())
        };
        let mut rollout = VllmRollout {
            fleet,
            servers,
            dir: root.clone(),
            synced: None,
            version,
            lora: cfg.model.lora.clone(),
            model: SERVED_MODEL.to_owned(),
            retries: section.retries,
            owner: true,
        };
        rollout.write_server_list()?;
        // Running servers need the policy's weights; a LoRA run's servers, its adapters.
        if !section.urls.is_empty() || rollout.lora.is_some() {
            // Every replica failing (a fleet has at least one) is a configuration error.
            let mut failures = rollout.push(learner, version)?;
            if failures.len() == rollout.fleet.replicas().len() {
                let first = failures.swap_remove(0);
                return Err(first.context(format!("syncing policy version {version} to vLLM")));
            }
        }
        Ok(rollout)
    }

    /// On a data-parallel rank other than 0: generates on the fleet rank 0 started (`urls`,
    /// holding policy version `version`). It never launches, restarts or syncs a server:
    /// a replica that fails is left out until rank 0's next sync.
    pub fn follow(cfg: &RunConfig, urls: &[String], version: u64) -> anyhow::Result<Self> {
        let section = cfg.rollout.vllm.clone().unwrap_or_default();
        let timeout = Duration::from_secs_f64(section.request_timeout_s);
        Ok(VllmRollout {
            fleet: Fleet::connect(urls, timeout)?,
            servers: Vec::new(),
            dir: cfg.output_dir.join("vllm"),
            synced: None,
            version,
            lora: cfg.model.lora.clone(),
            model: match cfg.model.lora {
                Some(_) => adapter_name(version),
                None => SERVED_MODEL.to_owned(),
            },
            retries: section.retries,
            owner: false,
        })
    }

    /// The fleet's URLs (what the other ranks of a data-parallel run follow).
    pub fn urls(&self) -> Vec<String> {
        self.fleet
            .replicas()
            .iter()
            .map(|r| r.url.clone())
            .collect()
    }

    /// Generates `req` on the fleet. A prompt whose request fails is sent again, up to
    /// `rollout.vllm.retries` times, to the least busy healthy replica; before each round
    /// the replicas that failed are checked (a launched server that exited is restarted) and
    /// re-synced to the newest weights.
    pub fn generate(&mut self, req: &GenerationRequest) -> anyhow::Result<Vec<Generated>> {
        let mut pending: Vec<usize> = (0..req.prompts.len()).collect();
        let mut done: Vec<Vec<Generated>> = vec![Vec::new(); req.prompts.len()];
        for round in 0..=self.retries {
            self.heal()?;
            let mut failed = Vec::new();
            for (i, result) in self.fleet.generate(req, &pending, &self.model) {
                match result {
                    Ok(generated) => done[i] = generated,
                    Err(e) if round < self.retries => {
                        eprintln!("warning: vLLM: {e:#}; sending it again");
                        failed.push(i);
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("vLLM generation failed {} times", self.retries + 1)
                        })
                    }
                }
            }
            pending = failed;
            if pending.is_empty() {
                break;
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    /// Brings back the replicas marked unhealthy: a launched server whose process exited, or
    /// that does not answer `/health`, is restarted (a restart that fails is an error); a
    /// replica that answers is re-synced to the newest weights and used again. An error
    /// also when no replica is left to generate on.
    fn heal(&mut self) -> anyhow::Result<()> {
        let mut restarted = false;
        for (i, replica) in self.fleet.replicas().iter().enumerate() {
            if replica.is_healthy() || !self.owner {
                continue;
            }
            if let Some(server) = self.servers.get_mut(i) {
                // Launched: one that exited, or hangs without answering, starts again.
                let state = match server.is_running() {
                    false => Some("exited"),
                    true => (!replica.responds()).then_some("does not answer /health"),
                };
                if let Some(state) = state {
                    let log = server.log.display();
                    eprintln!(
                        "warning: vLLM replica {i} ({}) {state}; restarting it (log: {log})",
                        replica.url
                    );
                    server
                        .restart()
                        .with_context(|| format!("restarting vLLM replica {i}"))?;
                    restarted = true;
                }
            } else if !replica.responds() {
                eprintln!("warning: vLLM replica {i} ({}) does not answer /health; its prompts go to the others", replica.url);
                continue;
            }
            let resynced = match (&self.synced, &self.lora) {
                (Some(dir), Some(_)) => replica.load_adapter(&self.model, dir),
                (Some(dir), None) => replica.reload_weights(dir),
                (None, _) => Ok(()),
            };
            match resynced {
                Ok(()) => replica.set_healthy(true),
                Err(e) => eprintln!("warning: vLLM replica {i}: re-sync failed: {e:#}"),
            }
        }
        if restarted {
            self.write_server_list()?;
        }
        if !self.fleet.replicas().iter().any(|r| r.is_healthy()) {
            let logs: Vec<String> = self
                .servers
                .iter()
                .map(|s| format!("the end of {}:\n{}", s.log.display(), log_tail(&s.log)))
                .collect();
            anyhow::bail!(
                "no vLLM replica is healthy ({}){}{}",
                self.fleet
                    .replicas()
                    .iter()
                    .map(|r| r.url.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                if logs.is_empty() { "" } else { "; " },
                logs.join("\n")
            );
        }
        Ok(())
    }

    /// Pushes the learner's weights (policy version `version`) to every healthy replica (a
    /// LoRA run's adapters only, under a new name); the seconds it took. A replica that fails
    /// to take them is healed at once (restarted if its server exited, re-synced when it
    /// answers); the sync is an error only when no replica is left.
    pub fn sync(&mut self, learner: &Learner, version: u64) -> anyhow::Result<f64> {
        if !self.owner {
            // Rank 0 synced (and healed) every replica; they all hold `version` now.
            self.version = version;
            if self.lora.is_some() {
                self.model = adapter_name(version);
            }
            for replica in self.fleet.replicas() {
                replica.set_healthy(true);
            }
            return Ok(0.0);
        }
        let start = Instant::now();
        for e in self.push(learner, version)? {
            eprintln!("warning: vLLM sync of policy version {version}: {e:#}");
        }
        self.heal()
            .with_context(|| format!("syncing policy version {version} to vLLM"))?;
        Ok(start.elapsed().as_secs_f64())
    }

    /// Writes the weights (or adapters) of `version` and has every healthy replica load
    /// them; the replicas that failed are marked unhealthy and their errors returned.
    fn push(&mut self, learner: &Learner, version: u64) -> anyhow::Result<Vec<anyhow::Error>> {
        let (vs, root) = (learner.var_store(), self.dir.join("sync"));
        let name = adapter_name(version);
        let (dir, failures) = match &self.lora {
            Some(lora) => {
                let previous = (self.model != SERVED_MODEL).then_some(self.model.as_str());
                let versions = (version, name.as_str(), previous);
                self.fleet.sync_adapter(vs, lora, &root, versions)
            }
            None => {
                let config = learner.policy().config();
                self.fleet.sync_weights(vs, config, &root, version)
            }
        }
        .with_context(|| format!("syncing policy version {version} to vLLM"))?;
        if self.lora.is_some() {
            self.model = name;
        }
        self.synced = Some(dir);
        self.version = version;
        Ok(failures)
    }

    /// The policy version the servers hold (that the next generation runs on).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// `servers.json`: each launched server's URL, process group and log, for operators and
    /// tests.
    fn write_server_list(&self) -> anyhow::Result<()> {
        let list: Vec<serde_json::Value> = self
            .servers
            .iter()
            .map(|s| serde_json::json!({"url": s.url, "pid": s.pid(), "log": s.log}))
            .collect();
        std::fs::write(
            self.dir.join("servers.json"),
            serde_json::to_string_pretty(&list)?,
        )?;
        Ok(())
    }
}

/// The name a LoRA run's adapters of policy `version` are served under.
fn adapter_name(version: u64) -> String {
    format!("{SERVED_MODEL}-v{version}")
}

/// The run's vLLM rollout, shared by the trainer (generation, refills, weight syncs) and the
/// async worker ([`VllmQueue`]): one holder at a time, so a weight sync waits for the
/// generation in flight and every batch comes from one version of the weights.
pub type SharedVllm = Arc<Mutex<VllmRollout>>;

/// Takes the shared rollout (a panic while it was held is an error, not a second panic).
pub fn hold(shared: &SharedVllm) -> anyhow::Result<MutexGuard<'_, VllmRollout>> {
    shared
        .lock()
        .map_err(|_| anyhow::anyhow!("the vLLM rollout panicked in another thread"))
}

/// A prefetched batch generated on vLLM.
pub struct Prefetched {
    /// Its submission number.
    pub id: u64,
    /// The policy version the servers held while generating it.
    pub policy_version: u64,
    /// The completions, or why there are none.
    pub generated: anyhow::Result<Vec<Generated>>,
}

/// `rollout.async` on vLLM: a thread that generates queued requests on the shared rollout in
/// order, so the servers generate step k+1 while the learner trains on step k; the trainer's
/// weight sync after the update waits for that generation to finish.
pub struct VllmQueue {
    jobs: Option<Sender<(u64, GenerationRequest)>>,
    done: Receiver<Prefetched>,
    next_id: u64,
    worker: Option<JoinHandle<()>>,
}

impl VllmQueue {
    /// Starts the worker thread.
    pub fn start(shared: SharedVllm) -> anyhow::Result<Self> {
        let (jobs, queued) = unbounded::<(u64, GenerationRequest)>();
        let (finished, done) = unbounded();
        let worker = std::thread::Builder::new()
            .name("oxrl-vllm-prefetch".into())
            .spawn(move || {
                for (id, request) in queued {
                    let (policy_version, generated) = match hold(&shared) {
                        Ok(mut rollout) => (rollout.version(), rollout.generate(&request)),
                        Err(e) => (0, Err(e)),
                    };
                    let result = Prefetched {
                        id,
                        policy_version,
                        generated,
                    };
                    if finished.send(result).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            done,
            next_id: 0,
            worker: Some(worker),
        })
    }

    /// Queues a request; returns its id.
    pub fn submit(&mut self, request: GenerationRequest) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        if let Some(jobs) = &self.jobs {
            // The worker only stops when this queue drops its sender.
            let _ = jobs.send((id, request));
        }
        id
    }

    /// The next finished request, in submission order (blocking).
    pub fn recv(&self) -> anyhow::Result<Prefetched> {
        self.done
            .recv()
            .map_err(|_| anyhow::anyhow!("the vLLM prefetch thread stopped"))
    }
}

impl Drop for VllmQueue {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn launch(
    section: &VllmSection,
    model_dir: &Path,
    root: &Path,
    lora_rank: Option<i64>,
) -> anyhow::Result<Vec<VllmServer>> {
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
                lora_rank,
            };
            VllmServer::launch(&spec).with_context(|| format!("vLLM replica {i}"))
        })
        .collect()
}

/// Fills each completion's `learner_logprobs`: the learner's own logprobs of its tokens
/// under the current weights (those that generated it, when the batch is fresh), the
/// `pi_old` of the rollout correction. Rows go through the policy 8 at a time, without
/// gradients.
pub fn recompute_logprobs(
    learner: &Learner,
    req: &GenerationRequest,
    generated: &mut [Generated],
) -> anyhow::Result<()> {
    for chunk in generated.chunks_mut(8) {
        let pairs: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|g| (req.prompts[g.prompt_index].as_slice(), g.tokens.as_slice()))
            .collect();
        let ours = batch_completion_logprobs(learner.policy(), &pairs, 1.0)?;
        for (g, ours) in chunk.iter_mut().zip(ours) {
            g.learner_logprobs = Some(ours);
        }
    }
    Ok(())
}
