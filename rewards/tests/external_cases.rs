//! Judge and custom rewards against real peers: an axum server started in the test speaking
//! the OpenAI chat protocol (judge) or the batch protocol (HTTP reward), and real child
//! processes for the command reward, including the shipped Python example.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use oxrl_rewards::custom::command::{CommandConfig, CommandReward};
use oxrl_rewards::custom::http::{HttpConfig, HttpReward};
use oxrl_rewards::judge::{JudgeConfig, JudgeReward};
use oxrl_rewards::{Completion, FailureKind, Reward};
use serde_json::{json, Value};

#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    per_completion: Mutex<HashMap<String, usize>>,
    bad_auth: AtomicUsize,
}

/// Starts `router` on 127.0.0.1 (an ephemeral port) on its own runtime thread.
fn serve(router: Router) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, router).await.unwrap();
        });
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap()
}

async fn chat(
    State(seen): State<Arc<Seen>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, String) {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sk-test-judge") {
        seen.bad_auth.fetch_add(1, Ordering::SeqCst);
    }
    let user = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let completion = user
        .split("Response:\n")
        .nth(1)
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap_or("")
        .to_string();
    let n = {
        let mut m = seen.per_completion.lock().unwrap();
        let c = m.entry(completion.clone()).or_default();
        *c += 1;
        *c
    };
    let reply = |content: &str| {
        json!({"choices": [{"message": {"role": "assistant", "content": content}}]}).to_string()
    };
    match completion.as_str() {
        "flaky" if n == 1 => (StatusCode::SERVICE_UNAVAILABLE, "busy".into()),
        "flaky" => (StatusCode::OK, reply("Fine after all.\nScore: 7")),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            (StatusCode::OK, reply("Score: 10"))
        }
        "garbage" => (StatusCode::OK, reply("I refuse to grade this.")),
        "notjson" => (StatusCode::OK, "<html>oops</html>".into()),
        "forbidden" => (StatusCode::FORBIDDEN, "no".into()),
        c if c.contains("good") => (StatusCode::OK, reply("Clear and correct.\nScore: 9")),
        _ => (StatusCode::OK, reply("Weak.\nScore: 2")),
    }
}

#[test]
fn judge_against_real_server() {
    let seen = Arc::new(Seen::default());
    let addr = serve(
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(seen.clone()),
    );
    std::env::set_var("OXRL_TEST_JUDGE_KEY", "sk-test-judge");
    let cfg = JudgeConfig {
        base_url: format!("http://{addr}/v1"),
        api_key_env: "OXRL_TEST_JUDGE_KEY".into(),
        timeout_s: 1.0,
        max_retries: 1,
        backoff_ms: 10,
        concurrency: 4,
        ..JudgeConfig::default()
    };
    let judge = JudgeReward::new("judge", cfg).unwrap();
    let q = |c: &str| Completion::new(c).with_prompt("What is 2+2?");
    let batch = [
        q("a good answer"),
        q("meh"),
        q("flaky"),
        q("slow"),
        q("garbage"),
        q("notjson"),
        q("forbidden"),
        q("a good answer"),
    ];
    let t = Instant::now();
    let out = judge.score_batch(&batch);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(out[0], Ok(0.9));
    assert_eq!(out[1], Ok(0.2));
    assert_eq!(out[2], Ok(0.7), "503 then retried");
    assert_eq!(out[3].as_ref().unwrap_err().kind(), FailureKind::Timeout);
    assert_eq!(out[4].as_ref().unwrap_err().kind(), FailureKind::Parse);
    assert_eq!(
        out[5].as_ref().unwrap_err().kind(),
        FailureKind::MalformedReply
    );
    assert_eq!(out[6].as_ref().unwrap_err().kind(), FailureKind::Transport);
    assert_eq!(out[7], Ok(0.9));
    assert_eq!(
        seen.bad_auth.load(Ordering::SeqCst),
        0,
        "API key not sent as bearer token"
    );
    let per = seen.per_completion.lock().unwrap().clone();
    assert_eq!(per["a good answer"], 1, "duplicate in a batch asked once");
    assert_eq!(per["flaky"], 2);
    assert_eq!(per["slow"], 2, "timeout retried once");
    assert_eq!(per["forbidden"], 1, "4xx not retried");
    // Cached: the same good completions cost no request.
    let before = seen.requests.load(Ordering::SeqCst);
    assert_eq!(
        judge.score_batch(&[q("a good answer"), q("meh")]),
        vec![Ok(0.9), Ok(0.2)]
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), before);
    // Errors never echo the key.
    for o in &out {
        if let Err(e) = o {
            assert!(!e.to_string().contains("sk-test-judge"));
        }
    }
    // A rubric naming a field the completion lacks is a bad reference.
    let cfg = JudgeConfig {
        base_url: format!("http://{addr}/v1"),
        rubric: "Gold: {answer}\n{completion}".into(),
        ..JudgeConfig::default()
    };
    let j = JudgeReward::new("judge", cfg).unwrap();
    assert_eq!(
        j.score_batch(&[Completion::new("x")])[0]
            .as_ref()
            .unwrap_err()
            .kind(),
        FailureKind::BadReference
    );
}

async fn batch_scores(Json(body): Json<Value>) -> Json<Value> {
    let completions = body["samples"].as_array().cloned().unwrap_or_default();
    if completions.iter().any(|s| s["completion"] == "short") {
        return Json(json!({"scores": [1.0]}));
    }
    let scores: Vec<Value> = completions
        .iter()
        .map(|s| match s["completion"].as_str().unwrap_or("") {
            "error" => json!({"error": "cannot score"}),
            "text" => json!("high"),
            c => json!({"score": c.len() as f64 + s["bonus"].as_f64().unwrap_or(0.0)}),
        })
        .collect();
    Json(json!({ "scores": scores }))
}

#[test]
fn http_reward_against_real_server() {
    let addr = serve(Router::new().route("/score", post(batch_scores)));
    let r = HttpReward::new(
        "len_http",
        HttpConfig {
            url: format!("http://{addr}/score"),
            api_key_env: None,
            batch_size: 2,
            timeout_s: 5.0,
            max_retries: 0,
            backoff_ms: 10,
            concurrency: 2,
        },
    )
    .unwrap();
    let out = r.score_batch(&[
        Completion::new("abc").with("bonus", 0.5),
        Completion::new("error"),
        Completion::new("text"),
        Completion::new("abcdef"),
        Completion::new("short"),
        Completion::new("xyz"),
    ]);
    assert_eq!(out[0], Ok(3.5));
    assert_eq!(out[1].as_ref().unwrap_err().kind(), FailureKind::Crash);
    assert_eq!(
        out[2].as_ref().unwrap_err().kind(),
        FailureKind::MalformedReply
    );
    assert_eq!(out[3], Ok(6.0));
    // The last chunk gets one score for two completions: both fail, nothing is misattributed.
    assert_eq!(
        out[4].as_ref().unwrap_err().kind(),
        FailureKind::MalformedReply,
        "count mismatch"
    );
    assert_eq!(
        out[5].as_ref().unwrap_err().kind(),
        FailureKind::MalformedReply,
        "count mismatch"
    );
    // Nobody listening: a transport failure per completion, not a panic.
    let dead = HttpReward::new(
        "dead",
        HttpConfig {
            url: "http://127.0.0.1:9/score".into(),
            api_key_env: None,
            batch_size: 8,
            timeout_s: 2.0,
            max_retries: 0,
            backoff_ms: 1,
            concurrency: 1,
        },
    )
    .unwrap();
    let out = dead.score_batch(&[Completion::new("a"), Completion::new("b")]);
    assert!(
        out.iter()
            .all(|o| o.as_ref().unwrap_err().kind() == FailureKind::Transport),
        "{out:?}"
    );
}

fn example_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/rewards/contains_answer.py")
}

#[test]
fn shipped_python_example() {
    let r = CommandReward::new(
        "contains",
        CommandConfig {
            command: vec!["python3".into(), example_script().display().to_string()],
            timeout_s: 10.0,
            cwd: None,
            max_restarts: 3,
            env: None,
            legacy_replies: false,
        },
    )
    .unwrap();
    let out = r.score_batch(&[
        Completion::new("the answer is 42").with("answer", 42),
        Completion::new("the answer is 41").with("answer", 42),
        Completion::new("no reference"),
    ]);
    assert_eq!(out[0], Ok(1.0));
    assert_eq!(out[1], Ok(0.0));
    assert!(
        matches!(&out[2], Err(e) if e.to_string().contains("KeyError")),
        "{:?}",
        out[2]
    );
    assert_eq!(
        r.restarts(),
        0,
        "a reported error must not restart the command"
    );
}

#[test]
fn command_crash_hang_and_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("moody.py");
    std::fs::write(
        &script,
        r#"import json, sys, time
for line in sys.stdin:
    req = json.loads(line)
    c = req["completion"]
    if c == "crash":
        sys.exit(3)
    if c == "hang":
        time.sleep(100)
    if c == "garbage":
        print("this is not json", flush=True)
        continue
    print(json.dumps({"request_id": req["request_id"], "score": len(c)}), flush=True)
"#,
    )
    .unwrap();
    let r = CommandReward::new(
        "moody",
        CommandConfig {
            command: vec!["python3".into(), script.display().to_string()],
            timeout_s: 1.5,
            cwd: None,
            max_restarts: 10,
            env: None,
            legacy_replies: false,
        },
    )
    .unwrap();
    let out = r.score_batch(&[
        Completion::new("ab"),
        Completion::new("crash"),
        Completion::new("abc"),
        Completion::new("hang"),
        Completion::new("abcd"),
        Completion::new("garbage"),
        Completion::new("abcde"),
    ]);
    assert_eq!(out[0], Ok(2.0));
    assert_eq!(out[1].as_ref().unwrap_err().kind(), FailureKind::Crash);
    assert_eq!(out[2], Ok(3.0), "restarted after the crash");
    assert_eq!(out[3].as_ref().unwrap_err().kind(), FailureKind::Timeout);
    assert_eq!(out[4], Ok(4.0), "restarted after the hang");
    assert_eq!(
        out[5].as_ref().unwrap_err().kind(),
        FailureKind::MalformedReply
    );
    assert_eq!(out[6], Ok(5.0), "a malformed reply fails only its sample");
    // A non-JSON line is skipped as a stray print; the reply it stood for never comes, so that
    // completion fails when `timeout_s` runs out and the command is restarted (it was 2 when a
    // non-JSON line counted as the reply).
    assert_eq!(r.restarts(), 3);
    assert!(CommandReward::new(
        "none",
        CommandConfig {
            command: vec!["/nonexistent/cmd".into()],
            timeout_s: 1.0,
            cwd: None,
            max_restarts: 1,
            env: None,
            legacy_replies: false,
        }
    )
    .is_err());
}

/// Kills the child when dropped, so a failing assertion leaves no server behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn shipped_python_http_example() {
    use std::io::BufRead;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/rewards/http_reward.py");
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = KillOnDrop(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let r = HttpReward::new(
        "short",
        HttpConfig {
            url: format!("http://127.0.0.1:{port}/"),
            api_key_env: None,
            batch_size: 2,
            timeout_s: 10.0,
            max_retries: 1,
            backoff_ms: 50,
            concurrency: 2,
        },
    )
    .unwrap();
    let out = r.score_batch(&[
        Completion::new("one"),
        Completion::new("one two three"),
        Completion::new(""),
    ]);
    assert_eq!(out, vec![Ok(0.5), Ok(0.25), Ok(1.0)]);
}

/// A command reward running `python3 -c script`.
fn python_command(name: &str, script: &str, timeout_s: f64) -> CommandReward {
    CommandReward::new(
        name,
        CommandConfig {
            command: vec!["python3".into(), "-c".into(), script.into()],
            timeout_s,
            cwd: None,
            max_restarts: 10,
            env: None,
            legacy_replies: false,
        },
    )
    .unwrap()
}

/// Scores the length of the completion, echoing the request id.
const ECHO_LEN: &str = r#"
def reply(req, **kw):
    print(json.dumps({"request_id": req.get("request_id"), **kw}), flush=True)
"#;

#[test]
fn command_banner_before_replies_does_not_shift_scores() {
    let script = format!(
        r#"import json, sys
{ECHO_LEN}
print("Loading scorer v1.2 ... done", flush=True)
print(json.dumps({{"status": "ready"}}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    reply(req, score=len(req["completion"]))
"#
    );
    let r = python_command("banner", &script, 10.0);
    let batch = ["a", "bb", "ccc", "dddd"].map(Completion::new);
    assert_eq!(
        r.score_batch(&batch),
        vec![Ok(1.0), Ok(2.0), Ok(3.0), Ok(4.0)]
    );
    assert_eq!(r.score_batch(&batch[..2]), vec![Ok(1.0), Ok(2.0)]);
    assert_eq!(
        r.restarts(),
        0,
        "a banner is skipped, not a reason to restart"
    );
}

#[test]
fn command_stray_debug_lines_mid_stream_do_not_shift_scores() {
    let script = format!(
        r#"import json, sys
{ECHO_LEN}
for line in sys.stdin:
    req = json.loads(line)
    c = req["completion"]
    if c == "bb":
        print("debug: scoring", c, flush=True)
    if c == "ccc":
        print(json.dumps({{"debug": c}}), flush=True)
        print(json.dumps([1, 2, 3]), flush=True)
    reply(req, score=len(c))
"#
    );
    let r = python_command("chatty", &script, 10.0);
    let batch = ["a", "bb", "ccc", "dddd", "eeeee"].map(Completion::new);
    assert_eq!(
        r.score_batch(&batch),
        vec![Ok(1.0), Ok(2.0), Ok(3.0), Ok(4.0), Ok(5.0)]
    );
    assert_eq!(r.restarts(), 0);
}

#[test]
fn command_reply_with_wrong_id_fails_only_its_sample() {
    let script = format!(
        r#"import json, sys
{ECHO_LEN}
for line in sys.stdin:
    req = json.loads(line)
    c = req["completion"]
    if c == "wrong":
        req["request_id"] = (req.get("request_id") or 0) + 1000
    reply(req, score=len(c))
"#
    );
    let r = python_command("wrong_id", &script, 10.0);
    let out = r.score_batch(&["a", "wrong", "ccc", "dddd"].map(Completion::new));
    assert_eq!(out[0], Ok(1.0));
    let err = out[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), FailureKind::MalformedReply, "{err}");
    assert!(err.to_string().contains("request_id"), "{err}");
    assert_eq!(out[2], Ok(3.0), "later samples keep their own scores");
    assert_eq!(out[3], Ok(4.0));
    assert_eq!(r.restarts(), 1, "a mismatched id restarts the command");
}

#[test]
fn command_replies_without_id_fail_unless_legacy() {
    let legacy_script = r#"import json, sys
for line in sys.stdin:
    c = json.loads(line)["completion"]
    print(len(c) if c == "bare" else json.dumps({"score": len(c)}), flush=True)
"#;
    let r = python_command("no_id", legacy_script, 10.0);
    let out = r.score_batch(&["a", "bare", "ccc"].map(Completion::new));
    for o in &out {
        let err = o.as_ref().unwrap_err();
        assert_eq!(err.kind(), FailureKind::MalformedReply, "{err}");
        assert!(
            err.to_string().contains("echo the request's `request_id`"),
            "{err}"
        );
    }
    assert_eq!(r.restarts(), 0, "id-less replies keep the stream in step");

    let mut cfg = CommandConfig {
        command: vec!["python3".into(), "-c".into(), legacy_script.into()],
        timeout_s: 10.0,
        cwd: None,
        max_restarts: 10,
        env: None,
        legacy_replies: true,
    };
    let r = CommandReward::new("legacy", cfg.clone()).unwrap();
    assert_eq!(
        r.score_batch(&["a", "bare", "ccc"].map(Completion::new)),
        vec![Ok(1.0), Ok(4.0), Ok(3.0)],
        "legacy_replies accepts replies in order"
    );
    // Legacy mode still checks an id that is there.
    cfg.command[2] = "import json, sys\nfor line in sys.stdin:\n    print(json.dumps({'request_id': 99, 'score': 1}), flush=True)".into();
    let r = CommandReward::new("legacy_bad_id", cfg).unwrap();
    assert_eq!(
        r.score_batch(&[Completion::new("a")])[0]
            .as_ref()
            .unwrap_err()
            .kind(),
        FailureKind::MalformedReply
    );
}

#[test]
fn command_flooding_stdout_fails_that_sample_and_restarts() {
    let script = format!(
        r#"import json, sys
{ECHO_LEN}
for line in sys.stdin:
    req = json.loads(line)
    c = req["completion"]
    if c == "flood":
        for i in range(100):
            print("progress", i, flush=True)
    reply(req, score=len(c))
"#
    );
    let r = python_command("flood", &script, 10.0);
    let out = r.score_batch(&["a", "flood", "ccc"].map(Completion::new));
    assert_eq!(out[0], Ok(1.0));
    let err = out[1].as_ref().unwrap_err();
    assert_eq!(err.kind(), FailureKind::MalformedReply, "{err}");
    assert!(err.to_string().contains("stderr"), "{err}");
    assert_eq!(out[2], Ok(3.0));
    assert_eq!(r.restarts(), 1);
}

#[test]
fn command_reserved_request_id_field_is_a_bad_reference() {
    let script = format!(
        "import json, sys\n{ECHO_LEN}\nfor line in sys.stdin:\n    req = json.loads(line)\n    reply(req, score=1)\n"
    );
    let r = python_command("reserved", &script, 10.0);
    let out = r.score_batch(&[
        Completion::new("a").with("request_id", 5),
        Completion::new("b"),
    ]);
    assert_eq!(
        out[0].as_ref().unwrap_err().kind(),
        FailureKind::BadReference
    );
    assert_eq!(out[1], Ok(1.0));
}

#[test]
fn command_env_allowlist_passes_only_listed_variables() {
    std::env::set_var("OXRL_TEST_CMD_PASSED", "passed-value");
    std::env::set_var("OXRL_TEST_CMD_HIDDEN", "hidden-value");
    // Reports the environment it got as the error message.
    let script = format!(
        "import json, os, sys\n{ECHO_LEN}\nfor line in sys.stdin:\n    req = json.loads(line)\n    reply(req, error=json.dumps(dict(os.environ)))\n"
    );
    // The interpreter itself, not a launcher such as a pyenv shim that edits the environment.
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    let python = String::from_utf8(python.stdout).unwrap().trim().to_string();
    let env_of = |env: Option<Vec<String>>| -> serde_json::Map<String, Value> {
        let r = CommandReward::new(
            "env",
            CommandConfig {
                command: vec![python.clone(), "-c".into(), script.clone()],
                timeout_s: 10.0,
                cwd: None,
                max_restarts: 1,
                env,
                legacy_replies: false,
            },
        )
        .unwrap();
        let msg = r.score_batch(&[Completion::new("x")])[0]
            .as_ref()
            .unwrap_err()
            .to_string();
        let json = msg.split_once("scorer reported: ").unwrap().1;
        serde_json::from_str(json).unwrap()
    };
    let inherited = env_of(None);
    assert_eq!(
        inherited["OXRL_TEST_CMD_HIDDEN"], "hidden-value",
        "default: inherit all"
    );
    assert_eq!(inherited["OXRL_TEST_CMD_PASSED"], "passed-value");

    let allowed = env_of(Some(vec![
        "OXRL_TEST_CMD_PASSED".into(),
        "OXRL_TEST_CMD_UNSET_ANYWHERE".into(),
    ]));
    assert_eq!(allowed["OXRL_TEST_CMD_PASSED"], "passed-value");
    assert!(!allowed.contains_key("OXRL_TEST_CMD_HIDDEN"), "{allowed:?}");
    assert!(!allowed.contains_key("OXRL_TEST_CMD_UNSET_ANYWHERE"));
    assert_eq!(
        allowed.get("PATH").and_then(Value::as_str),
        std::env::var("PATH").ok().as_deref(),
        "PATH passes so programs are found"
    );
    // Python may add LC_CTYPE itself (PEP 538 locale coercion); nothing else gets through.
    let expected: Vec<&str> = oxrl_rewards::json_lines::BASE_ENV
        .iter()
        .copied()
        .chain(["OXRL_TEST_CMD_PASSED", "LC_CTYPE"])
        .collect();
    for key in allowed.keys() {
        assert!(
            expected.contains(&key.as_str()),
            "{key} leaked: {allowed:?}"
        );
    }

    let clean = env_of(Some(vec![]));
    assert!(!clean.contains_key("OXRL_TEST_CMD_PASSED"), "{clean:?}");
    assert!(CommandReward::new(
        "bad_env",
        CommandConfig {
            command: vec!["true".into()],
            timeout_s: 1.0,
            cwd: None,
            max_restarts: 1,
            env: Some(vec!["A=B".into()]),
            legacy_replies: false,
        }
    )
    .is_err());
}
