//! When a completion ends early: stop token ids and stop strings. A stop string may span
//! several tokens (`"\n\n"` from `"\n"` + `"\n"`), so it is searched in the decoded text of the
//! completion's tail after every token.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Stop conditions of a generation request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StopConditions {
    /// Token ids that end a completion (normally the tokenizer's EOS ids).
    pub token_ids: Vec<u32>,
    /// Strings that end a completion once they appear in its text.
    pub strings: Vec<String>,
}

/// Whether the text of `tokens` now contains a stop string that the newest token completed.
///
/// Only the tail is decoded: every token adds at least one byte, so the last
/// `longest stop string (bytes) + 1` tokens hold any match that ends in the newest token (one
/// extra token for a split UTF-8 character at the window's start).
pub fn hits_stop_string(tokenizer: &Tokenizer, tokens: &[u32], strings: &[String]) -> Result<bool> {
    let longest = strings.iter().map(String::len).max().unwrap_or(0);
    if longest == 0 {
        return Ok(false);
    }
    let window = &tokens[tokens.len().saturating_sub(longest + 1)..];
    let tail = &tokens[tokens.len().saturating_sub(1)..];
    let text = tokenizer.decode(window, false)?;
    let before = tokenizer.decode(&window[..window.len() - tail.len()], false)?;
    // A match must not be entirely inside the text that existed before the newest token.
    Ok(strings
        .iter()
        .any(|s| text.contains(s.as_str()) && !before.contains(s.as_str())))
}
