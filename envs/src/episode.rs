//! Multi-turn episodes: the [`Environment`] trait, and [`Episode`], which drives one
//! environment through a chat template and records a [`Transcript`] with a loss mask.
//!
//! The conversation only ever grows by appending text, so the rollout engine can keep its KV
//! cache and feed just the new environment text after each model turn. After the model's turn
//! and the environment's answer, the template is rendered again and the text after what is
//! already in the transcript is the environment's segment (template glue such as the newline
//! after `<|im_end|>`, the tool result, the next generation prompt). The model's text is kept
//! exactly as generated. When the template would write the history differently (it strips
//! whitespace from the model's turn, or drops past turns' reasoning as Qwen3's does), the
//! segment is the template's own continuation for the new messages: what it writes after the
//! last assistant message (rendered with a marker in its place), less the part of its closing
//! the model already generated; [`Episode::rewrites_history`] then says the transcript differs
//! from a fresh rendering of the whole conversation. Only a template that does not write the
//! last assistant message at all cannot be continued ([`EnvError::TemplateNotAppendOnly`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::chat_template::{ChatTemplate, Message};
use crate::error::{EnvError, Result};
use crate::row::Row;
use crate::transcript::Transcript;

/// Stands in for the last assistant message when the template's text after it is looked for.
const TURN_MARKER: &str = "\u{1}oxrl-turn\u{1}";

/// The text that follows `so_far` (a conversation's text up to and including the model's last
/// turn, as the model saw and generated it) when the conversation is `messages` (ending with
/// the new messages after that turn), through the next generation prompt, and whether the
/// template writes the history differently from `so_far` (see the module docs): what the
/// whole conversation's rendering adds to `so_far` when the template only appends; otherwise
/// what the template writes after the last assistant message (rendered with a marker in its
/// place), less the part of its closing the model already generated.
pub fn continuation(
    template: &ChatTemplate,
    so_far: &str,
    messages: &[Message],
) -> Result<(String, bool)> {
    let next = template.render(messages, true)?;
    if let Some(rest) = next.strip_prefix(so_far) {
        return Ok((rest.to_owned(), false));
    }
    let mut marked = messages.to_vec();
    let last = marked
        .iter_mut()
        .rev()
        .find(|m| m.role == "assistant")
        .ok_or(EnvError::TemplateNotAppendOnly)?;
    last.content = TURN_MARKER.to_owned();
    let marked = template.render(&marked, true)?;
    let after = marked
        .find(TURN_MARKER)
        .map(|at| &marked[at + TURN_MARKER.len()..])
        .ok_or(EnvError::TemplateNotAppendOnly)?;
    let overlap = (0..=after.len())
        .rev()
        .find(|&k| after.is_char_boundary(k) && so_far.ends_with(&after[..k]))
        .unwrap_or(0);
    Ok((after[overlap..].to_owned(), true))
}

/// What the environment answers to one model turn.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StepResult {
    /// Messages to add to the conversation (tool results, feedback, the next question).
    #[serde(default)]
    pub observation: Vec<Message>,
    /// Reward for this turn (a final reward is the last turn's reward).
    #[serde(default)]
    pub reward: f64,
    /// Whether the episode is over.
    #[serde(default)]
    pub done: bool,
    /// Tool calls the model's turn made (counted in the run's metrics).
    #[serde(default)]
    pub tool_calls: usize,
    /// How many of them failed (bad arguments, errors, time limits): the model got an error
    /// observation instead of a result.
    #[serde(default)]
    pub tool_failures: usize,
}

impl StepResult {
    /// The episode goes on: one user message, no reward.
    pub fn reply(text: impl Into<String>) -> Self {
        Self {
            observation: vec![Message::new("user", text)],
            reward: 0.0,
            done: false,
            tool_calls: 0,
            tool_failures: 0,
        }
    }

    /// The observation answers a tool call; `failed` when it reports the tool's error.
    pub fn tool_result(mut self, failed: bool) -> Self {
        self.tool_calls += 1;
        self.tool_failures += usize::from(failed);
        self
    }

    /// The episode ends with `reward`.
    pub fn finish(reward: f64) -> Self {
        Self {
            observation: Vec::new(),
            reward,
            done: true,
            tool_calls: 0,
            tool_failures: 0,
        }
    }
}

/// An environment for episodes of one or more turns. Implement it in Rust, or speak the JSON
/// lines protocol from another process (see `external`).
pub trait Environment: Send {
    /// Starts an episode for `row`; returns the opening messages (usually one user message).
    fn reset(&mut self, row: &Row) -> Result<Vec<Message>>;
    /// Takes the model's message (without the stop token) and answers it.
    fn step(&mut self, action: &str) -> Result<StepResult>;
}

/// What the caller does after a model turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Append this environment text to the model's context and generate again.
    Continue(String),
    /// The episode is over (the environment said done, or the turn limit was hit).
    Done,
}

/// What a finished (or failed) episode looks like in a sample log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    /// The whole conversation.
    pub messages: Vec<Message>,
    /// Reward of each model turn.
    pub rewards: Vec<f64>,
    /// Whether the turn limit ended it.
    pub truncated: bool,
}

/// One episode in progress: messages, transcript, per-turn rewards.
pub struct Episode {
    env: Box<dyn Environment>,
    template: Arc<ChatTemplate>,
    messages: Vec<Message>,
    transcript: Transcript,
    rewards: Vec<f64>,
    tool_calls: usize,
    tool_failures: usize,
    rewrites_history: bool,
    max_turns: usize,
    done: bool,
    truncated: bool,
}

impl std::fmt::Debug for Episode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Episode")
            .field("messages", &self.messages)
            .field("rewards", &self.rewards)
            .field("done", &self.done)
            .field("truncated", &self.truncated)
            .finish_non_exhaustive()
    }
}

impl Episode {
    /// Starts an episode from `messages` (system, few-shot and the environment's opening
    /// messages, already reset). The prompt is the template rendered with a generation prompt.
    pub fn new(
        env: Box<dyn Environment>,
        template: Arc<ChatTemplate>,
        messages: Vec<Message>,
        max_turns: usize,
    ) -> Result<Self> {
        if max_turns == 0 {
            return Err(EnvError::Config("max_turns must be at least 1".into()));
        }
        let prompt = template.render(&messages, true)?;
        let mut transcript = Transcript::new();
        transcript.push_env(prompt.clone());
        Ok(Self {
            env,
            template,
            messages,
            transcript,
            rewards: Vec::new(),
            tool_calls: 0,
            tool_failures: 0,
            rewrites_history: false,
            max_turns,
            done: false,
            truncated: false,
        })
    }

    /// The prompt text the first generation starts from.
    pub fn prompt(&self) -> &str {
        self.transcript
            .segments()
            .first()
            .map_or("", |s| s.text.as_str())
    }

    /// Records the model's turn and lets the environment answer.
    ///
    /// `content` is the generated text without the stop token; `stop` is the stop token's
    /// text when generation ended on one (e.g. `<|im_end|>`), `None` when it hit the length
    /// limit. `ids`, when given, are the sampled ids of `content + stop` and are kept verbatim.
    pub fn model_turn(
        &mut self,
        content: &str,
        stop: Option<&str>,
        ids: Option<Vec<u32>>,
    ) -> Result<Turn> {
        if self.done {
            return Err(EnvError::Episode(
                "model turn after the episode ended".into(),
            ));
        }
        let generated = format!("{content}{}", stop.unwrap_or(""));
        match ids {
            Some(ids) => self.transcript.push_model_tokens(generated, ids),
            None => self.transcript.push_model(generated),
        }
        self.messages.push(Message::new("assistant", content));
        // A failed environment leaves the episode unusable: mark it over so that further
        // turns are refused instead of continuing a half-recorded conversation.
        let step = self.env.step(content).inspect_err(|_| self.done = true)?;
        self.rewards.push(step.reward);
        self.tool_calls += step.tool_calls;
        self.tool_failures += step.tool_failures;
        if step.done || self.rewards.len() >= self.max_turns {
            self.done = true;
            self.truncated = !step.done;
            return Ok(Turn::Done);
        }
        match self.observe(step.observation) {
            Ok(env_text) => Ok(Turn::Continue(env_text)),
            Err(e) => {
                self.done = true;
                Err(e)
            }
        }
    }

    /// Adds the observation to the conversation and the environment text to the transcript.
    fn observe(&mut self, observation: Vec<Message>) -> Result<String> {
        self.messages.extend(observation);
        let env_text = self.continuation()?;
        self.transcript.push_env(env_text.clone());
        Ok(env_text)
    }

    /// The environment text that follows the model's turn ([`continuation`]).
    fn continuation(&mut self) -> Result<String> {
        let (text, rewrites) =
            continuation(&self.template, &self.transcript.text(), &self.messages)?;
        self.rewrites_history |= rewrites;
        Ok(text)
    }

    /// Drives the episode to the end with a policy that maps the conversation so far to the
    /// next assistant message (scripted policies in tests, simple baselines). The policy's
    /// text is treated as ending on `stop`.
    pub fn run(
        &mut self,
        stop: Option<&str>,
        mut policy: impl FnMut(&[Message]) -> String,
    ) -> Result<()> {
        while !self.done {
            let reply = policy(&self.messages);
            self.model_turn(&reply, stop, None)?;
        }
        Ok(())
    }

    /// Whether the episode is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether it ended on the turn limit rather than the environment's `done`.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Model turns taken.
    pub fn turns(&self) -> usize {
        self.rewards.len()
    }

    /// Reward of each turn.
    pub fn rewards(&self) -> &[f64] {
        &self.rewards
    }

    /// Whether the chat template rendered an earlier turn differently once the conversation
    /// grew (e.g. Qwen3 drops past turns' thinking): the transcript then keeps what the model
    /// saw, and no longer equals a fresh rendering of the whole conversation.
    pub fn rewrites_history(&self) -> bool {
        self.rewrites_history
    }

    /// Tool calls made so far.
    pub fn tool_calls(&self) -> usize {
        self.tool_calls
    }

    /// Tool calls that returned an error observation.
    pub fn tool_failures(&self) -> usize {
        self.tool_failures
    }

    /// Sum of the per-turn rewards.
    pub fn total_reward(&self) -> f64 {
        self.rewards.iter().sum()
    }

    /// The conversation so far.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The text so far with model / environment segments.
    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// The conversation and rewards, for the sample log.
    pub fn record(&self) -> EpisodeRecord {
        EpisodeRecord {
            messages: self.messages.clone(),
            rewards: self.rewards.clone(),
            truncated: self.truncated,
        }
    }

    /// Ends the episode and hands back its environment, so a pool can reuse it (an external
    /// process serves many episodes through successive resets).
    pub fn into_environment(self) -> Box<dyn Environment> {
        self.env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
    const STRIPPING: &str = "{% for m in messages %}[{{ m.role }}]{{ m.content.strip() }}[/]{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
    /// Writes a think marker in the generation prompt and the last assistant turn only, as
    /// Qwen3's template drops past reasoning.
    const DROPS_PAST_THINKING: &str = "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' and loop.last %}[think]{% endif %}{{ m.content }}</>{% endfor %}{% if add_generation_prompt %}<assistant>[think]{% endif %}";
    const DROPS_HISTORY: &str = "{% for m in messages %}{% if loop.last or m.role != 'assistant' %}<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}";

    /// Echoes the action back for two turns.
    struct Echo(usize);

    impl Environment for Echo {
        fn reset(&mut self, _row: &Row) -> Result<Vec<Message>> {
            Ok(vec![Message::new("user", "go")])
        }
        fn step(&mut self, action: &str) -> Result<StepResult> {
            self.0 += 1;
            Ok(StepResult {
                observation: vec![Message::new("user", format!("echo {action}"))],
                reward: self.0 as f64,
                done: self.0 == 2,
                ..StepResult::default()
            })
        }
    }

    fn episode(template: &str, max_turns: usize) -> Episode {
        let t = Arc::new(ChatTemplate::new(template, "", "").unwrap());
        Episode::new(
            Box::new(Echo(0)),
            t,
            vec![Message::new("user", "go")],
            max_turns,
        )
        .unwrap()
    }

    #[test]
    fn transcript_equals_a_fresh_render_for_chatml() {
        let mut ep = episode(CHATML, 5);
        let first = ep.model_turn("hi", Some("<|im_end|>"), None).unwrap();
        assert_eq!(
            first,
            Turn::Continue("\n<|im_start|>user\necho hi<|im_end|>\n<|im_start|>assistant\n".into())
        );
        assert_eq!(
            ep.model_turn("bye", Some("<|im_end|>"), None).unwrap(),
            Turn::Done
        );
        assert!(ep.is_done() && !ep.truncated());
        assert_eq!(ep.rewards(), &[1.0, 2.0]);
        let record = serde_json::to_value(ep.record()).unwrap();
        assert_eq!(record["rewards"], serde_json::json!([1.0, 2.0]));
        assert_eq!(record["messages"][3]["content"], "bye");
        let fresh = ChatTemplate::new(CHATML, "", "")
            .unwrap()
            .render(ep.messages(), false)
            .unwrap();
        assert_eq!(
            format!("{}\n", ep.transcript().text()),
            fresh,
            "only the final newline is not generated"
        );
        assert!(ep.model_turn("again", None, None).is_err());
    }

    #[test]
    fn length_cut_turn_is_closed_by_the_environment() {
        let mut ep = episode(CHATML, 5);
        let Turn::Continue(text) = ep.model_turn("trunc", None, None).unwrap() else {
            panic!("episode ended early")
        };
        assert!(text.starts_with("<|im_end|>\n<|im_start|>user"), "{text}");
    }

    #[test]
    fn stripping_template_keeps_model_text_verbatim() {
        let mut ep = episode(STRIPPING, 5);
        let Turn::Continue(text) = ep.model_turn(" spaced ", Some("[/]"), None).unwrap() else {
            panic!("episode ended early")
        };
        assert_eq!(text, "[user]echo  spaced[/][assistant]");
        assert_eq!(ep.transcript().model_texts(), vec![" spaced [/]"]);
    }

    #[test]
    fn turn_limit_truncates() {
        let mut ep = episode(CHATML, 1);
        assert_eq!(
            ep.model_turn("x", Some("<|im_end|>"), None).unwrap(),
            Turn::Done
        );
        assert!(ep.truncated());
        assert_eq!(ep.turns(), 1);
    }

    struct Failing;

    impl Environment for Failing {
        fn reset(&mut self, _row: &Row) -> Result<Vec<Message>> {
            Ok(vec![])
        }
        fn step(&mut self, _action: &str) -> Result<StepResult> {
            Err(EnvError::Episode("boom".into()))
        }
    }

    #[test]
    fn environment_error_ends_the_episode() {
        let t = Arc::new(ChatTemplate::new(CHATML, "", "").unwrap());
        let mut ep =
            Episode::new(Box::new(Failing), t, vec![Message::new("user", "go")], 5).unwrap();
        assert!(ep
            .model_turn("a", None, None)
            .unwrap_err()
            .to_string()
            .contains("boom"));
        assert!(ep.is_done());
        let again = ep.model_turn("b", None, None).unwrap_err().to_string();
        assert!(again.contains("after the episode ended"), "{again}");
    }

    #[test]
    fn template_rewriting_earlier_turns_continues_with_its_text_for_the_new_messages() {
        let mut ep = episode(DROPS_PAST_THINKING, 5);
        assert_eq!(ep.prompt(), "<user>go</><assistant>[think]");
        let Turn::Continue(text) = ep.model_turn("hi", Some("</>"), None).unwrap() else {
            panic!("episode ended early")
        };
        assert_eq!(text, "<user>echo hi</><assistant>[think]");
        assert!(ep.rewrites_history());
        assert_eq!(
            ep.transcript().text(),
            "<user>go</><assistant>[think]hi</><user>echo hi</><assistant>[think]",
            "what the model saw, not the re-rendering that dropped [think]"
        );
        assert!(!episode(CHATML, 5).rewrites_history());
    }

    #[test]
    fn template_dropping_the_last_turn_is_refused() {
        let mut ep = episode(DROPS_HISTORY, 5);
        let err = ep.model_turn("hi", None, None).unwrap_err();
        assert!(matches!(err, EnvError::TemplateNotAppendOnly), "{err}");
        assert!(ep.is_done(), "a failed turn ends the episode");
    }
}
