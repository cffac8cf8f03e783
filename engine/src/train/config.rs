//! The run config: one TOML file describing a training run. Every table rejects unknown keys;
//! `--set a.b=value` overrides are applied to the TOML tree before it is typed; `${VAR}` in a
//! string is replaced by the environment variable (the bundled model's path, API keys).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use oxrl_envs::{EnvConfig, LoadedEnv, Row};
use oxrl_rewards::{RewardSpec, WeightedRewards};
use serde::{Deserialize, Serialize};

use super::agents::AgentsSection;
use super::scoring::ENVIRONMENT;
use crate::dist::DistSection;
use crate::learner::lora::LoraConfig;
use crate::learner::{AlgorithmKind, LearnerConfig, RolloutCorrection};
use crate::model::ModelConfig;
use crate::rollout::{GenerationRequest, SamplingParams, StopConditions};
use crate::runtime::RuntimeSection;
use crate::tokenizer::Tokenizer;

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Seed of sampling, data order and initialisation.
    #[serde(default)]
    pub seed: u64,
    /// Training steps (one rollout batch and one learner update each).
    pub steps: usize,
    /// Where logs and checkpoints go (relative to the config file).
    pub output_dir: PathBuf,
    /// Stop the run after this many consecutive steps whose loss or gradients were NaN/inf
    /// (each such optimizer step is skipped and counted).
    #[serde(default = "default_max_nonfinite_steps")]
    pub max_nonfinite_steps: usize,
    /// `[model]`.
    pub model: ModelSection,
    /// `[env]`: the task and its data.
    pub env: EnvConfig,
    /// `[[rewards]]`: named, weighted rewards.
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    /// `[rollout]`.
    pub rollout: RolloutSection,
    /// `[learner]`.
    #[serde(default)]
    pub learner: LearnerConfig,
    /// `[log]`.
    #[serde(default)]
    pub log: LogSection,
    /// `[checkpoint]`.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// `[metrics]`: the live endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// `[eval]`: evaluation on the held-out split during training.
    #[serde(default)]
    pub eval: EvalSection,
    /// `[runtime]`: OpenMP waiting and libtorch's thread count.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// `[dist]`: the ranks of a data-parallel run.
    #[serde(default)]
    pub dist: DistSection,
    /// The config file's directory: relative paths in it resolve against this.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config as written plus `--set` overrides, before `${VAR}` expansion: what a run
    /// saves, so secrets passed through the environment never reach the disk.
    #[serde(skip)]
    pub unexpanded: String,
    /// What the config sets that changes nothing (another algorithm's table), for `train` and
    /// `config check` to print.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF directory or GGUF file (weights and tokenizer).
    pub path: PathBuf,
    /// f32, bf16 or f16.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// cpu, cuda, cuda:N or auto.
    #[serde(default = "default_device")]
    pub device: String,
    /// Replace the weights by a randomly initialised model of this shape (keeping the
    /// tokenizer of `path`): for smoke tests.
    #[serde(default)]
    pub random: Option<RandomModel>,
    /// Train LoRA adapters on a frozen base (`[model.lora]`, PEFT option names); the final
    /// model is exported with the adapters merged.
    #[serde(default)]
    pub lora: Option<LoraConfig>,
}

/// The shape of a random model (`[model.random]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomModel {
    /// Model width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// MLP width.
    pub intermediate_size: usize,
}

impl RandomModel {
    /// `base` (the loaded model's config) reshaped to this size, with a vocabulary that
    /// covers `vocab_size` tokens.
    pub fn config(&self, base: &ModelConfig, vocab_size: usize) -> ModelConfig {
        let mut cfg = base.clone();
        cfg.vocab_size = vocab_size.max(base.vocab_size);
        cfg.hidden_size = self.hidden_size;
        cfg.num_hidden_layers = self.num_hidden_layers;
        cfg.num_attention_heads = self.num_attention_heads;
        cfg.num_key_value_heads = Some(self.num_key_value_heads);
        cfg.intermediate_size = self.intermediate_size;
        cfg.head_dim = Some(self.hidden_size / self.num_attention_heads.max(1));
        cfg
    }
}

/// Why a single-turn run without `[[rewards]]` is refused.
pub const NO_REWARDS: &str = "no [[rewards]]: a single-turn task needs at least one reward (multi-turn tasks are scored by their environment)";

fn default_max_nonfinite_steps() -> usize {
    3
}

fn default_dtype() -> String {
    "f32".into()
}
fn default_device() -> String {
    "cpu".into()
}

/// `[rollout]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    /// Prompts per step.
    pub prompts_per_step: usize,
    /// Completions per prompt (the GRPO group).
    pub group_size: usize,
    /// New tokens per completion at most.
    pub max_tokens: usize,
    /// `[rollout.sampling]`.
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Strings that end a completion (besides the tokenizer's EOS tokens).
    #[serde(default)]
    pub stop_strings: Vec<String>,
    /// Generate the next step's batch on a worker thread (with its own copy of the weights)
    /// while the learner trains on this one.
    #[serde(default, rename = "async")]
    pub async_: bool,
    /// With `async`: the largest accepted gap between the learner's policy version and the
    /// version that generated a batch; older batches are dropped and counted.
    #[serde(default = "default_max_staleness")]
    pub max_staleness: u64,
    /// Where completions come from: `policy` (generated; the default) or `dataset`.
    #[serde(default)]
    pub source: RolloutSource,
    /// With `source = "dataset"`: a file of logged samples (`log.samples = "all"`'s
    /// `replay.jsonl`) to train on, `prompts_per_step` logged groups a step, instead of the
    /// rows' preference pairs.
    #[serde(default)]
    pub samples_path: Option<PathBuf>,
    /// Which engine generates: `native` (oxrl's own; the default) or `vllm`.
    #[serde(default)]
    pub engine: RolloutEngine,
    /// `[rollout.vllm]`: the servers of `engine = "vllm"`.
    #[serde(default)]
    pub vllm: Option<VllmSection>,
    /// `[rollout.agents]`: the endpoint of `source = "agents"`.
    #[serde(default)]
    pub agents: Option<AgentsSection>,
}

/// `rollout.engine`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutEngine {
    /// oxrl's own batched generation, with exact behaviour logprobs.
    #[default]
    Native,
    /// vLLM servers (`[rollout.vllm]`), launched by oxrl or already running.
    Vllm,
}

/// `[rollout.vllm]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VllmSection {
    /// Servers already running (`http://host:port`), serving the run's model. Empty: oxrl
    /// launches `replicas` servers itself.
    pub urls: Vec<String>,
    /// Servers oxrl launches (when `urls` is empty).
    pub replicas: usize,
    /// The python that has vLLM (default: `$OXRL_VLLM_PYTHON`; `make vllm` prints one).
    pub python: Option<PathBuf>,
    /// `--dtype` of launched servers.
    pub dtype: String,
    /// OpenMP threads of each launched server (its CPU backend).
    pub threads: usize,
    /// More arguments for launched servers.
    pub extra_args: Vec<String>,
    /// Seconds a launched server may take to become healthy.
    pub startup_timeout_s: f64,
    /// Seconds one completions request may take.
    pub request_timeout_s: f64,
    /// Retries of a failed request (on the least busy replica) before the step fails.
    pub retries: usize,
    /// Updates between weight syncs: the servers then generate with weights up to
    /// `sync_every - 1` versions old (one more with `rollout.async`), which
    /// `rollout.max_staleness` must allow.
    pub sync_every: usize,
}

impl Default for VllmSection {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            replicas: 1,
            python: None,
            dtype: "float32".into(),
            threads: 2,
            extra_args: Vec::new(),
            startup_timeout_s: 600.0,
            request_timeout_s: 300.0,
            retries: 2,
            sync_every: 1,
        }
    }
}

/// `rollout.source`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutSource {
    /// The policy generates `group_size` completions per prompt.
    #[default]
    Policy,
    /// Each row's `chosen` and `rejected` fields are the completions: offline preference
    /// pairs for DPO (TRL's prompt/chosen/rejected format; the prompt is rendered as for a
    /// rollout).
    Dataset,
    /// Agents written elsewhere call an OpenAI-compatible endpoint (`[rollout.agents]`,
    /// `train::agents`) and post each session's reward.
    Agents,
}

fn default_max_staleness() -> u64 {
    1
}

impl RolloutSection {
    /// The request generating `n` completions for each of `rows` (rendered by `env`'s prompt
    /// format and chat template, tokenized without special tokens) with this section's
    /// sampling, length and stop settings; the tokenizer's EOS tokens also stop. One builder
    /// for the trainer's rollouts and for evaluation, so both stop and sample alike.
    pub fn request(
        &self,
        env: &LoadedEnv,
        rows: &[Row],
        n: usize,
        tokenizer: &Tokenizer,
        seed: u64,
    ) -> anyhow::Result<GenerationRequest> {
        // An episode renders its prompt when its environment starts it (`train::episodes`).
        let prompts = match env.is_multi_turn() {
            true => vec![Vec::new(); rows.len()],
            false => rows
                .iter()
                .map(|r| Ok(tokenizer.encode(&env.prompt(r)?, false)?))
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        Ok(GenerationRequest {
            prompts,
            n,
            sampling: self.sampling.clone(),
            max_tokens: self.max_tokens,
            stop: StopConditions {
                token_ids: tokenizer.eos_token_ids().to_vec(),
                strings: self.stop_strings.clone(),
            },
            seed,
            prompt_offset: 0,
        })
    }
}

/// `[eval]`: pass@1, pass@k, majority vote and mean reward of the current policy on the env's
/// held-out split (`env.data.eval_size`, `eval_fraction` or `eval_path`), logged to
/// `metrics.jsonl` and Prometheus. Sampling options other than the temperature, `max_tokens`
/// and stop strings come from `[rollout]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Evaluate every N steps, and after the last step; 0 = never.
    pub every: usize,
    /// With `every > 0`: also evaluate the initial policy, before the first step.
    pub at_start: bool,
    /// Completions per held-out prompt.
    pub samples: usize,
    /// The k of pass@k (at most `samples`).
    pub k: usize,
    /// Sampling temperature; 0 = greedy.
    pub temperature: f64,
    /// Evaluate the first N prompts of the eval split; 0 = all of them.
    pub max_prompts: usize,
    /// A completion is correct when its total (weighted) reward is at least this.
    pub threshold: f64,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            every: 0,
            at_start: true,
            samples: 1,
            k: 1,
            temperature: 0.0,
            max_prompts: 0,
            threshold: 1.0,
        }
    }
}

impl EvalSection {
    /// Checks ranges, naming the bad key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let (samples, k) = (self.samples, self.k);
        if samples == 0 || k == 0 || k > samples {
            bail!("eval.k = {k}, eval.samples = {samples}: need 1 <= k <= samples");
        }
        let t = self.temperature;
        if !(t >= 0.0 && t.is_finite()) {
            bail!("eval.temperature = {t}: must be >= 0 (0 = greedy)");
        }
        if !self.threshold.is_finite() {
            bail!(
                "eval.threshold = {}: must be a finite number",
                self.threshold
            );
        }
        Ok(())
    }
}

/// `[log]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Write one sample (prompt, completion, reward, advantage) per group every N steps.
    pub samples_every: usize,
    /// `"all"`: also write every trained sample, replayable (token ids, behaviour logprobs,
    /// loss mask, policy version, rewards, group), to `replay.jsonl`; `"groups"` (default):
    /// only `samples_every`'s readable lines.
    pub samples: LoggedSamples,
}

/// `log.samples`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoggedSamples {
    /// One readable line per group every `samples_every` steps.
    #[default]
    Groups,
    /// Besides, every trained sample to `replay.jsonl`.
    All,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            samples_every: 10,
            samples: LoggedSamples::Groups,
        }
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of `/metrics`, `/healthz` and `/status` (port 0: any free port); "" = off.
    /// Loopback by default: listening on other interfaces is a deliberate choice.
    pub listen: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every N steps (and after the last step); 0 = only after the last step.
    pub every: usize,
    /// Checkpoints kept on disk (the newest).
    pub keep_last: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every: 10,
            keep_last: 2,
        }
    }
}

impl RunConfig {
    /// Reads `path`, applies `overrides` (`a.b=value`, value parsed as TOML, else a string),
    /// expands `${VAR}`, and checks the result. Every error names the file and the key.
    pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut tree: toml::Value = text
            .parse()
            .with_context(|| format!("{}: invalid TOML", path.display()))?;
        for o in overrides {
            set(&mut tree, o).with_context(|| format!("--set {o}"))?;
        }
        let unexpanded = toml::to_string_pretty(&tree).context("serializing the config")?;
        expand_env(&mut tree).with_context(|| path.display().to_string())?;
        let learner_tables: Vec<String> = tree
            .get("learner")
            .and_then(toml::Value::as_table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        let mut cfg: RunConfig = serde_path_to_error::deserialize(tree).map_err(|e| {
            // toml appends "in `table`": the key path below says that already.
            let full = e.inner().to_string();
            let msg = full.lines().next().unwrap_or_default().trim().to_owned();
            let hint = did_you_mean(&msg)
                .map(|k| format!(" (did you mean `{k}`?)"))
                .unwrap_or_default();
            anyhow::anyhow!("{}: key `{}`: {msg}{hint}", path.display(), e.path())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.base_dir = base.to_owned();
        cfg.unexpanded = unexpanded;
        cfg.output_dir = base.join(&cfg.output_dir);
        cfg.model.path = base.join(&cfg.model.path);
        cfg.rollout.samples_path = cfg.rollout.samples_path.map(|p| base.join(p));
        cfg.validate().with_context(|| path.display().to_string())?;
        let unread = cfg
            .learner
            .unread_tables(learner_tables.iter().map(String::as_str));
        cfg.warnings = unread
            .into_iter()
            .map(|table| {
                format!(
                    "{}: [learner.{table}] is not read by learner.algorithm = \"{}\": its options change nothing",
                    path.display(),
                    cfg.learner.algorithm.name()
                )
            })
            .collect();
        Ok(cfg)
    }

    /// What `oxrl config check` can check without loading the model's weights: that
    /// `model.path` holds a model whose tokenizer reads, and that the environment's data loads
    /// (every row of it, under `on_bad_row`) and renders with that tokenizer's chat template.
    pub fn check_files(&self) -> anyhow::Result<()> {
        self.load_env().map(drop)
    }

    /// The environment with its data, prompts rendered with the model's chat template,
    /// without loading the model's weights.
    pub fn load_env(&self) -> anyhow::Result<LoadedEnv> {
        let model = &self.model.path;
        if !model.exists() {
            bail!(
                "model.path = {}: no such file or directory",
                model.display()
            );
        }
        let tokenizer = crate::pretrained::Pretrained::load_tokenizer(model)
            .with_context(|| format!("model.path = {}", model.display()))?;
        let template = tokenizer.chat_template().cloned();
        LoadedEnv::from_config(&self.env, &self.base_dir, template).context("loading [env] data")
    }

    /// The `[[rewards]]`, built: each reward parses (and so checks) its own options. The
    /// built-ins plus the engine's `model` (trained reward models, paths relative to the
    /// config's folder).
    pub fn build_rewards(&self) -> anyhow::Result<WeightedRewards> {
        let registry = crate::reward_model::registry(&self.base_dir);
        WeightedRewards::from_specs(&registry, &self.rewards).context("building [[rewards]]")
    }

    /// What a multi-turn task's run cannot do (yet), refused by name.
    pub fn check_multi_turn(&self) -> anyhow::Result<()> {
        if self.rollout.async_ {
            bail!("rollout.async: a multi-turn task's episodes are played in the step (env.task = {:?}); set rollout.async = false", self.env.task);
        }
        if self.rollout.source == RolloutSource::Dataset && self.rollout.samples_path.is_none() {
            bail!("rollout.source = \"dataset\" reads preference pairs; a multi-turn task (env.task = {:?}) plays episodes", self.env.task);
        }
        if let Some(r) = self.rewards.iter().find(|r| r.name == ENVIRONMENT) {
            bail!("[[rewards]] name = {:?}: that name is the environment's own rewards in a multi-turn run; rename it", r.name);
        }
        Ok(())
    }

    /// Agents calling the endpoint: what the run cannot combine with it, refused by name.
    fn check_agents(&self) -> anyhow::Result<()> {
        let refused = [
            (self.rollout.async_, "rollout.async"),
            (
                self.rollout.engine != RolloutEngine::Native,
                "rollout.engine = \"vllm\"",
            ),
            (self.eval.every > 0, "[eval] (evaluate in the agent)"),
            (
                !self.rewards.is_empty(),
                "[[rewards]] (the agent posts each session's reward)",
            ),
        ];
        let names: Vec<&str> = refused.iter().filter(|r| r.0).map(|r| r.1).collect();
        if !names.is_empty() {
            bail!(
                "rollout.source = \"agents\" does not combine with: {}",
                names.join("; ")
            );
        }
        let agents = self.rollout.agents.clone().unwrap_or_default();
        if agents.max_sessions == 0 || agents.max_calls == 0 || agents.max_session_tokens == 0 {
            bail!(
                "rollout.agents: max_sessions, max_calls and max_session_tokens must be at least 1"
            );
        }
        if agents.session_timeout_s <= 0.0 || agents.step_timeout_s <= 0.0 {
            bail!("rollout.agents: session_timeout_s and step_timeout_s must be positive");
        }
        Ok(())
    }

    /// `rollout.source = "dataset"` without logged samples: preference pairs (DPO) or
    /// reference solutions (SFT), nothing generated.
    fn check_dataset_source(&self) -> anyhow::Result<()> {
        let group = match self.learner.algorithm {
            AlgorithmKind::Dpo => 2,
            AlgorithmKind::Sft => 1,
            _ => bail!("rollout.source = \"dataset\" reads preference pairs (learner.algorithm = \"dpo\") or reference solutions (\"sft\"), or logged samples (rollout.samples_path)"),
        };
        if self.rollout.group_size != group {
            bail!(
                "rollout.source = \"dataset\" with learner.algorithm = {:?}: each prompt has {group} completion(s) (set rollout.group_size = {group})",
                self.learner.algorithm
            );
        }
        if self.rollout.async_ || self.rollout.engine != RolloutEngine::Native {
            bail!("rollout.source = \"dataset\": nothing is generated; set rollout.async = false and rollout.engine = \"native\"");
        }
        Ok(())
    }

    /// Training from logged samples: what it needs, refused by name otherwise.
    fn check_replay(&self, path: &Path) -> anyhow::Result<()> {
        let algorithm = self.learner.algorithm;
        if self.rollout.source != RolloutSource::Dataset {
            bail!("rollout.samples_path = {path:?} is read with rollout.source = \"dataset\"");
        }
        if !matches!(
            algorithm,
            AlgorithmKind::Topr | AlgorithmKind::ExpertIteration | AlgorithmKind::Dpo
        ) {
            bail!("rollout.samples_path: learner.algorithm = {algorithm:?} learns from its own rollouts; logged samples train topr, expert_iteration or dpo");
        }
        if self.rollout.async_ || self.rollout.engine != RolloutEngine::Native {
            bail!("rollout.samples_path: nothing is generated; set rollout.async = false and rollout.engine = \"native\"");
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.env.is_multi_turn() == Some(true) {
            self.check_multi_turn()?;
        }
        if self.rollout.prompts_per_step == 0 || self.rollout.group_size == 0 {
            bail!("rollout.prompts_per_step and rollout.group_size must be at least 1");
        }
        if self.rollout.max_tokens == 0 {
            bail!("rollout.max_tokens = 0: completions would be empty and nothing would train; must be at least 1");
        }
        self.rollout.sampling.validate()?;
        if let Some(path) = &self.rollout.samples_path {
            self.check_replay(path)?;
        } else if self.rollout.source == RolloutSource::Dataset {
            self.check_dataset_source()?;
        } else if self.learner.algorithm == AlgorithmKind::Sft {
            bail!("learner.algorithm = \"sft\" trains on the rows' reference solutions: set rollout.source = \"dataset\"");
        }
        self.check_engine()?;
        if self.rollout.async_ && self.rollout.max_staleness == 0 {
            bail!("rollout.async needs rollout.max_staleness >= 1: the prefetched batch is one version old");
        }
        // The learner scores at the sampling temperature; greedy rollouts would give every
        // group identical completions and nothing to learn from.
        let t = self.rollout.sampling.temperature;
        if t == 0.0 && self.rollout.source != RolloutSource::Dataset {
            bail!("rollout.sampling.temperature = 0 (greedy): every completion of a group would be the same; training samples at a temperature > 0 (the learner scores at the same one)");
        }
        if self.rollout.source == RolloutSource::Agents {
            self.check_agents()?;
        } else if self.rollout.agents.is_some() {
            bail!("[rollout.agents] is set but rollout.source is not \"agents\"");
        } else if self.rewards.is_empty() && self.env.is_multi_turn() == Some(false) {
            bail!("{NO_REWARDS}");
        }
        self.learner.validate()?;
        self.check_precision()?;
        self.dist.validate()?;
        self.eval.validate()
    }

    /// `learner.precision` against `model.dtype` (`bf16-mixed` needs a bf16/f16 model), so
    /// `oxrl config check` refuses the pair before anything loads. A dtype that does not parse
    /// is left to the model loader's error.
    fn check_precision(&self) -> anyhow::Result<()> {
        if let Ok(kind) = crate::device::parse_kind(&self.model.dtype) {
            self.learner.precision.master_weights(kind)?;
        }
        Ok(())
    }
}

impl RunConfig {
    /// `rollout.engine` against the options it works with.
    fn check_engine(&self) -> anyhow::Result<()> {
        let r = &self.rollout;
        match (r.engine, &r.vllm) {
            (RolloutEngine::Native, Some(_)) => {
                bail!("[rollout.vllm] is set but rollout.engine = \"native\": set rollout.engine = \"vllm\" or remove the section")
            }
            (RolloutEngine::Native, None) => {
                if self.learner.rollout_correction != RolloutCorrection::default() {
                    bail!("[learner.rollout_correction] weights samples another engine drew, but rollout.engine = \"native\" samples with the learner's own logprobs: remove it or set rollout.engine = \"vllm\"");
                }
                Ok(())
            }
            (RolloutEngine::Vllm, section) => {
                let v = section.clone().unwrap_or_default();
                if r.source != RolloutSource::Policy {
                    bail!("rollout.engine = \"vllm\" generates completions; rollout.source = \"dataset\" reads them");
                }
                if let Some(r) = self.model.lora.as_ref().map(|l| l.r).filter(|&r| r > 512) {
                    bail!("model.lora.r = {r} with rollout.engine = \"vllm\": vLLM serves LoRA ranks up to 512");
                }
                if v.sync_every == 0 {
                    bail!("rollout.vllm.sync_every = 0: must be at least 1 (sync after every N updates)");
                }
                let oldest = v.sync_every as u64 - 1 + u64::from(r.async_);
                if oldest > r.max_staleness {
                    bail!("rollout.vllm.sync_every = {} generates batches up to {oldest} policy versions old{}, but rollout.max_staleness = {}: raise rollout.max_staleness to {oldest} or sync more often", v.sync_every, if r.async_ { " (with rollout.async)" } else { "" }, r.max_staleness);
                }
                if v.urls.is_empty() && v.replicas == 0 {
                    bail!("rollout.vllm: no rollout.vllm.urls and rollout.vllm.replicas = 0: there is no server to generate on");
                }
                if !v.urls.is_empty() && section.as_ref().is_some_and(|s| s.python.is_some()) {
                    bail!("rollout.vllm.python launches servers, but rollout.vllm.urls names running ones: set one of them");
                }
                Ok(())
            }
        }
    }
}

/// For serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant"), the
/// expected name closest to `x` by edit distance, if it is close enough to be a typo.
fn did_you_mean(msg: &str) -> Option<String> {
    let unknown = msg.split('`').nth(1)?;
    let (_, expected) = msg.split_once("expected")?;
    let candidates = expected.split('`').skip(1).step_by(2);
    let (best, distance) = candidates
        .map(|c| (c, edit_distance(unknown, c)))
        .min_by_key(|&(_, d)| d)?;
    (distance <= unknown.len().max(3) / 3 + 1).then(|| best.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Applies `a.b.c=value` to the TOML tree, creating tables as needed.
fn set(tree: &mut toml::Value, assignment: &str) -> anyhow::Result<()> {
    let (key, raw) = assignment.split_once('=').context("expected key=value")?;
    let value: toml::Value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let mut node = tree;
    let parts: Vec<&str> = key.trim().split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .with_context(|| format!("{} is not a table", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            table.insert((*part).to_owned(), value);
            return Ok(());
        }
        node = table
            .entry(*part)
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Ok(())
}

/// Replaces `${NAME}` in every string by the environment variable NAME.
fn expand_env(value: &mut toml::Value) -> anyhow::Result<()> {
    match value {
        toml::Value::String(s) => {
            while let Some(start) = s.find("${") {
                let end = s[start..]
                    .find('}')
                    .map(|e| start + e)
                    .context("unclosed ${")?;
                let name = &s[start + 2..end];
                let var = std::env::var(name)
                    .with_context(|| format!("environment variable {name} is not set"))?;
                s.replace_range(start..=end, &var);
            }
        }
        toml::Value::Array(items) => items.iter_mut().try_for_each(expand_env)?,
        toml::Value::Table(t) => t.iter_mut().try_for_each(|(_, v)| expand_env(v))?,
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_values_and_create_tables() {
        let mut tree: toml::Value = "a = 1\n[b]\nc = 'x'".parse().unwrap();
        set(&mut tree, "b.c=2.5").unwrap();
        set(&mut tree, "d.e=hello").unwrap();
        set(&mut tree, "f=true").unwrap();
        assert_eq!(tree["b"]["c"].as_float(), Some(2.5));
        assert_eq!(tree["d"]["e"].as_str(), Some("hello"));
        assert_eq!(tree["f"].as_bool(), Some(true));
        assert!(set(&mut tree, "a.x=1")
            .unwrap_err()
            .to_string()
            .contains("a is not a table"));
    }

    #[test]
    fn another_algorithms_table_is_warned_about() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/grpo_math.toml");
        assert!(RunConfig::load(&shipped, &[]).unwrap().warnings.is_empty());
        let ppo = RunConfig::load(&shipped, &["learner.algorithm=\"ppo\"".into()]).unwrap();
        assert_eq!(ppo.warnings.len(), 1, "{:?}", ppo.warnings);
        assert!(
            ppo.warnings[0].contains("[learner.grpo] is not read by learner.algorithm = \"ppo\""),
            "{:?}",
            ppo.warnings
        );
    }

    #[test]
    fn typos_get_a_suggestion() {
        let msg = "unknown field `group_sizee`, expected one of `prompts_per_step`, `group_size`, `max_tokens`";
        assert_eq!(did_you_mean(msg).as_deref(), Some("group_size"));
        let far = "unknown field `zzzzzzzz`, expected one of `prompts_per_step`, `group_size`";
        assert_eq!(did_you_mean(far), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn eval_is_off_and_greedy_by_default_and_k_is_checked() {
        let eval: EvalSection = toml::from_str("").unwrap();
        assert_eq!(eval, EvalSection::default());
        assert_eq!((eval.every, eval.samples, eval.k), (0, 1, 1));
        assert!(eval.at_start && eval.temperature == 0.0 && eval.max_prompts == 0);
        assert!(eval.validate().is_ok());
        let bad = EvalSection {
            samples: 2,
            k: 3,
            ..eval.clone()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("eval.k = 3"));
        let bad = EvalSection {
            temperature: -1.0,
            ..eval
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("eval.temperature"));
    }

    #[test]
    fn env_vars_expand_and_missing_ones_are_named() {
        std::env::set_var("OXRL_TEST_VAR", "/models/x");
        let mut tree: toml::Value = "p = '${OXRL_TEST_VAR}/y'".parse().unwrap();
        expand_env(&mut tree).unwrap();
        assert_eq!(tree["p"].as_str(), Some("/models/x/y"));
        let mut bad: toml::Value = "p = '${OXRL_NOT_SET_ANYWHERE}'".parse().unwrap();
        assert!(expand_env(&mut bad)
            .unwrap_err()
            .to_string()
            .contains("OXRL_NOT_SET_ANYWHERE"));
    }
}
