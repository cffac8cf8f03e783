//! What minijinja does differently from Python Jinja2 as transformers configures it
//! (`transformers.utils.chat_template_utils._cached_compile_jinja_template`), made to behave as
//! Python does:
//!
//! - `tojson` is transformers' override, `json.dumps(x, ensure_ascii=False, indent=None,
//!   separators=None, sort_keys=False)`: `", "` and `": "` separators, no HTML escaping
//!   (minijinja's own is compact and escapes `<`, `>`, `&`, `'`).
//! - Printed values are Python's `str()`: `True`, `False`, `None`, floats as `repr` (`1e-05`),
//!   lists and dicts as their `repr` (minijinja prints `true`, `none`, `[1, "a"]`); the `string`
//!   filter likewise.
//! - `trim`, `.strip()`, `.lstrip()`, `.rstrip()` and `.split()` without arguments use Python's
//!   whitespace (which also counts `\x1c`..`\x1f`); `.split('')` is an error as in Python.
//!
//! Everything else the Qwen3 and Gemma 3 templates use (`messages[::-1]`, `namespace()`,
//! `loop.index0`, `is string`, `is defined`, `|length`, the other string methods through
//! minijinja-contrib's `pycompat`) already behaves as in Python; envs/tests/chat_template_parity.rs
//! checks the rendered text against transformers.

use std::fmt::Write as _;

use minijinja::value::{from_args, Kwargs, Rest, ValueKind};
use minijinja::{Error, ErrorKind, Output, State, Value};

/// Python's `str.isspace()`: Unicode White_Space plus the ASCII separators `\x1c`..`\x1f`.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

#[derive(Clone, Copy)]
enum Strip {
    Both,
    Start,
    End,
}

/// `str.strip(chars)` / `lstrip` / `rstrip`; `chars = None` strips Python whitespace.
fn py_strip<'a>(s: &'a str, chars: Option<&str>, side: Strip) -> &'a str {
    let strip = |c: char| match chars {
        Some(set) => set.contains(c),
        None => is_py_space(c),
    };
    match side {
        Strip::Both => s.trim_matches(strip),
        Strip::Start => s.trim_start_matches(strip),
        Strip::End => s.trim_end_matches(strip),
    }
}

/// `str.split(sep, maxsplit)` as Python does it.
fn py_split(s: &str, sep: Option<&str>, maxsplit: Option<i64>) -> Result<Vec<String>, Error> {
    let max = maxsplit.and_then(|m| usize::try_from(m).ok());
    match sep {
        Some("") => Err(Error::new(
            ErrorKind::InvalidOperation,
            "str.split: empty separator",
        )),
        Some(sep) => Ok(match max {
            Some(m) => s.splitn(m + 1, sep).map(str::to_owned).collect(),
            None => s.split(sep).map(str::to_owned).collect(),
        }),
        None => {
            // Runs of whitespace separate; after `maxsplit` splits the rest (without its leading
            // whitespace) is the last item.
            let mut parts = Vec::new();
            let mut rest = py_strip(s, None, Strip::Start);
            while !rest.is_empty() {
                if max.is_some_and(|m| parts.len() == m) {
                    parts.push(rest.to_owned());
                    break;
                }
                let end = rest.find(is_py_space).unwrap_or(rest.len());
                parts.push(rest[..end].to_owned());
                rest = py_strip(&rest[end..], None, Strip::Start);
            }
            Ok(parts)
        }
    }
}

/// The unknown-method callback: Python's `strip`, `lstrip`, `rstrip` and `split` on strings,
/// then minijinja-contrib's `pycompat` for every other Python method.
pub(super) fn unknown_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let side = match method {
            "strip" => Some(Strip::Both),
            "lstrip" => Some(Strip::Start),
            "rstrip" => Some(Strip::End),
            _ => None,
        };
        if let Some(side) = side {
            let (chars,): (Option<&str>,) = from_args(args)?;
            return Ok(Value::from(py_strip(s, chars, side)));
        }
        if method == "split" {
            let (sep, maxsplit): (Option<&str>, Option<i64>) = from_args(args)?;
            return Ok(Value::from(py_split(s, sep, maxsplit)?));
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Jinja2's `trim(value, chars=None)`: `str(value).strip(chars)`.
pub(super) fn trim(value: &Value, chars: Option<&str>) -> String {
    let text = py_str(value);
    py_strip(&text, chars, Strip::Both).to_owned()
}

/// Jinja2's `string` filter: `str(value)` (strings unchanged).
pub(super) fn string(value: &Value) -> String {
    py_str(value)
}

/// The output formatter: `{{ value }}` writes Python's `str(value)`. Strings and undefined
/// values go through minijinja's own formatter (no escaping is configured; undefined prints
/// nothing, as Jinja2's default `Undefined` does).
pub(super) fn formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    match value.kind() {
        ValueKind::String | ValueKind::Undefined => minijinja::escape_formatter(out, state, value),
        _ => out
            .write_str(&py_str(value))
            .map_err(|_| Error::new(ErrorKind::WriteFailure, "cannot write output")),
    }
}

/// Python's `str(value)`.
fn py_str(value: &Value) -> String {
    match value.as_str() {
        Some(s) => s.to_owned(),
        None => py_repr(value),
    }
}

/// Python's `repr(value)` for the JSON-like values templates handle; other objects (macros,
/// namespaces, loops) print as minijinja prints them.
fn py_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::None => "None".to_owned(),
        ValueKind::Undefined => "Undefined".to_owned(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_owned(),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) => float_repr(f),
            Err(_) => value.to_string(),
        },
        ValueKind::String => str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => match value.try_iter() {
            Ok(items) => format!(
                "[{}]",
                items.map(|v| py_repr(&v)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => value.to_string(),
        },
        ValueKind::Map => match value.try_iter() {
            Ok(keys) => {
                let items: Vec<String> = keys
                    .map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", py_repr(&k), py_repr(&v))
                    })
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

/// Whether Python's `str.isprintable()` holds for `c`: false for control, separator (except
/// the space), format and private-use characters. Unassigned code points (also not printable
/// in Python) are not known here and count as printable.
fn is_py_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    let format = matches!(
        c,
        '\u{ad}'
            | '\u{600}'..='\u{605}'
            | '\u{61c}'
            | '\u{6dd}'
            | '\u{70f}'
            | '\u{890}'..='\u{891}'
            | '\u{8e2}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}'
            | '\u{110cd}'
            | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0001}'
            | '\u{e0020}'..='\u{e007f}'
    );
    let private_use = matches!(
        c,
        '\u{e000}'..='\u{f8ff}' | '\u{f0000}'..='\u{ffffd}' | '\u{100000}'..='\u{10fffd}'
    );
    !(c.is_control() || c.is_whitespace() || format || private_use)
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`.
fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if is_py_printable(c) => out.push(c),
            c if (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(float)`: the shortest text that reads back the same, in positional notation
/// for decimal exponents -4..16 (`0.0001`, `1e+16`, `1e-05`, `2.0`).
pub(super) fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_owned();
    }
    // Rust's `{:e}` is the shortest round-trip form, e.g. `-1.2345e-7`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let body = if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("0.{}{digits}", "0".repeat((-exp - 1) as usize))
        } else {
            let int_len = exp as usize + 1;
            let (int, frac) = if digits.len() > int_len {
                (digits[..int_len].to_owned(), digits[int_len..].to_owned())
            } else {
                (format!("{digits:0<int_len$}"), "0".to_owned())
            };
            format!("{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{first}{frac}e{exp_sign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

/// How `tojson` writes: Python's `json.dumps` options.
struct JsonOptions {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// which is `json.dumps` with those arguments (positional or by keyword).
pub(super) fn tojson(value: &Value, args: Rest<Value>) -> Result<String, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let (positional, kwargs) = match args.split_last() {
        Some((last, rest)) if last.is_kwargs() => (rest, Kwargs::try_from(last.clone())?),
        _ => (
            &args[..],
            Kwargs::from_iter(std::iter::empty::<(String, Value)>()),
        ),
    };
    if positional.len() > NAMES.len() {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    let arg = |i: usize| -> Result<Option<Value>, Error> {
        match positional.get(i) {
            Some(v) => Ok(Some(v.clone())),
            None => kwargs.get::<Option<Value>>(NAMES[i]),
        }
    };
    let ensure_ascii = arg(0)?.is_some_and(|v| v.is_true());
    let sort_keys = arg(3)?.is_some_and(|v| v.is_true());
    let indent = match arg(1)? {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_str() {
            Some(s) => s.to_owned(),
            None => " ".repeat(usize::try_from(v.as_i64().unwrap_or(0)).unwrap_or(0)),
        }),
    };
    let (item_sep, key_sep) = match arg(2)? {
        Some(v) if !v.is_none() => {
            let part = |i: usize| {
                v.get_item_by_index(i)
                    .ok()
                    .and_then(|p| p.as_str().map(str::to_owned))
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidOperation,
                            "tojson: separators must be (item_separator, key_separator)",
                        )
                    })
            };
            (part(0)?, part(1)?)
        }
        _ => (
            if indent.is_some() { "," } else { ", " }.to_owned(),
            ": ".to_owned(),
        ),
    };
    kwargs.assert_all_used()?;
    let opts = JsonOptions {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    write_json(&mut out, value, &opts, 0)?;
    Ok(out)
}

fn not_serializable(value: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: a {} value is not JSON serializable", value.kind()),
    )
}

fn newline(out: &mut String, opts: &JsonOptions, depth: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

/// A JSON object key as `json.dumps` writes it: strings as they are, numbers, booleans and
/// `None` converted (`1`, `1.5`, `true`, `null`).
fn json_key(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".to_owned(),
        ValueKind::Bool => if key.is_true() { "true" } else { "false" }.to_owned(),
        ValueKind::Number => py_repr(key),
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "tojson: keys must be str, int, float, bool or None, not {}",
                    key.kind()
                ),
            ))
        }
    })
}

fn write_json(
    out: &mut String,
    value: &Value,
    opts: &JsonOptions,
    depth: usize,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
        ValueKind::Number => {
            let f = f64::try_from(value.clone())?;
            out.push_str(&if f.is_nan() {
                "NaN".to_owned()
            } else if f.is_infinite() {
                if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
            } else {
                float_repr(f)
            });
        }
        ValueKind::String => {
            write_json_str(out, value.as_str().unwrap_or_default(), opts.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut items = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                items.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                items.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if items.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, depth + 1);
                write_json_str(out, key, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, item, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push('}');
        }
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

/// A JSON string as Python's `json` module writes it (lowercase `\u00XX` escapes; with
/// `ensure_ascii`, every non-ASCII character escaped, as surrogate pairs above U+FFFF).
fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_is_pythons() {
        for (f, text) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (2.0, "2.0"),
            (2.5, "2.5"),
            (0.1, "0.1"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (123456.789, "123456.789"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e22, "1.2345e+22"),
            (-3.25e100, "-3.25e+100"),
            (f64::INFINITY, "inf"),
        ] {
            assert_eq!(float_repr(f), text, "{f}");
        }
    }

    #[test]
    fn strip_and_split_use_python_whitespace() {
        assert_eq!(py_strip("\x1c a\u{3000}\n", None, Strip::Both), "a");
        assert_eq!(py_strip("\n\nab\n", Some("\n"), Strip::Start), "ab\n");
        assert_eq!(
            py_split("  a b\x1fc  ", None, None).unwrap(),
            ["a", "b", "c"]
        );
        assert_eq!(py_split("  a  b c ", None, Some(1)).unwrap(), ["a", "b c "]);
        assert_eq!(
            py_split("a</think>b", Some("</think>"), None).unwrap(),
            ["a", "b"]
        );
        assert!(py_split("ab", Some(""), None).is_err());
    }

    #[test]
    fn repr_quotes_and_escapes_as_python() {
        assert_eq!(str_repr("it's"), "\"it's\"");
        assert_eq!(str_repr("a\"b'c"), "'a\"b\\'c'");
        assert_eq!(
            str_repr("x\n\u{1}\u{a0}é\u{200b}"),
            "'x\\n\\x01\\xa0é\\u200b'"
        );
        let v = Value::from_serialize(serde_json::json!({"a": [1, 2.5, null, true, "x"]}));
        assert_eq!(py_str(&v), "{'a': [1, 2.5, None, True, 'x']}");
    }
}
