//! `rollout.source = "agents"`: an OpenAI-compatible endpoint for agents written elsewhere.
//! A user's agent (any language) trains by pointing its OpenAI client at
//! `{OXRL_AGENT_URL}/s/{session}/v1` (or calling `{OXRL_AGENT_URL}/v1/chat/completions` with an
//! `X-Session-Id` header or a `session` field): during rollouts oxrl answers
//! `POST .../chat/completions` from the current policy, keeps each session's exact token
//! ledger (as `train::episodes` does for oxrl's own environments), and the agent ends a session
//! with `POST {OXRL_AGENT_URL}/v1/rl/reward {"session": ..., "reward": ...}`. Finished sessions
//! with the same opening prompt form a group; a step trains `rollout.prompts_per_step` groups of
//! `rollout.group_size` sessions.
//!
//! Token in, token out: a session's first call renders its messages with the chat template;
//! each later call must repeat the conversation so far, the assistant replies exactly as
//! returned, and only its new messages (tool results, the next question) are appended to the
//! ledger through the template (`oxrl_envs::episode::continuation`), masked out of the loss.
//!
//! The HTTP side (axum, its own thread) only forwards requests to the training thread, which
//! answers all the calls waiting at once with one batched generation while it collects a
//! step, and keeps them waiting while the learner updates. A session keeps its KV cache from
//! one call to the next while the policy is unchanged, so a call prefills only its new
//! messages. Bounds: open sessions, calls and
//! tokens per session, idle time per session, the time a step may wait; a call for a finished
//! session, a reward for an unknown one, or a conversation that differs from the session's is
//! refused with a clear error.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use crossbeam_channel::{Receiver, Sender};
use oxrl_envs::episode::continuation;
use oxrl_envs::{ChatTemplate, Message};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::episodes::split_turn;
use crate::learner::Learner;
use crate::rollout::{generate_continuing, GenerationRequest, SequenceCache};
use crate::sample::{FinishReason, Sample};
use crate::tokenizer::Tokenizer;

/// `[rollout.agents]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsSection {
    /// Where the endpoint listens (port 0: any free port; its URL goes to
    /// `output_dir/agent_url`).
    pub listen: String,
    /// The agent program, started by oxrl with `OXRL_AGENT_URL` set (empty: run it yourself).
    pub command: Vec<String>,
    /// A session idle this long is dropped (and counted).
    pub session_timeout_s: f64,
    /// Most sessions open at once; more are refused (HTTP 429).
    pub max_sessions: usize,
    /// Most calls per session.
    pub max_calls: usize,
    /// Most tokens after a session's opening prompt, its messages and replies together.
    pub max_session_tokens: usize,
    /// How long a step may wait for its groups before the run stops (with a checkpoint).
    pub step_timeout_s: f64,
}

impl Default for AgentsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            command: Vec::new(),
            session_timeout_s: 600.0,
            max_sessions: 256,
            max_calls: 32,
            max_session_tokens: 8192,
            step_timeout_s: 3600.0,
        }
    }
}

/// What the HTTP side forwards.
enum Request {
    Call {
        session: String,
        body: ChatRequest,
        reply: tokio::sync::oneshot::Sender<Result<Value, ApiError>>,
    },
    Reward {
        body: RewardRequest,
        reply: tokio::sync::oneshot::Sender<Result<Value, ApiError>>,
    },
}

/// The part of an OpenAI chat request oxrl reads (sampling comes from `[rollout]`).
#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(default, alias = "max_completion_tokens")]
    max_tokens: Option<usize>,
    /// The session, for calls to `/v1/chat/completions` (also read from the `X-Session-Id`
    /// header, or OpenAI's `user` field).
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RewardRequest {
    session: String,
    reward: f64,
}

/// An HTTP error with an OpenAI-style body.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.1, "code": self.0.as_u16()}});
        (self.0, Json(body)).into_response()
    }
}

/// One session's conversation and ledger.
struct Session {
    prompt: Vec<u32>,
    completion: Vec<u32>,
    mask: Vec<bool>,
    logprobs: Vec<f32>,
    messages: Vec<Message>,
    /// The text the model has seen and written so far.
    text: String,
    calls: usize,
    version: u64,
    finish_reason: FinishReason,
    last_seen: Instant,
    /// The KV cache of the last reply and the policy version that computed it: the next call
    /// under the same version prefills only the agent's new messages.
    cache: Option<(u64, SequenceCache)>,
}

/// A finished session.
struct Finished {
    session: Session,
    reward: f64,
}

/// The endpoint, the sessions, the agent process.
pub struct AgentHub {
    cfg: AgentsSection,
    requests: Receiver<Request>,
    sessions: HashMap<String, Session>,
    finished: Vec<Finished>,
    /// Session ids that finished, so a late call is refused, not taken for a new session.
    closed: std::collections::HashSet<String>,
    dropped: usize,
    /// The endpoint's address.
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    agent: Option<Child>,
}

impl Drop for AgentHub {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(child) = &mut self.agent {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Everything a batch of calls needs from the run.
pub struct Policy<'a> {
    /// The learner, whose policy answers.
    pub learner: &'a Learner,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// Sampling, per-call `max_tokens`, stops.
    pub request: GenerationRequest,
    /// The policy version answering.
    pub version: u64,
}

impl AgentHub {
    /// Starts the endpoint (and the agent program, when configured); writes the URL to
    /// `output_dir/agent_url`.
    pub fn start(cfg: &AgentsSection, output_dir: &std::path::Path) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(&cfg.listen)
            .with_context(|| format!("rollout.agents: cannot listen on {}", cfg.listen))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, requests) = crossbeam_channel::bounded(4 * cfg.max_sessions.max(1));
        let shutdown = serve(listener, tx)?;
        let url = format!("http://{addr}");
        std::fs::write(output_dir.join("agent_url"), &url)?;
        eprintln!("agents: {url}/s/<session>/v1 (OpenAI chat completions), {url}/v1/rl/reward");
        let agent = match cfg.command.split_first() {
            Some((program, args)) => Some(
                Command::new(program)
                    .args(args)
                    .env("OXRL_AGENT_URL", &url)
                    .spawn()
                    .with_context(|| {
                        format!("starting rollout.agents.command {:?}", cfg.command)
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            requests,
            sessions: HashMap::new(),
            finished: Vec::new(),
            closed: Default::default(),
            dropped: 0,
            addr,
            shutdown: Some(shutdown),
            agent,
        })
    }

    /// Sessions dropped so far for idling past `session_timeout_s`.
    pub fn dropped_sessions(&self) -> usize {
        self.dropped
    }

    /// Serves the agents until `groups` groups of `group_size` finished sessions are ready,
    /// and returns them as samples (group ids from `first_group`).
    pub fn collect(
        &mut self,
        policy: &Policy,
        groups: usize,
        group_size: usize,
        first_group: u64,
    ) -> anyhow::Result<Vec<Sample>> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.cfg.step_timeout_s);
        loop {
            if let Some(samples) = self.take_groups(groups, group_size, first_group) {
                return Ok(samples);
            }
            self.check_agent()?;
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                bail!(
                    "rollout.agents: after {} s the agents had finished {} session(s), not {groups} groups of {group_size} (rollout.agents.step_timeout_s)",
                    self.cfg.step_timeout_s,
                    self.finished.len()
                );
            }
            let first = match self.requests.recv_timeout(wait.min(Duration::from_secs(1))) {
                Ok(r) => r,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    self.drop_idle();
                    continue;
                }
                Err(e) => bail!("rollout.agents: the endpoint stopped: {e}"),
            };
            let mut batch = vec![first];
            batch.extend(self.requests.try_iter());
            self.answer(policy, batch);
            self.drop_idle();
        }
    }

    /// Fails when the agent program oxrl started has exited.
    fn check_agent(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.agent {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "rollout.agents.command {:?} exited ({status}) before the step had its sessions",
                    self.cfg.command
                );
            }
        }
        Ok(())
    }

    /// Answers a batch of requests: rewards at once, calls with one generation.
    fn answer(&mut self, policy: &Policy, batch: Vec<Request>) {
        let mut calls = Vec::new();
        for request in batch {
            match request {
                Request::Reward { body, reply } => {
                    let _ = reply.send(self.reward(body));
                }
                Request::Call {
                    session,
                    body,
                    reply,
                } => match self.open(policy, &session, body) {
                    Ok(max_tokens) => calls.push((session, max_tokens, reply)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
            }
        }
        if calls.is_empty() {
            return;
        }
        let request = GenerationRequest {
            prompts: calls
                .iter()
                .map(|(s, _, _)| self.sessions[s].context())
                .collect(),
            n: 1,
            max_tokens: calls.iter().map(|c| c.1).max().unwrap_or(1),
            seed: policy.request.seed ^ self.finished.len() as u64 ^ (calls.len() as u64) << 32,
            ..policy.request.clone()
        };
        let prefixes = (calls.iter())
            .map(|(s, _, _)| {
                self.sessions
                    .get_mut(s)
                    .and_then(|s| s.take_cache(policy.version))
            })
            .collect();
        let generated = generate_continuing(
            policy.learner.policy(),
            &request,
            Some(policy.tokenizer),
            prefixes,
        );
        let generated = match generated {
            Ok(g) => g,
            Err(e) => {
                for (_, _, reply) in calls {
                    let message = format!("generation failed: {e}");
                    let _ = reply.send(Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, message)));
                }
                return;
            }
        };
        for ((g, cache), (session, max_tokens, reply)) in generated.into_iter().zip(calls) {
            let answer = self.record(policy, &session, g, max_tokens);
            if let Some(s) = self.sessions.get_mut(&session) {
                s.cache = cache.map(|c| (policy.version, c));
            }
            let _ = reply.send(
                answer.map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            );
        }
    }

    /// Checks a call against its session (opening it on a first call) and appends its new
    /// messages; returns the call's token budget.
    fn open(&mut self, policy: &Policy, id: &str, body: ChatRequest) -> Result<usize, ApiError> {
        let conflict = |m: String| ApiError(StatusCode::CONFLICT, m);
        if self.closed.contains(id) {
            return Err(conflict(format!(
                "session {id:?} has finished (its reward was posted)"
            )));
        }
        let template = policy.tokenizer.chat_template().ok_or_else(|| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model has no chat template".into(),
            )
        })?;
        let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
        if body.messages.is_empty() {
            return Err(bad("no messages".into()));
        }
        if !self.sessions.contains_key(id) {
            if self.sessions.len() >= self.cfg.max_sessions {
                return Err(ApiError(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "{} sessions are open (rollout.agents.max_sessions)",
                        self.sessions.len()
                    ),
                ));
            }
            let session =
                Session::open(template, policy, body.messages).map_err(|e| bad(e.to_string()))?;
            self.sessions.insert(id.to_owned(), session);
        } else {
            let session = self.sessions.get_mut(id).expect("checked");
            if session.calls >= self.cfg.max_calls {
                return Err(conflict(format!(
                    "session {id:?} made rollout.agents.max_calls = {} calls",
                    self.cfg.max_calls
                )));
            }
            session
                .extend(template, policy.tokenizer, body.messages)
                .map_err(bad)?;
        }
        let session = &self.sessions[id];
        let left = self
            .cfg
            .max_session_tokens
            .saturating_sub(session.completion.len());
        if left == 0 {
            return Err(conflict(format!(
                "session {id:?} is at rollout.agents.max_session_tokens"
            )));
        }
        Ok(body
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(policy.request.max_tokens)
            .min(left)
            .max(1))
    }

    /// Appends a generated reply to its session; the OpenAI response.
    fn record(
        &mut self,
        policy: &Policy,
        id: &str,
        mut g: crate::rollout::Generated,
        max_tokens: usize,
    ) -> anyhow::Result<Value> {
        let stops = &policy.request.stop.token_ids;
        let (content, stop) = split_turn(&mut g, max_tokens, policy.tokenizer, stops)?;
        let session = self.sessions.get_mut(id).context("the session vanished")?;
        session.calls += 1;
        session.last_seen = Instant::now();
        session.text.push_str(&content);
        session.text.push_str(stop.as_deref().unwrap_or(""));
        session.messages.push(Message::new("assistant", &content));
        session
            .mask
            .extend(std::iter::repeat_n(true, g.tokens.len()));
        session.completion.extend(&g.tokens);
        session.logprobs.extend(&g.logprobs);
        session.finish_reason = g.finish_reason;
        let finish = match g.finish_reason {
            FinishReason::Length => "length",
            _ => "stop",
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(json!({
            "id": format!("chatcmpl-{id}-{}", session.calls),
            "object": "chat.completion",
            "created": created,
            "model": "oxrl-policy",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": session.prompt.len() + session.completion.len() - g.tokens.len(),
                      "completion_tokens": g.tokens.len(),
                      "total_tokens": session.prompt.len() + session.completion.len()},
        }))
    }

    /// Ends a session with its reward.
    fn reward(&mut self, body: RewardRequest) -> Result<Value, ApiError> {
        if !body.reward.is_finite() {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("reward {} is not finite", body.reward),
            ));
        }
        if self.closed.contains(&body.session) {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("session {:?} already has its reward", body.session),
            ));
        }
        let Some(session) = self.sessions.remove(&body.session) else {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no open session {:?}", body.session),
            ));
        };
        if session.calls == 0 {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "the session has no reply to reward".into(),
            ));
        }
        self.closed.insert(body.session);
        self.finished.push(Finished {
            session,
            reward: body.reward,
        });
        Ok(json!({"ok": true}))
    }

    /// Drops sessions idle past `session_timeout_s`.
    fn drop_idle(&mut self) {
        let timeout = Duration::from_secs_f64(self.cfg.session_timeout_s);
        let before = self.sessions.len();
        self.sessions.retain(|_, s| s.last_seen.elapsed() < timeout);
        self.dropped += before - self.sessions.len();
    }

    /// The first `groups` groups (sessions with the same opening prompt, in the order their
    /// first session finished) that have `group_size` finished sessions, as samples.
    fn take_groups(
        &mut self,
        groups: usize,
        group_size: usize,
        first_group: u64,
    ) -> Option<Vec<Sample>> {
        let mut order: Vec<&Vec<u32>> = Vec::new();
        let mut members: HashMap<&Vec<u32>, Vec<usize>> = HashMap::new();
        for (i, f) in self.finished.iter().enumerate() {
            let m = members.entry(&f.session.prompt).or_default();
            if m.is_empty() {
                order.push(&f.session.prompt);
            }
            if m.len() < group_size {
                m.push(i);
            }
        }
        let full: Vec<Vec<usize>> = order
            .into_iter()
            .map(|p| members[p].clone())
            .filter(|m| m.len() == group_size)
            .take(groups)
            .collect();
        if full.len() < groups {
            return None;
        }
        let mut taken: Vec<(usize, u64)> = full
            .iter()
            .enumerate()
            .flat_map(|(g, m)| m.iter().map(move |&i| (i, first_group + g as u64)))
            .collect();
        taken.sort_by_key(|t| std::cmp::Reverse(t.0));
        let mut samples: Vec<Sample> = taken
            .into_iter()
            .map(|(i, group)| self.finished.remove(i).into_sample(group))
            .collect();
        samples.sort_by_key(|s| s.group_id);
        Some(samples)
    }
}

impl Session {
    fn open(
        template: &ChatTemplate,
        policy: &Policy,
        messages: Vec<Message>,
    ) -> anyhow::Result<Self> {
        let text = template.render(&messages, true)?;
        Ok(Self {
            prompt: policy.tokenizer.encode(&text, false)?,
            completion: Vec::new(),
            mask: Vec::new(),
            logprobs: Vec::new(),
            messages,
            text,
            calls: 0,
            version: policy.version,
            finish_reason: FinishReason::Stop,
            last_seen: Instant::now(),
            cache: None,
        })
    }

    /// The session's cache, if the policy that computed it is still `version`'s.
    fn take_cache(&mut self, version: u64) -> Option<SequenceCache> {
        self.cache
            .take()
            .filter(|(v, _)| *v == version)
            .map(|(_, c)| c)
    }

    /// The conversation so far, as token ids.
    fn context(&self) -> Vec<u32> {
        [self.prompt.as_slice(), &self.completion].concat()
    }

    /// Appends the new messages of a later call, which must repeat the conversation so far.
    fn extend(
        &mut self,
        template: &ChatTemplate,
        tokenizer: &Tokenizer,
        messages: Vec<Message>,
    ) -> Result<(), String> {
        let known = self.messages.len();
        if let Some(i) = (0..known).find(|&i| messages.get(i) != Some(&self.messages[i])) {
            return Err(format!(
                "message {i} differs from the session's conversation: send the conversation so far, the assistant's replies exactly as returned, then the new messages"
            ));
        }
        let new = &messages[known..];
        if new.is_empty() || new.iter().any(|m| m.role == "assistant") {
            return Err("a later call adds one or more messages, none from the assistant".into());
        }
        let (text, _) = continuation(template, &self.text, &messages).map_err(|e| e.to_string())?;
        let ids = tokenizer.encode(&text, false).map_err(|e| e.to_string())?;
        self.text.push_str(&text);
        self.messages = messages;
        self.mask.extend(std::iter::repeat_n(false, ids.len()));
        self.logprobs.extend(std::iter::repeat_n(0.0, ids.len()));
        self.completion.extend(ids);
        self.last_seen = Instant::now();
        Ok(())
    }
}

impl Finished {
    fn into_sample(self, group_id: u64) -> Sample {
        let mut s = self.session;
        // What an agent appended after the last reply was never answered: not part of it.
        let end = s.mask.iter().rposition(|&m| m).map_or(0, |i| i + 1);
        s.completion.truncate(end);
        s.mask.truncate(end);
        s.logprobs.truncate(end);
        Sample {
            prompt_ids: s.prompt,
            completion_ids: s.completion,
            loss_mask: s.mask,
            behaviour_logprobs: s.logprobs,
            learner_logprobs: None,
            policy_version: s.version,
            group_id,
            finish_reason: s.finish_reason,
            reward: self.reward,
            rewards: [("agent".to_owned(), self.reward)].into(),
            turn_rewards: Vec::new(),
        }
    }
}

/// Serves the endpoint on its own thread; the sender stops it.
fn serve(
    listener: std::net::TcpListener,
    tx: Sender<Request>,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    let app = Router::new()
        .route("/s/{session}/v1/chat/completions", post(chat))
        .route("/v1/chat/completions", post(chat_named))
        .route("/v1/rl/reward", post(reward))
        .with_state(tx);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    std::thread::Builder::new()
        .name("oxrl-agents".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        })?;
    Ok(stop)
}

async fn forward(
    tx: &Sender<Request>,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<Value, ApiError>>) -> Request,
) -> Result<Json<Value>, ApiError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.try_send(make(reply)).map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the trainer is not taking requests".into(),
        )
    })?;
    match answer.await {
        Ok(result) => result.map(Json),
        Err(_) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the run ended".into(),
        )),
    }
}

async fn chat(
    State(tx): State<Sender<Request>>,
    Path(session): Path<String>,
    Json(body): Json<ChatRequest>,
) -> Result<Json<Value>, ApiError> {
    forward(&tx, |reply| Request::Call {
        session,
        body,
        reply,
    })
    .await
}

/// `/v1/chat/completions`: the session from the `X-Session-Id` header, the body's `session`,
/// or its `user`.
async fn chat_named(
    State(tx): State<Sender<Request>>,
    headers: axum::http::HeaderMap,
    Json(body): Json<ChatRequest>,
) -> Result<Json<Value>, ApiError> {
    let header = headers
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(session) = header.or(body.session.clone()).or(body.user.clone()) else {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "name the session: the X-Session-Id header, a `session` field, or use {OXRL_AGENT_URL}/s/<session>/v1 as the base URL".into(),
        ));
    };
    chat(State(tx), Path(session), Json(body)).await
}

async fn reward(
    State(tx): State<Sender<Request>>,
    Json(body): Json<RewardRequest>,
) -> Result<Json<Value>, ApiError> {
    forward(&tx, |reply| Request::Reward { body, reply }).await
}
