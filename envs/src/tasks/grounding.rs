//! Text grounding with box answers: a scene of coloured shapes on a 100 x 100 canvas is
//! described in words ("a red square with its top-left corner at (12, 30) and sides of 20"),
//! and the model gives the bounding boxes of every shape of one colour as
//! `[[x1, y1, x2, y2], ...]` (x to the right, y down) inside `<answer>` tags.
//!
//! Rows: `prompt`, `boxes` (the ground-truth boxes), `color`. Scoring (the IoU reward's rule,
//! Visual-RFT): predictions are matched greedily to unmatched ground truth by IoU; a match
//! counts above IoU 0.5; score = sum of matched IoU / max(#gt, #pred).

use serde_json::json;

use super::{util::extract_tag, RewardKind, SingleTurn, Task};
use crate::episode::Environment;
use crate::error::Result;
use crate::rng::Rng;
use crate::row::Row;

/// A box `[x1, y1, x2, y2]`.
pub type BoxXyxy = [f64; 4];

const COLORS: &[&str] = &["red", "green", "blue", "yellow"];
const SHAPES: &[&str] = &["square", "rectangle", "circle"];

/// Intersection over union of two boxes (0 for degenerate boxes).
pub fn iou(a: &BoxXyxy, b: &BoxXyxy) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &BoxXyxy| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy-matched IoU score of `pred` against `gt` (see module docs).
pub fn score_boxes(gt: &[BoxXyxy], pred: &[BoxXyxy]) -> f64 {
    let denom = gt.len().max(pred.len());
    if denom == 0 {
        return 0.0;
    }
    let mut used = vec![false; gt.len()];
    let mut total = 0.0;
    for p in pred {
        let best = (0..gt.len())
            .filter(|&i| !used[i])
            .map(|i| (i, iou(p, &gt[i])))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, v)) = best.filter(|&(_, v)| v > 0.5) {
            used[i] = true;
            total += v;
        }
    }
    (total / denom as f64).min(1.0)
}

/// Every `[a, b, c, d]` group of four numbers in `text`.
pub fn parse_boxes(text: &str) -> Vec<BoxXyxy> {
    text.split('[')
        .filter_map(|chunk| {
            let inner = chunk.split(']').next()?;
            let nums: Vec<f64> = inner
                .split(',')
                .map(|t| t.trim().parse().ok())
                .collect::<Option<_>>()?;
            <[f64; 4]>::try_from(nums).ok()
        })
        .collect()
}

/// One shape: its colour, its kind, its description and its box.
fn shape(rng: &mut Rng, color: &str, kind: &str) -> (String, [i64; 4]) {
    match kind {
        "square" => {
            let s = rng.range(8, 30);
            let (x, y) = (rng.range(0, 100 - s), rng.range(0, 100 - s));
            (
                format!("a {color} square with its top-left corner at ({x}, {y}) and sides of length {s}"),
                [x, y, x + s, y + s],
            )
        }
        "rectangle" => {
            let (w, h) = (rng.range(4, 20) * 2, rng.range(4, 20) * 2);
            let (cx, cy) = (rng.range(w / 2, 100 - w / 2), rng.range(h / 2, 100 - h / 2));
            (
                format!("a {color} rectangle centred at ({cx}, {cy}), {w} wide and {h} tall"),
                [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2],
            )
        }
        _ => {
            let r = rng.range(4, 20);
            let (cx, cy) = (rng.range(r, 100 - r), rng.range(r, 100 - r));
            (
                format!("a {color} circle centred at ({cx}, {cy}) with radius {r}"),
                [cx - r, cy - r, cx + r, cy + r],
            )
        }
    }
}

fn item(rng: &mut Rng) -> (String, String, Vec<[i64; 4]>) {
    let count = rng.range(2, 4) as usize;
    let mut combos: Vec<(&str, &str)> = COLORS
        .iter()
        .flat_map(|c| SHAPES.iter().map(move |s| (*c, *s)))
        .collect();
    rng.shuffle(&mut combos);
    let objects: Vec<(&str, (String, [i64; 4]))> = combos[..count]
        .iter()
        .map(|&(c, s)| (c, shape(rng, c, s)))
        .collect();
    let color = objects[rng.below(count as u64) as usize].0;
    let descriptions: Vec<&str> = objects.iter().map(|(_, (d, _))| d.as_str()).collect();
    let boxes = objects
        .iter()
        .filter(|(c, _)| *c == color)
        .map(|(_, (_, b))| *b)
        .collect();
    let prompt = format!(
        "A 100 by 100 canvas (x grows to the right, y grows downwards) shows {}. Give the bounding box of every {color} shape.",
        descriptions.join("; ")
    );
    (prompt, color.to_owned(), boxes)
}

/// The grounding task.
#[derive(Debug, Clone, Copy)]
pub struct Grounding;

impl Task for Grounding {
    fn name(&self) -> &'static str {
        "grounding"
    }
    fn reward(&self) -> RewardKind {
        RewardKind::Iou
    }
    fn required_fields(&self) -> &'static [&'static str] {
        &["prompt", "boxes"]
    }
    fn instruction(&self) -> &'static str {
        "Answer with the boxes as [[x1, y1, x2, y2], ...] inside <answer> </answer> tags."
    }
    fn generate(&self, n: usize, seed: u64) -> Result<Vec<Row>> {
        Ok((0..n)
            .map(|i| {
                let (prompt, color, boxes) = item(&mut Rng::derive(seed, i as u64));
                Row::from_pairs(
                    format!("grounding-{seed}-{i}"),
                    [
                        ("prompt", json!(prompt)),
                        ("boxes", json!(boxes)),
                        ("color", json!(color)),
                    ],
                )
            })
            .collect())
    }
    fn reference(&self, row: &Row) -> Result<Vec<String>> {
        let boxes = row
            .get("boxes")
            .ok_or_else(|| row.bad(self.name(), "no `boxes`"))?;
        Ok(vec![format!("<answer>{boxes}</answer>")])
    }
    fn score(&self, row: &Row, completion: &str) -> Result<f64> {
        let gt = row
            .get("boxes")
            .map(|b| parse_boxes(&b.to_string()))
            .unwrap_or_default();
        if gt.is_empty() {
            return Err(row.bad(self.name(), "`boxes` must be a list of [x1, y1, x2, y2]"));
        }
        let answer = extract_tag(completion, "answer").unwrap_or(completion);
        Ok(score_boxes(&gt, &parse_boxes(answer)))
    }
    fn environment(&self) -> Result<Box<dyn Environment>> {
        Ok(Box::new(SingleTurn::new(*self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_matches_the_reference_rule() {
        let gt = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]];
        assert_eq!(score_boxes(&gt, &gt), 1.0);
        assert_eq!(score_boxes(&gt, &gt[..1]), 0.5);
        let fp = [gt[0], gt[1], [50.0, 50.0, 60.0, 60.0]];
        assert!((score_boxes(&gt, &fp) - 2.0 / 3.0).abs() < 1e-9);
        // IoU 0.6 on one of two: 0.3; IoU 0.45: no match.
        let p6 = [[0.0, 0.0, 10.0, 6.0]];
        assert!((score_boxes(&gt, &p6) - 0.3).abs() < 1e-9);
        let p45 = [[0.0, 0.0, 10.0, 4.5]];
        assert_eq!(score_boxes(&gt, &p45), 0.0);
        assert_eq!(score_boxes(&gt, &[]), 0.0);
    }

    #[test]
    fn parses_nested_and_loose_box_lists() {
        assert_eq!(
            parse_boxes("[[1, 2, 3, 4], [5,6,7,8.5]]"),
            vec![[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.5]]
        );
        assert_eq!(parse_boxes("box [1, 2, 3]"), Vec::<BoxXyxy>::new());
    }

    #[test]
    fn generated_scenes_are_consistent_and_references_score_one() {
        for row in Grounding.generate(300, 9).unwrap() {
            let reference = Grounding.reference(&row).unwrap();
            assert_eq!(Grounding.score(&row, &reference[0]).unwrap(), 1.0);
            let boxes = parse_boxes(&row.get("boxes").unwrap().to_string());
            let color = row.require_str("t", "color").unwrap();
            let prompt = row.require_str("t", "prompt").unwrap();
            let mentions = prompt.matches(&format!("a {color} ")).count();
            assert_eq!(boxes.len(), mentions, "{prompt}");
            for b in &boxes {
                assert!(
                    b[0] >= 0.0
                        && b[1] >= 0.0
                        && b[2] <= 100.0
                        && b[3] <= 100.0
                        && b[0] < b[2]
                        && b[1] < b[3]
                );
            }
        }
    }
}
