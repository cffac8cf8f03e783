//! Box-grounding reward, Visual-RFT scoring (docs/formulas.md, "IoU"): boxes `[x1,y1,x2,y2]` are
//! parsed from the completion (inside its last `<answer>...</answer>` when present), taken
//! in order of confidence (when given), each greedily matched to the unmatched reference box
//! of highest IoU; a match counts when its IoU is above the threshold (0.5). Score = sum of
//! matched values / max(#reference, #predicted), capped at 1. With `metric = "giou"` the
//! matched value is (GIoU + 1) / 2 (GIoU: Rezatofighi et al. 2019).

use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::{Completion, Reward, RewardFailure, Score};

/// Which overlap value a match contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Intersection over union.
    Iou,
    /// Generalized IoU mapped to [0, 1].
    Giou,
}

/// Options of the `iou` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IouConfig {
    /// Task field with the reference boxes `[[x1,y1,x2,y2], ...]`.
    pub boxes_field: String,
    /// A match counts when its IoU is above this.
    pub threshold: f64,
    /// Value a match contributes.
    pub metric: Metric,
}

impl Default for IouConfig {
    fn default() -> Self {
        IouConfig {
            boxes_field: "boxes".into(),
            threshold: 0.5,
            metric: Metric::Iou,
        }
    }
}

/// A box with an optional confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    /// `[x1, y1, x2, y2]`.
    pub xyxy: [f64; 4],
    /// Confidence, if the completion gave one.
    pub confidence: Option<f64>,
}

fn area(b: &[f64; 4]) -> f64 {
    (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0)
}

/// Intersection over union (0 for degenerate boxes).
pub fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let inter = area(&[
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ]);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Generalized IoU, in [-1, 1].
pub fn giou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let inter = area(&[
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ]);
    let union = area(a) + area(b) - inter;
    let hull = area(&[
        a[0].min(b[0]),
        a[1].min(b[1]),
        a[2].max(b[2]),
        a[3].max(b[3]),
    ]);
    if union <= 0.0 || hull <= 0.0 {
        return -1.0;
    }
    inter / union - (hull - union) / hull
}

/// Parses boxes from text: JSON-style `[x1, y1, x2, y2]`, `(x1, y1, x2, y2)` or the
/// two-corner form `(x1,y1),(x2,y2)`, with an optional fifth number or a nearby
/// `"confidence"`/`"score"`/`"conf"` key as confidence.
pub fn parse_boxes(text: &str) -> Vec<BBox> {
    static BOX: OnceLock<Regex> = OnceLock::new();
    static CONF: OnceLock<Regex> = OnceLock::new();
    const N: &str = r"\s*(-?\d+(?:\.\d+)?)\s*";
    // Constant patterns, covered by this module's tests.
    let bx = BOX.get_or_init(|| {
        // `[x1, y1, x2, y2(, conf)]`, or the two-corner form `(x1,y1),(x2,y2)` that Qwen-VL
        // style models write between box tokens.
        Regex::new(&format!(
            r"[\[(]{N},{N},{N},{N}(?:,{N})?[\])]|\({N},{N}\)\s*,?\s*\({N},{N}\)"
        ))
        .expect("valid regex")
    });
    let conf = CONF.get_or_init(|| {
        Regex::new(r#"["']?(?:confidence|score|conf)["']?\s*[:=]\s*(-?\d+(?:\.\d+)?)"#)
            .expect("valid regex")
    });
    let scope = answer_scope(text);
    let mut out = Vec::new();
    for c in bx.captures_iter(scope) {
        let n = |i: usize| c.get(i).and_then(|m| m.as_str().parse::<f64>().ok());
        let corners = if c.get(1).is_some() {
            (n(1), n(2), n(3), n(4))
        } else {
            (n(6), n(7), n(8), n(9))
        };
        let (Some(x1), Some(y1), Some(x2), Some(y2)) = corners else {
            continue;
        };
        let mut confidence = n(5);
        if confidence.is_none() {
            // Look inside the enclosing JSON object: back to `{`, forward to `}`.
            let m = c.get(0).map(|m| (m.start(), m.end())).unwrap_or((0, 0));
            let before = &scope[..m.0];
            let after = &scope[m.1..];
            let lo = before.rfind('{').filter(|&k| !before[k..].contains('}'));
            let hi = after.find('}').filter(|&k| !after[..k].contains('{'));
            if let (Some(lo), Some(hi)) = (lo, hi) {
                let obj = &scope[lo..m.1 + hi];
                confidence = conf.captures(obj).and_then(|c| c[1].parse().ok());
            }
        }
        out.push(BBox {
            xyxy: [x1, y1, x2, y2],
            confidence,
        });
    }
    out
}

fn answer_scope(text: &str) -> &str {
    match (text.rfind("<answer>"), text.rfind("</answer>")) {
        (Some(a), Some(b)) if a + 8 <= b => &text[a + 8..b],
        _ => text,
    }
}

/// Visual-RFT score of predicted boxes against reference boxes.
pub fn score_boxes(pred: &[BBox], gt: &[[f64; 4]], threshold: f64, metric: Metric) -> f64 {
    if gt.is_empty() && pred.is_empty() {
        return 1.0;
    }
    let mut order: Vec<usize> = (0..pred.len()).collect();
    // Highest confidence first; boxes without confidence keep their order, after scored ones.
    order.sort_by(|&a, &b| {
        let ca = pred[a].confidence.unwrap_or(f64::NEG_INFINITY);
        let cb = pred[b].confidence.unwrap_or(f64::NEG_INFINITY);
        cb.partial_cmp(&ca).unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut used = vec![false; gt.len()];
    let mut sum = 0.0;
    for &p in &order {
        let best = (0..gt.len())
            .filter(|&g| !used[g])
            .map(|g| (g, iou(&pred[p].xyxy, &gt[g])))
            .max_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
        if let Some((g, v)) = best {
            if v > threshold {
                used[g] = true;
                sum += match metric {
                    Metric::Iou => v,
                    Metric::Giou => (giou(&pred[p].xyxy, &gt[g]) + 1.0) / 2.0,
                };
            }
        }
    }
    (sum / gt.len().max(pred.len()) as f64).min(1.0)
}

/// The `iou` reward.
#[derive(Debug, Clone, Default)]
pub struct IouReward {
    cfg: IouConfig,
}

impl IouReward {
    /// An IoU reward with these options.
    pub fn new(cfg: IouConfig) -> Self {
        IouReward { cfg }
    }

    /// Scores one completion.
    pub fn score_one(&self, s: &Completion) -> Score {
        let bad = |m: String| RewardFailure::BadReference(m);
        let gt_value = s
            .field(&self.cfg.boxes_field)
            .ok_or_else(|| bad(format!("missing field `{}`", self.cfg.boxes_field)))?;
        let gt: Vec<[f64; 4]> = match gt_value {
            Value::Array(items) => items
                .iter()
                .map(|b| {
                    let v: Vec<f64> = b
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default();
                    <[f64; 4]>::try_from(v.as_slice())
                        .map_err(|_| bad(format!("reference box {b} is not [x1,y1,x2,y2]")))
                })
                .collect::<Result<_, _>>()?,
            other => {
                return Err(bad(format!(
                    "`{}` must be a list of boxes, got {other}",
                    self.cfg.boxes_field
                )))
            }
        };
        let pred = parse_boxes(&s.completion);
        if pred.is_empty() && !gt.is_empty() {
            return Err(RewardFailure::Parse("no box found in completion".into()));
        }
        Ok(score_boxes(&pred, &gt, self.cfg.threshold, self.cfg.metric))
    }
}

impl Reward for IouReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        completions.iter().map(|s| self.score_one(s)).collect()
    }
}
