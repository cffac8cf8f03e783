//! Building rewards by name from serde config.
//!
//! The engine deserializes `[[rewards]]` tables into [`RewardSpec`]s:
//!
//! ```toml
//! [[rewards]]
//! name = "math"
//! weight = 1.0
//!
//! [[rewards]]
//! name = "think_format"      # the name it reports under
//! type = "format"            # the builder to use (defaults to `name`)
//! weight = 0.2
//! pattern = "^<think>.*</think>"
//! ```
//!
//! Every option other than `name`, `type`, `weight` and `failure_score` is handed to the
//! reward's builder, which rejects unknown keys.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result, Reward};

/// One entry of the run config's `[[rewards]]` list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardSpec {
    /// Name the reward reports under (metrics, logs, failure counts); also the builder when
    /// `type` is absent.
    pub name: String,
    /// Builder to use (`math`, `code`, `iou`, `countdown`, `format`, `judge`, `command`,
    /// `http`, or a name registered by the user).
    #[serde(
        default,
        rename = "type",
        alias = "kind",
        skip_serializing_if = "Option::is_none"
    )]
    pub kind: Option<String>,
    /// Weight in the combined reward.
    #[serde(default = "one")]
    pub weight: f64,
    /// Score used for a completion whose scoring failed.
    #[serde(default)]
    pub failure_score: f64,
    /// The reward's own options.
    #[serde(flatten)]
    pub options: Map<String, Value>,
}

fn one() -> f64 {
    1.0
}

impl RewardSpec {
    /// A spec with default weight 1 and no options.
    pub fn new(name: &str) -> Self {
        RewardSpec {
            name: name.into(),
            kind: None,
            weight: 1.0,
            failure_score: 0.0,
            options: Map::new(),
        }
    }

    /// The builder name: `type` if given, else `name`.
    pub fn builder(&self) -> &str {
        self.kind.as_deref().unwrap_or(&self.name)
    }
}

/// Builds a reward from the spec's `name` (for error messages; the reward reports under it
/// whatever the builder does with it) and its options.
pub type Builder = Arc<dyn Fn(&str, &Map<String, Value>) -> Result<Arc<dyn Reward>> + Send + Sync>;

/// Reward builders by name. [`Registry::default`] holds the built-ins; users add their
/// own Rust rewards with [`Registry::register`].
#[derive(Clone)]
pub struct Registry {
    builders: BTreeMap<String, Builder>,
}

/// Deserializes a reward's options into its config struct, naming the reward on error.
pub fn options<T: serde::de::DeserializeOwned>(name: &str, opts: &Map<String, Value>) -> Result<T> {
    serde_json::from_value(Value::Object(opts.clone())).map_err(|e| Error::Config {
        name: name.to_string(),
        message: e.to_string(),
    })
}

impl Default for Registry {
    fn default() -> Self {
        let mut r = Registry {
            builders: BTreeMap::new(),
        };
        r.register("math", |name, o| {
            Ok(Arc::new(crate::math::MathReward::new(options(name, o)?)))
        });
        r.register("code", |name, o| {
            Ok(Arc::new(crate::code::CodeReward::new(options(name, o)?)))
        });
        r.register("iou", |name, o| {
            Ok(Arc::new(crate::iou::IouReward::new(options(name, o)?)))
        });
        r.register("countdown", |name, o| {
            Ok(Arc::new(crate::countdown::CountdownReward::new(options(
                name, o,
            )?)))
        });
        r.register("format", |name, o| {
            Ok(Arc::new(crate::format::FormatReward::new(
                name,
                options(name, o)?,
            )?))
        });
        r.register("judge", |name, o| {
            Ok(Arc::new(crate::judge::JudgeReward::new(
                name,
                options(name, o)?,
            )?))
        });
        r.register("command", |name, o| {
            Ok(Arc::new(crate::custom::command::CommandReward::new(
                name,
                options(name, o)?,
            )?))
        });
        r.register("http", |name, o| {
            Ok(Arc::new(crate::custom::http::HttpReward::new(
                name,
                options(name, o)?,
            )?))
        });
        r
    }
}

impl Registry {
    /// Registers (or replaces) a builder under `name`.
    pub fn register<F>(&mut self, name: &str, build: F)
    where
        F: Fn(&str, &Map<String, Value>) -> Result<Arc<dyn Reward>> + Send + Sync + 'static,
    {
        self.builders.insert(name.to_string(), Arc::new(build));
    }

    /// Registered builder names.
    pub fn names(&self) -> Vec<&str> {
        self.builders.keys().map(String::as_str).collect()
    }

    /// Builds the reward a spec describes.
    pub fn build(&self, spec: &RewardSpec) -> Result<Arc<dyn Reward>> {
        let builder = self
            .builders
            .get(spec.builder())
            .ok_or_else(|| Error::UnknownReward {
                name: spec.builder().to_string(),
                known: self.names().join(", "),
            })?;
        builder(&spec.name, &spec.options)
    }
}
