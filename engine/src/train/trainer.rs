//! The training loop: rollouts -> rewards -> learner update, one step at a time, and a
//! final HF-format model. Each step is one [`StepRecord`], logged to `metrics.jsonl`
//! (`step_log.rs`) and exported on `/metrics` (`telemetry`).
//!
//! Synchronously the rollout runs on the learner's own parameters (no copy), then the learner
//! updates them; with `rollout.async` a worker with copied weights generates one step ahead
//! (`prefetch.rs`); with `rollout.engine = "vllm"` vLLM servers generate, synced before each
//! step's generation (`vllm_rollout.rs`); with `rollout.source = "dataset"` the rows'
//! preference pairs stand in for generations (`pairs.rs`). A multi-turn task's episodes are
//! played turn by turn on one token ledger each (`episodes.rs`). Logged samples
//! (`rollout.samples_path`, `replay.rs`) or the sessions of agents calling the
//! OpenAI-compatible endpoint (`rollout.source = "agents"`, `agents.rs`) can stand in for
//! rollouts (`sample_step`). With GRPO's `dynamic_sampling`, groups whose rewards are all
//! equal are dropped and the step is refilled with fresh prompts (DAPO). Checkpoints are
//! written every `checkpoint.every` steps, after the last step, and when SIGINT/SIGTERM
//! arrive (the run then stops cleanly), and when a step fails before its update (the state
//! before the step); `--resume` continues from the newest one exactly.
//!
//! With `[eval] every = N`, the current policy is evaluated on the held-out split (`eval.rs`)
//! before the first step, after every N steps and after the last one. An evaluation reads the
//! learner's weights and nothing else of the run's state: it samples with its own seed, draws
//! no training rows and touches no RNG, so a run with eval trains exactly like one without.
//!
//! On N ranks (`data_parallel.rs`, docs/dist.md) each rank trains its share of every step's
//! prompts, and rank 0 alone writes the logs, checkpoints and final model.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use oxrl_envs::{Cursor, LoadedEnv, Row, Sampler};
use oxrl_rewards::{CombinedScores, WeightedRewards};
use serde_json::{json, Value};
use tch::nn::VarStore;

use super::agents::{AgentHub, Policy as AgentPolicy};
use super::batch::{PromptSource, RolloutBatch};
use super::checkpoint::{self, TrainState};
use super::config::{LoggedSamples, RolloutEngine, RolloutSource, RunConfig};
use super::data_parallel;
use super::episodes::{EpisodeOutcome, EpisodeRunner, Turns};
use super::eval::Evaluator;
use super::pairs;
use super::prefetch::Prefetch;
use super::progress::Progress;
use super::rank_status::RankStatus;
use super::references;
use super::replay::Replay;
use super::run_lock::RunLock;
use super::scoring::{score_batch, score_episodes, ScoredBatch};
use super::step_log::{group_lines, replay_lines, StepLog};
use super::step_record::{
    CompletionStats, EpisodeStats, PhaseTimes, RewardStats, RolloutStats, StepRecord,
};
use super::vllm_rollout::{hold, recompute_logprobs, SharedVllm, VllmRollout};
use crate::device::{parse_device, parse_kind};
use crate::dist::ReduceOp;
use crate::learner::advantages::{group_advantages, ScaleRewards};
use crate::learner::{lora, metrics, AlgorithmKind, Learner, LogprobGap, Update};
use crate::model::random::random_model;
use crate::model::{Llama, ModelConfig};
use crate::pretrained::{save_model_dir, LoadOptions, Pretrained};
use crate::rollout::{
    generate_batch, generate_continuing, Generated, GenerationRequest, SequenceCache,
};
use crate::sample::Sample;
use crate::telemetry::server::RankReport;
use crate::telemetry::{serve, MetricsServer, RunMetrics};
use crate::tokenizer::Tokenizer;

/// Everything a run holds.
pub struct Trainer {
    cfg: RunConfig,
    env: LoadedEnv,
    rewards: WeightedRewards,
    learner: Learner,
    tokenizer: Arc<Tokenizer>,
    sampler: Sampler,
    /// `metrics.jsonl` and samples: rank 0's (every process's when alone).
    log: Option<StepLog>,
    next_step: usize,
    nonfinite_streak: usize,
    /// Async mode: the worker generating the next batch.
    prefetch: Option<Prefetch>,
    /// `rollout.engine = "vllm"`: the servers that generate (shared with the async worker).
    vllm: Option<SharedVllm>,
    /// Multi-turn tasks: plays the episodes.
    episodes: Option<EpisodeRunner>,
    /// `rollout.samples_path`: the logged samples trained on instead of rollouts.
    replay: Option<Replay>,
    /// `rollout.source = "agents"`: the endpoint agents call.
    agents: Option<AgentHub>,
    /// Data-parallel runs: this rank's live phase, for rank 0's `/status`.
    rank_status: Option<RankStatus>,
    /// The data cursor right after the rows of the last trained step were drawn (async mode
    /// draws ahead; a checkpoint must not skip the in-flight batch's prompts).
    trained_cursor: Option<Cursor>,
    stop: Arc<AtomicBool>,
    telemetry: Arc<RunMetrics>,
    server: Option<MetricsServer>,
    /// The step (policy version) and `metrics.jsonl` line of the last evaluation.
    last_eval: Option<(usize, Value)>,
    /// This run's hold on `output_dir` (rank 0's).
    _lock: Option<RunLock>,
}

/// The job's store key under which rank 0 publishes its vLLM servers' URLs.
const VLLM_URLS_KEY: &str = "oxrl/vllm/urls";

/// Where to continue from.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Start fresh.
    No,
    /// The newest checkpoint in the run's output directory, if there is one.
    Auto,
    /// This checkpoint directory.
    Dir(PathBuf),
}

impl Trainer {
    /// Loads the model, environment, rewards and learner of `cfg`, joins the data-parallel
    /// job the environment describes (`WORLD_SIZE`...; `train::data_parallel`), then loads
    /// the checkpoint `resume` names, if any.
    pub fn new(cfg: RunConfig, resume: Resume) -> anyhow::Result<Self> {
        cfg.runtime.apply_threads();
        tch::manual_seed(cfg.seed as i64);
        let (vs, model, tokenizer) = load_policy(&cfg)?;
        let template = tokenizer.chat_template().cloned();
        let env =
            LoadedEnv::from_config(&cfg.env, &cfg.base_dir, template).context("building [env]")?;
        check_env(&cfg, &env)?;
        let rewards = cfg.build_rewards()?;
        let mut learner =
            Learner::new(vs, model, learner_config(&cfg)).context("building [learner]")?;
        if let Some(group) = data_parallel::join(&cfg).context("joining the data-parallel job")? {
            learner
                .join(group)
                .context("starting from rank 0's weights")?;
        }
        let main = learner.process_group().is_none_or(|g| g.rank() == 0);
        let state = restore(&cfg, resume, &mut learner)?;
        let next_step = state.as_ref().map_or(0, |s| s.next_step);
        let sampler = env.sampler(state.map(|s| s.cursor))?;
        std::fs::create_dir_all(&cfg.output_dir)
            .with_context(|| format!("creating {}", cfg.output_dir.display()))?;
        let lock = main
            .then(|| RunLock::acquire(&cfg.output_dir))
            .transpose()?;
        if main {
            // The unexpanded config: `${VAR}` secrets stay in the environment, not on disk.
            std::fs::write(cfg.output_dir.join("config.toml"), &cfg.unexpanded)?;
        }
        let tokenizer = Arc::new(tokenizer);
        let telemetry = Arc::new(RunMetrics::new().context("creating metrics")?);
        if learner.var_store().device().is_cuda() {
            if let Err(e) = telemetry.watch_gpu_memory() {
                eprintln!("warning: no GPU memory metrics (NVML: {e})");
            }
        }
        telemetry.observe_skipped_rows(env.skipped().len());
        let rank_status = learner.process_group().map(RankStatus::new);
        let server = match main {
            true => start_server(&cfg, telemetry.clone(), rank_status.clone())?,
            false => None,
        };
        let replay_log = cfg.log.samples == LoggedSamples::All;
        let log = main
            .then(|| StepLog::open(&cfg.output_dir, next_step, replay_log))
            .transpose()?;
        let replay = cfg
            .rollout
            .samples_path
            .as_deref()
            .map(Replay::read)
            .transpose()?;
        let mut trainer = Self {
            _lock: lock,
            log,
            next_step,
            nonfinite_streak: 0,
            prefetch: None,
            trained_cursor: None,
            telemetry,
            server,
            last_eval: None,
            stop: stop_on_signals()?,
            tokenizer,
            cfg,
            env,
            rewards,
            learner,
            sampler,
            vllm: None,
            episodes: None,
            replay,
            agents: None,
            rank_status,
        };
        if trainer.cfg.rollout.source == RolloutSource::Agents {
            let section = trainer.cfg.rollout.agents.clone().unwrap_or_default();
            let hub = AgentHub::start(&section, &trainer.cfg.output_dir)
                .context("starting [rollout.agents]")?;
            trainer.agents = Some(hub);
        }
        if trainer.env.is_multi_turn() {
            trainer.episodes = Some(EpisodeRunner::new(trainer.cfg.env.episode.max_tokens));
        }
        if trainer.cfg.rollout.engine == RolloutEngine::Vllm {
            let vllm = trainer.start_vllm(next_step as u64)?;
            trainer.vllm = Some(Arc::new(Mutex::new(vllm)));
        }
        if trainer.cfg.rollout.async_ {
            let prefetch = Prefetch::start(
                &trainer.learner,
                &trainer.cfg,
                trainer.tokenizer.clone(),
                next_step,
                trainer.vllm.clone(),
            )?;
            trainer.prefetch = Some(prefetch);
        }
        Ok(trainer)
    }

    /// The run's vLLM fleet at policy `version`. Launched servers start from the current
    /// policy (a resumed run's checkpoint), or a LoRA run's frozen base (its adapters are
    /// synced at start). In a data-parallel run rank 0 starts the fleet and publishes its
    /// URLs in the job's store; the other ranks follow it.
    fn start_vllm(&self, version: u64) -> anyhow::Result<VllmRollout> {
        let group = self.learner.process_group();
        if let Some(group) = group.filter(|g| g.rank() > 0) {
            let wait = self.vllm_startup_wait();
            let urls = data_parallel::fetch(group, VLLM_URLS_KEY, wait)
                .context("waiting for rank 0's vLLM servers")?;
            let urls: Vec<String> = serde_json::from_slice(&urls)?;
            return VllmRollout::follow(&self.cfg, &urls, version)
                .context("connecting to rank 0's vLLM servers");
        }
        let model_dir = self.cfg.output_dir.join("vllm/model");
        self.save_served_base(&model_dir)
            .context("writing the policy for vLLM")?;
        let vllm = VllmRollout::start(&self.cfg, &model_dir, &self.learner, version)
            .context("starting [rollout.vllm]")?;
        if let Some(group) = group {
            let urls = serde_json::to_vec(&vllm.urls())?;
            group.store().set(VLLM_URLS_KEY, &urls)?;
        }
        Ok(vllm)
    }

    /// How long the other ranks wait for rank 0 to start its vLLM servers: each replica's
    /// startup, then the job's usual timeout.
    fn vllm_startup_wait(&self) -> Duration {
        let section = self.cfg.rollout.vllm.clone().unwrap_or_default();
        let startup = section.startup_timeout_s * section.replicas.max(1) as f64;
        Duration::from_secs_f64(startup) + self.cfg.dist.timeout()
    }

    /// Runs the remaining steps, checkpointing as configured, then writes the final model to
    /// `output_dir/final`. A SIGINT/SIGTERM ends the run after the current step, with a
    /// checkpoint.
    pub fn run(&mut self) -> anyhow::Result<Vec<StepRecord>> {
        let mut records = Vec::with_capacity(self.cfg.steps);
        let progress = Progress::new(self.next_step, self.cfg.steps).quiet_if(!self.is_main());
        for step in self.next_step..self.cfg.steps {
            if self.eval_due(step) {
                self.evaluate(step, &progress)
                    .with_context(|| format!("evaluating at step {step}"))?;
            }
            let before = self.resume_point();
            let record = match self.step(step) {
                Ok(record) => record,
                Err(e) => return Err(self.stop_after_failed_step(step, before, e)),
            };
            self.next_step = step + 1;
            self.stop_if_nonfinite(step, &record)?;
            let every = self.cfg.checkpoint.every;
            let interrupted = self.any_rank(self.stop.load(Ordering::Relaxed))?;
            if interrupted
                || self.next_step == self.cfg.steps
                || (every > 0 && self.next_step.is_multiple_of(every))
            {
                self.checkpoint()?;
            }
            progress.update(
                step + 1,
                record.rewards.mean,
                record.rollout.tokens_per_second.unwrap_or(f64::NAN),
                record.learner.get(metrics::LOSS).copied(),
            );
            records.push(record);
            if interrupted {
                eprintln!(
                    "interrupted: checkpoint saved after step {}; continue with --resume auto",
                    step + 1
                );
                return Ok(records);
            }
        }
        let last = self.cfg.steps;
        let eval_due = self.last_eval.as_ref().map(|e| e.0) != Some(last);
        if self.cfg.eval.every > 0 && eval_due {
            self.evaluate(last, &progress)
                .with_context(|| format!("evaluating after the last step ({last})"))?;
        }
        if self.is_main() {
            self.save(&self.cfg.output_dir.join("final"))?;
        }
        self.enter("done", last);
        self.barrier()?;
        Ok(records)
    }

    /// Async runs: the samples dropped as too stale so far, over every rank.
    fn dropped_stale_samples(&self) -> anyhow::Result<Option<u64>> {
        let Some(mine) = self.prefetch.as_ref().map(Prefetch::dropped_stale_samples) else {
            return Ok(None);
        };
        Ok(Some(match self.learner.process_group() {
            Some(g) => g.all_reduce_values(&[mine as f64], ReduceOp::Sum)?[0] as u64,
            None => mine,
        }))
    }

    /// Tells the job this rank entered `phase` of `step` (data-parallel runs; `/status`).
    fn enter(&self, phase: &str, step: usize) {
        if let Some(status) = &self.rank_status {
            status.enter(phase, step);
        }
    }

    /// Whether this process writes the run's files: rank 0, or the only process.
    fn is_main(&self) -> bool {
        self.learner.process_group().is_none_or(|g| g.rank() == 0)
    }

    /// Whether `flag` is set on any rank (on this process when alone).
    fn any_rank(&self, flag: bool) -> anyhow::Result<bool> {
        match self.learner.process_group() {
            Some(group) => data_parallel::any(group, flag),
            None => Ok(flag),
        }
    }

    /// Waits for every rank (nothing when alone).
    fn barrier(&self) -> anyhow::Result<()> {
        if let Some(group) = self.learner.process_group() {
            group.barrier()?;
        }
        Ok(())
    }

    /// What a checkpoint taken now would hold: the optimizer steps so far and the data cursor.
    fn resume_point(&self) -> (usize, Cursor) {
        let cursor = self.trained_cursor.clone();
        let cursor = cursor.unwrap_or_else(|| self.sampler.cursor().clone());
        (self.learner.steps(), cursor)
    }

    /// A step that failed (a vLLM fleet with no replica left, say) before its update leaves
    /// the state as it was before the step: that state is checkpointed, so `--resume auto`
    /// replays the step exactly. After the update there is nothing exact to save, and the
    /// last checkpoint stands.
    fn stop_after_failed_step(
        &mut self,
        step: usize,
        (optimizer_steps, cursor): (usize, Cursor),
        error: anyhow::Error,
    ) -> anyhow::Error {
        let error = error.context(format!("step {step}"));
        if self.learner.steps() != optimizer_steps {
            return error.context("the update had begun: resume from the last checkpoint");
        }
        self.trained_cursor = Some(cursor);
        // No barrier: the failure may be another rank's death.
        match self.write_checkpoint() {
            Ok(dir) => error.context(format!(
                "stopped before step {step}'s update; checkpoint {} saved: continue with --resume auto",
                dir.display()
            )),
            Err(e) => error.context(format!("the checkpoint before step {step} failed too: {e:#}")),
        }
    }

    /// Counts steps skipped for NaN/inf in a row; too many stop the run with a checkpoint.
    fn stop_if_nonfinite(&mut self, step: usize, record: &StepRecord) -> anyhow::Result<()> {
        self.nonfinite_streak = match record.skipped_steps() > 0.0 {
            true => self.nonfinite_streak + 1,
            false => 0,
        };
        if self.nonfinite_streak < self.cfg.max_nonfinite_steps.max(1) {
            return Ok(());
        }
        let dir = self.checkpoint()?;
        anyhow::bail!(
            "step {step}: the loss or gradients were NaN/inf in {} consecutive steps (each was skipped); \
             stopping. Skipped steps leave the weights as they were: checkpoint {} (try a lower learner.optim.lr)",
            self.nonfinite_streak,
            dir.display()
        )
    }

    /// Whether the policy about to train step `step` (version `step`) is evaluated first:
    /// at 0 with `eval.at_start`, then at every multiple of `eval.every`. On resume the
    /// evaluation at the resumed step runs again (its log line was dropped with the step's).
    fn eval_due(&self, step: usize) -> bool {
        let eval = &self.cfg.eval;
        let due = match step {
            0 => eval.at_start,
            s => s.is_multiple_of(eval.every),
        };
        eval.every > 0 && due && self.last_eval.as_ref().map(|e| e.0) != Some(step)
    }

    /// Evaluates the current policy (the learner's weights after `step` updates) on the
    /// held-out split with `[eval]`'s settings, and logs the result: a `metrics.jsonl` line,
    /// the `oxrl_eval_*` gauges, `/status` and a plain log line.
    fn evaluate(&mut self, step: usize, progress: &Progress) -> anyhow::Result<()> {
        if let Some(server) = &self.server {
            server.patch_status("phase", json!("eval"));
        }
        self.enter("eval", step);
        let start = Instant::now();
        let report = Evaluator {
            episodes: self.episodes.as_ref(),
            group: self.learner.process_group(),
            model: self.learner.policy(),
            tokenizer: &self.tokenizer,
            env: &self.env,
            rewards: &self.rewards,
            rollout: &self.cfg.rollout,
        }
        .run(&self.cfg.eval, eval_seed(self.cfg.seed, step))?;
        let seconds = start.elapsed().as_secs_f64();
        self.telemetry.observe_eval(step, &report, seconds);
        let line = Value::Object(report.line(step, seconds));
        if let Some(log) = &mut self.log {
            log.eval(&line)?;
        }
        let pass_k = match report.k {
            1 => String::new(),
            k => format!(" pass@{k} {:.3}", report.pass_at_k),
        };
        progress.log(&format!(
            "eval step {step}: pass@1 {:.3}{pass_k} majority {:.3} reward {:.3} ({} prompts x {}, {seconds:.1}s)",
            report.pass_at_1,
            report.majority_vote,
            report.reward_mean,
            report.prompts,
            report.samples_per_prompt,
        ));
        if let Some(server) = &self.server {
            server.patch_status("eval", line.clone());
            server.patch_status("phase", json!("training"));
        }
        self.last_eval = Some((step, line));
        Ok(())
    }

    /// Writes a checkpoint of the current state (rank 0 writes, every rank waits for it).
    pub fn checkpoint(&self) -> anyhow::Result<PathBuf> {
        self.enter("checkpoint", self.next_step);
        let dir = self.write_checkpoint()?;
        self.barrier()?;
        Ok(dir)
    }

    /// Rank 0's part of [`checkpoint`](Self::checkpoint): the files (the checkpoints'
    /// directory on other ranks, which write nothing).
    fn write_checkpoint(&self) -> anyhow::Result<PathBuf> {
        let root = checkpoint::root(&self.cfg.output_dir);
        if !self.is_main() {
            return Ok(root);
        }
        let start = Instant::now();
        let state = TrainState {
            next_step: self.next_step,
            cursor: self
                .trained_cursor
                .clone()
                .unwrap_or_else(|| self.sampler.cursor().clone()),
        };
        let describe = |dir: &Path| self.describe(dir);
        let dir = checkpoint::save(
            &root,
            &self.learner,
            &state,
            self.cfg.checkpoint.keep_last,
            &describe,
        )?;
        self.telemetry
            .observe_checkpoint(start.elapsed().as_secs_f64());
        Ok(dir)
    }

    /// The metrics endpoint's address, when it is on.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().map(|s| s.addr)
    }

    /// One step: draw prompts, generate, score (refilling under dynamic sampling), update,
    /// then log and export what happened.
    pub fn step(&mut self, step: usize) -> anyhow::Result<StepRecord> {
        if self.replay.is_some() || self.agents.is_some() {
            return self.sample_step(step);
        }
        let start = Instant::now();
        let sync_secs = self.sync_servers(step)?;
        let generate_start = Instant::now();
        self.enter("generate", step);
        let mut batch = self.rollout(step)?;
        let generate_secs = generate_start.elapsed().as_secs_f64();
        let reward_start = Instant::now();
        self.enter("reward", step);
        let mut scored = self.score(&batch)?;
        let refilled = self.refill(step, &mut batch, &mut scored)?;
        let reward_secs = reward_start.elapsed().as_secs_f64();
        let refills = refilled.as_ref().map(|r| r.batches);
        let job_index = match refilled {
            Some(r) => r.job_index,
            None => (0..batch.rows.len())
                .map(|p| batch.request.prompt_offset + p)
                .collect(),
        };
        let samples = self.training_samples(&batch, &scored.scores, step, &job_index);
        let update_start = Instant::now();
        self.enter("update", step);
        let update = self.learner.train(&samples)?;
        let update_secs = update_start.elapsed().as_secs_f64();
        self.enter("metrics", step);
        if let Some(prefetch) = &self.prefetch {
            prefetch.push_weights(&self.learner, step as u64 + 1);
        }
        let lengths = batch.generated.iter().map(|g| g.tokens.len()).collect();
        // An episode is cut at its token budget, not at one turn's max_tokens.
        let max_tokens = match self.episodes {
            Some(_) => self.cfg.env.episode.max_tokens.unwrap_or(usize::MAX),
            None => self.cfg.rollout.max_tokens,
        };
        let (rewards, completions) = match self.learner.process_group() {
            Some(group) => data_parallel::job_stats(group, &scored.scores, lengths, max_tokens)?,
            None => (
                RewardStats::of(&scored.scores),
                CompletionStats::of(lengths, max_tokens),
            ),
        };
        // Async generation overlaps the update, so only the whole step bounds its throughput;
        // generate_seconds is then the time spent waiting for the batch.
        let rollout_secs = match self.prefetch.is_some() {
            true => start.elapsed().as_secs_f64(),
            false => generate_secs,
        };
        let time = PhaseTimes {
            generate: generate_secs,
            reward: reward_secs,
            update: update_secs,
            step: start.elapsed().as_secs_f64(),
            sync: sync_secs,
        };
        let rank_times = match self.learner.process_group() {
            Some(group) => data_parallel::rank_times(group, &time)?,
            None => Vec::new(),
        };
        report_env_failures(step, &batch);
        let episodes = match (&self.episodes, self.learner.process_group()) {
            (None, _) => None,
            (Some(_), None) => Some(EpisodeStats::of(&batch.episodes, batch.env_seconds)),
            (Some(_), Some(group)) => Some(data_parallel::job_episode_stats(
                group,
                &batch.episodes,
                batch.env_seconds,
            )?),
        };
        let sampled = sampled_tokens(&completions, episodes.as_ref());
        let mismatch = match self.learner.process_group() {
            Some(group) => {
                data_parallel::job_logprob_gap(group, self.logprob_gap(&batch, step, &update))?
            }
            None => self.logprob_gap(&batch, step, &update),
        };
        let record = StepRecord {
            step,
            policy_version: step as u64 + 1,
            rewards,
            episodes,
            rollout: RolloutStats {
                tokens_per_second: (self.cfg.rollout.source == RolloutSource::Policy)
                    .then_some(sampled / rollout_secs),
                staleness: step as u64 - batch.policy_version,
                dropped_stale_samples: self.dropped_stale_samples()?,
                refill_batches: refills,
                mismatch,
            },
            completions,
            time,
            rank_times,
            learner: match self.learner.process_group() {
                Some(group) => data_parallel::job_learner_metrics(group, &update.stats)?,
                None => update.metrics,
            },
        };
        if let Some(log) = &mut self.log {
            log.step(&record)?;
        }
        let every = self.cfg.log.samples_every;
        if every > 0 && step.is_multiple_of(every) {
            let lines = group_lines(step, &batch, &scored, &update.advantages);
            let lines = self.job_lines(lines)?;
            if let Some(log) = &mut self.log {
                log.samples(&lines)?;
            }
        }
        self.log_replay(step, &samples)?;
        self.publish(&record);
        Ok(record)
    }

    /// With `log.samples = "all"`, appends `step`'s samples (every rank's) to `replay.jsonl`.
    fn log_replay(&mut self, step: usize, samples: &[Sample]) -> anyhow::Result<()> {
        if self.cfg.log.samples != LoggedSamples::All {
            return Ok(());
        }
        let lines = self.job_lines(replay_lines(step, samples)?)?;
        if let Some(log) = &mut self.log {
            log.replay(&lines)?;
        }
        Ok(())
    }

    /// Every rank's log `lines`, in rank order (one process's order: the ranks' shares are
    /// contiguous), for rank 0 to write; this process's alone.
    fn job_lines(&self, lines: String) -> anyhow::Result<String> {
        let Some(group) = self.learner.process_group() else {
            return Ok(lines);
        };
        let all = group.gather_bytes(lines.as_bytes())?.concat();
        Ok(String::from_utf8(all)?)
    }

    /// A step on samples made outside the rollout engine: logged ones
    /// (`rollout.samples_path`) or the sessions of agents calling the endpoint; nothing is
    /// scored here.
    fn sample_step(&mut self, step: usize) -> anyhow::Result<StepRecord> {
        let start = Instant::now();
        let per_step = self.cfg.rollout.prompts_per_step;
        let samples = match (&self.replay, &mut self.agents) {
            (Some(replay), _) => replay.step(step, per_step),
            (None, Some(hub)) => {
                let seed = rollout_seed(self.cfg.seed, step);
                let request = self
                    .cfg
                    .rollout
                    .request(&self.env, &[], 1, &self.tokenizer, seed)?;
                let policy = AgentPolicy {
                    learner: &self.learner,
                    tokenizer: &self.tokenizer,
                    request,
                    version: step as u64,
                };
                let first_group = (step * per_step) as u64;
                hub.collect(&policy, per_step, self.cfg.rollout.group_size, first_group)?
            }
            (None, None) => anyhow::bail!("step {step}: no samples"),
        };
        let generate_secs = start.elapsed().as_secs_f64();
        let update_start = Instant::now();
        let update = self.learner.train(&samples)?;
        let update_secs = update_start.elapsed().as_secs_f64();
        let cut = |s: &&Sample| s.finish_reason == crate::sample::FinishReason::Length;
        let completions = CompletionStats {
            lengths: samples.iter().map(|s| s.completion_ids.len()).collect(),
            clipped_ratio: samples.iter().filter(cut).count() as f64 / samples.len() as f64,
        };
        let record = StepRecord {
            step,
            policy_version: step as u64 + 1,
            rewards: RewardStats::of_samples(&samples),
            episodes: None,
            completions,
            rollout: RolloutStats::default(),
            time: PhaseTimes {
                generate: generate_secs,
                update: update_secs,
                step: start.elapsed().as_secs_f64(),
                ..PhaseTimes::default()
            },
            rank_times: Vec::new(),
            learner: update.metrics,
        };
        if let Some(log) = &mut self.log {
            log.step(&record)?;
        }
        self.log_replay(step, &samples)?;
        self.publish(&record);
        Ok(record)
    }

    /// `rollout.source = "dataset"`: each row's reference solution (SFT) or its preference pair.
    fn dataset_completions(&self, rows: &[Row]) -> anyhow::Result<Vec<Generated>> {
        match self.cfg.learner.algorithm {
            AlgorithmKind::Sft => references::reference_completions(
                rows,
                self.env.task(),
                &self.tokenizer,
                self.cfg.rollout.max_tokens,
            ),
            _ => pairs::pair_completions(rows, &self.tokenizer),
        }
    }

    /// Step `step`'s batch: generated now by the learner's policy, read from the rows, or
    /// (async) waited for from the worker.
    fn rollout(&mut self, step: usize) -> anyhow::Result<RolloutBatch> {
        if self.prefetch.is_some() {
            return self.prefetched(step);
        }
        let (rows, request) = self.draw(rollout_seed(self.cfg.seed, step))?;
        self.trained_cursor = Some(self.sampler.cursor().clone());
        let (rows, request) = self.my_share(rows, request);
        match self.cfg.rollout.source {
            // Agents' sessions become samples in `sample_step`.
            RolloutSource::Policy | RolloutSource::Agents => self.generate(rows, request, step),
            RolloutSource::Dataset => Ok(RolloutBatch {
                generated: self.dataset_completions(&rows)?,
                rows,
                request,
                policy_version: step as u64,
                episodes: Vec::new(),
                env_seconds: 0.0,
            }),
        }
    }

    /// Generates `request` (the prompts of `rows`) with the learner's current policy, the
    /// version trained `step` times (on vLLM, the version last synced).
    fn generate(
        &self,
        rows: Vec<Row>,
        request: GenerationRequest,
        step: usize,
    ) -> anyhow::Result<RolloutBatch> {
        // The vLLM servers may hold an older version (`rollout.vllm.sync_every`); only this
        // thread syncs them, so the version read here is the one that generates.
        let policy_version = match &self.vllm {
            Some(vllm) => hold(vllm)?.version(),
            None => step as u64,
        };
        let (vllm, learner) = (self.vllm.as_ref(), &self.learner);
        let mut batch = match &self.episodes {
            Some(runner) => {
                let turn = |r: &GenerationRequest, prefixes| {
                    complete_turn(vllm, learner, &self.tokenizer, r, prefixes)
                };
                let played = runner.run(&self.env, &self.tokenizer, &rows, request, turn)?;
                RolloutBatch {
                    rows,
                    request: played.request,
                    generated: played.generated,
                    policy_version,
                    episodes: played.episodes,
                    env_seconds: played.env_seconds,
                }
            }
            None => RolloutBatch {
                generated: complete(vllm, learner, &self.tokenizer, &request)?,
                rows,
                request,
                policy_version,
                episodes: Vec::new(),
                env_seconds: 0.0,
            },
        };
        if self.vllm.is_some() {
            recompute_logprobs(&self.learner, &batch.request, &mut batch.generated)?;
        }
        Ok(batch)
    }

    /// Before step `step` generates: the learner's weights (version `step`) go to the vLLM
    /// servers once they are `rollout.vllm.sync_every` versions behind; the seconds it took.
    /// Syncing here, not after the update, keeps every vLLM failure before the step's update,
    /// where a checkpoint of the state before the step is exact. With async rollouts, taking
    /// the servers waits for the batch they are generating.
    fn sync_servers(&self, step: usize) -> anyhow::Result<Option<f64>> {
        let Some(vllm) = &self.vllm else {
            return Ok(None);
        };
        let every = self.cfg.rollout.vllm.as_ref().map_or(1, |v| v.sync_every) as u64;
        let mut servers = hold(vllm)?;
        if (step as u64).saturating_sub(servers.version()) < every.max(1) {
            return Ok(None);
        }
        let seconds = servers.sync(&self.learner, step as u64)?;
        // Rank 0 synced the servers; no rank generates before it is done.
        self.barrier()?;
        Ok(Some(seconds))
    }

    /// How far the engine's logprobs of a fresh batch were from the learner's: vLLM's against
    /// the learner's recomputation, the native engine's against the update's first forward
    /// pass (free). `None` for a stale batch (its gap includes the policy's drift) or one not
    /// generated.
    fn logprob_gap(
        &self,
        batch: &RolloutBatch,
        step: usize,
        update: &Update,
    ) -> Option<LogprobGap> {
        let fresh = batch.policy_version == step as u64;
        let generated = self.cfg.rollout.source == RolloutSource::Policy;
        (fresh && generated)
            .then(|| batch.recomputed_gap().or(update.behaviour_gap))
            .flatten()
    }

    /// Async mode: queues step+1 on the worker, then waits for step's batch (generated by the
    /// previous policy while the learner trained).
    fn prefetched(&mut self, step: usize) -> anyhow::Result<RolloutBatch> {
        let steps = self.cfg.steps;
        for s in [step, step + 1].into_iter().filter(|&s| s < steps) {
            if self.prefetch.as_ref().is_some_and(|p| !p.has(s)) {
                let (rows, request) = self.draw(rollout_seed(self.cfg.seed, s))?;
                let cursor = self.sampler.cursor().clone();
                let (rows, request) = self.my_share(rows, request);
                if let Some(prefetch) = self.prefetch.as_mut() {
                    prefetch.submit(s, rows, request, cursor);
                }
            }
        }
        let Self {
            prefetch: Some(prefetch),
            learner,
            tokenizer,
            vllm,
            ..
        } = self
        else {
            anyhow::bail!("step {step}: no async rollout worker");
        };
        self.trained_cursor = prefetch.oldest_cursor().cloned();
        let mut batch = prefetch.next(step, |request| {
            complete(vllm.as_ref(), learner, tokenizer, request)
        })?;
        if self.vllm.is_some() {
            // Under the current weights, one version past the batch's: the correction then
            // weighs the staleness too.
            recompute_logprobs(&self.learner, &batch.request, &mut batch.generated)?;
        }
        Ok(batch)
    }

    /// The next rows and their generation request, sampled with `seed`.
    fn draw(&mut self, seed: u64) -> anyhow::Result<(Vec<Row>, GenerationRequest)> {
        let source = PromptSource {
            cfg: &self.cfg,
            env: &self.env,
            tokenizer: &self.tokenizer,
        };
        source.draw(&mut self.sampler, seed)
    }

    fn score(&self, batch: &RolloutBatch) -> anyhow::Result<ScoredBatch> {
        if self.episodes.is_some() {
            return score_episodes(
                &self.rewards,
                &self.tokenizer,
                &batch.rows,
                &batch.generated,
                &batch.episodes,
            );
        }
        score_batch(
            &self.rewards,
            &self.tokenizer,
            &batch.rows,
            &batch.generated,
        )
    }

    /// DAPO's dynamic sampling (GRPO with `dynamic_sampling`): while fewer than
    /// `rollout.prompts_per_step` groups have rewards that differ, generates more prompts
    /// with the current policy (at most `learner.grpo.max_refill_batches` batches), then keeps
    /// the first `prompts_per_step` informative groups and the uninformative ones before
    /// them (which the learner drops and counts). Returns the batches added; `None` when
    /// dynamic sampling is off.
    fn refill(
        &mut self,
        step: usize,
        batch: &mut RolloutBatch,
        scored: &mut ScoredBatch,
    ) -> anyhow::Result<Option<Refilled>> {
        let grpo = &self.cfg.learner.grpo;
        if self.cfg.learner.algorithm != AlgorithmKind::Grpo || !grpo.dynamic_sampling {
            return Ok(None);
        }
        let target = self.cfg.rollout.prompts_per_step;
        let (mut refills, max_refills) = (0, grpo.max_refill_batches);
        // Prompts of each batch appended (this rank's share of it).
        let mut parts = vec![batch.rows.len()];
        let mut job = self.job_informative(batch, scored, &parts)?;
        while job.0.iter().filter(|&&i| i).count() < target && refills < max_refills {
            refills += 1;
            let (rows, request) = self.draw(refill_seed(self.cfg.seed, step, refills))?;
            let (rows, request) = self.my_share(rows, request);
            let extra = self.generate(rows, request, step)?;
            let extra_scored = self.score(&extra)?;
            parts.push(extra.rows.len());
            batch.append(extra);
            scored.append(extra_scored);
            job = self.job_informative(batch, scored, &parts)?;
        }
        if self.prefetch.is_none() {
            self.trained_cursor = Some(self.sampler.cursor().clone());
        }
        let (informative, mine) = job;
        let keep_job = groups_to_keep(&informative, target);
        // A kept prompt's index among the job's kept prompts (one process's after retaining).
        let kept_before: Vec<usize> = (keep_job.iter())
            .scan(0, |n, &k| {
                *n += usize::from(k);
                Some(*n - usize::from(k))
            })
            .collect();
        let keep: Vec<bool> = mine.iter().map(|&i| keep_job[i]).collect();
        let job_index = (mine.iter().zip(&keep))
            .filter(|(_, &k)| k)
            .map(|(&i, _)| kept_before[i])
            .collect();
        scored.retain(batch, |p| keep[p]);
        batch.retain_prompts(|p| keep[p]);
        Ok(Some(Refilled {
            batches: refills,
            job_index,
        }))
    }

    /// Which prompts of the step's batches (`parts`: this rank's prompts of each) have
    /// informative groups, over the whole job in one process's order, and where this rank's
    /// prompts sit in it.
    fn job_informative(
        &self,
        batch: &RolloutBatch,
        scored: &ScoredBatch,
        parts: &[usize],
    ) -> anyhow::Result<(Vec<bool>, Vec<usize>)> {
        let mine = informative_groups(batch, &scored.scores);
        let Some(group) = self.learner.process_group() else {
            let positions = (0..mine.len()).collect();
            return Ok((mine, positions));
        };
        let mut rest = mine.as_slice();
        let split: Vec<&[bool]> = (parts.iter())
            .map(|&n| {
                let (part, tail) = rest.split_at(n);
                rest = tail;
                part
            })
            .collect();
        data_parallel::job_flags(group, &split)
    }

    /// This rank's share of a step's batch (all of it in a single process).
    fn my_share(
        &self,
        rows: Vec<Row>,
        request: GenerationRequest,
    ) -> (Vec<Row>, GenerationRequest) {
        match self.learner.process_group() {
            Some(g) => data_parallel::share(rows, request, g.rank(), g.world_size()),
            None => (rows, request),
        }
    }

    /// The learner's view of a scored batch: one [`Sample`] per completion, grouped by
    /// prompt.
    fn training_samples(
        &self,
        batch: &RolloutBatch,
        scores: &CombinedScores,
        step: usize,
        job_index: &[usize],
    ) -> Vec<Sample> {
        let mut samples: Vec<Sample> = batch
            .generated
            .iter()
            .enumerate()
            .map(|(i, g)| Sample {
                prompt_ids: batch.request.prompts[g.prompt_index].clone(),
                completion_ids: g.tokens.clone(),
                loss_mask: match batch.episodes.get(i) {
                    Some(e) => e.loss_mask.clone(),
                    None => vec![true; g.tokens.len()],
                },
                turn_rewards: batch
                    .episodes
                    .get(i)
                    .map_or_else(Vec::new, |e| turn_rewards(e, scores.total[i])),
                behaviour_logprobs: g.logprobs.clone(),
                learner_logprobs: g.learner_logprobs.clone(),
                policy_version: batch.policy_version,
                group_id: group_id(step, job_index[g.prompt_index]),
                finish_reason: g.finish_reason,
                reward: scores.total[i],
                rewards: scores
                    .rewards
                    .iter()
                    .map(|r| (r.name.clone(), r.values[i]))
                    .collect(),
            })
            .collect();
        if self.cfg.rollout.source == RolloutSource::Dataset
            && self.cfg.learner.algorithm == AlgorithmKind::Dpo
        {
            pairs::label(&mut samples, &batch.generated);
        }
        samples
    }

    /// Updates the Prometheus collectors and `/status` after a step.
    fn publish(&self, record: &StepRecord) {
        self.telemetry.observe_step(record);
        if let Some(server) = &self.server {
            let eval = self.last_eval.as_ref().map_or(Value::Null, |e| e.1.clone());
            server.set_status(json!({
                "step": record.step, "steps": self.cfg.steps, "phase": "training",
                "policy_version": record.policy_version, "metrics": record.to_json(), "eval": eval,
            }));
        }
    }

    /// Writes the policy as an HF directory (config, weights with any LoRA adapters merged,
    /// tokenizer): into a temporary directory beside `dir`, then renamed, so a kill never
    /// leaves a complete-looking `dir` with half-written weights.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        self.publish_model(dir, |vs, config, tmp| match &self.cfg.model.lora {
            Some(lora_cfg) => lora::export_merged(vs, config, lora_cfg, tmp, None),
            None => save_model_dir(vs, config, tmp, None),
        })
    }

    /// What vLLM servers serve: the policy, or a LoRA run's frozen base weights (the
    /// adapters reach the servers with each sync).
    fn save_served_base(&self, dir: &Path) -> anyhow::Result<()> {
        match &self.cfg.model.lora {
            Some(_) => self.publish_model(dir, |vs, config, tmp| {
                lora::export_base(vs, config, tmp, None)
            }),
            None => self.save(dir),
        }
    }

    /// An HF directory at `dir` of the weights `write` puts in a temporary directory beside
    /// it, with the tokenizer, then renamed into place.
    fn publish_model(
        &self,
        dir: &Path,
        write: impl FnOnce(&VarStore, &ModelConfig, &Path) -> crate::Result<()>,
    ) -> anyhow::Result<()> {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.with_file_name(format!(".tmp-{name}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        write(
            self.learner.var_store(),
            self.learner.policy().config(),
            &tmp,
        )?;
        self.write_tokenizer(&tmp)?;
        checkpoint::publish(&tmp, dir)
    }

    /// What makes a checkpoint self-contained: the model config, LoRA options and tokenizer.
    fn describe(&self, dir: &Path) -> anyhow::Result<()> {
        let config = self.learner.policy().config().to_hf_json();
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        if let Some(lora_cfg) = &self.cfg.model.lora {
            std::fs::write(
                dir.join(checkpoint::LORA),
                serde_json::to_string_pretty(lora_cfg)?,
            )?;
        }
        self.write_tokenizer(dir)
    }

    fn write_tokenizer(&self, dir: &Path) -> anyhow::Result<()> {
        self.tokenizer
            .inner()
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| anyhow::anyhow!("writing tokenizer.json: {e}"))?;
        if let Some(t) = self.tokenizer.chat_template() {
            std::fs::write(dir.join("chat_template.jinja"), t.source())?;
        }
        Ok(())
    }
}

/// Completions of `request` with the learner's current policy: on the run's vLLM servers
/// (which hold its weights) or on the native engine.
fn complete(
    vllm: Option<&SharedVllm>,
    learner: &Learner,
    tokenizer: &Tokenizer,
    request: &GenerationRequest,
) -> anyhow::Result<Vec<Generated>> {
    match vllm {
        Some(vllm) => hold(vllm)?.generate(request),
        None => Ok(generate_batch(learner.policy(), request, Some(tokenizer))?),
    }
}

/// An episode turn's completions, as [`complete`]; the native engine continues each prompt
/// from its prefix cache and keeps the completions' caches (vLLM keeps its own).
fn complete_turn(
    vllm: Option<&SharedVllm>,
    learner: &Learner,
    tokenizer: &Tokenizer,
    request: &GenerationRequest,
    prefixes: Vec<Option<SequenceCache>>,
) -> anyhow::Result<Turns> {
    match vllm {
        Some(vllm) => Ok(hold(vllm)?
            .generate(request)?
            .into_iter()
            .map(|g| (g, None))
            .collect()),
        None => Ok(generate_continuing(
            learner.policy(),
            request,
            Some(tokenizer),
            prefixes,
        )?),
    }
}

/// Tokens the policy sampled in a step: every completion token, or an episode's model tokens
/// (not the environment's).
fn sampled_tokens(completions: &CompletionStats, episodes: Option<&EpisodeStats>) -> f64 {
    match episodes {
        Some(e) => e.model_tokens_mean * completions.lengths.len() as f64,
        None => completions.tokens() as f64,
    }
}

/// Says how many of the step's episodes their environment failed, with each distinct reason
/// (the first few) and a row it happened on.
fn report_env_failures(step: usize, batch: &RolloutBatch) {
    let failed: Vec<(&String, usize)> = batch
        .episodes
        .iter()
        .zip(&batch.generated)
        .filter_map(|(e, g)| e.failure.as_ref().map(|f| (f, g.prompt_index)))
        .collect();
    if failed.is_empty() {
        return;
    }
    let mut reasons: Vec<String> = Vec::new();
    for (why, prompt) in &failed {
        let line = format!("row {:?}: {why}", batch.rows[*prompt].id());
        if reasons.len() < 3 && !reasons.iter().any(|r| r.ends_with(why.as_str())) {
            reasons.push(line);
        }
    }
    eprintln!(
        "warning: step {step}: {} episode(s) failed in their environment (kept with the rewards earned so far): {}",
        failed.len(),
        reasons.join("; ")
    );
}

/// An episode's rewards where they were earned: the environment's on each turn's last token,
/// with the rest of `total` (the `[[rewards]]` on the final message) on the last turn's.
fn turn_rewards(episode: &EpisodeOutcome, total: f64) -> Vec<(usize, f64)> {
    let mut turns = episode.turn_rewards.clone();
    if let Some(last) = turns.last_mut() {
        last.1 += total - episode.env_return();
    }
    turns
}

/// `[learner]`, scoring at the rollout's sampling temperature.
fn learner_config(cfg: &RunConfig) -> crate::learner::LearnerConfig {
    crate::learner::LearnerConfig {
        temperature: Some(match (cfg.rollout.source, &cfg.rollout.samples_path) {
            // Preference pairs: the model's own distribution.
            (RolloutSource::Dataset, None) => 1.0,
            // Rollouts, or logged samples whose behaviour logprobs were taken at the logging
            // run's sampling temperature (set the same one).
            _ => cfg.rollout.sampling.logprob_temperature(),
        }),
        ..cfg.learner.clone()
    }
}

/// The policy to train: the model of `[model]` (or random weights of `[model.random]`'s
/// shape), with LoRA adapters when `[model.lora]` asks, and its tokenizer.
fn load_policy(cfg: &RunConfig) -> anyhow::Result<(VarStore, Llama, Tokenizer)> {
    let opts = LoadOptions {
        device: parse_device(&cfg.model.device)?,
        kind: parse_kind(&cfg.model.dtype)?,
    };
    let loaded = Pretrained::load(&cfg.model.path, opts)
        .with_context(|| format!("loading model {}", cfg.model.path.display()))?;
    let (vs, model) = match &cfg.model.random {
        Some(shape) => {
            anyhow::ensure!(
                shape.num_attention_heads > 0
                    && shape.hidden_size.is_multiple_of(shape.num_attention_heads),
                "model.random: hidden_size ({}) must be a multiple of num_attention_heads ({})",
                shape.hidden_size,
                shape.num_attention_heads
            );
            let config = shape.config(loaded.model.config(), loaded.tokenizer.vocab_size());
            config
                .validate()
                .map_err(|e| anyhow::anyhow!("model.random: {e}"))?;
            random_model(&config, cfg.seed, opts)
        }
        None => (loaded.vs, loaded.model),
    };
    let (vs, model) = match &cfg.model.lora {
        Some(lora_cfg) => {
            lora::with_adapters(&vs, model.config(), lora_cfg).context("building [model.lora]")?
        }
        None => (vs, model),
    };
    Ok((vs, model, loaded.tokenizer))
}

/// What the loaded environment must offer this run: an eval split to evaluate on, and the
/// preference pairs that stand in for rollouts. Rows skipped as malformed are reported.
fn check_env(cfg: &RunConfig, env: &LoadedEnv) -> anyhow::Result<()> {
    let agents = cfg.rollout.source == RolloutSource::Agents;
    if env.is_multi_turn() && !agents {
        cfg.check_multi_turn()?;
    } else if cfg.rewards.is_empty() && !agents {
        anyhow::bail!("{}", super::config::NO_REWARDS);
    }
    let skipped = env.skipped();
    if !skipped.is_empty() {
        eprintln!(
            "warning: env.data.on_bad_row = \"skip\" skipped {} row(s):",
            skipped.len()
        );
        for e in skipped {
            eprintln!("  {e}");
        }
    }
    if cfg.eval.every > 0 && env.eval().rows().is_empty() {
        anyhow::bail!(
            "eval.every = {}: the eval split is empty; set env.data.eval_size (or eval_fraction, or eval_path)",
            cfg.eval.every
        );
    }
    if cfg.rollout.source == RolloutSource::Dataset && cfg.rollout.samples_path.is_none() {
        match cfg.learner.algorithm {
            AlgorithmKind::Sft => references::check_rows(env)?,
            _ => pairs::check_rows(env)?,
        }
    }
    Ok(())
}

/// The checkpoint state `resume` names, restored into `learner`.
fn restore(
    cfg: &RunConfig,
    resume: Resume,
    learner: &mut Learner,
) -> anyhow::Result<Option<TrainState>> {
    let from = match resume {
        Resume::No => None,
        Resume::Auto => checkpoint::newest_intact(&checkpoint::root(&cfg.output_dir))?,
        Resume::Dir(dir) => Some(dir),
    };
    let Some(dir) = from else { return Ok(None) };
    let state = checkpoint::restore(&dir, learner)
        .with_context(|| format!("resuming from {}", dir.display()))?;
    eprintln!("resuming from {} (step {})", dir.display(), state.next_step);
    Ok(Some(state))
}

/// A flag that SIGINT and SIGTERM raise: the loop stops cleanly after the current step.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    Ok(stop)
}

/// Starts the metrics endpoint unless `metrics.listen` is empty; writes its address to
/// `output_dir/metrics_address` for tools and tests.
fn start_server(
    cfg: &RunConfig,
    telemetry: Arc<RunMetrics>,
    ranks: Option<RankStatus>,
) -> anyhow::Result<Option<MetricsServer>> {
    if cfg.metrics.listen.is_empty() {
        return Ok(None);
    }
    let ranks = ranks.map(|r| Arc::new(move || r.all()) as RankReport);
    let server = serve(&cfg.metrics.listen, telemetry, ranks)?;
    eprintln!("metrics: http://{}/metrics", server.addr);
    std::fs::write(
        cfg.output_dir.join("metrics_address"),
        server.addr.to_string(),
    )?;
    Ok(Some(server))
}

/// What dynamic sampling's refill did: the batches it added, and each kept prompt's index in
/// the job's kept batch (one process's prompt index).
struct Refilled {
    batches: usize,
    job_index: Vec<usize>,
}

/// The group id of prompt `job_index` (its index in the job's batch of the step) of step
/// `step`: unique over the run however many prompts a step keeps, and the same on any
/// number of ranks.
fn group_id(step: usize, job_index: usize) -> u64 {
    ((step as u64) << 32) | job_index as u64
}

/// Per prompt of `batch`: whether its completions' total rewards differ (a GRPO signal).
fn informative_groups(batch: &RolloutBatch, scores: &CombinedScores) -> Vec<bool> {
    let groups: Vec<u64> = batch
        .generated
        .iter()
        .map(|g| g.prompt_index as u64)
        .collect();
    let zero_std = group_advantages(&scores.total, &groups, ScaleRewards::None).zero_std;
    let mut informative = vec![false; batch.rows.len()];
    for (g, zero) in batch.generated.iter().zip(zero_std) {
        informative[g.prompt_index] = !zero;
    }
    informative
}

/// Which groups a refilled step trains on: the first `target` informative ones and the
/// uninformative ones before the last of those (the learner drops those and counts them).
fn groups_to_keep(informative: &[bool], target: usize) -> Vec<bool> {
    let mut seen = 0;
    informative
        .iter()
        .map(|&i| {
            seen += usize::from(i);
            seen <= target && (i || seen < target)
        })
        .collect()
}

/// The sampling seed of step `step`'s rollouts: from the run seed and the step alone, so no
/// RNG state needs checkpointing.
fn rollout_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(step as u64)
}

/// The sampling seed of refill batch `refill` (1-based) of step `step`: apart from every
/// step's own seed.
fn refill_seed(seed: u64, step: usize, refill: usize) -> u64 {
    rollout_seed(seed, step) ^ ((refill as u64) << 40) ^ 0x5851_f42d_4c95_7f2d
}

/// The sampling seed of the evaluation after `step` updates: like the rollouts' but in a
/// distant part of the seed space (eval batch i uses this + i), so evaluations never replay
/// a training batch's random streams, and nothing of the training's state is consumed.
fn eval_seed(seed: u64, step: usize) -> u64 {
    rollout_seed(seed, step) ^ 0x9e37_79b9_7f4a_7c15
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refilled_step_keeps_the_first_informative_groups() {
        let (t, f) = (true, false);
        // Two wanted: the uninformative group before the second informative one stays (the
        // learner drops it), everything after is left out.
        assert_eq!(
            groups_to_keep(&[f, t, f, t, t, f, t], 2),
            [t, t, t, t, f, f, f]
        );
        // Too few informative groups: all are kept.
        assert_eq!(groups_to_keep(&[f, t, f], 2), [t, t, t]);
        assert_eq!(groups_to_keep(&[t, t], 2), [t, t]);
    }
}
