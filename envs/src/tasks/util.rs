//! Small text helpers shared by the task verifiers.

/// The content of the last `<tag>...</tag>` in `text`, trimmed.
pub fn extract_tag<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.rfind(&open)? + open.len();
    let end = text[start..].find(&close)? + start;
    Some(text[start..end].trim())
}

/// All integers (optionally negative, `,` thousands separators allowed) in `text`.
pub fn integers(text: &str) -> Vec<i64> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let in_number = !cur.is_empty() && cur != "-";
        let separator = c == ',' && in_number && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_ascii_digit() {
            cur.push(c);
        } else if separator {
            continue;
        } else {
            if let Ok(n) = cur.parse() {
                out.push(n);
            }
            cur.clear();
            if c == '-' {
                cur.push('-');
            }
        }
    }
    if let Ok(n) = cur.parse() {
        out.push(n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_tag_wins_and_missing_close_is_none() {
        assert_eq!(extract_tag("<a>1</a> <a> 2 </a>", "a"), Some("2"));
        assert_eq!(extract_tag("<a>1", "a"), None);
        assert_eq!(extract_tag("none", "a"), None);
    }

    #[test]
    fn integers_with_signs_and_separators() {
        assert_eq!(integers("a 1,234 b -5, c 7-2"), vec![1234, -5, 7, -2]);
        assert_eq!(integers("x"), Vec::<i64>::new());
    }
}
