//! The training loop: rollouts -> rewards -> learner update, one step at a time, with a JSONL
//! metrics log, sample dumps and a final HF-format model.
//!
//! Synchronously the rollout runs on the learner's own parameters (no copy), then the learner
//! updates them; with `rollout.async` a worker with copied weights generates one step ahead
//! (`Prefetch`); with `rollout.source = "dataset"` the rows' preference pairs stand in for
//! generations (`pairs.rs`). Checkpoints are written every `checkpoint.every` steps, after the
//! last step, and when SIGINT/SIGTERM arrive (the run then stops cleanly); `--resume` continues
//! from the newest one exactly. Live metrics are served by `telemetry`.
//!
//! With `[eval] every = N`, the current policy is evaluated on the held-out split (`eval.rs`)
//! before the first step, after every N steps and after the last one. An evaluation reads the
//! learner's weights and nothing else of the run's state: it samples with its own seed, draws
//! no training rows and touches no RNG, so a run with eval trains exactly like one without.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use oxrl_envs::{LoadedEnv, Row, Sampler};
use oxrl_rewards::{CombinedScores, WeightedRewards};
use serde_json::{json, Map, Value};
use tch::nn::VarStore;

use super::checkpoint::{self, TrainState};
use super::config::{RolloutSource, RunConfig};
use super::eval::Evaluator;
use super::pairs;
use super::progress::Progress;
use crate::device::{parse_device, parse_kind};
use crate::learner::advantages::{group_advantages, ScaleRewards};
use crate::learner::{lora, metrics, Learner};
use crate::model::random::randomize;
use crate::model::{Llama, ModelConfig};
use crate::pretrained::{save_model_dir, LoadOptions, Pretrained};
use crate::rollout::pool::snapshot;
use crate::rollout::{
    generate_batch, Generated, GenerationRequest, RolloutPool, Staleness, WeightUpdate, WorkerModel,
};
use crate::sample::Sample;
use crate::telemetry::run_metrics::StepTelemetry;
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
    metrics_log: std::fs::File,
    samples_log: std::fs::File,
    next_step: usize,
    nonfinite_streak: usize,
    /// Async mode: the worker generating the next batch.
    prefetch: Option<Prefetch>,
    /// The data cursor right after the rows of the last trained step were drawn (async mode
    /// draws ahead; a checkpoint must not skip the in-flight batch's prompts).
    trained_cursor: Option<oxrl_envs::Cursor>,
    stop: Arc<AtomicBool>,
    telemetry: Arc<RunMetrics>,
    server: Option<MetricsServer>,
    /// The step (policy version) and `metrics.jsonl` line of the last evaluation.
    last_eval: Option<(usize, Value)>,
}

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

/// What one step produced, for logs and tests.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// 0-based step.
    pub step: usize,
    /// Mean total reward of the step's completions.
    pub reward_mean: f64,
    /// The JSON line written to `metrics.jsonl`.
    pub line: Value,
}

impl Trainer {
    /// Loads the model, environment, rewards and learner of `cfg`, then the checkpoint
    /// `resume` names, if any.
    pub fn new(cfg: RunConfig, resume: Resume) -> anyhow::Result<Self> {
        tch::manual_seed(cfg.seed as i64);
        let opts = LoadOptions {
            device: parse_device(&cfg.model.device)?,
            kind: parse_kind(&cfg.model.dtype)?,
        };
        let loaded = Pretrained::load(&cfg.model.path, opts)
            .with_context(|| format!("loading model {}", cfg.model.path.display()))?;
        let (vs, model) = match &cfg.model.random {
            Some(shape) => random_model(
                loaded.model.config(),
                shape,
                &loaded.tokenizer,
                cfg.seed,
                opts,
            ),
            None => (loaded.vs, loaded.model),
        };
        let (vs, model) = match &cfg.model.lora {
            Some(lora_cfg) => lora::with_adapters(&vs, model.config(), lora_cfg)
                .context("building [model.lora]")?,
            None => (vs, model),
        };
        let template = loaded.tokenizer.chat_template().cloned();
        let env =
            LoadedEnv::from_config(&cfg.env, &cfg.base_dir, template).context("building [env]")?;
        if cfg.eval.every > 0 && env.eval().rows().is_empty() {
            anyhow::bail!(
                "eval.every = {}: the eval split is empty; set env.data.eval_size (or eval_fraction, or eval_path)",
                cfg.eval.every
            );
        }
        if cfg.rollout.source == RolloutSource::Dataset {
            pairs::check_rows(&env)?;
        }
        let rewards = cfg.build_rewards()?;
        let mut learner =
            Learner::new(vs, model, cfg.learner.clone()).context("building [learner]")?;
        let from = match resume {
            Resume::No => None,
            Resume::Auto => checkpoint::list(&checkpoint::root(&cfg.output_dir))?.pop(),
            Resume::Dir(dir) => Some(dir),
        };
        let state = match &from {
            Some(dir) => {
                let state = checkpoint::restore(dir, &mut learner)
                    .with_context(|| format!("resuming from {}", dir.display()))?;
                eprintln!("resuming from {} (step {})", dir.display(), state.next_step);
                Some(state)
            }
            None => None,
        };
        let next_step = state.as_ref().map_or(0, |s| s.next_step);
        let sampler = env.sampler(state.map(|s| s.cursor))?;
        std::fs::create_dir_all(&cfg.output_dir)
            .with_context(|| format!("creating {}", cfg.output_dir.display()))?;
        // The unexpanded config: `${VAR}` secrets stay in the environment, not on disk.
        std::fs::write(cfg.output_dir.join("config.toml"), &cfg.unexpanded)?;
        let tokenizer = Arc::new(loaded.tokenizer);
        let prefetch = if cfg.rollout.async_ {
            Some(Prefetch::start(
                &learner,
                &cfg,
                tokenizer.clone(),
                next_step,
            )?)
        } else {
            None
        };
        let telemetry = Arc::new(RunMetrics::new().context("creating metrics")?);
        if learner.var_store().device().is_cuda() {
            if let Err(e) = telemetry.watch_gpu_memory() {
                eprintln!("warning: no GPU memory metrics (NVML: {e})");
            }
        }
        let server = start_server(&cfg, telemetry.clone())?;
        let open = |name: &str| open_log(&cfg.output_dir.join(name), next_step);
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(signal, stop.clone())
                .context("installing signal handlers")?;
        }
        Ok(Self {
            metrics_log: open("metrics.jsonl")?,
            samples_log: open("samples.jsonl")?,
            next_step,
            nonfinite_streak: 0,
            prefetch,
            trained_cursor: None,
            telemetry,
            server,
            last_eval: None,
            stop,
            tokenizer,
            cfg,
            env,
            rewards,
            learner,
            sampler,
        })
    }

    /// Runs the remaining steps, checkpointing as configured, then writes the final model to
    /// `output_dir/final`. A SIGINT/SIGTERM ends the run after the current step, with a
    /// checkpoint.
    pub fn run(&mut self) -> anyhow::Result<Vec<StepReport>> {
        let mut reports = Vec::with_capacity(self.cfg.steps);
        let progress = Progress::new(self.next_step, self.cfg.steps);
        for step in self.next_step..self.cfg.steps {
            if self.eval_due(step) {
                self.evaluate(step, &progress)
                    .with_context(|| format!("evaluating at step {step}"))?;
            }
            let report = self.step(step).with_context(|| format!("step {step}"))?;
            self.next_step = step + 1;
            let skipped = report.line[metrics::SKIPPED_STEPS].as_f64().unwrap_or(0.0) > 0.0;
            self.nonfinite_streak = if skipped {
                self.nonfinite_streak + 1
            } else {
                0
            };
            if self.nonfinite_streak >= self.cfg.max_nonfinite_steps.max(1) {
                let dir = self.checkpoint()?;
                anyhow::bail!(
                    "step {step}: the loss or gradients were NaN/inf in {} consecutive steps (each was skipped); \
                     stopping. Skipped steps leave the weights as they were: checkpoint {} (try a lower learner.optim.lr)",
                    self.nonfinite_streak,
                    dir.display()
                );
            }
            let every = self.cfg.checkpoint.every;
            let interrupted = self.stop.load(Ordering::Relaxed);
            if interrupted
                || self.next_step == self.cfg.steps
                || (every > 0 && self.next_step.is_multiple_of(every))
            {
                self.checkpoint()?;
            }
            let get = |k: &str| report.line[k].as_f64().unwrap_or(f64::NAN);
            progress.update(
                step + 1,
                report.reward_mean,
                get("rollout/tokens_per_second"),
                get(metrics::LOSS),
            );
            reports.push(report);
            if interrupted {
                eprintln!(
                    "interrupted: checkpoint saved after step {}; continue with --resume auto",
                    step + 1
                );
                return Ok(reports);
            }
        }
        let last = self.cfg.steps;
        if self.cfg.eval.every > 0 && self.last_eval.as_ref().map(|e| e.0) != Some(last) {
            self.evaluate(last, &progress)
                .with_context(|| format!("evaluating after the last step ({last})"))?;
        }
        self.save(&self.cfg.output_dir.join("final"))?;
        Ok(reports)
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
        let start = Instant::now();
        let report = Evaluator {
            model: self.learner.policy(),
            tokenizer: &self.tokenizer,
            env: &self.env,
            rewards: &self.rewards,
            rollout: &self.cfg.rollout,
        }
        .run(&self.cfg.eval, eval_seed(self.cfg.seed, step))?;
        let seconds = start.elapsed().as_secs_f64();
        let line = report.line(step, seconds);
        self.telemetry.observe_eval(&line);
        let line = Value::Object(line);
        writeln!(self.metrics_log, "{line}")?;
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

    /// Writes a checkpoint of the current state.
    pub fn checkpoint(&self) -> anyhow::Result<PathBuf> {
        let start = Instant::now();
        let state = TrainState {
            next_step: self.next_step,
            cursor: self
                .trained_cursor
                .clone()
                .unwrap_or_else(|| self.sampler.cursor().clone()),
        };
        let root = checkpoint::root(&self.cfg.output_dir);
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

    /// Updates the Prometheus collectors and `/status` after a step.
    fn publish(&self, step: usize, line: &Value, generated: &[Generated], scores: &CombinedScores) {
        let Some(map) = line.as_object() else { return };
        let lengths: Vec<usize> = generated.iter().map(|g| g.tokens.len()).collect();
        let means: Vec<(String, f64)> = scores
            .rewards
            .iter()
            .map(|r| (r.name.clone(), r.mean()))
            .collect();
        let failures: Vec<(String, String, u64)> = scores
            .rewards
            .iter()
            .flat_map(|r| {
                r.failures
                    .iter()
                    .map(|(k, c)| (r.name.clone(), k.as_str().to_owned(), *c as u64))
            })
            .collect();
        self.telemetry.observe_step(&StepTelemetry {
            step,
            policy_version: step as u64 + 1,
            line: map,
            completion_lengths: &lengths,
            reward_means: &means,
            failures: &failures,
        });
        if let Some(server) = &self.server {
            let eval = self.last_eval.as_ref().map_or(Value::Null, |e| e.1.clone());
            server.set_status(
                json!({"step": step, "steps": self.cfg.steps, "phase": "training",
                                     "policy_version": step + 1, "metrics": line, "eval": eval}),
            );
        }
    }

    /// One step: sample prompts, generate, score, update.
    pub fn step(&mut self, step: usize) -> anyhow::Result<StepReport> {
        let start = Instant::now();
        let (rows, request, generated, version) = match self.prefetch.is_some() {
            false => {
                let (rows, request) = self.draw(step)?;
                self.trained_cursor = Some(self.sampler.cursor().clone());
                let generated = match self.cfg.rollout.source {
                    RolloutSource::Policy => {
                        generate_batch(self.learner.policy(), &request, Some(&self.tokenizer))?
                    }
                    RolloutSource::Dataset => pairs::pair_completions(&rows, &self.tokenizer)?,
                };
                (rows, request, generated, step as u64)
            }
            true => self.next_prefetched(step)?,
        };
        let generate_secs = start.elapsed().as_secs_f64();
        let texts = generated
            .iter()
            .map(|g| Ok(self.tokenizer.decode(&g.tokens, true)?))
            .collect::<anyhow::Result<Vec<String>>>()?;
        let reward_start = Instant::now();
        let reward_samples = generated
            .iter()
            .zip(&texts)
            .map(|(g, text)| serde_json::from_value(rows[g.prompt_index].with_completion(text)))
            .collect::<Result<Vec<oxrl_rewards::Sample>, _>>()?;
        let scores = self.rewards.score(&reward_samples);
        let reward_secs = reward_start.elapsed().as_secs_f64();
        let mut samples = to_samples(&request, &generated, &scores, &rows, step, version);
        if self.cfg.rollout.source == RolloutSource::Dataset {
            pairs::label(&mut samples, &generated);
        }
        let update_start = Instant::now();
        let learner_metrics = self.learner.update(&samples)?;
        let update_secs = update_start.elapsed().as_secs_f64();
        if let Some(prefetch) = &self.prefetch {
            prefetch.push_weights(&self.learner, step as u64 + 1);
        }

        let mut line = Map::new();
        line.insert("step".into(), json!(step));
        for (k, v) in &learner_metrics {
            line.insert((*k).into(), json!(v));
        }
        add_reward_metrics(&mut line, &scores);
        add_length_metrics(&mut line, &generated, self.cfg.rollout.max_tokens);
        let tokens: usize = generated.iter().map(|g| g.tokens.len()).sum();
        // Async generation overlaps the update, so only the whole step bounds its throughput;
        // generate_seconds is then the time spent waiting for the batch.
        let rollout_secs = if self.prefetch.is_some() {
            start.elapsed().as_secs_f64()
        } else {
            generate_secs
        };
        if self.cfg.rollout.source == RolloutSource::Policy {
            line.insert(
                "rollout/tokens_per_second".into(),
                json!(tokens as f64 / rollout_secs),
            );
        }
        line.insert("time/generate_seconds".into(), json!(generate_secs));
        line.insert("rollout/staleness".into(), json!(step as u64 - version));
        if let Some(p) = &self.prefetch {
            line.insert(
                "rollout/dropped_stale_samples".into(),
                json!(p.staleness.dropped),
            );
        }
        line.insert("time/reward_seconds".into(), json!(reward_secs));
        line.insert("time/update_seconds".into(), json!(update_secs));
        line.insert(
            "time/step_seconds".into(),
            json!(start.elapsed().as_secs_f64()),
        );
        let line = Value::Object(line);
        writeln!(self.metrics_log, "{line}")?;
        if self.cfg.log.samples_every > 0 && step.is_multiple_of(self.cfg.log.samples_every) {
            self.dump_samples(step, &rows, &generated, &texts, &scores)?;
        }
        self.publish(step, &line, &generated, &scores);
        let reward_mean = mean(&scores.total);
        Ok(StepReport {
            step,
            reward_mean,
            line,
        })
    }

    /// The rows and generation request of `step`.
    fn draw(&mut self, step: usize) -> anyhow::Result<(Vec<Row>, GenerationRequest)> {
        let rows: Vec<Row> = self
            .sampler
            .next_indices(self.cfg.rollout.prompts_per_step)
            .into_iter()
            .map(|i| self.env.train().rows()[i].clone())
            .collect();
        let request = self.cfg.rollout.request(
            &self.env,
            &rows,
            self.cfg.rollout.group_size,
            &self.tokenizer,
            rollout_seed(self.cfg.seed, step),
        )?;
        Ok((rows, request))
    }

    /// Async mode: queues step+1 on the worker, then waits for step's batch (generated by the
    /// previous policy while the learner trained). A batch older than `max_staleness` is
    /// dropped, counted, and generated again with the current policy.
    fn next_prefetched(
        &mut self,
        step: usize,
    ) -> anyhow::Result<(Vec<Row>, GenerationRequest, Vec<Generated>, u64)> {
        if self.prefetch.as_ref().is_some_and(|p| p.pending.is_empty()) {
            self.submit_prefetch(step)?;
        }
        let prefetch = self.prefetch.as_ref().expect("async mode");
        self.trained_cursor = prefetch.pending.front().map(|q| q.cursor.clone());
        if step + 1 < self.cfg.steps {
            self.submit_prefetch(step + 1)?;
        }
        let prefetch = self.prefetch.as_mut().expect("async mode");
        let queued = prefetch.pending.pop_front().expect("a batch was queued");
        let result = prefetch.pool.recv()?;
        anyhow::ensure!(result.id == queued.id, "rollout results out of order");
        let samples = queued.rows.len() * self.cfg.rollout.group_size;
        if prefetch
            .staleness
            .accept(result.policy_version, step as u64, samples)
        {
            return Ok((
                queued.rows,
                queued.request,
                result.generated?,
                result.policy_version,
            ));
        }
        let generated = generate_batch(
            self.learner.policy(),
            &queued.request,
            Some(&self.tokenizer),
        )?;
        Ok((queued.rows, queued.request, generated, step as u64))
    }

    fn submit_prefetch(&mut self, step: usize) -> anyhow::Result<()> {
        if self
            .prefetch
            .as_ref()
            .is_some_and(|p| p.pending.iter().any(|q| q.step == step))
        {
            return Ok(());
        }
        let (rows, request) = self.draw(step)?;
        let cursor = self.sampler.cursor().clone();
        let prefetch = self.prefetch.as_mut().expect("async mode");
        let id = prefetch.pool.submit(request.clone());
        prefetch.pending.push_back(Queued {
            id,
            step,
            rows,
            request,
            cursor,
        });
        Ok(())
    }

    /// Writes the first completion of every group with its prompt and rewards.
    fn dump_samples(
        &mut self,
        step: usize,
        rows: &[Row],
        generated: &[Generated],
        texts: &[String],
        scores: &CombinedScores,
    ) -> anyhow::Result<()> {
        // The group-relative advantage (GRPO's) of each completion: what it was pushed by.
        let groups: Vec<u64> = generated.iter().map(|g| g.prompt_index as u64).collect();
        let advantages = group_advantages(&scores.total, &groups, ScaleRewards::Group).advantages;
        for (i, (g, text)) in generated
            .iter()
            .zip(texts)
            .enumerate()
            .filter(|(_, (g, _))| g.sample_index == 0)
        {
            let prompt = rows[g.prompt_index]
                .get("prompt")
                .cloned()
                .unwrap_or(Value::Null);
            let rewards: Map<String, Value> = scores
                .rewards
                .iter()
                .map(|r| (r.name.clone(), json!(r.values[i])))
                .collect();
            let row = json!({"step": step, "prompt": prompt, "completion": text,
                             "reward": scores.total[i], "rewards": rewards, "advantage": advantages[i],
                             "finish_reason": g.finish_reason});
            writeln!(self.samples_log, "{row}")?;
        }
        Ok(())
    }

    /// Writes the policy as an HF directory (config, weights with any LoRA adapters merged,
    /// tokenizer).
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let (vs, config) = (self.learner.var_store(), self.learner.policy().config());
        match &self.cfg.model.lora {
            Some(lora_cfg) => lora::export_merged(vs, config, lora_cfg, dir, None)?,
            None => save_model_dir(vs, config, dir, None)?,
        }
        self.write_tokenizer(dir)
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

/// A batch queued on the async worker.
struct Queued {
    id: u64,
    step: usize,
    rows: Vec<Row>,
    request: GenerationRequest,
    /// The data cursor right after this batch's rows were drawn.
    cursor: oxrl_envs::Cursor,
}

/// Async rollouts: one worker with its own copy of the weights, one batch ahead.
struct Prefetch {
    pool: RolloutPool,
    pending: std::collections::VecDeque<Queued>,
    staleness: Staleness,
}

impl Prefetch {
    fn start(
        learner: &Learner,
        cfg: &RunConfig,
        tokenizer: Arc<Tokenizer>,
        version: usize,
    ) -> anyhow::Result<Self> {
        let policy = learner.policy();
        let mut vs = VarStore::new(learner.var_store().device());
        let spec = cfg.model.lora.as_ref().map(|l| l.spec()).transpose()?;
        let model = Llama::with_lora(&vs.root(), policy.config(), spec.as_ref());
        if let Some(kind) = learner
            .var_store()
            .variables()
            .values()
            .next()
            .map(|t| t.kind())
        {
            vs.set_kind(kind);
        }
        vs.copy(learner.var_store())
            .context("copying the policy to the rollout worker")?;
        let pool = RolloutPool::start(
            vec![WorkerModel { vs, model }],
            version as u64,
            Some(tokenizer),
        );
        let staleness = Staleness {
            max: cfg.rollout.max_staleness,
            dropped: 0,
        };
        Ok(Self {
            pool,
            pending: Default::default(),
            staleness,
        })
    }

    /// Sends the learner's new weights; the worker applies them before its next batch.
    fn push_weights(&self, learner: &Learner, version: u64) {
        let tensors = Arc::new(snapshot(learner.var_store()));
        self.pool
            .update_weights(WeightUpdate::Copy { version, tensors });
    }
}

/// Starts the metrics endpoint unless `metrics.listen` is empty; writes its address to
/// `output_dir/metrics_address` for tools and tests.
fn start_server(
    cfg: &RunConfig,
    telemetry: Arc<RunMetrics>,
) -> anyhow::Result<Option<MetricsServer>> {
    if cfg.metrics.listen.is_empty() {
        return Ok(None);
    }
    let server = serve(&cfg.metrics.listen, telemetry)?;
    eprintln!("metrics: http://{}/metrics", server.addr);
    std::fs::write(
        cfg.output_dir.join("metrics_address"),
        server.addr.to_string(),
    )?;
    Ok(Some(server))
}

/// Opens a JSONL log for appending, first dropping lines of steps at or after `next_step`
/// (written by a run that was killed before its next checkpoint).
fn open_log(path: &Path, next_step: usize) -> anyhow::Result<std::fs::File> {
    let kept: Vec<String> = match std::fs::File::open(path) {
        Ok(f) if next_step > 0 => std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| (s as usize) < next_step)
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    for line in kept {
        writeln!(file, "{line}")?;
    }
    Ok(file)
}

/// A randomly initialised model of `shape`, with the vocabulary of `tokenizer`.
fn random_model(
    base: &ModelConfig,
    shape: &super::config::RandomModel,
    tokenizer: &Tokenizer,
    seed: u64,
    opts: LoadOptions,
) -> (VarStore, Llama) {
    let mut cfg = base.clone();
    cfg.vocab_size = tokenizer.vocab_size().max(base.vocab_size);
    cfg.hidden_size = shape.hidden_size;
    cfg.num_hidden_layers = shape.num_hidden_layers;
    cfg.num_attention_heads = shape.num_attention_heads;
    cfg.num_key_value_heads = Some(shape.num_key_value_heads);
    cfg.intermediate_size = shape.intermediate_size;
    cfg.head_dim = None;
    let mut vs = VarStore::new(opts.device);
    let model = Llama::new(&vs.root(), &cfg);
    randomize(&vs, seed as i64, 0.02);
    if opts.kind != tch::Kind::Float {
        vs.set_kind(opts.kind);
    }
    (vs, model)
}

fn to_samples(
    req: &GenerationRequest,
    generated: &[Generated],
    scores: &CombinedScores,
    rows: &[Row],
    step: usize,
    version: u64,
) -> Vec<Sample> {
    generated
        .iter()
        .enumerate()
        .map(|(i, g)| Sample {
            prompt_ids: req.prompts[g.prompt_index].clone(),
            completion_ids: g.tokens.clone(),
            loss_mask: vec![true; g.tokens.len()],
            behaviour_logprobs: g.logprobs.clone(),
            policy_version: version,
            group_id: (step * req.prompts.len() + g.prompt_index) as u64,
            finish_reason: g.finish_reason,
            reward: scores.total[i],
            rewards: scores
                .rewards
                .iter()
                .map(|r| (r.name.clone(), r.values[i]))
                .collect(),
            metadata: rows[g.prompt_index].to_value(),
        })
        .collect()
}

/// The sampling seed of step `step`'s rollouts: from the run seed and the step alone, so no
/// RNG state needs checkpointing.
fn rollout_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(step as u64)
}

/// The sampling seed of the evaluation after `step` updates: like the rollouts' but in a
/// distant part of the seed space (eval batch i uses this + i), so evaluations never replay
/// a training batch's random streams, and nothing of the training's state is consumed.
fn eval_seed(seed: u64, step: usize) -> u64 {
    rollout_seed(seed, step) ^ 0x9e37_79b9_7f4a_7c15
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn add_reward_metrics(line: &mut Map<String, Value>, scores: &CombinedScores) {
    let m = mean(&scores.total);
    let std = (scores.total.iter().map(|x| (x - m).powi(2)).sum::<f64>()
        / scores.total.len().max(1) as f64)
        .sqrt();
    line.insert("reward".into(), json!(m));
    line.insert("reward_std".into(), json!(std));
    for r in &scores.rewards {
        line.insert(format!("rewards/{}/mean", r.name), json!(r.mean()));
        let failures: usize = r.failures.values().sum();
        line.insert(format!("rewards/{}/failures", r.name), json!(failures));
    }
}

fn add_length_metrics(line: &mut Map<String, Value>, generated: &[Generated], max_tokens: usize) {
    let lengths: Vec<f64> = generated.iter().map(|g| g.tokens.len() as f64).collect();
    let clipped = generated
        .iter()
        .filter(|g| g.tokens.len() >= max_tokens)
        .count();
    line.insert("completions/mean_length".into(), json!(mean(&lengths)));
    line.insert(
        "completions/max_length".into(),
        json!(lengths.iter().cloned().fold(0.0, f64::max)),
    );
    line.insert(
        "completions/clipped_ratio".into(),
        json!(clipped as f64 / generated.len().max(1) as f64),
    );
}
