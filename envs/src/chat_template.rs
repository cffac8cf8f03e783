//! Chat templates: the Jinja programs that HF tokenizers ship (`chat_template` in
//! `tokenizer_config.json`, `chat_template.jinja`, or `tokenizer.chat_template` in GGUF),
//! rendered with a real Jinja engine (minijinja with Python-compatible string methods) so that
//! a prompt is byte-identical to what `tokenizer.apply_chat_template` produces. Where minijinja
//! differs from Python Jinja2, the `python` submodule makes it behave as Python does; extra
//! template variables (transformers' `**kwargs`, e.g. Qwen3's `enable_thinking`) are
//! [`TemplateKwargs`].

mod python;

use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value as JsonValue;

/// One chat message, as in the OpenAI / HF `messages` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Errors from compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    /// The template does not compile.
    #[error("chat template does not compile: {0:#}")]
    Compile(JinjaError),
    /// The template failed while rendering (including `raise_exception` calls in it).
    #[error("chat template failed to render: {0:#}")]
    Render(JinjaError),
    /// A template keyword argument names a variable the renderer sets itself.
    #[error("chat template kwargs: `{0}` is set by the renderer and cannot be passed")]
    ReservedKwarg(String),
}

const TEMPLATE_NAME: &str = "chat";

/// Extra variables for the template: what transformers' `apply_chat_template(messages,
/// **kwargs)` passes on to it, e.g. `{"enable_thinking": false}` for Qwen3. Any JSON value is
/// allowed; names the template does not read are ignored, as in transformers. They may replace
/// `bos_token`, `eos_token`, `tools` and `documents` (as in transformers), not `messages` or
/// `add_generation_prompt`.
pub type TemplateKwargs = serde_json::Map<String, JsonValue>;

/// Variables [`ChatTemplate::render`] sets from its arguments.
const RESERVED_KWARGS: [&str; 2] = ["messages", "add_generation_prompt"];

fn check_kwargs(kwargs: &TemplateKwargs) -> Result<(), ChatTemplateError> {
    match RESERVED_KWARGS.iter().find(|k| kwargs.contains_key(**k)) {
        Some(k) => Err(ChatTemplateError::ReservedKwarg((*k).to_owned())),
        None => Ok(()),
    }
}

/// Deserializes [`TemplateKwargs`] from a run config: a TOML table arrives as a JSON object,
/// except that TOML dates and times (which JSON lacks) arrive as the `toml` crate's private
/// one-key map; they become their RFC 3339 text, so every TOML value reaches the template.
pub fn deserialize_kwargs<'de, D: Deserializer<'de>>(d: D) -> Result<TemplateKwargs, D::Error> {
    /// The key under which the `toml` crate hands a datetime to serde (`toml_datetime::FIELD`).
    const TOML_DATETIME: &str = "$__toml_private_datetime";
    fn plain(value: JsonValue) -> JsonValue {
        match value {
            JsonValue::Object(map) => {
                if map.len() == 1 && matches!(map.get(TOML_DATETIME), Some(JsonValue::String(_))) {
                    // Checked just above: the one entry is that key.
                    return map.into_iter().next().map(|(_, v)| v).unwrap_or_default();
                }
                JsonValue::Object(map.into_iter().map(|(k, v)| (k, plain(v))).collect())
            }
            JsonValue::Array(items) => JsonValue::Array(items.into_iter().map(plain).collect()),
            other => other,
        }
    }
    let map = TemplateKwargs::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, plain(v))).collect())
}

/// A compiled chat template plus the special-token strings templates refer to. Cloning is
/// cheap enough for setup (the engine's tokenizer and the environments each hold one).
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
    kwargs: TemplateKwargs,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` are exposed to the template by those names.
    pub fn new(
        source: &str,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        // HF templates call Python string methods (`.strip()`, `.startswith()`, ...).
        env.set_unknown_method_callback(python::unknown_method);
        // transformers renders with trim_blocks and lstrip_blocks enabled.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_formatter(python::formatter);
        env.add_filter("tojson", python::tojson);
        env.add_filter("trim", python::trim);
        env.add_filter("string", python::string);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(ChatTemplateError::Compile)?;
        Ok(Self {
            env,
            source: source.to_owned(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            kwargs: TemplateKwargs::new(),
        })
    }

    /// This template with `kwargs` added to (or replacing) its keyword arguments: every
    /// [`ChatTemplate::render`] passes them, as a run config's `[env] chat_template_kwargs`.
    pub fn with_kwargs(mut self, kwargs: TemplateKwargs) -> Result<Self, ChatTemplateError> {
        check_kwargs(&kwargs)?;
        self.kwargs.extend(kwargs);
        Ok(self)
    }

    /// The keyword arguments every render passes.
    pub fn kwargs(&self) -> &TemplateKwargs {
        &self.kwargs
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` with the template's keyword arguments; with `add_generation_prompt`
    /// the text ends where the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_with(messages, add_generation_prompt, &TemplateKwargs::new())
    }

    /// [`ChatTemplate::render`] with `kwargs` passed besides (and over) the template's own, as
    /// `tokenizer.apply_chat_template(messages, add_generation_prompt=.., **kwargs)` does. The
    /// template sees `bos_token`, `eos_token`, `tools` and `documents` (both `None` unless
    /// given), then the keyword arguments, then `messages` and `add_generation_prompt`.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        kwargs: &TemplateKwargs,
    ) -> Result<String, ChatTemplateError> {
        check_kwargs(kwargs)?;
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(ChatTemplateError::Render)?;
        let mut vars = TemplateKwargs::new();
        vars.insert("bos_token".into(), self.bos_token.clone().into());
        vars.insert("eos_token".into(), self.eos_token.clone().into());
        vars.insert("tools".into(), JsonValue::Null);
        vars.insert("documents".into(), JsonValue::Null);
        vars.extend(self.kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        vars.extend(kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                ..minijinja::Value::from_serialize(&vars)
            })
            .map_err(ChatTemplateError::Render)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").unwrap();
        let text = t.render(&[Message::new("user", "2+2?")], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "hi"
        );
        let err = t.render(&[Message::new("system", "x")], false).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn kwargs_reach_the_template_and_call_kwargs_win() {
        let src = "{{ messages[0].content }}{% if enable_thinking is defined and enable_thinking is false %} /no_think{% endif %}|{{ extra }}|{{ tools }}";
        let kwargs = |v: serde_json::Value| v.as_object().cloned().unwrap();
        let t = ChatTemplate::new(src, "", "")
            .unwrap()
            .with_kwargs(kwargs(serde_json::json!({
                "enable_thinking": false,
                "extra": [1, 2.5, null, true, {"k": "v"}]
            })))
            .unwrap();
        let msgs = [Message::new("user", "hi")];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "hi /no_think|[1, 2.5, None, True, {'k': 'v'}]|None",
            "values print as Python's str()"
        );
        let over = kwargs(serde_json::json!({"enable_thinking": true, "extra": "x"}));
        assert_eq!(t.render_with(&msgs, true, &over).unwrap(), "hi|x|None");
        for reserved in ["messages", "add_generation_prompt"] {
            let bad = kwargs(serde_json::json!({ reserved: 1 }));
            assert!(matches!(
                t.render_with(&msgs, true, &bad),
                Err(ChatTemplateError::ReservedKwarg(k)) if k == reserved
            ));
            assert!(ChatTemplate::new(src, "", "")
                .unwrap()
                .with_kwargs(bad)
                .is_err());
        }
    }

    #[test]
    fn config_kwargs_turn_toml_datetimes_into_text() {
        #[derive(Deserialize)]
        struct Cfg {
            #[serde(deserialize_with = "deserialize_kwargs")]
            kw: TemplateKwargs,
        }
        // What the `toml` crate hands serde for `date = 2025-01-02T03:04:05Z`.
        let cfg: Cfg = serde_json::from_value(serde_json::json!({"kw": {
            "date": {"$__toml_private_datetime": "2025-01-02T03:04:05Z"},
            "nested": [{"$__toml_private_datetime": "2025-01-02"}],
            "n": 3
        }}))
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(cfg.kw),
            serde_json::json!({"date": "2025-01-02T03:04:05Z", "nested": ["2025-01-02"], "n": 3})
        );
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let t = ChatTemplate::new(
            "{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ x|tojson(ensure_ascii=true, separators=(',', ':'), sort_keys=true) }}",
            "",
            "",
        )
        .unwrap();
        let kwargs = serde_json::json!({"x": {
            "z": "<a&b> 'é' \u{1}\n",
            "a": [1, 1.5e-7, null, false, {}, []]
        }});
        assert_eq!(
            t.render_with(&[], false, kwargs.as_object().unwrap()).unwrap(),
            concat!(
                r#"{"a": [1, 1.5e-07, null, false, {}, []], "z": "<a&b> 'é' \u0001\n"}|"#,
                "{\n  \"a\": [\n    1,\n    1.5e-07,\n    null,\n    false,\n    {},\n    []\n  ],\n  \"z\": \"<a&b> 'é' \\u0001\\n\"\n}|",
                r#"{"a":[1,1.5e-07,null,false,{},[]],"z":"<a&b> '\u00e9' \u0001\n"}"#,
            )
        );
    }

    #[test]
    fn bad_template_is_a_compile_error() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ChatTemplateError::Compile(_))
        ));
    }
}
