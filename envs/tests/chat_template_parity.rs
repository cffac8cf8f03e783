//! Qwen3's and Gemma 3's chat templates render byte for byte as transformers renders them
//! (`render_jinja_template`, what `tokenizer.apply_chat_template` calls): with thinking on, off
//! and unset, past reasoning dropped, tools, and template keyword arguments of every JSON type,
//! through `ChatTemplate` and through a run config's `[env] chat_template_kwargs`.
//!
//! templates/ holds exact copies of the models' own templates:
//! - qwen3.jinja: Qwen/Qwen3-0.6B's `chat_template`, as llama.cpp vendors it
//!   (`models/templates/Qwen-Qwen3-0.6B.jinja`, fetched from the hub by its
//!   `scripts/get_chat_template.py`).
//! - gemma3.jinja: google/gemma-3-1b-it's `chat_template` from its `tokenizer_config.json` (as
//!   quoted in gorilla's `bfcl_eval/model_handler/local_inference/gemma.py`; the same text is
//!   the `tokenizer.chat_template` of the hub's ggml-org/gemma-3-1b-it-GGUF).
//!
//! The reference side runs templates/render_reference.py with the set-up's Python
//! (`OXRL_PYTHON`, exported by `make test`); without it these tests fail, they never skip.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::*;
use oxrl_envs::chat_template::TemplateKwargs;
use oxrl_envs::{ChatTemplate, EnvError, LoadedEnv, Message};
use serde_json::{json, Value};

fn templates() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/templates")
}

fn source(name: &str) -> String {
    std::fs::read_to_string(templates().join(name)).unwrap()
}

fn python() -> PathBuf {
    let value = std::env::var_os("OXRL_PYTHON").unwrap_or_else(|| {
        panic!(
            "OXRL_PYTHON is not set: run the tests with `make test` (or first \
             `source \"$(bash scripts/setup.sh)\"`), which provides transformers' renderer"
        )
    });
    PathBuf::from(value)
}

fn kwargs(value: Value) -> TemplateKwargs {
    value
        .as_object()
        .cloned()
        .expect("kwargs are a JSON object")
}

fn m(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

/// One rendering to compare.
struct Case {
    name: &'static str,
    template: String,
    bos: &'static str,
    eos: &'static str,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    kwargs: TemplateKwargs,
}

impl Case {
    fn qwen3(name: &'static str, messages: Vec<Message>, agp: bool, kw: Value) -> Self {
        // Qwen3's tokenizer has no BOS token (`bos_token: null`).
        Self::new(
            name,
            source("qwen3.jinja"),
            "",
            "<|im_end|>",
            messages,
            agp,
            kw,
        )
    }

    fn gemma3(name: &'static str, messages: Vec<Message>, agp: bool, kw: Value) -> Self {
        Self::new(
            name,
            source("gemma3.jinja"),
            "<bos>",
            "<eos>",
            messages,
            agp,
            kw,
        )
    }

    fn new(
        name: &'static str,
        template: String,
        bos: &'static str,
        eos: &'static str,
        messages: Vec<Message>,
        add_generation_prompt: bool,
        kw: Value,
    ) -> Self {
        Self {
            name,
            template,
            bos,
            eos,
            messages,
            add_generation_prompt,
            kwargs: kwargs(kw),
        }
    }

    /// What `apply_chat_template` hands the renderer: the special tokens, then the kwargs.
    fn request(&self) -> Value {
        let mut kw = kwargs(json!({ "bos_token": self.bos, "eos_token": self.eos }));
        kw.extend(self.kwargs.clone());
        json!({
            "template": self.template,
            "messages": self.messages,
            "add_generation_prompt": self.add_generation_prompt,
            "kwargs": kw,
        })
    }

    fn render(&self) -> Result<String, String> {
        ChatTemplate::new(&self.template, self.bos, self.eos)
            .unwrap()
            .render_with(&self.messages, self.add_generation_prompt, &self.kwargs)
            .map_err(|e| e.to_string())
    }
}

/// transformers' renderings of `cases` (the error text where it raised).
fn reference(cases: &[Case]) -> Vec<Result<String, String>> {
    let script = templates().join("render_reference.py");
    let mut child = Command::new(python())
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting $OXRL_PYTHON");
    let request: Vec<Value> = cases.iter().map(Case::request).collect();
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(Value::from(request).to_string().as_bytes())
        .expect("writing the cases");
    let out = child
        .wait_with_output()
        .expect("running render_reference.py");
    assert!(
        out.status.success(),
        "render_reference.py failed: {}",
        out.status
    );
    let answers: Vec<Value> = serde_json::from_slice(&out.stdout).expect("a JSON list");
    answers
        .into_iter()
        .map(|a| match a["text"].as_str() {
            Some(text) => Ok(text.to_owned()),
            None => Err(a["error"].as_str().unwrap_or_default().to_owned()),
        })
        .collect()
}

/// Every case renders as transformers renders it, or fails where it fails (with `raise_exception`'s
/// message in both errors).
fn assert_parity(cases: &[Case]) {
    let expected = reference(cases);
    assert_eq!(expected.len(), cases.len());
    for (case, expected) in cases.iter().zip(expected) {
        match (case.render(), expected) {
            (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "case `{}`", case.name),
            (Err(ours), Err(theirs)) => {
                let message = theirs.split_once(": ").map_or(theirs.as_str(), |(_, m)| m);
                assert!(
                    ours.contains(message),
                    "case `{}`: transformers raised {theirs:?}, oxrl {ours:?}",
                    case.name
                );
            }
            (ours, theirs) => panic!(
                "case `{}`: oxrl gave {ours:?}, transformers {theirs:?}",
                case.name
            ),
        }
    }
}

const THINK_1: &str = "<think>\nFirst add 2 and 2.\n</think>\n\n2 + 2 = 4";
const THINK_2: &str = "<think>Then multiply\n\n by 3.</think>\n\n\n4 * 3 = 12";

#[test]
fn qwen3_renders_as_transformers_with_and_without_thinking() {
    let sys_user = || vec![m("system", SYSTEM), m("user", "What is 2 + 2?")];
    let multi_turn = || {
        vec![
            m("system", SYSTEM),
            m("user", "What is 2 + 2?"),
            m("assistant", THINK_1),
            m("user", "And times 3?"),
            m("assistant", THINK_2),
        ]
    };
    let mut asked_again = multi_turn();
    asked_again.push(m("user", "Héllo 世界 🙂, and minus 1?"));
    let cases = vec![
        Case::qwen3("thinking unset", sys_user(), true, json!({})),
        Case::qwen3(
            "thinking off",
            sys_user(),
            true,
            json!({"enable_thinking": false}),
        ),
        Case::qwen3(
            "thinking on",
            sys_user(),
            true,
            json!({"enable_thinking": true}),
        ),
        Case::qwen3(
            "no generation prompt",
            sys_user(),
            false,
            json!({"enable_thinking": false}),
        ),
        // The reasoning of turns before the last user message is dropped; the last answer
        // keeps its own.
        Case::qwen3(
            "multi-turn, last is assistant",
            multi_turn(),
            false,
            json!({}),
        ),
        Case::qwen3(
            "multi-turn, thinking off",
            asked_again.clone(),
            true,
            json!({"enable_thinking": false}),
        ),
        Case::qwen3(
            "multi-turn, thinking on",
            asked_again,
            true,
            json!({"enable_thinking": true}),
        ),
        Case::qwen3(
            "no system, answer without reasoning",
            vec![m("user", "hi"), m("assistant", "\n\nhello\n")],
            false,
            json!({}),
        ),
        Case::qwen3(
            "python whitespace in lstrip/strip",
            vec![
                m("user", "q"),
                m(
                    "assistant",
                    "<think>\n\x1c r \u{a0}\n\n</think>\n\x1canswer \u{3000}",
                ),
            ],
            false,
            json!({}),
        ),
    ];
    assert_parity(&cases);
}

#[test]
fn qwen3_tools_and_tool_turns_render_as_transformers() {
    // `tools` is a keyword argument like any other; `tojson` must write Python's json.dumps.
    let tools = json!({"tools": [{
        "type": "function",
        "function": {
            "name": "add",
            "description": "Adds <a> & 'b' — exactly.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "number", "default": 1.5e-7}},
                "required": ["a", "b"]
            }
        }
    }]});
    let messages = vec![
        m("system", SYSTEM),
        m("user", "Add 1 and 2."),
        m(
            "assistant",
            "<think>\nUse the tool.\n</think>\n\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>",
        ),
        m("tool", "3"),
        m("tool", "{\"sum\": 3}"),
        m("user", "<tool_response>\nlate\n</tool_response>"),
        m("assistant", "<think>\nDone.\n</think>\n\nIt is 3."),
    ];
    let cases = vec![
        Case::qwen3("tools", messages.clone(), false, tools.clone()),
        Case::qwen3(
            "tools, generation prompt",
            messages[..6].to_vec(),
            true,
            tools,
        ),
        Case::qwen3("tool turns without tools", messages, false, json!({})),
    ];
    assert_parity(&cases);
}

#[test]
fn gemma3_renders_as_transformers() {
    let cases = vec![
        Case::gemma3(
            "system and user",
            vec![m("system", SYSTEM), m("user", "What is 2 + 2?")],
            true,
            json!({}),
        ),
        Case::gemma3(
            "multi-turn, contents trimmed the Python way",
            vec![
                m("user", "  \x1cWhat is 2 + 2?\u{3000}\n"),
                m("assistant", "\n4 \x1f"),
                m("user", "Héllo 世界 🙂"),
            ],
            true,
            json!({"enable_thinking": false}),
        ),
        Case::gemma3(
            "ends with the model's turn",
            vec![
                m("system", "Be brief."),
                m("user", "hi"),
                m("assistant", "hello"),
            ],
            false,
            json!({}),
        ),
        Case::gemma3(
            "roles must alternate",
            vec![m("user", "a"), m("user", "b")],
            true,
            json!({}),
        ),
    ];
    assert_parity(&cases);
}

#[test]
fn template_kwargs_of_every_type_print_as_python_does() {
    let template = concat!(
        "{{ flag }}|{{ n }}|{{ f }}|{{ small }}|{{ big }}|{{ none }}|{{ s }}|{{ arr }}|{{ obj }}|",
        "{{ obj|tojson }}|{{ arr|tojson(indent=2) }}|{{ obj|tojson(sort_keys=true, ensure_ascii=true) }}|",
        "{{ s|trim }}|{{ flag|string }}|{{ s.split() }}|{{ s.rstrip('x ') }}|{{ s.split(\"'\", 1) }}|",
        "{{ messages|length }}|{{ messages[::-1][0].content }}|{{ messages[1:]|length }}|",
        "{% set ns = namespace(total=0, seen=false) %}{% for msg in messages %}",
        "{% set ns.total = ns.total + loop.index0 %}{% if msg.content is string %}{% set ns.seen = true %}{% endif %}",
        "{% endfor %}{{ ns.total }} {{ ns.seen }}|{{ undefined_name is defined }}|{{ n is number }}|",
        "{{ tools }}|{{ documents is none }}|{{ bos_token }}{{ eos_token }}"
    );
    let kw = json!({
        "flag": false, "n": 42, "f": 2.0, "small": 1e-5, "big": 1e16, "none": null,
        "s": "  it's \x1c x ",
        "arr": [1, "a'b", "\"q\"", null, true, 2.5, "\u{a0}é\n"],
        "obj": {"z": {"k": [1, {}]}, "é": "<&>", "a": []}
    });
    let messages = vec![
        m("user", "first"),
        m("assistant", "second"),
        m("user", "third"),
    ];
    let cases = vec![
        Case::new(
            "kwargs",
            template.into(),
            "<s>",
            "</s>",
            messages.clone(),
            true,
            kw,
        ),
        Case::new(
            "kwargs may replace the special tokens",
            "{{ bos_token }}{{ eos_token }}|{{ tools|tojson }}|{{ documents }}".into(),
            "<s>",
            "</s>",
            messages,
            false,
            json!({"bos_token": "[B]", "tools": [{"name": "t"}]}),
        ),
    ];
    assert_parity(&cases);
}

#[test]
fn run_config_chat_template_kwargs_reach_prompts_and_episodes() {
    let qwen3 = || ChatTemplate::new(&source("qwen3.jinja"), "", "<|im_end|>").unwrap();
    let cfg = config(json!({
        "task": "arithmetic",
        "data": { "generate": 4 },
        "prompt": { "system": SYSTEM },
        "chat_template_kwargs": { "enable_thinking": false }
    }));
    let env = LoadedEnv::from_config(&cfg, &fixtures(), Some(qwen3())).unwrap();
    let row = &env.train().rows()[0];
    let prompt = env.prompt(row).unwrap();
    assert!(
        prompt.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"),
        "{prompt:?}"
    );
    let case = Case::qwen3(
        "arithmetic prompt, thinking off",
        env.messages(row).unwrap(),
        true,
        json!({"enable_thinking": false}),
    );
    assert_eq!(Ok(prompt), reference(&[case]).remove(0));

    // Multi-turn episodes render with them too.
    let guessing = config(json!({
        "task": "guessing",
        "data": { "generate": 2 },
        "chat_template_kwargs": { "enable_thinking": false }
    }));
    let env = LoadedEnv::from_config(&guessing, &fixtures(), Some(qwen3())).unwrap();
    let episode = env.start_episode(&env.train().rows()[0]).unwrap();
    assert!(
        episode.prompt().ends_with("<think>\n\n</think>\n\n"),
        "{:?}",
        episode.prompt()
    );

    // Without kwargs the template's default (thinking on) applies.
    let mut default = cfg.clone();
    default.chat_template_kwargs.clear();
    let env = LoadedEnv::from_config(&default, &fixtures(), Some(qwen3())).unwrap();
    assert!(env
        .prompt(row)
        .unwrap()
        .ends_with("<|im_start|>assistant\n"));
}

#[test]
fn chat_template_kwargs_that_nothing_would_use_are_config_errors() {
    let with = |extra: Value| {
        let mut cfg =
            json!({ "task": "arithmetic", "chat_template_kwargs": { "enable_thinking": false } });
        cfg.as_object_mut().unwrap().extend(kwargs(extra));
        config(cfg)
    };
    let no_template = LoadedEnv::from_config(&with(json!({})), &fixtures(), None).unwrap_err();
    assert!(matches!(no_template, EnvError::Config(_)), "{no_template}");
    assert!(
        no_template.to_string().contains("chat_template_kwargs"),
        "{no_template}"
    );
    let plain = with(json!({ "prompt": { "format": "plain" } }));
    let err = LoadedEnv::from_config(&plain, &fixtures(), Some(smollm2_template())).unwrap_err();
    assert!(err.to_string().contains("plain"), "{err}");
    let reserved =
        config(json!({ "task": "arithmetic", "chat_template_kwargs": { "messages": [] } }));
    let err = LoadedEnv::from_config(&reserved, &fixtures(), Some(smollm2_template())).unwrap_err();
    assert!(err.to_string().contains("`messages`"), "{err}");
}

#[test]
fn toml_inline_table_of_any_values_is_the_kwargs() {
    // Parsed by Python's tomllib and handed over as JSON: the serde data model the engine's
    // TOML reader feeds `EnvConfig` (dates and times are covered by the unit tests).
    let text = "[env]\ntask = \"arithmetic\"\nchat_template_kwargs = { enable_thinking = false, \
                depth = 2, ratio = 0.5, tags = [\"a\", 1], extra = { k = \"v\" } }\n";
    let mut child = Command::new(python())
        .args([
            "-c",
            "import json, sys, tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let toml: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cfg = config(toml["env"].clone());
    assert_eq!(
        Value::Object(cfg.chat_template_kwargs.clone()),
        json!({
            "enable_thinking": false,
            "depth": 2,
            "ratio": 0.5,
            "tags": ["a", 1],
            "extra": {"k": "v"}
        })
    );
    let template = ChatTemplate::new(
        "{{ enable_thinking }} {{ depth }} {{ ratio }} {{ tags }} {{ extra.k }}",
        "",
        "",
    )
    .unwrap();
    let env = LoadedEnv::from_config(&cfg, &fixtures(), Some(template)).unwrap();
    let row = &env.train().rows()[0];
    assert_eq!(env.prompt(row).unwrap(), "False 2 0.5 ['a', 1] v");
}
