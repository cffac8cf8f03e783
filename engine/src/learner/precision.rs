//! `[learner] precision`: which dtype AdamW updates the weights in. With mixed precision
//! (Micikevicius et al. 2018, "Mixed Precision Training", arXiv 1710.03740; PyTorch
//! Lightning's `precision = "bf16-mixed"` names the same scheme) the model keeps its bf16/f16
//! parameters for the forward and backward, and the optimizer keeps an f32 master copy of
//! each trainable parameter that the update is applied to; the half-precision parameter is
//! then refreshed from it (rounded to nearest). Without masters, an update smaller than half
//! a bf16 ulp (2^-9 of the weight: 2e-4 for a weight of 0.1) rounds away: at an RL learning
//! rate of 1e-6 most weights would never move.

use serde::{Deserialize, Serialize};
use tch::Kind;

use crate::error::{Error, Result};

/// `[learner] precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// `bf16-mixed` for a bf16 or f16 model, `pure` for an f32 (or f64) one, on any device.
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// The update is applied in the parameters' own dtype (a bf16 model: bf16 weights and
    /// bf16 rounding of every update; the moments are f32 either way).
    #[serde(rename = "pure")]
    Pure,
    /// f32 master weights for the bf16/f16 trainable parameters: forward and backward in the
    /// model's dtype, the gradient upcast to f32, AdamW applied to the master, the parameter
    /// refreshed from it. Refused for an f32 model (nothing to keep a master of).
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
}

impl Precision {
    /// The name as a config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Pure => "pure",
            Precision::Bf16Mixed => "bf16-mixed",
        }
    }

    /// Whether the optimizer keeps f32 master weights for a model whose trainable parameters
    /// are of dtype `kind`; `bf16-mixed` with parameters that are not bf16/f16 is an error
    /// naming the option.
    pub fn master_weights(self, kind: Kind) -> Result<bool> {
        let half = is_half(kind);
        match self {
            Precision::Pure => Ok(false),
            Precision::Auto => Ok(half),
            Precision::Bf16Mixed if half => Ok(true),
            Precision::Bf16Mixed => Err(Error::Invalid(format!(
                "learner.precision = \"bf16-mixed\" needs a bf16 or f16 model ([model] dtype), \
                 but its parameters are {}: they are updated at full precision already; \
                 use precision = \"auto\" or \"pure\", or dtype = \"bf16\"",
                kind_name(kind)
            ))),
        }
    }
}

/// bf16 or f16: the dtypes that get a master copy.
pub fn is_half(kind: Kind) -> bool {
    matches!(kind, Kind::BFloat16 | Kind::Half)
}

/// `kind` as `[model] dtype` spells it.
fn kind_name(kind: Kind) -> String {
    match kind {
        Kind::Float => "f32".into(),
        Kind::Double => "f64".into(),
        Kind::BFloat16 => "bf16".into(),
        Kind::Half => "f16".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Table {
        precision: Precision,
    }

    fn parse(value: &str) -> std::result::Result<Precision, String> {
        toml::from_str::<Table>(&format!("precision = {value:?}"))
            .map(|t| t.precision)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_parse_and_unknown_ones_are_refused() {
        for p in [Precision::Auto, Precision::Pure, Precision::Bf16Mixed] {
            assert_eq!(parse(p.name()).unwrap(), p);
        }
        let e = parse("fp8").unwrap_err();
        assert!(e.contains("auto") && e.contains("bf16-mixed"), "{e}");
        assert!(parse("bf16_mixed").is_err());
    }

    #[test]
    fn auto_keeps_masters_for_half_models_only() {
        assert!(Precision::Auto.master_weights(Kind::BFloat16).unwrap());
        assert!(Precision::Auto.master_weights(Kind::Half).unwrap());
        assert!(!Precision::Auto.master_weights(Kind::Float).unwrap());
        assert!(!Precision::Pure.master_weights(Kind::BFloat16).unwrap());
        assert!(Precision::Bf16Mixed.master_weights(Kind::Half).unwrap());
        let e = Precision::Bf16Mixed
            .master_weights(Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(e.contains("learner.precision") && e.contains("f32"), "{e}");
    }
}
