//! Prompt formatting: system prompt, few-shot examples and the task's answer-format
//! instruction, rendered through the model's chat template (the default) or a plain Jinja
//! template for base models.

use std::sync::Arc;

use minijinja::Environment as Jinja;
use serde::{Deserialize, Serialize};

use crate::chat_template::{ChatTemplate, Message};
use crate::error::{EnvError, Result};
use crate::row::Row;

/// The plain template used when `format = "plain"` and none is given.
pub const DEFAULT_PLAIN_TEMPLATE: &str = "{% if system %}{{ system }}\n\n{% endif %}{% for ex in examples %}Question: {{ ex.user }}\nAnswer: {{ ex.assistant }}\n\n{% endfor %}Question: {{ prompt }}\nAnswer:";

/// How prompts are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// Through the model's chat template (with a generation prompt).
    #[default]
    Chat,
    /// Through `plain_template` (single-turn only).
    Plain,
}

/// One few-shot example: a user turn and the assistant's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FewShot {
    /// The question.
    pub user: String,
    /// The answer shown.
    pub assistant: String,
}

/// `[env.prompt]` in a run config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// `chat` (default) or `plain`.
    pub format: PromptFormat,
    /// System prompt (none by default; the chat template may add its own default).
    pub system: Option<String>,
    /// Replaces the task's answer-format instruction; `""` removes it.
    pub instruction: Option<String>,
    /// Jinja template for `plain`; variables: `system`, `examples` (`user`, `assistant`),
    /// `prompt` (the question with the instruction) and `row` (all row fields).
    pub plain_template: Option<String>,
    /// Few-shot examples written in the config.
    pub examples: Vec<FewShot>,
    /// Further few-shot examples drawn from the task's generator (with a seed that does not
    /// overlap the training data), answered by the task's reference solution.
    pub generated_examples: usize,
}

/// Renders conversations and prompts for one run.
#[derive(Debug)]
pub struct PromptFormatter {
    format: PromptFormat,
    system: Option<String>,
    instruction: String,
    examples: Vec<FewShot>,
    chat: Option<Arc<ChatTemplate>>,
    plain: Jinja<'static>,
}

const PLAIN_NAME: &str = "plain";

impl PromptFormatter {
    /// A formatter; `task_instruction` is used unless the config overrides it; `examples` are
    /// all few-shot examples (config plus generated). `chat` is required for `format = chat`.
    pub fn new(
        cfg: &PromptConfig,
        task_instruction: &str,
        examples: Vec<FewShot>,
        chat: Option<Arc<ChatTemplate>>,
    ) -> Result<Self> {
        if cfg.format == PromptFormat::Chat && chat.is_none() {
            return Err(EnvError::Config(
                "prompt format `chat` needs the model's chat template".into(),
            ));
        }
        let mut plain = Jinja::new();
        let source = cfg
            .plain_template
            .clone()
            .unwrap_or_else(|| DEFAULT_PLAIN_TEMPLATE.to_owned());
        plain.add_template_owned(PLAIN_NAME, source)?;
        Ok(Self {
            format: cfg.format,
            system: cfg.system.clone(),
            instruction: cfg
                .instruction
                .clone()
                .unwrap_or_else(|| task_instruction.to_owned()),
            examples,
            chat,
            plain,
        })
    }

    /// The chat template, if any.
    pub fn chat_template(&self) -> Option<&Arc<ChatTemplate>> {
        self.chat.as_ref()
    }

    /// The format in use.
    pub fn format(&self) -> PromptFormat {
        self.format
    }

    /// `text` with the instruction appended (blank line between).
    pub fn with_instruction(&self, text: &str) -> String {
        if self.instruction.is_empty() {
            text.to_owned()
        } else {
            format!("{text}\n\n{}", self.instruction)
        }
    }

    /// The full conversation: system prompt, few-shot turns, then `opening` with the
    /// instruction appended to its last user message.
    pub fn conversation(&self, mut opening: Vec<Message>) -> Vec<Message> {
        if let Some(last_user) = opening.iter_mut().rev().find(|m| m.role == "user") {
            last_user.content = self.with_instruction(&last_user.content);
        }
        let mut messages = Vec::with_capacity(opening.len() + 1 + 2 * self.examples.len());
        if let Some(system) = &self.system {
            messages.push(Message::new("system", system));
        }
        for ex in &self.examples {
            messages.push(Message::new("user", &ex.user));
            messages.push(Message::new("assistant", &ex.assistant));
        }
        messages.extend(opening);
        messages
    }

    /// The prompt text for a single-turn item: `opening` from the task, `row` for plain
    /// templates that use row fields.
    pub fn render(&self, row: &Row, opening: Vec<Message>) -> Result<String> {
        match self.format {
            PromptFormat::Chat => {
                // Checked in `new`: chat format always has a template.
                let chat = self
                    .chat
                    .as_ref()
                    .ok_or_else(|| EnvError::Config("no chat template".into()))?;
                Ok(chat.render(&self.conversation(opening), true)?)
            }
            PromptFormat::Plain => {
                let question: Vec<&str> = opening.iter().map(|m| m.content.as_str()).collect();
                let ctx = minijinja::context! {
                    system => self.system,
                    examples => self.examples,
                    prompt => self.with_instruction(&question.join("\n\n")),
                    row => row.fields(),
                };
                Ok(self.plain.get_template(PLAIN_NAME)?.render(ctx)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> PromptConfig {
        PromptConfig {
            system: Some("Be brief.".into()),
            examples: vec![FewShot {
                user: "1+1?".into(),
                assistant: "#### 2".into(),
            }],
            ..PromptConfig::default()
        }
    }

    #[test]
    fn conversation_orders_system_fewshot_question_and_appends_instruction() {
        let c = cfg();
        let f = PromptFormatter::new(
            &PromptConfig {
                format: PromptFormat::Plain,
                ..c.clone()
            },
            "End with ####.",
            c.examples.clone(),
            None,
        )
        .unwrap();
        let msgs = f.conversation(vec![Message::new("user", "2+3?")]);
        let roles: Vec<&str> = msgs.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(msgs[3].content, "2+3?\n\nEnd with ####.");
        assert_eq!(
            msgs[1].content, "1+1?",
            "few-shot questions are shown as written"
        );
    }

    #[test]
    fn plain_format_default_and_custom_templates() {
        let c = PromptConfig {
            format: PromptFormat::Plain,
            instruction: Some(String::new()),
            ..cfg()
        };
        let row = Row::from_pairs("r", [("prompt", json!("2+3?")), ("topic", json!("sums"))]);
        let f = PromptFormatter::new(&c, "ignored", c.examples.clone(), None).unwrap();
        let text = f.render(&row, vec![Message::new("user", "2+3?")]).unwrap();
        assert_eq!(
            text,
            "Be brief.\n\nQuestion: 1+1?\nAnswer: #### 2\n\nQuestion: 2+3?\nAnswer:"
        );
        let custom = PromptConfig {
            plain_template: Some("[{{ row.topic }}] {{ prompt }} =".into()),
            ..c
        };
        let f = PromptFormatter::new(&custom, "", vec![], None).unwrap();
        assert_eq!(
            f.render(&row, vec![Message::new("user", "2+3?")]).unwrap(),
            "[sums] 2+3? ="
        );
    }

    #[test]
    fn chat_format_without_template_is_a_config_error() {
        assert!(matches!(
            PromptFormatter::new(&cfg(), "", vec![], None),
            Err(EnvError::Config(_))
        ));
        let bad = PromptConfig {
            format: PromptFormat::Plain,
            plain_template: Some("{% if %}".into()),
            ..cfg()
        };
        assert!(matches!(
            PromptFormatter::new(&bad, "", vec![], None),
            Err(EnvError::PlainTemplate(_))
        ));
    }
}
