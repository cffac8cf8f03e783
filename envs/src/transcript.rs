//! A transcript: the full text of an episode as segments, each tagged with who produced it.
//! Model segments are trained; environment segments (the prompt, tool results, feedback,
//! template glue between turns) never are. The engine owns tokenization: it passes a
//! tokenizer closure to [`Transcript::tokenize`], or supplies the sampled ids of model turns
//! so they are kept exactly as generated.

use serde::{Deserialize, Serialize};

/// Who produced a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The prompt, observations and chat-template glue: excluded from the loss.
    Env,
    /// Text the policy generated: trained.
    Model,
}

/// One contiguous piece of the transcript.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Who produced it.
    pub source: Source,
    /// The text.
    pub text: String,
    /// The token ids, when known (the sampler's ids for model turns); otherwise the text is
    /// tokenized by [`Transcript::tokenize`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// Token ids with a loss mask, aligned one to one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenizedTranscript {
    /// All token ids, prompt first.
    pub ids: Vec<u32>,
    /// 1 where the token is trained (model-generated), 0 elsewhere.
    pub mask: Vec<u8>,
    /// Number of tokens in the first segment when it is an environment segment (the prompt).
    pub prompt_len: usize,
    /// For each model segment, the index of its last token (where a per-turn reward lands).
    pub turn_ends: Vec<usize>,
}

/// An episode's text as ordered segments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    segments: Vec<Segment>,
}

impl Transcript {
    /// An empty transcript.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends environment text (never trained). Empty text is ignored.
    pub fn push_env(&mut self, text: impl Into<String>) {
        self.push(Source::Env, text.into(), None);
    }

    /// Appends model-generated text (trained), to be tokenized later.
    pub fn push_model(&mut self, text: impl Into<String>) {
        self.push(Source::Model, text.into(), None);
    }

    /// Appends model-generated text with the exact ids the sampler produced.
    pub fn push_model_tokens(&mut self, text: impl Into<String>, ids: Vec<u32>) {
        self.push(Source::Model, text.into(), Some(ids));
    }

    fn push(&mut self, source: Source, text: String, token_ids: Option<Vec<u32>>) {
        if text.is_empty() && token_ids.as_ref().is_none_or(Vec::is_empty) {
            return;
        }
        self.segments.push(Segment {
            source,
            text,
            token_ids,
        });
    }

    /// The segments in order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The whole text.
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect()
    }

    /// Text of the model segments, in order (one per turn).
    pub fn model_texts(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter(|s| s.source == Source::Model)
            .map(|s| s.text.as_str())
            .collect()
    }

    /// Token ids and loss mask. Each segment is tokenized on its own (with `tokenize`, unless
    /// it carries ids), so a mask boundary never falls inside a token. `tokenize` must not add
    /// special tokens such as BOS: the chat template already wrote them as text.
    pub fn tokenize(&self, tokenize: impl Fn(&str) -> Vec<u32>) -> TokenizedTranscript {
        let mut out = TokenizedTranscript::default();
        for (i, seg) in self.segments.iter().enumerate() {
            let ids = seg.token_ids.clone().unwrap_or_else(|| tokenize(&seg.text));
            let trained = u8::from(seg.source == Source::Model);
            out.mask.extend(std::iter::repeat_n(trained, ids.len()));
            out.ids.extend(ids);
            if i == 0 && seg.source == Source::Env {
                out.prompt_len = out.ids.len();
            }
            if seg.source == Source::Model && !out.ids.is_empty() {
                out.turn_ends.push(out.ids.len() - 1);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One id per byte: simple, and makes segment lengths visible.
    fn bytes(s: &str) -> Vec<u32> {
        s.bytes().map(u32::from).collect()
    }

    #[test]
    fn mask_is_one_exactly_on_model_text() {
        let mut t = Transcript::new();
        t.push_env("P:");
        t.push_model("ab");
        t.push_env("");
        t.push_env("|obs|");
        t.push_model_tokens("c", vec![900, 901]);
        let tok = t.tokenize(bytes);
        assert_eq!(tok.ids.len(), tok.mask.len());
        assert_eq!(tok.mask, vec![0, 0, 1, 1, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(&tok.ids[9..], &[900, 901], "given ids are kept verbatim");
        assert_eq!(tok.prompt_len, 2);
        assert_eq!(tok.turn_ends, vec![3, 10]);
        assert_eq!(t.text(), "P:ab|obs|c");
        assert_eq!(t.model_texts(), vec!["ab", "c"]);
        assert_eq!(t.segments().len(), 4, "empty env text adds no segment");
    }
}
