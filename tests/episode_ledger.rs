//! Multi-turn rollouts are token in, token out: the ledger `train::episodes::EpisodeRunner`
//! builds (the opening prompt, each model turn's sampled ids, the environment's text appended
//! through the chat template) equals the chat template's rendering of the whole conversation,
//! tokenized at once, token for token. Checked with the bundled model's tokenizer and a
//! scripted policy (the calculator's reference calls) for the shipped templates: the bundled
//! model's own (ChatML) and Gemma 3's (envs/tests/templates; its turn markers made special
//! tokens, as Gemma's own tokenizer has them). Qwen3's template (thinking off) rewrites earlier
//! turns: it drops the empty think block of every assistant turn but the last. Its episodes
//! must say so (`rewrites_history`), and differ from the rendering by exactly those blocks
//! (compared as text: see below).

use std::cell::Cell;
use std::path::Path;

use oxrl::rollout::{Generated, GenerationRequest, SequenceCache};
use oxrl::train::episodes::{EpisodeBatch, EpisodeRunner, Turns};
use oxrl::{FinishReason, LoadOptions, Pretrained, Tokenizer};
use oxrl_envs::{ChatTemplate, EnvConfig, LoadedEnv, Message, Row};
use oxrl_tests::smollm2_gguf;
use serde_json::json;

fn calculator(template: ChatTemplate, kwargs: serde_json::Value) -> LoadedEnv {
    let cfg: EnvConfig = serde_json::from_value(json!({
        "task": "calculator",
        "data": {"generate": 3, "seed": 5},
        "episode": {"max_turns": 4},
        "chat_template_kwargs": kwargs,
    }))
    .unwrap();
    LoadedEnv::from_config(&cfg, Path::new("."), Some(template)).unwrap()
}

/// A policy that plays the calculator's reference turns: turn t of every episode is the
/// row's t-th reference message, ending on `stop` (a stop token the template writes after the
/// message), or cut by the length limit when `stop` is `None`.
fn scripted<'a>(
    env: &'a LoadedEnv,
    tokenizer: &'a Tokenizer,
    stop: Option<u32>,
) -> impl FnMut(&GenerationRequest, Vec<Option<SequenceCache>>) -> anyhow::Result<Turns> + 'a {
    let turn = Cell::new(0);
    move |request, _| {
        let t = turn.replace(turn.get() + 1);
        let rows = env.train().rows();
        let mut out = Vec::new();
        for p in 0..request.prompts.len() {
            for s in 0..request.n {
                // After the first turn every episode is one prompt of n = 1, in episode order.
                let row = if t == 0 { p } else { p / 2 };
                let text = &env.task().reference(&rows[row]).unwrap()[t];
                let mut tokens = tokenizer.encode(text, false).unwrap();
                tokens.extend(stop);
                let generated = Generated {
                    prompt_index: p,
                    sample_index: s,
                    logprobs: vec![-1.0; tokens.len()],
                    tokens,
                    finish_reason: match stop {
                        Some(_) => FinishReason::Stop,
                        None => FinishReason::Length,
                    },
                    learner_logprobs: None,
                };
                out.push((generated, None));
            }
        }
        Ok(out)
    }
}

fn request(tokenizer: &Tokenizer) -> GenerationRequest {
    GenerationRequest {
        prompts: vec![Vec::new(); 3],
        n: 2,
        sampling: Default::default(),
        max_tokens: 64,
        stop: oxrl::rollout::StopConditions {
            token_ids: tokenizer.eos_token_ids().to_vec(),
            strings: Vec::new(),
        },
        seed: 0,
        prompt_offset: 0,
    }
}

/// The conversation an episode of `row` had: its opening, then each reference call, its
/// result and the answer.
fn conversation(env: &LoadedEnv, row: &Row) -> Vec<Message> {
    let mut messages = env.start_episode(row).unwrap().messages().to_vec();
    let reference = env.task().reference(row).unwrap();
    let value = row
        .require_str("t", "answer")
        .unwrap()
        .rsplit("#### ")
        .next()
        .unwrap()
        .to_owned();
    messages.push(Message::new("assistant", &reference[0]));
    messages.push(Message::new("user", format!("<result>{value}</result>")));
    messages.push(Message::new("assistant", &reference[1]));
    messages
}

/// Checks every episode's ledger against the whole conversation rendered and tokenized at once:
/// the ledger is a prefix of it, and what follows is the template's closing of the last turn
/// that the policy did not generate.
fn assert_ledgers_match(
    name: &str,
    env: &LoadedEnv,
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    played: &EpisodeBatch,
    rewrites_history: bool,
) {
    for (g, e) in played.generated.iter().zip(&played.episodes) {
        assert_eq!(e.failure, None, "{name}");
        assert_eq!(e.turns(), 2, "{name}: a call, then the answer");
        assert_eq!(e.env_return(), 1.0, "{name}: the reference answer is right");
        assert_eq!(e.tool_calls, 1, "{name}");
        let mut ledger = played.request.prompts[g.prompt_index].clone();
        ledger.extend(&g.tokens);
        let row = &env.train().rows()[g.prompt_index];
        let rendered = template.render(&conversation(env, row), false).unwrap();
        let rendered = match rewrites_history {
            // The template drops the think blocks the model saw in its earlier turns.
            true => rendered.replacen(
                "<|im_start|>assistant\n",
                "<|im_start|>assistant\n<think>\n\n</think>\n\n",
                1,
            ),
            false => rendered,
        };
        // The loss mask is one exactly on the policy's tokens.
        let model: Vec<u32> = g
            .tokens
            .iter()
            .zip(&e.loss_mask)
            .filter(|(_, &m)| m)
            .map(|(&t, _)| t)
            .collect();
        let reference = env.task().reference(row).unwrap();
        let trained = tokenizer.decode(&model, false).unwrap();
        assert!(
            trained.starts_with(&reference[0]) && trained.contains(&reference[1]),
            "{name}: {trained:?}"
        );
        if rewrites_history {
            // Text only: the generation prompt ends in plain text ("\n\n"), which a tokenizer
            // may merge with the model's first token when the whole is tokenized again (the
            // drift the ledger avoids), so the scripted tokens need not be the whole's.
            let text = tokenizer.decode(&ledger, false).unwrap();
            assert!(
                rendered.starts_with(&text),
                "{name}:\n{text:?}\n{rendered:?}"
            );
            continue;
        }
        let whole = tokenizer.encode(&rendered, false).unwrap();
        assert!(
            whole.starts_with(&ledger),
            "{name}: the ledger differs from the rendering at token {}:\nledger: {:?}\nrendered: {:?}",
            ledger.iter().zip(&whole).take_while(|(a, b)| a == b).count(),
            tokenizer.decode(&ledger, false).unwrap(),
            rendered,
        );
        let rest = tokenizer.decode(&whole[ledger.len()..], false).unwrap();
        assert!(
            rest.trim().is_empty() || rest.trim() == "<end_of_turn>",
            "{name}: after the last turn the rendering has only the closing: {rest:?}"
        );
    }
}

/// The bundled tokenizer with Gemma's turn markers as special tokens, `<end_of_turn>` ending a
/// turn (Gemma's tokenizer has them so: text never merges across a turn boundary).
fn with_gemma_markers(tokenizer: &Tokenizer) -> Tokenizer {
    let mut inner = tokenizer.inner().clone();
    inner.add_special_tokens(&[
        tokenizers::AddedToken::from("<start_of_turn>", true),
        tokenizers::AddedToken::from("<end_of_turn>", true),
    ]);
    let json = inner.to_string(false).unwrap();
    let config = json!({"eos_token": "<end_of_turn>"});
    Tokenizer::from_parts(json.as_bytes(), &config, None, &[]).unwrap()
}

#[test]
fn ledgers_equal_the_rendered_conversation_for_the_shipped_templates() {
    let model = Pretrained::load(&smollm2_gguf(), LoadOptions::default()).unwrap();
    let chatml = &model.tokenizer;
    let gemma = &with_gemma_markers(chatml);
    let im_end = chatml.encode("<|im_end|>", false).unwrap()[0];
    let end_of_turn = gemma.encode("<end_of_turn>", false).unwrap();
    assert_eq!(end_of_turn.len(), 1, "a special token");
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("../envs/tests/templates");
    let read = |f: &str| std::fs::read_to_string(templates.join(f)).unwrap();
    let cases = [
        (
            "bundled (ChatML)",
            chatml.chat_template().unwrap().clone(),
            json!({}),
            chatml,
            im_end,
        ),
        (
            "qwen3, thinking off",
            ChatTemplate::new(&read("qwen3.jinja"), "", "<|im_end|>").unwrap(),
            json!({"enable_thinking": false}),
            chatml,
            im_end,
        ),
        (
            "gemma3",
            ChatTemplate::new(&read("gemma3.jinja"), "<bos>", "<eos>").unwrap(),
            json!({}),
            gemma,
            end_of_turn[0],
        ),
    ];
    for (name, template, kwargs, tokenizer, stop) in cases {
        let env = calculator(template.clone(), kwargs.clone());
        let runner = EpisodeRunner::new(None);
        let rows = env.train().rows();
        let policy = scripted(&env, tokenizer, Some(stop));
        let played = runner
            .run(&env, tokenizer, rows, request(tokenizer), policy)
            .unwrap();
        let template = template
            .with_kwargs(kwargs.as_object().unwrap().clone())
            .unwrap();
        let rewrites = name.starts_with("qwen3");
        for e in &played.episodes {
            assert_eq!(e.rewrites_history, rewrites, "{name}");
        }
        assert_ledgers_match(name, &env, &template, tokenizer, &played, rewrites);
    }
}

#[test]
fn an_episode_ends_at_its_token_budget() {
    let model = Pretrained::load(&smollm2_gguf(), LoadOptions::default()).unwrap();
    let tokenizer = &model.tokenizer;
    let env = calculator(tokenizer.chat_template().unwrap().clone(), json!({}));
    let im_end = tokenizer.encode("<|im_end|>", false).unwrap()[0];
    let rows = env.train().rows();
    for budget in [5, 20, 80] {
        let runner = EpisodeRunner::new(Some(budget));
        let policy = scripted(&env, tokenizer, Some(im_end));
        let played = runner
            .run(&env, tokenizer, rows, request(tokenizer), policy)
            .unwrap();
        for (g, e) in played.generated.iter().zip(&played.episodes) {
            assert!(g.tokens.len() <= budget, "{budget}: {}", g.tokens.len());
            assert_eq!(g.tokens.len(), e.loss_mask.len());
            // The call takes 20 tokens, the whole episode about 55.
            let complete = e.env_return() == 1.0;
            assert_eq!(complete, budget >= 80, "{budget}: {e:?}");
            if !complete {
                assert_eq!(g.finish_reason, FinishReason::Length, "{budget}");
            }
            // The last token is the model's: an environment text that does not fit is dropped.
            assert_eq!(e.loss_mask.last(), Some(&true), "{budget}");
        }
    }
}
