//! `[env]` of a run config, and [`LoadedEnv`]: the task, its datasets and its prompt
//! formatter built from that config. This is what the engine calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chat_template::{ChatTemplate, Message};
use crate::dataset::{self, Cursor, Dataset, LoadOptions, OnBadRow, Sampler};
use crate::episode::{Environment, Episode};
use crate::error::{EnvError, Result};
use crate::external::{ExternalConfig, ExternalTask};
use crate::prompt::{FewShot, PromptConfig, PromptFormatter};
use crate::row::Row;
use crate::tasks::math::{ArithmeticConfig, MathTask};
use crate::tasks::{self, RewardKind, Task, TaskKind};
use crate::tools::{ToolTask, ToolsConfig};

/// `[env]`: which task, which data, how prompts look, how long episodes run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvConfig {
    /// The task (`arithmetic`, `gsm8k`, `humaneval`, `mbpp`, `grounding`, `countdown`,
    /// `calculator`, `guessing`, `external`).
    pub task: TaskKind,
    /// `[env.data]`.
    #[serde(default)]
    pub data: DataConfig,
    /// `[env.prompt]`.
    #[serde(default)]
    pub prompt: PromptConfig,
    /// `[env.episode]`.
    #[serde(default)]
    pub episode: EpisodeConfig,
    /// `[env.external]`, required when `task = "external"`.
    #[serde(default)]
    pub external: Option<ExternalConfig>,
    /// `[env.arithmetic]`: difficulty of `task = "arithmetic"` (defaults when absent).
    #[serde(default)]
    pub arithmetic: Option<ArithmeticConfig>,
    /// `[env.tools]`: tools a single-turn task's episodes may call before answering, which
    /// makes the task multi-turn (`tools`).
    #[serde(default)]
    pub tools: Option<ToolsConfig>,
    /// Extra chat-template variables, e.g. `{ enable_thinking = false }` for Qwen3: what
    /// transformers' `apply_chat_template(..., **kwargs)` passes on. Every chat-template render
    /// of the run (prompts and episode turns) uses them.
    #[serde(
        default,
        deserialize_with = "crate::chat_template::deserialize_kwargs",
        skip_serializing_if = "serde_json::Map::is_empty"
    )]
    pub chat_template_kwargs: crate::chat_template::TemplateKwargs,
}

impl EnvConfig {
    /// Whether the configured task is multi-turn, from the config alone (before any data is
    /// loaded): [`TaskKind::is_multi_turn`] of `task`. `None` for `task = "custom"`, whose
    /// program-supplied task decides; [`LoadedEnv::is_multi_turn`] answers after loading.
    pub fn is_multi_turn(&self) -> Option<bool> {
        match self.tools {
            Some(_) => Some(true),
            None => self.task.is_multi_turn(),
        }
    }
}

/// `[env.data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Training rows (relative to the config's directory): a JSONL file, a `.parquet` file, or
    /// a dataset directory as the HF hub has it, read at `split`. Without it, the task
    /// generates `generate` rows.
    pub path: Option<PathBuf>,
    /// Eval rows, from a file or directory like `path` (a directory needs `eval_split`).
    /// Without it or `eval_split`, `eval_size` / `eval_fraction` rows are split off.
    pub eval_path: Option<PathBuf>,
    /// The split of the directory `path` to train on (default `train`).
    pub split: Option<String>,
    /// The split eval rows are read from: of `eval_path` when set, else of the directory
    /// `path`. Never implied: a directory's `test` split is only used when named here.
    pub eval_split: Option<String>,
    /// Rows to generate when there is no `path` (default 1000).
    pub generate: usize,
    /// Seed for generation, the split and shuffling (default 0).
    pub seed: u64,
    /// Shuffle each epoch (default true).
    pub shuffle: bool,
    /// Rows to hold out for eval (default 0).
    pub eval_size: usize,
    /// Fraction of rows to hold out for eval, instead of `eval_size` (default 0).
    pub eval_fraction: f64,
    /// `stop` (default) or `skip` on a row that is malformed or misses a required field.
    pub on_bad_row: OnBadRow,
    /// Canonical field → column in the file, e.g. `{ prompt = "question" }`.
    pub fields: BTreeMap<String, String>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            path: None,
            eval_path: None,
            split: None,
            eval_split: None,
            generate: 1000,
            seed: 0,
            shuffle: true,
            eval_size: 0,
            eval_fraction: 0.0,
            on_bad_row: OnBadRow::Stop,
            fields: BTreeMap::new(),
        }
    }
}

/// `[env.episode]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpisodeConfig {
    /// Most model turns per episode (default 8); single-turn tasks always take one.
    pub max_turns: usize,
    /// Most tokens after the prompt, model and environment turns together (the trainer ends
    /// the episode there, truncated); `None`: only the turn limit bounds it.
    pub max_tokens: Option<usize>,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        Self {
            max_turns: 8,
            max_tokens: None,
        }
    }
}

/// Seed offset for few-shot examples, so they are not training items.
const FEW_SHOT_SEED: u64 = 0xF3E5_7A11_0000_0001;

/// A task with its data and prompt formatting, ready for a run.
pub struct LoadedEnv {
    task: Box<dyn Task>,
    train: Dataset,
    eval: Dataset,
    skipped: Vec<EnvError>,
    formatter: PromptFormatter,
    data: DataConfig,
    max_turns: usize,
}

impl std::fmt::Debug for LoadedEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedEnv")
            .field("task", &self.task.name())
            .field("train", &self.train.len())
            .field("eval", &self.eval.len())
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

impl LoadedEnv {
    /// Builds everything `cfg` names. Relative paths resolve against `base_dir` (the config
    /// file's directory, or where the command runs external environments). `chat` is the
    /// model's chat template (needed for `format = "chat"` and for multi-turn tasks).
    pub fn from_config(
        cfg: &EnvConfig,
        base_dir: &Path,
        chat: Option<ChatTemplate>,
    ) -> Result<Self> {
        let (task, chat) = with_tools(build_task(cfg, base_dir)?, cfg, chat)?;
        Self::build(task, cfg, base_dir, chat)
    }

    /// Like [`LoadedEnv::from_config`], with a task written in Rust by the program that embeds
    /// oxrl (`task = "custom"` in the config; data, prompt and episode settings apply as usual).
    pub fn from_task(
        task: Box<dyn Task>,
        cfg: &EnvConfig,
        base_dir: &Path,
        chat: Option<ChatTemplate>,
    ) -> Result<Self> {
        if cfg.task != TaskKind::Custom {
            return Err(EnvError::Config(format!(
                "a program-supplied task needs `task = \"custom\"`, the config says {:?}",
                cfg.task
            )));
        }
        let (task, chat) = with_tools(task, cfg, chat)?;
        Self::build(task, cfg, base_dir, chat)
    }

    fn build(
        task: Box<dyn Task>,
        cfg: &EnvConfig,
        base_dir: &Path,
        chat: Option<ChatTemplate>,
    ) -> Result<Self> {
        if cfg.episode.max_tokens == Some(0) {
            return Err(EnvError::Config(
                "episode.max_tokens must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        if cfg.episode.max_turns == 0 {
            return Err(EnvError::Config(
                "episode.max_turns must be at least 1".into(),
            ));
        }
        let chat = with_template_kwargs(chat, task.as_ref(), cfg)?.map(Arc::new);
        if task.reward() == RewardKind::Environment && chat.is_none() {
            return Err(EnvError::Config(format!(
                "task `{}` is multi-turn and needs a chat template",
                task.name()
            )));
        }
        let (train, eval, skipped) = load_data(task.as_ref(), cfg, base_dir)?;
        let examples = few_shot(task.as_ref(), &cfg.prompt, cfg.data.seed)?;
        let formatter = PromptFormatter::new(&cfg.prompt, task.instruction(), examples, chat)?;
        Ok(Self {
            task,
            train,
            eval,
            skipped,
            formatter,
            data: cfg.data.clone(),
            max_turns: cfg.episode.max_turns,
        })
    }

    /// The task.
    pub fn task(&self) -> &dyn Task {
        self.task.as_ref()
    }

    /// Training rows.
    pub fn train(&self) -> &Dataset {
        &self.train
    }

    /// Eval rows (may be empty).
    pub fn eval(&self) -> &Dataset {
        &self.eval
    }

    /// Rows dropped under `on_bad_row = "skip"`: one error per dropped line, the training file's
    /// first, then the eval file's (a file used for both reports its lines twice). Each is an
    /// [`EnvError::BadLine`] or [`EnvError::MissingField`] carrying `source_name` (the file's
    /// path) and `line` (1-based); its `Display` reads `<path>:<line>: <reason>`. The count is
    /// `skipped().len()`. Empty under `on_bad_row = "stop"` (a bad row fails the load) and for
    /// generated data. The trainer should log each and report the count.
    pub fn skipped(&self) -> &[EnvError] {
        &self.skipped
    }

    /// The prompt formatter.
    pub fn formatter(&self) -> &PromptFormatter {
        &self.formatter
    }

    /// Whether episodes take several turns (the environment replies and scores them:
    /// [`RewardKind::Environment`]); for built-in tasks the same as [`EnvConfig::is_multi_turn`].
    pub fn is_multi_turn(&self) -> bool {
        self.task.reward() == RewardKind::Environment
    }

    /// A sampler over the training rows, fresh or continuing a checkpoint's cursor.
    pub fn sampler(&self, cursor: Option<Cursor>) -> Result<Sampler> {
        match cursor {
            Some(c) => Sampler::restore(&self.train, c),
            None => Sampler::new(&self.train, self.data.seed, self.data.shuffle),
        }
    }

    /// The chat messages for a single-turn row (system, few-shot, question + instruction).
    pub fn messages(&self, row: &Row) -> Result<Vec<Message>> {
        Ok(self.formatter.conversation(self.task.opening(row)?))
    }

    /// The prompt text for a single-turn row, rendered as configured.
    pub fn prompt(&self, row: &Row) -> Result<String> {
        self.formatter.render(row, self.task.opening(row)?)
    }

    /// Starts an episode for `row` in a new environment. For external tasks this starts a
    /// process. Single-turn tasks also run as one-turn episodes, scored by their
    /// self-contained `Task::score`: fine for tests and quick evals, but train them with the
    /// `oxrl-rewards` reward that `Task::reward` names (the code self-check is not a sandbox).
    pub fn start_episode(&self, row: &Row) -> Result<Episode> {
        self.start_episode_in(self.task.environment()?, row)
    }

    /// Starts an episode for `row` in `env`, e.g. one taken back with
    /// [`Episode::into_environment`] (saves a process start per episode).
    pub fn start_episode_in(&self, mut env: Box<dyn Environment>, row: &Row) -> Result<Episode> {
        let chat = self.formatter.chat_template().ok_or_else(|| {
            EnvError::Config("episodes need the chat template (prompt format `chat`)".into())
        })?;
        let opening = env.reset(row)?;
        Episode::new(
            env,
            chat.clone(),
            self.formatter.conversation(opening),
            self.max_turns,
        )
    }
}

/// `chat` with `[env] chat_template_kwargs`; kwargs that no render would use (no chat template,
/// or plain prompts for a single-turn task) are a config error rather than silently ignored.
fn with_template_kwargs(
    chat: Option<ChatTemplate>,
    task: &dyn Task,
    cfg: &EnvConfig,
) -> Result<Option<ChatTemplate>> {
    let kwargs = &cfg.chat_template_kwargs;
    if kwargs.is_empty() {
        return Ok(chat);
    }
    let plain_single_turn = cfg.prompt.format == crate::prompt::PromptFormat::Plain
        && task.reward() != RewardKind::Environment;
    match chat {
        Some(_) if plain_single_turn => Err(EnvError::Config(
            "chat_template_kwargs is set but prompts are `plain` (no chat template is rendered)"
                .into(),
        )),
        None => Err(EnvError::Config(
            "chat_template_kwargs is set but the model has no chat template".into(),
        )),
        Some(chat) => chat
            .with_kwargs(kwargs.clone())
            .map(Some)
            .map_err(|e| EnvError::Config(e.to_string())),
    }
}

/// `task` with `[env.tools]`, when the config has them, and the chat template declaring them
/// (`hermes` syntax).
fn with_tools(
    task: Box<dyn Task>,
    cfg: &EnvConfig,
    chat: Option<ChatTemplate>,
) -> Result<(Box<dyn Task>, Option<ChatTemplate>)> {
    let Some(tools) = &cfg.tools else {
        return Ok((task, chat));
    };
    if task.reward() == RewardKind::Environment {
        return Err(EnvError::Config(format!(
            "[env.tools] gives a single-turn task tools; task `{}` is multi-turn already",
            task.name()
        )));
    }
    let task = ToolTask::new(task, tools.build()?);
    let chat = match (task.template_tools(), chat) {
        (Some(schemas), Some(chat)) => {
            let kwargs = [("tools".to_owned(), serde_json::Value::from(schemas))];
            Some(chat.with_kwargs(kwargs.into_iter().collect())?)
        }
        (_, chat) => chat,
    };
    Ok((Box::new(task), chat))
}

fn build_task(cfg: &EnvConfig, base_dir: &Path) -> Result<Box<dyn Task>> {
    if let Some(arithmetic) = &cfg.arithmetic {
        if cfg.task != TaskKind::Arithmetic {
            return Err(EnvError::Config(
                "[env.arithmetic] is only for task `arithmetic`".into(),
            ));
        }
        arithmetic.validate()?;
        return Ok(Box::new(MathTask::arithmetic(*arithmetic)));
    }
    match (cfg.task, &cfg.external) {
        (TaskKind::External, Some(ext)) => Ok(Box::new(ExternalTask::new(
            ext.clone(),
            Some(base_dir.to_owned()),
        ))),
        (TaskKind::External, None) => Err(EnvError::Config(
            "task `external` needs [env.external]".into(),
        )),
        (_, Some(_)) => Err(EnvError::Config(
            "[env.external] is only for task `external`".into(),
        )),
        (TaskKind::Custom, None) => Err(EnvError::Config(
            "task `custom` is supplied by the program (LoadedEnv::from_task)".into(),
        )),
        (kind, None) => {
            tasks::builtin(kind).ok_or_else(|| EnvError::Config(format!("unknown task {kind:?}")))
        }
    }
}

fn required_fields(task: &dyn Task, cfg: &EnvConfig) -> Vec<String> {
    let mut fields: Vec<String> = task
        .required_fields()
        .iter()
        .map(|f| (*f).to_owned())
        .collect();
    if let Some(ext) = &cfg.external {
        fields.extend(ext.required_fields.iter().cloned());
    }
    fields
}

/// Rows from a file, or from a split of a dataset directory (`path` already joined to the
/// config's directory).
fn load_source(
    path: &Path,
    split: Option<&str>,
    required: &[String],
    data: &DataConfig,
) -> Result<(Dataset, Vec<EnvError>)> {
    let required: Vec<&str> = required.iter().map(String::as_str).collect();
    let opts = LoadOptions {
        fields: &data.fields,
        required: &required,
        on_bad_row: data.on_bad_row,
    };
    let loaded = dataset::load(path, split, opts)?;
    Ok((loaded.dataset, loaded.skipped))
}

/// Where eval rows are read from (a path and a split), or `None` when they are split off the
/// training rows.
fn eval_source<'a>(
    data: &'a DataConfig,
    base_dir: &Path,
) -> Result<Option<(PathBuf, Option<&'a str>)>> {
    let split = data.eval_split.as_deref();
    let path = match (&data.eval_path, &data.path, split) {
        (Some(eval_path), _, _) => base_dir.join(eval_path),
        (None, Some(path), Some(_)) => base_dir.join(path),
        (None, None, Some(split)) => {
            return Err(EnvError::Config(format!(
                "eval_split = \"{split}\" needs a dataset directory in path or eval_path"
            )))
        }
        (None, _, None) => return Ok(None),
    };
    if data.eval_size > 0 || data.eval_fraction > 0.0 {
        return Err(EnvError::Config(
            "eval rows come from eval_path / eval_split or are split off by eval_size / \
             eval_fraction: set one"
                .into(),
        ));
    }
    if split.is_none() && path.is_dir() {
        return Err(EnvError::Config(format!(
            "eval_path {} is a dataset directory: set eval_split",
            path.display()
        )));
    }
    Ok(Some((path, split)))
}

fn load_data(
    task: &dyn Task,
    cfg: &EnvConfig,
    base_dir: &Path,
) -> Result<(Dataset, Dataset, Vec<EnvError>)> {
    let data = &cfg.data;
    if !(0.0..1.0).contains(&data.eval_fraction) || (data.eval_fraction > 0.0 && data.eval_size > 0)
    {
        return Err(EnvError::Config(
            "set one of eval_size / eval_fraction (a fraction in [0, 1))".into(),
        ));
    }
    if data.split.is_some() && data.path.is_none() {
        return Err(EnvError::Config(
            "split names a split of a dataset directory: set path".into(),
        ));
    }
    // Config mistakes surface before a large dataset is read.
    let eval_source = eval_source(data, base_dir)?;
    let required = required_fields(task, cfg);
    let (all, mut skipped) = match &data.path {
        Some(path) => load_source(&base_dir.join(path), data.split.as_deref(), &required, data)?,
        None => {
            let rows = task.generate(data.generate, data.seed)?;
            (
                Dataset::new(format!("builtin:{}", task.name()), rows),
                Vec::new(),
            )
        }
    };
    if all.is_empty() {
        return Err(EnvError::Empty(all.name().to_owned()));
    }
    if let Some((eval_path, eval_split)) = eval_source {
        let (eval, eval_skipped) = load_source(&eval_path, eval_split, &required, data)?;
        skipped.extend(eval_skipped);
        return Ok((all, eval, skipped));
    }
    let eval_size = if data.eval_fraction > 0.0 {
        (data.eval_fraction * all.len() as f64).round() as usize
    } else {
        data.eval_size
    };
    let (train, eval) = all.split(eval_size, data.seed)?;
    Ok((train, eval, skipped))
}

/// Config examples plus `generated_examples` solved items from the task's generator.
fn few_shot(task: &dyn Task, prompt: &PromptConfig, seed: u64) -> Result<Vec<FewShot>> {
    let mut examples = prompt.examples.clone();
    if prompt.generated_examples == 0 {
        return Ok(examples);
    }
    if task.reward() == RewardKind::Environment {
        return Err(EnvError::Config(
            "generated_examples is for single-turn tasks".into(),
        ));
    }
    for row in task.generate(prompt.generated_examples, seed ^ FEW_SHOT_SEED)? {
        let user: Vec<String> = task.opening(&row)?.into_iter().map(|m| m.content).collect();
        let assistant = task.reference(&row)?.join("\n");
        examples.push(FewShot {
            user: user.join("\n\n"),
            assistant,
        });
    }
    Ok(examples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(value: serde_json::Value) -> EnvConfig {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn skipped_rows_are_exposed_with_file_and_line() {
        let dir = std::env::temp_dir().join(format!("oxrl-envs-skipped-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lines = [
            serde_json::json!({"prompt": "1+1?", "answer": "#### 2"}).to_string(),
            serde_json::json!({"prompt": "2+2?"}).to_string(),
            "[1, 2]".to_owned(),
            serde_json::json!({"prompt": "3+3?", "answer": "#### 6"}).to_string(),
        ];
        std::fs::write(dir.join("rows.jsonl"), lines.join("\n")).unwrap();
        let cfg = |policy: &str| {
            config(serde_json::json!({
                "task": "gsm8k",
                "data": { "path": "rows.jsonl", "on_bad_row": policy },
                "prompt": { "format": "plain" }
            }))
        };
        let env = LoadedEnv::from_config(&cfg("skip"), &dir, None).unwrap();
        assert_eq!(env.train().len(), 2);
        assert_eq!(env.skipped().len(), 2, "count of dropped rows");
        let path = dir.join("rows.jsonl").display().to_string();
        let messages: Vec<String> = env.skipped().iter().map(ToString::to_string).collect();
        assert!(
            messages[0].starts_with(&format!("{path}:2:")) && messages[0].contains("`answer`"),
            "{messages:?}"
        );
        assert!(
            messages[1].starts_with(&format!("{path}:3:")),
            "{messages:?}"
        );
        assert!(matches!(
            env.skipped()[0],
            EnvError::MissingField { line: 2, .. }
        ));
        assert!(matches!(
            env.skipped()[1],
            EnvError::BadLine { line: 3, .. }
        ));

        let err = LoadedEnv::from_config(&cfg("stop"), &dir, None).unwrap_err();
        assert!(err.to_string().starts_with(&format!("{path}:2:")), "{err}");
        let generated = LoadedEnv::from_config(
            &config(serde_json::json!({"task": "gsm8k", "prompt": { "format": "plain" }})),
            &dir,
            None,
        );
        assert!(generated.unwrap().skipped().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dataset_directory_splits_through_the_config() {
        use ::parquet::basic::{Compression, ZstdLevel};
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("hub/data");
        std::fs::create_dir_all(&data).unwrap();
        let train = data.join("train-00000-of-00001.parquet");
        let test = data.join("test-00000-of-00001.parquet");
        let rows = [("1+1?", Some("2"), Some(1)), ("2+2?", Some("4"), None)];
        crate::dataset::write_parquet(
            &train,
            Compression::SNAPPY,
            &[&rows, &[("3+3?", None, None)]],
        );
        let zstd = Compression::ZSTD(ZstdLevel::default());
        crate::dataset::write_parquet(&test, zstd, &[&[("4+4?", Some("8"), None)]]);
        let load = |mut data: serde_json::Value| {
            data["fields"] = serde_json::json!({ "prompt": "question" });
            data["on_bad_row"] = "skip".into();
            let cfg = config(serde_json::json!({
                "task": "gsm8k",
                "data": data,
                "prompt": { "format": "plain" }
            }));
            LoadedEnv::from_config(&cfg, tmp.path(), None)
        };

        let env = load(serde_json::json!({
            "path": "hub", "eval_split": "test"
        }))
        .unwrap();
        assert_eq!((env.train().len(), env.eval().len()), (2, 1));
        assert_eq!(
            env.train().get(1).unwrap().id(),
            format!("{}:2", train.display())
        );
        assert_eq!(env.eval().get(0).unwrap().get("prompt").unwrap(), "4+4?");
        assert!(matches!(
            env.skipped(),
            [EnvError::MissingField { line: 3, .. }]
        ));
        let file = load(serde_json::json!({ "path": "hub/data/test-00000-of-00001.parquet" }));
        assert_eq!(
            file.unwrap().train().len(),
            1,
            "one Parquet file is a dataset too"
        );

        for (data, error) in [
            (
                serde_json::json!({ "path": "hub", "eval_split": "test", "eval_size": 1 }),
                "set one",
            ),
            (
                serde_json::json!({ "path": "hub", "eval_split": "validation" }),
                "no split `validation` (splits found: test, train)",
            ),
            (
                serde_json::json!({ "path": "hub/data/test-00000-of-00001.parquet", "split": "test" }),
                "is for dataset directories",
            ),
            (
                serde_json::json!({ "path": "hub", "eval_path": "hub" }),
                "set eval_split",
            ),
            (
                serde_json::json!({ "eval_split": "test" }),
                "needs a dataset directory",
            ),
            (serde_json::json!({ "split": "train" }), "set path"),
        ] {
            let err = load(data.clone()).unwrap_err().to_string();
            assert!(err.contains(error), "{data}: {err}");
        }
    }

    #[test]
    fn multi_turn_is_known_from_the_config_alone() {
        for (task, multi) in [
            ("arithmetic", Some(false)),
            ("gsm8k", Some(false)),
            ("humaneval", Some(false)),
            ("mbpp", Some(false)),
            ("grounding", Some(false)),
            ("countdown", Some(false)),
            ("calculator", Some(true)),
            ("guessing", Some(true)),
            ("external", Some(true)),
            ("custom", None),
        ] {
            let cfg = config(serde_json::json!({ "task": task }));
            assert_eq!(cfg.is_multi_turn(), multi, "{task}");
        }
        // For built-ins it agrees with the loaded environment.
        let source = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/smollm2_chat_template.jinja"),
        )
        .unwrap();
        for task in ["gsm8k", "countdown", "guessing", "calculator"] {
            let cfg = config(serde_json::json!({ "task": task, "data": { "generate": 4 } }));
            let chat = ChatTemplate::new(&source, "<|im_start|>", "<|im_end|>").unwrap();
            let env = LoadedEnv::from_config(&cfg, Path::new("."), Some(chat)).unwrap();
            assert_eq!(Some(env.is_multi_turn()), cfg.is_multi_turn(), "{task}");
        }
    }
}
