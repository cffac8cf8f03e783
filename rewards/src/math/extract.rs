//! Answer extraction and normalization for the math reward.
//!
//! Candidates are tried in Math-Verify's spirit, most explicit first, and the first one that
//! parses wins: GSM8K `#### x`, the last `\boxed{}`/`\fbox{}`, "final answer is x" /
//! "the answer is x" / "Answer: x", the last LaTeX math span (`$..$`, `$$..$$`, `\(..\)`,
//! `\[..\]`; inline spans must stay on one line), and finally the last number in the text.

use std::sync::OnceLock;

use regex::Regex;

/// Math spans: `$$..$$`, `\[..\]`, `\(..\)` (one line), `$..$` (one line, `\$` escaped).
const SPAN_PATTERN: &str =
    r"(?s)\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\(([^\n]+?)\\\)|(?:^|[^\\])\$((?:[^$\n\\]|\\.)+?)\$";

/// Numbers; group 1 is the number. A number glued to a preceding letter (`AZYUK2A`) is
/// not an answer.
const NUMBER_PATTERN: &str = r"(?:^|[^A-Za-z\d.,])(-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+,\d{1,2}(?:[^\d,]|$)|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?:/\d+)?|\.\d+))";

/// Longest candidate handed to the parser; longer ones are not answers.
const MAX_CANDIDATE_CHARS: usize = 2000;

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    // The patterns are constants of this module, covered by its tests.
    cell.get_or_init(|| Regex::new(pattern).expect("valid built-in regex"))
}

/// Contents of every `\boxed{...}` / `\fbox{...}` (balanced braces), in order of appearance.
/// `\boxed 5` (no braces) yields the next token.
pub fn boxed_contents(text: &str) -> Vec<String> {
    boxed_spans(text).into_iter().map(|b| b.content).collect()
}

/// One `\boxed{...}` in a text: its content and where the command starts and ends.
#[derive(Debug, Clone, PartialEq)]
struct Boxed {
    start: usize,
    end: usize,
    content: String,
}

fn boxed_spans(text: &str) -> Vec<Boxed> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &text[pos..];
        let Some(idx) = rest.find("\\boxed").or_else(|| rest.find("\\fbox")) else {
            break;
        };
        let start = pos + idx;
        let cmd_len = if text[start..].starts_with("\\boxed") {
            6
        } else {
            5
        };
        let body = &text[start + cmd_len..];
        let trimmed = body.trim_start();
        let body_at = text.len() - trimmed.len();
        if let Some(inner) = trimmed.strip_prefix('{') {
            let mut depth = 1usize;
            let close = inner.char_indices().find_map(|(k, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(k)
            });
            let Some(k) = close else { break };
            let end = body_at + 1 + k + 1;
            out.push(Boxed {
                start,
                end,
                content: inner[..k].to_string(),
            });
            pos = end;
        } else {
            let tok: String = trimmed
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '$')
                .collect();
            if !tok.is_empty() {
                out.push(Boxed {
                    start,
                    end: body_at + tok.len(),
                    content: tok.clone(),
                });
            }
            pos = body_at + tok.len().max(1).min(trimmed.len());
            if trimmed.is_empty() {
                break;
            }
        }
    }
    out
}

/// The final boxed answer, as Math-Verify reads it: the last `\boxed{}`, together with the
/// boxes before it that belong to the same answer (`\boxed{1} and \boxed{2}` is the list
/// `1, 2`): going back from the last box, an earlier one joins while the text between is
/// under 10 characters, or under 70 with an `and`/`or`/`,`/`;` in it and another content;
/// repeated contents count once.
pub fn last_boxed_answer(text: &str) -> Option<String> {
    static SEPARATOR: OnceLock<Regex> = OnceLock::new();
    let separator = re(&SEPARATOR, r"\b(?:and|or)\b|,|;");
    let boxes = boxed_spans(text);
    let mut joined: Vec<&Boxed> = vec![boxes.last()?];
    for earlier in boxes.iter().rev().skip(1) {
        let later = joined[joined.len() - 1];
        let between = text.get(earlier.end..later.start).unwrap_or("");
        let chars = between.chars().count();
        let belongs = chars < 10
            || (chars < 70 && earlier.content != later.content && separator.is_match(between));
        if !belongs {
            break;
        }
        if earlier.content != later.content {
            joined.push(earlier);
        }
    }
    Some(
        joined
            .iter()
            .rev()
            .map(|b| b.content.trim())
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// LaTeX math spans in order of appearance: `$$..$$`, `\[..\]` (may span lines), `$..$`,
/// `\(..\)` (single line). Escaped dollars `\$` do not delimit.
pub fn math_spans(text: &str) -> Vec<String> {
    static CELL: OnceLock<Regex> = OnceLock::new();
    let r = re(&CELL, SPAN_PATTERN);
    r.captures_iter(text)
        .filter_map(|c| {
            (1..=4)
                .find_map(|g| c.get(g))
                .map(|m| m.as_str().to_string())
        })
        .collect()
}

fn last_span_with_end(text: &str) -> Option<(String, usize)> {
    static CELL: OnceLock<Regex> = OnceLock::new();
    let r = re(&CELL, SPAN_PATTERN);
    r.captures_iter(text).last().and_then(|c| {
        let end = c.get(0)?.end();
        (1..=4)
            .find_map(|g| c.get(g))
            .map(|m| (m.as_str().to_string(), end))
    })
}

fn last_number_with_end(text: &str) -> Option<(String, usize)> {
    static CELL: OnceLock<Regex> = OnceLock::new();
    let r = re(&CELL, NUMBER_PATTERN);
    r.captures_iter(text)
        .filter_map(|c| c.get(1))
        .last()
        .map(|m| {
            let s = m
                .as_str()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .to_string();
            let end = m.start() + s.len();
            (s, end)
        })
}

/// The last number in free text (thousands separators, decimals, decimal commas, simple
/// fractions, scientific notation).
pub fn last_number(text: &str) -> Option<String> {
    static CELL: OnceLock<Regex> = OnceLock::new();
    let r = re(&CELL, NUMBER_PATTERN);
    r.captures_iter(text)
        .filter_map(|c| c.get(1))
        .last()
        .map(|m| {
            m.as_str()
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .to_string()
        })
}

/// "The final answer is x", "the answer is x", "Answer: x": the text after the last such
/// phrase, cut at the end of its line or sentence; a math span inside it is preferred.
pub fn answer_phrase(text: &str) -> Option<String> {
    static CELL: OnceLock<Regex> = OnceLock::new();
    let r = re(
        &CELL,
        r"(?i)(?:final answer|the answer|answer)\s*(?:is|:|=)\s*",
    );
    let m = r.find_iter(text).last()?;
    let rest = &text[m.end()..];
    let line = rest.lines().next().unwrap_or("");
    if let Some(span) = math_spans(line).into_iter().next() {
        return Some(span);
    }
    if let Some(b) = boxed_contents(line).pop() {
        return Some(b);
    }
    // Cut at a sentence end: ". " or a final ".".
    let cut = line.find(". ").map(|k| &line[..k]).unwrap_or(line);
    let cut = cut.trim().trim_end_matches('.').trim();
    (!cut.is_empty()).then(|| cut.to_string())
}

/// Ordered answer candidates from a completion.
pub fn candidates(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(idx) = text.rfind("####") {
        let line = text[idx + 4..].lines().next().unwrap_or("").trim();
        if !line.is_empty() {
            out.push(line.to_string());
        }
    }
    if let Some(b) = last_boxed_answer(text) {
        out.push(latex_comma(b));
    }
    if let Some(a) = answer_phrase(text) {
        out.push(a);
    }
    // The whole text, when it is short enough to be just an answer (`\frac{10}{9}`, `1 000`).
    if text.chars().count() <= 200 {
        out.push(text.trim().to_string());
    }
    // The last math span and the last number: whichever ends later in the text goes first
    // (a closing "so there are 12 sequences" beats an earlier `$d = \frac{90}{n}$`).
    let span = last_span_with_end(text);
    let number = last_number_with_end(text);
    let span = span.map(|(s, end)| (latex_comma(s), end));
    match (span, number) {
        (Some((s, se)), Some((n, ne))) if ne > se => out.extend([n, s]),
        (s, n) => out.extend(s.map(|x| x.0).into_iter().chain(n.map(|x| x.0))),
    }
    out.retain(|c| c.chars().count() <= MAX_CANDIDATE_CHARS);
    out
}

/// In LaTeX a comma between whole numbers separates items (`\\boxed{2,74}` is the list 2, 74,
/// as Math-Verify reads it), except in thousands (`1,000`) and after a leading zero
/// (`0,111` is 0.111); in plain text `2,74` stays a decimal comma ([`normalize`]).
pub fn latex_comma(s: String) -> String {
    static LIST: OnceLock<Regex> = OnceLock::new();
    let list = re(&LIST, r"^(\s*-?[1-9]\d*),(\d+\s*)$");
    let thousands = s
        .trim()
        .split_once(',')
        .is_some_and(|(a, b)| a.trim_start_matches('-').len() <= 3 && b.len() == 3);
    if thousands {
        return s;
    }
    list.replace(&s, "$1, $2").into_owned()
}

/// The content of a text that is one math span (`$..$`, `$$..$$`, `\\(..\\)`, `\\[..\\]`).
pub fn unwrap_math(text: &str) -> Option<&str> {
    let t = text.trim();
    [("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")]
        .iter()
        .find_map(|(l, r)| {
            let inner = t.strip_prefix(l)?.strip_suffix(r)?;
            (!inner.contains('$')).then_some(inner)
        })
}

/// A candidate after normalization, ready for the parser.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The cleaned text.
    pub text: String,
    /// Whether a percent sign (`%`, `\%`, "percent", "pct") was removed.
    pub percent: bool,
}

/// Cleans an answer candidate: strips math delimiters, `\boxed`, currency, degree signs,
/// percent signs (recorded), thousands separators, decimal commas, trailing units.
pub fn normalize(raw: &str) -> Normalized {
    static PCT: OnceLock<Regex> = OnceLock::new();
    static UNIT_TEXT: OnceLock<Regex> = OnceLock::new();
    static THOUSANDS: OnceLock<Regex> = OnceLock::new();
    static SPACE_THOUSANDS: OnceLock<Regex> = OnceLock::new();
    static DEC_COMMA: OnceLock<Regex> = OnceLock::new();
    let mut s = raw.trim().to_string();
    // Unwrap math delimiters and a surrounding \boxed.
    for (l, r) in [("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")] {
        if s.len() >= l.len() + r.len() && s.starts_with(l) && s.ends_with(r) {
            s = s[l.len()..s.len() - r.len()].trim().to_string();
        }
    }
    // A doubled backslash before a command name is an escaping artifact: `\\frac` -> `\frac`.
    static DOUBLED: OnceLock<Regex> = OnceLock::new();
    s = re(&DOUBLED, r"\\\\([a-zA-Z])")
        .replace_all(&s, "\\$1")
        .to_string();
    if let Some(b) = boxed_contents(&s).pop() {
        if s.trim_start().starts_with("\\boxed") || s.trim_start().starts_with("\\fbox") {
            s = b;
        }
    }
    for (from, to) in [
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("°", ""),
        ("{,}", ""),
        ("\\$", ""),
        ("$", ""),
        ("€", ""),
        ("£", ""),
        ("¥", ""),
        ("\\!", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("²", "^2"),
        ("³", "^3"),
    ] {
        s = s.replace(from, to);
    }
    let pct = re(&PCT, r"(?i)\s*(\\%|%|\bpercent\b|\bpct\b)\s*");
    let percent = pct.is_match(&s);
    if percent {
        s = pct.replace_all(&s, "").to_string();
    }
    // Trailing unit words in \text{...} after a numeric part: `\frac{1}{3} \text{meters}`.
    let unit_text = re(
        &UNIT_TEXT,
        r"^(.*[\d}a-zA-Z)])\s*\\(?:text|textbf|textnormal|mathrm|mbox)\{\s*[a-zA-Z ]*\}(?:\^\{?\d\}?)?\s*\.?$",
    );
    while let Some(c) = unit_text.captures(&s) {
        let head = c[1].to_string();
        if head == s {
            break;
        }
        s = head;
    }
    s = s.trim().trim_end_matches(['.', ';']).trim().to_string();
    // Number formatting, only when the whole answer is one number.
    let thousands = re(&THOUSANDS, r"^-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?$");
    // Digit groups apart by a space, `~` or a LaTeX space (`1\,000`; Math-Verify reads that
    // as 1·000 = 0, see docs/rewards.md).
    let space_thousands = re(
        &SPACE_THOUSANDS,
        r"^-?\d{1,3}(?:(?:[ ~]|\\[,;: ]|\\thinspace ?)\d{3})+(?:\.\d+)?$",
    );
    let dec_comma = re(&DEC_COMMA, r"^-?\d+,\d+$");
    if thousands.is_match(&s) {
        s = s.replace(',', "");
    } else if space_thousands.is_match(&s) {
        s.retain(|c| c.is_ascii_digit() || c == '.' || c == '-');
    } else if dec_comma.is_match(&s) {
        s = s.replace(',', ".");
    }
    Normalized { text: s, percent }
}

/// Strips trailing plain unit words from a numeric answer: `12 apples` -> `12`,
/// `1,000.99m²` is handled by [`last_number`].
pub fn strip_unit_words(s: &str) -> Option<String> {
    static CELL: OnceLock<Regex> = OnceLock::new();
    let r = re(&CELL, r"^(.*?[\d}])\s*(?:[a-zA-Z]+\.?\s*)+$");
    r.captures(s).map(|c| c[1].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_nested_and_last() {
        assert_eq!(
            boxed_contents(r"\boxed{1} then \boxed{\frac{1}{2}}"),
            vec!["1", r"\frac{1}{2}"]
        );
        assert_eq!(boxed_contents(r"\boxed 5"), vec!["5"]);
        assert!(boxed_contents(r"\boxed{unclosed").is_empty());
    }

    #[test]
    fn spans_and_numbers() {
        assert_eq!(math_spans(r"a $x$ b \[ y \] c"), vec!["x", " y "]);
        assert_eq!(math_spans("costs \\$5 and $7$"), vec!["7"]);
        assert_eq!(
            last_number("it is 1,000.99m² total"),
            Some("1,000.99".into())
        );
        assert_eq!(last_number("Soucis : 2,74 $ a.."), Some("2,74".into()));
        assert_eq!(last_number("no digits"), None);
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize("$1,000.99").text, "1000.99");
        assert_eq!(normalize("7,425,000").text, "7425000");
        assert_eq!(normalize("1 000").text, "1000");
        assert_eq!(normalize("0,111").text, "0.111");
        assert_eq!(
            normalize("28\\%"),
            Normalized {
                text: "28".into(),
                percent: true
            }
        );
        assert_eq!(normalize(r"\frac{1}{3} \text{meters}").text, r"\frac{1}{3}");
        assert_eq!(normalize(r"90^\circ").text, "90");
    }
}
