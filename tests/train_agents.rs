//! `rollout.source = "agents"`: a small Python agent (standard library only) trains the tiny
//! random model over loopback through the OpenAI-compatible endpoint: each session makes two
//! chat-completion calls with a tool result between them, groups of sessions run at once,
//! and the agent posts each session's reward. The learner's logprobs of the first step's
//! sessions equal the sampler's (exact token ledgers across calls), and the endpoint refuses
//! a reward for an unknown session, a call or a reward for a finished one, and a conversation
//! that differs from the session's.

use std::path::{Path, PathBuf};

use oxrl_tests::{python, smoke_config, smoke_train, train_command, training_lines};
use serde_json::Value;

const AGENT: &str = r#"
import concurrent.futures, json, os, sys, urllib.error, urllib.request

URL = os.environ["OXRL_AGENT_URL"]
GROUP = 4

def post(path, body):
    req = urllib.request.Request(URL + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

def chat(session, messages):
    # Half the sessions name themselves in the path, half in the body.
    if session.endswith(("0", "2")):
        return post("/v1/chat/completions", {"model": "any", "messages": messages, "session": session})
    return post(f"/s/{session}/v1/chat/completions", {"model": "any", "messages": messages})

checks = {"unknown_reward": post("/v1/rl/reward", {"session": "nope", "reward": 1.0})[0]}
warm = [{"role": "user", "content": "Warm-up."}]
checks["first_call"] = chat("warm", warm)[0]
checks["finish"] = post("/v1/rl/reward", {"session": "warm", "reward": 0.0})[0]
checks["call_after_finish"] = chat("warm", warm)[0]
checks["reward_twice"] = post("/v1/rl/reward", {"session": "warm", "reward": 0.0})[0]
chat("alt", warm)
altered = warm + [{"role": "assistant", "content": "not the reply"}, {"role": "user", "content": "go on"}]
status, body = chat("alt", altered)
checks["altered"] = status
checks["altered_message"] = body["error"]["message"]
checks["unnamed"] = post("/v1/chat/completions", {"messages": warm})[0]
json.dump(checks, open(sys.argv[1], "w"))

def session(task, j):
    sid = f"t{task}-{j}"
    messages = [{"role": "user", "content": f"Task {task}: say something."}]
    status, reply = chat(sid, messages)
    assert status == 200, reply
    messages += [reply["choices"][0]["message"],
                 {"role": "user", "content": "The tool says 42. Now answer."}]
    status, reply = chat(sid, messages)
    assert status == 200, reply
    text = reply["choices"][0]["message"]["content"]
    post("/v1/rl/reward", {"session": sid, "reward": (len(text) % 5) / 4.0})

task = 0
with concurrent.futures.ThreadPoolExecutor(GROUP) as pool:
    while True:
        try:
            list(pool.map(lambda j: session(task, j), range(GROUP)))
        except (urllib.error.URLError, ConnectionError):
            break  # the run is over
        task += 1
"#;

/// configs/smoke.toml without its rewards (the agent gives them) and with the agent.
fn config(dir: &Path, checks: &Path) -> PathBuf {
    let text = std::fs::read_to_string(smoke_config()).unwrap();
    let (head, rest) = text.split_once("[[rewards]]").unwrap();
    let rollout = &rest[rest.find("[rollout]").unwrap()..];
    let script = dir.join("agent.py");
    std::fs::write(&script, AGENT).unwrap();
    let agents = format!(
        "[rollout.agents]\ncommand = [{:?}, {:?}, {:?}]\nstep_timeout_s = 300\n\n",
        python(),
        script,
        checks
    );
    let rollout = rollout.replace(
        "[learner]",
        &format!("source = \"agents\"\n\n{agents}[learner]"),
    );
    let path = dir.join("agents.toml");
    std::fs::write(&path, format!("{head}{rollout}")).unwrap();
    path
}

#[test]
fn an_outside_agent_trains_the_policy_through_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let checks = dir.path().join("checks.json");
    let out = dir.path().join("run");
    let output = train_command(&config(dir.path(), &checks), &out, &["steps=3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines = training_lines(&out);
    assert_eq!(lines.len(), 3, "{stderr}");
    for line in &lines {
        // prompts_per_step = 2 groups of group_size = 4 sessions.
        assert_eq!(line["oxrl_learner_samples"], 8.0, "{line}");
        assert!(line["rewards/agent/mean"].is_number(), "{line}");
    }
    // Step 0's sessions ran on the initial policy: the learner scores exactly the tokens
    // and logprobs the endpoint sampled, across both calls and the tool message between.
    let ratio = lines[0]["oxrl_learner_ratio_max"].as_f64().unwrap();
    assert!((ratio - 1.0).abs() < 1e-4, "{ratio}");
    assert!(std::fs::read_to_string(out.join("agent_url"))
        .unwrap()
        .starts_with("http://127.0.0.1:"));

    let checks: Value = serde_json::from_str(&std::fs::read_to_string(&checks).unwrap()).unwrap();
    for (check, status) in [
        ("unknown_reward", 404),
        ("first_call", 200),
        ("finish", 200),
        ("call_after_finish", 409),
        ("reward_twice", 409),
        ("altered", 400),
        ("unnamed", 400),
    ] {
        assert_eq!(checks[check], status, "{check}: {checks}");
    }
    let message = checks["altered_message"].as_str().unwrap();
    assert!(message.contains("message 1 differs"), "{message}");
}

#[test]
fn rewards_and_eval_are_refused_with_agents() {
    let out = tempfile::tempdir().unwrap();
    let sets = ["rollout.source=\"agents\"", "eval.every=5"];
    let output = smoke_train(out.path(), &sets).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("[eval]") && stderr.contains("[[rewards]]"),
        "{stderr}"
    );
}
