//! Verifiable math reward: extract the model's final answer, compare it with the reference
//! numerically and symbolically. Reference behaviour: HF Math-Verify (`parse` + `verify`);
//! see `docs/rewards.md` for where and why this implementation differs.
//!
//! Answers without variables whose values are rational (integers of any size, fractions,
//! integer powers) compare exactly ([`rational`]); a float tolerance applies only where a
//! value is inexact (a decimal, `\pi`, a root).
//!
//! Symbolic equality is decided by evaluating both sides at several fixed pseudo-random
//! points for their free variables (a polynomial-identity style test), which agrees with
//! sympy simplification on the expressions answers are written in.

pub mod extract;
pub mod parse;
pub mod rational;

use std::collections::BTreeSet;

use rayon::prelude::*;
use serde::Deserialize;

use crate::{Completion, Reward, RewardFailure, Score};
use parse::Expr;

/// Options of the `math` reward.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MathConfig {
    /// Task field holding the reference answer.
    pub answer_field: String,
    /// Also accept `x/100` against `x%` (and the reverse) when one side carries a percent sign.
    pub percent_as_fraction: bool,
    /// Relative tolerance for numeric comparison (absolute below magnitude 1).
    pub rel_tol: f64,
    /// The answer must be stated as a number (`2`, `-3.5`, `x = 7 - 5 = 2`), not left as an
    /// expression to evaluate (`7 - 5`): for tasks whose prompt is itself the expression,
    /// where echoing it back would otherwise score.
    pub literal_answer: bool,
}

impl Default for MathConfig {
    fn default() -> Self {
        MathConfig {
            answer_field: "answer".into(),
            percent_as_fraction: true,
            rel_tol: 1e-6,
            literal_answer: false,
        }
    }
}

/// The `math` reward: 1.0 when the extracted answer equals the reference, else 0.0.
#[derive(Debug, Clone, Default)]
pub struct MathReward {
    cfg: MathConfig,
}

/// A parsed answer with its percent flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The parsed expression.
    pub expr: Expr,
    /// Whether the answer was written with a percent sign.
    pub percent: bool,
}

fn parse_candidate(raw: &str) -> Option<Answer> {
    let n = extract::normalize(raw);
    if let Ok(expr) = parse::parse(&n.text) {
        return Some(Answer {
            expr,
            percent: n.percent,
        });
    }
    let stripped = extract::strip_unit_words(&n.text)?;
    parse::parse(&stripped).ok().map(|expr| Answer {
        expr,
        percent: n.percent,
    })
}

/// Extracts and parses the model's answer from a completion.
pub fn parse_completion(text: &str) -> Option<Answer> {
    extract::candidates(text)
        .iter()
        .find_map(|c| parse_candidate(c))
}

/// Parses a reference answer: the whole string first (it usually is just the answer), then
/// the same extraction as for completions (GSM8K solutions ending in `#### 72`, `\boxed{}`).
pub fn parse_reference(text: &str) -> Option<Answer> {
    if !text.contains("####") && !text.contains("\\boxed") {
        // A reference in a math span is LaTeX: `$-2,1$` lists two roots (`1,22` is 1.22).
        let text = extract::unwrap_math(text)
            .map_or_else(|| text.to_string(), |m| extract::latex_comma(m.to_string()));
        if let Some(a) = parse_candidate(&text) {
            return Some(a);
        }
    }
    if let Some(a) = parse_completion(text) {
        return Some(a);
    }
    // A short reference that is no math at all (`Evelyn`, `yellow`) is a textual answer.
    let t = text_norm(text);
    (!t.is_empty() && t.chars().count() <= 100).then_some(Answer {
        expr: Expr::Text(t),
        percent: false,
    })
}

impl MathReward {
    /// A math reward with these options.
    pub fn new(cfg: MathConfig) -> Self {
        MathReward { cfg }
    }

    /// Whether `pred` is equivalent to `gold` under this reward's options.
    pub fn answers_match(&self, gold: &Answer, pred: &Answer) -> bool {
        if equiv(&gold.expr, &pred.expr, self.cfg.rel_tol) {
            return true;
        }
        if self.cfg.percent_as_fraction && gold.percent != pred.percent {
            let hundred = Box::new(Expr::Int(100.into()));
            let (scaled, other) = if gold.percent {
                (Expr::Div(Box::new(gold.expr.clone()), hundred), &pred.expr)
            } else {
                (Expr::Div(Box::new(pred.expr.clone()), hundred), &gold.expr)
            };
            return equiv(&scaled, other, self.cfg.rel_tol);
        }
        false
    }

    /// Scores one completion against one reference string.
    pub fn score_one(&self, completion: &str, reference: &str) -> Score {
        let gold = parse_reference(reference).ok_or_else(|| {
            RewardFailure::BadReference(format!("cannot parse reference `{}`", clip(reference)))
        })?;
        if let Expr::Text(g) = &gold.expr {
            // Textual answers: also accept the raw candidate text.
            let hit = extract::candidates(completion)
                .iter()
                .any(|c| text_norm(c) == *g);
            if hit {
                return Ok(1.0);
            }
        }
        let pred = parse_completion(completion)
            .ok_or_else(|| RewardFailure::Parse("no answer found in completion".into()))?;
        if self.cfg.literal_answer && !states_a_number(&pred.expr) {
            return Ok(0.0);
        }
        Ok(if self.answers_match(&gold, &pred) {
            1.0
        } else {
            0.0
        })
    }
}

/// Whether an answer states a number: a numeral, possibly negated, or an equation chain
/// ending in one (`7 - 5 = 2` states 2).
fn states_a_number(expr: &Expr) -> bool {
    match expr {
        Expr::Int(_) | Expr::Num(_) => true,
        Expr::Neg(inner) => matches!(**inner, Expr::Int(_) | Expr::Num(_)),
        Expr::Eq(members) => members.last().is_some_and(states_a_number),
        _ => false,
    }
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn text_norm(s: &str) -> String {
    let n = extract::normalize(s).text;
    let n = n.trim_start_matches("\\text{").trim_end_matches('}');
    n.trim()
        .trim_matches(|c: char| c.is_ascii_punctuation())
        .to_lowercase()
}

impl Reward for MathReward {
    fn score_batch(&self, completions: &[Completion]) -> Vec<Score> {
        completions
            .par_iter()
            .map(|s| match s.field_text(&self.cfg.answer_field) {
                None => Err(RewardFailure::BadReference(format!(
                    "missing field `{}`",
                    self.cfg.answer_field
                ))),
                Some(reference) => self.score_one(&s.completion, &reference),
            })
            .collect()
    }
}

/// Numeric equality with a relative tolerance (absolute below magnitude 1).
fn num_eq(a: f64, b: f64, rel_tol: f64) -> bool {
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    if a.is_nan() || b.is_nan() {
        return false;
    }
    let scale = a.abs().max(b.abs());
    // Above magnitude 1e3 a relative 1e-6 would merge distinct integers (7425000 vs
    // 7425001): there, keep an absolute 1e-3 ceiling.
    // Below 1e-3 the comparison is purely relative (Math-Verify's 6-decimal rounding would
    // call 1e-8 and 2e-8 equal; see docs/rewards.md).
    let tol = if scale < 1e-3 {
        rel_tol * scale
    } else {
        (rel_tol * scale.max(1.0)).min(1e-3_f64.max(1e-12 * scale))
    };
    (a - b).abs() <= tol
}

/// Structural and numeric equivalence of two parsed answers.
pub fn equiv(gold: &Expr, pred: &Expr, rel_tol: f64) -> bool {
    use Expr::*;
    match (gold, pred) {
        (Eq(a), Eq(b)) => {
            // `x = 11` against `x = 5 + 5 + 1 = 11`: the same variable, the same final value.
            if let (Some(Var(x)), Some(Var(y))) = (a.first(), b.first()) {
                if x == y {
                    return match (a.last(), b.last()) {
                        (Some(l1), Some(l2)) => equiv(l1, l2, rel_tol),
                        _ => false,
                    };
                }
            }
            // Equations: `lhs - rhs` equal up to a non-zero factor (`2x + 4y - 3 = 0` is
            // `y = -x/2 + 3/4`).
            match (a.as_slice(), b.as_slice()) {
                ([l1, r1], [l2, r2]) => {
                    proportional(&difference(l1, r1), &difference(l2, r2), false)
                }
                _ => false,
            }
        }
        // A prediction `k = \frac{1}{3}` (or `\frac12 = \frac{10}{9}`) against `1/3`: as in
        // Math-Verify, the right-hand side of the last `=` is the answer.
        (other, Eq(b)) => b.last().is_some_and(|l| equiv(other, l, rel_tol)),
        // A reference `x = 3` against `3` — only when a plain variable is being assigned:
        // `7 = 11a + c` is not the answer `11a + c`.
        (Eq(a), other) => match a.as_slice() {
            [.., Var(_), last] => equiv(last, other, rel_tol),
            _ => false,
        },
        (
            Rel {
                op: o1,
                lhs: l1,
                rhs: r1,
            },
            Rel {
                op: o2,
                lhs: l2,
                rhs: r2,
            },
        ) => o1 == o2 && proportional(&difference(r1, l1), &difference(r2, l2), *o1 != '≠'),
        (Chain(a), Chain(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equiv(x, y, rel_tol))
        }
        (
            Tuple {
                open: o1,
                close: c1,
                items: a,
            },
            Tuple {
                open: o2,
                close: c2,
                items: b,
            },
        ) => {
            o1 == o2
                && c1 == c2
                && a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| equiv(x, y, rel_tol))
        }
        (Set(a), Set(b)) | (Union(a), Union(b)) => unordered_eq(a, b, rel_tol),
        // As in Math-Verify, `(a, b, ...)` against a set is a list in order, and a set
        // against it in any order (so `\{1, 2\}` and `(2, 1)` match, `(1, 2)` and
        // `\{2, 1\}` do not); an open interval `(a, b)` is one of these lists.
        (
            Set(a),
            Tuple {
                open: '(',
                close: ')',
                items: b,
            },
        ) => unordered_eq(a, b, rel_tol),
        (
            Tuple {
                open: '(',
                close: ')',
                items: a,
            },
            Set(b),
        ) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equiv(x, y, rel_tol)),
        // A reference relation in one variable against a predicted set is the interval it
        // describes (`1 < x ≤ 2` is `(1, 2]`); as in Math-Verify, not the other way round.
        (Rel { .. } | Chain(_), Tuple { .. } | Set(_) | Union(_)) => {
            relation_as_interval(gold).is_some_and(|i| equiv(&i, pred, rel_tol))
        }
        (Set(a), other) if a.len() == 1 => equiv(&a[0], other, rel_tol),
        (other, Set(b)) if b.len() == 1 => equiv(other, &b[0], rel_tol),
        (Text(a), Text(b)) => a == b,
        (Matrix(a), Matrix(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(ra, rb)| {
                    ra.len() == rb.len() && ra.iter().zip(rb).all(|(x, y)| equiv(x, y, rel_tol))
                })
        }
        (a, b) if is_scalar(a) && is_scalar(b) => scalar_eq(a, b, rel_tol),
        _ => false,
    }
}

/// The interval a relation in one variable describes: `1 < x ≤ 2` is `(1, 2]`, `x ≥ -1` is
/// `[-1, \infty)`. `None` for anything else (`≠`, two variables, a bound with a variable).
fn relation_as_interval(rel: &Expr) -> Option<Expr> {
    use Expr::*;
    let links = match rel {
        Rel { .. } => std::slice::from_ref(rel),
        Chain(links) => links.as_slice(),
        _ => return None,
    };
    let constant = |e: &Expr| {
        let mut vars = BTreeSet::new();
        e.vars(&mut vars);
        vars.is_empty()
    };
    let (mut var, mut lower, mut upper) = (None, None, None);
    for link in links {
        let Rel { op, lhs, rhs } = link else {
            return None;
        };
        if *op == '≠' {
            return None;
        }
        // Stored as `lhs < rhs` (or `≤`): the variable's side says which bound it is.
        let (x, bound, side) = match (&**lhs, &**rhs) {
            (Var(x), b) if constant(b) => (x, b, &mut upper),
            (b, Var(x)) if constant(b) => (x, b, &mut lower),
            _ => return None,
        };
        if var.is_some_and(|v| v != x) || side.is_some() {
            return None;
        }
        var = Some(x);
        *side = Some((bound.clone(), *op == '≤'));
    }
    let infinity = Num(f64::INFINITY);
    let (lo, lo_closed) = lower.unwrap_or((Neg(Box::new(infinity.clone())), false));
    let (hi, hi_closed) = upper.unwrap_or((infinity, false));
    Some(Tuple {
        open: if lo_closed { '[' } else { '(' },
        close: if hi_closed { ']' } else { ')' },
        items: vec![lo, hi],
    })
}

fn difference(a: &Expr, b: &Expr) -> Expr {
    Expr::Add(
        Box::new(a.clone()),
        Box::new(Expr::Neg(Box::new(b.clone()))),
    )
}

/// Whether `a = c * b` for one constant `c != 0` (and `c > 0` when `positive`), judged at
/// the fixed evaluation points.
fn proportional(a: &Expr, b: &Expr, positive: bool) -> bool {
    let (values, has_vars) = evaluate_pair(a, b);
    let mut ratio: Option<f64> = None;
    let mut agreed = 0;
    for (x, y) in values {
        let scale = x.abs().max(y.abs()).max(1.0);
        if x.abs() <= 1e-9 * scale && y.abs() <= 1e-9 * scale {
            agreed += 1; // both sides vanish here: consistent with any factor
            continue;
        }
        if y.abs() <= 1e-9 * scale || x.abs() <= 1e-9 * scale {
            return false;
        }
        let r = x / y;
        match ratio {
            None => ratio = Some(r),
            Some(r0) if (r - r0).abs() <= 1e-6 * r0.abs().max(1e-12) => {}
            Some(_) => return false,
        }
        agreed += 1;
    }
    let enough = if has_vars { agreed >= 3 } else { agreed == 1 };
    enough && ratio.is_none_or(|r| !positive || r > 0.0)
}

/// `a` and `b` evaluated at the same points — 8 settings of their variables, or once when
/// they have none — keeping the points where both are finite; and whether there were
/// variables.
fn evaluate_pair(a: &Expr, b: &Expr) -> (Vec<(f64, f64)>, bool) {
    let mut vars = BTreeSet::new();
    a.vars(&mut vars);
    b.vars(&mut vars);
    let names: Vec<&String> = vars.iter().collect();
    let trials = if names.is_empty() { 1 } else { 8 };
    let values = (0..trials)
        .filter_map(|trial| {
            let env = |v: &str| {
                names
                    .iter()
                    .position(|n| n.as_str() == v)
                    .map_or(f64::NAN, |i| point(i, trial))
            };
            let (x, y) = (a.eval(&env), b.eval(&env));
            (x.is_finite() && y.is_finite()).then_some((x, y))
        })
        .collect();
    (values, !names.is_empty())
}

fn is_scalar(e: &Expr) -> bool {
    !matches!(
        e,
        Expr::Tuple { .. }
            | Expr::Set(_)
            | Expr::Union(_)
            | Expr::Eq(..)
            | Expr::Rel { .. }
            | Expr::Chain(_)
            | Expr::Text(_)
            | Expr::Matrix(_)
    )
}

fn unordered_eq(a: &[Expr], b: &[Expr], rel_tol: f64) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    a.iter().all(|x| {
        let hit = (0..b.len()).find(|&j| !used[j] && equiv(x, &b[j], rel_tol));
        if let Some(j) = hit {
            used[j] = true;
        }
        hit.is_some()
    })
}

/// Fixed evaluation points in [0.3, 2.7), distinct per variable; deterministic.
fn point(var_index: usize, trial: usize) -> f64 {
    let mut h = (var_index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (trial as u64 + 7).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 31;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 29;
    0.3 + 2.4 * ((h >> 11) as f64 / (1u64 << 53) as f64)
}

fn scalar_eq(a: &Expr, b: &Expr, rel_tol: f64) -> bool {
    let (values, has_vars) = evaluate_pair(a, b);
    if !has_vars {
        if let Some(same) = rational::exact_eq(a, b) {
            return same;
        }
        let no_vars = |_: &str| f64::NAN;
        return num_eq(a.eval(&no_vars), b.eval(&no_vars), rel_tol);
    }
    let agree = |&(x, y): &(f64, f64)| (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0);
    values.iter().all(agree) && values.len() >= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_keeps_large_integers_apart() {
        assert!(num_eq(7_425_000.0, 7_425_000.0, 1e-6));
        assert!(!num_eq(7_425_000.0, 7_425_001.0, 1e-6));
        assert!(num_eq(1.0 / 3.0, 0.333_333_4, 1e-6));
        assert!(!num_eq(0.333, 1.0 / 3.0, 1e-6));
        assert!(!num_eq(1e-8, 2e-8, 1e-6));
    }

    #[test]
    fn literal_answer_rejects_an_echoed_expression() {
        let literal = MathReward::new(MathConfig {
            literal_answer: true,
            ..Default::default()
        });
        let lenient = MathReward::default();
        // Math-Verify semantics: `7 - 5` evaluates to the reference 2.
        assert_eq!(lenient.score_one("7 - 5", "2"), Ok(1.0));
        assert_eq!(literal.score_one("7 - 5", "2"), Ok(0.0));
        assert_eq!(literal.score_one("3 * 4", "12"), Ok(0.0));
        for stated in ["2", "The answer is 2.", "7 - 5 = 2", "\\boxed{2}", "#### 2"] {
            assert_eq!(literal.score_one(stated, "2"), Ok(1.0), "{stated}");
        }
        assert_eq!(literal.score_one("-3", "-3"), Ok(1.0));
        assert_eq!(literal.score_one("7 - 5 = 3", "2"), Ok(0.0));
    }
}
