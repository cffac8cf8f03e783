//! Tables for the IoU reward (the worked Visual-RFT examples of docs/formulas.md, "IoU") and the format
//! reward (tag structure, regex, DAPO overlong penalty).

use oxrl_rewards::format::{overlong_penalty, FormatConfig, FormatReward};
use oxrl_rewards::iou::{giou, iou, parse_boxes, score_boxes, IouConfig, IouReward, Metric};
use oxrl_rewards::{Completion, FailureKind, Reward};
use serde_json::json;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-3
}

/// A box of IoU `v` with [0,0,10,10]: [0,0,10,10*v] (area 100v inside the reference).
fn at_iou(v: f64) -> String {
    format!("[0, 0, 10, {}]", 10.0 * v)
}

#[test]
fn visual_rft_worked_examples() {
    let gt = json!([[0, 0, 10, 10], [20, 20, 30, 30]]);
    let rows = [
        ("both exact", "[[0,0,10,10],[20,20,30,30]]".to_string(), 1.0),
        ("one exact", "[0,0,10,10]".to_string(), 0.5),
        (
            "both + false positive",
            "[0,0,10,10] [20,20,30,30] [50,50,60,60]".to_string(),
            2.0 / 3.0,
        ),
        ("one at IoU 0.6", at_iou(0.6), 0.3),
        ("one at IoU 0.45", at_iou(0.45), 0.0),
    ];
    let r = IouReward::new(IouConfig::default());
    for (name, completion, want) in rows {
        let got = r
            .score_one(&Completion::new(completion).with("boxes", gt.clone()))
            .unwrap();
        assert!(close(got, want), "{name}: got {got}, want {want}");
    }
}

#[test]
fn box_parsing_forms() {
    let b = parse_boxes("<think>maybe [1,1,2,2]</think><answer>[{\"bbox_2d\": [1, 2, 3, 4], \"confidence\": 0.9}]</answer>");
    assert_eq!(b.len(), 1, "only the answer is read");
    assert_eq!(b[0].xyxy, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(b[0].confidence, Some(0.9));
    let b = parse_boxes("boxes: (10, 20, 30, 40) and [5.5, 6, 7, 8, 0.3]");
    assert_eq!(b.len(), 2);
    assert_eq!(b[1].confidence, Some(0.3));
    assert!(parse_boxes("[1, 2, 3]").is_empty());
    let b = parse_boxes(
        "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(12,30),(140, 200)<|box_end|>",
    );
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].xyxy, [12.0, 30.0, 140.0, 200.0]);
    assert_eq!(b[0].confidence, None);
}

#[test]
fn confidence_orders_matching() {
    // Two predictions compete for one reference box; the confident one (IoU 0.6) is taken
    // first and the better-placed but unconfident one becomes a false positive.
    let gt = [[0.0, 0.0, 10.0, 10.0]];
    let text = "[{\"bbox\": [0,0,10,9], \"score\": 0.1}, {\"bbox\": [0,0,10,6], \"score\": 0.9}]";
    let got = score_boxes(&parse_boxes(text), &gt, 0.5, Metric::Iou);
    assert!(close(got, 0.6 / 2.0), "{got}");
}

#[test]
fn iou_and_giou_values() {
    assert!(close(
        iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]),
        1.0 / 3.0
    ));
    assert!(close(
        giou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 0.0, 3.0, 1.0]),
        -1.0 / 3.0
    ));
    assert!(close(
        giou(&[0.0, 0.0, 1.0, 1.0], &[0.0, 0.0, 1.0, 1.0]),
        1.0
    ));
    assert_eq!(iou(&[0.0, 0.0, 0.0, 0.0], &[0.0, 0.0, 0.0, 0.0]), 0.0);
}

#[test]
fn iou_failures() {
    let r = IouReward::new(IouConfig::default());
    let out = r.score_batch(&[
        Completion::new("no boxes here").with("boxes", json!([[0, 0, 1, 1]])),
        Completion::new("[0,0,1,1]"),
        Completion::new("[0,0,1,1]").with("boxes", json!([[0, 0, 1]])),
        Completion::new("nothing").with("boxes", json!([])),
    ]);
    assert_eq!(out[0].as_ref().unwrap_err().kind(), FailureKind::Parse);
    assert_eq!(
        out[1].as_ref().unwrap_err().kind(),
        FailureKind::BadReference
    );
    assert_eq!(
        out[2].as_ref().unwrap_err().kind(),
        FailureKind::BadReference
    );
    assert_eq!(out[3], Ok(1.0));
}

#[test]
fn format_table() {
    let tags = FormatReward::new(
        "fmt",
        FormatConfig {
            tags: vec!["think".into(), "answer".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let rows = [
        ("<think>a\nb</think>\n<answer>42</answer>", 1.0),
        ("  <think>x</think><answer>y</answer>\n", 1.0),
        ("<answer>42</answer><think>x</think>", 0.0),
        ("<think>x</think>", 0.0),
        ("<think>x</think><answer>1</answer><answer>2</answer>", 0.0),
        ("<think><think>x</think></think><answer>1</answer>", 0.0),
        ("preamble <think>x</think><answer>1</answer>", 0.0),
    ];
    for (c, want) in rows {
        assert_eq!(tags.score_one(&Completion::new(c)), want, "{c:?}");
    }
    let re = FormatReward::new(
        "re",
        FormatConfig {
            pattern: Some(r"\\boxed\{.+\}".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(re.score_one(&Completion::new("so \\boxed{3}")), 1.0);
    assert_eq!(re.score_one(&Completion::new("so 3")), 0.0);
    assert!(FormatReward::new(
        "bad",
        FormatConfig {
            pattern: Some("(".into()),
            ..Default::default()
        }
    )
    .is_err());
}

#[test]
fn overlong_penalty_dapo() {
    assert_eq!(overlong_penalty(100, 200, 50), 0.0);
    assert_eq!(overlong_penalty(150, 200, 50), 0.0);
    assert!(close(overlong_penalty(175, 200, 50), -0.5));
    assert_eq!(overlong_penalty(200, 200, 50), -1.0);
    assert_eq!(overlong_penalty(300, 200, 50), -1.0);
    let r = FormatReward::new(
        "len",
        FormatConfig {
            overlong_max: Some(200),
            overlong_buffer: 50,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(close(
        r.score_one(&Completion::new("x").with("completion_tokens", 175)),
        -0.5
    ));
    assert_eq!(r.score_one(&Completion::new("x".repeat(10))), 0.0);
}
