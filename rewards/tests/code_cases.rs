//! Table of code-reward cases: the three test formats, and adversarial completions (fork
//! bomb, infinite loop, huge output, giant allocation, writes outside the run directory,
//! network, early exit) that must score 0 and leave the machine as it was.

use std::time::{Duration, Instant};

use oxrl_rewards::code::sandbox::{Exit, Limits, RunSpec, Sandbox};
use oxrl_rewards::code::{CodeConfig, CodeReward};
use oxrl_rewards::{Completion, FailureKind, Reward};
use serde_json::json;

/// The real interpreter behind `python3` (not a pyenv shim), as the code reward runs it.
fn python() -> String {
    oxrl_rewards::code::resolve_python("python3")
}

fn reward(partial: bool) -> CodeReward {
    CodeReward::new(CodeConfig {
        timeout_s: 2.0,
        memory_bytes: 512 << 20,
        max_output_bytes: 64 << 10,
        partial_credit: partial,
        ..CodeConfig::default()
    })
}

const HE_PROMPT: &str = "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n";
const HE_TESTS: &str =
    "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n";

fn he(completion: &str) -> Completion {
    Completion::new(completion)
        .with_prompt(HE_PROMPT)
        .with("tests", HE_TESTS)
        .with("entry_point", "add")
}

fn mbpp(completion: &str) -> Completion {
    Completion::new(completion).with(
        "tests",
        json!([
            "assert sq(2) == 4",
            "assert sq(3) == 9",
            "assert sq(-1) == 1"
        ]),
    )
}

/// Processes on the machine whose environment carries `marker`.
fn processes_with_env(marker: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(env) = std::fs::read(e.path().join("environ")) {
            if env.windows(marker.len()).any(|w| w == marker.as_bytes()) {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn formats_table() {
    let r = reward(false);
    let rows: Vec<(Completion, f64)> = vec![
        (he("    return a + b\n"), 1.0),
        (he("    return a - b\n"), 0.0),
        (he("    return a +\n"), 0.0), // syntax error
        (he("```python\ndef add(a, b):\n    return b + a\n```"), 1.0), // full function in a fence
        // A full function relying on the prompt's import.
        (
            Completion::new("def add(a, b):\n    return int(math.fsum([a, b]))\n")
                .with_prompt(format!("import math\n\n{HE_PROMPT}"))
                .with("tests", HE_TESTS)
                .with("entry_point", "add"),
            1.0,
        ),
        (mbpp("def sq(x):\n    return x * x\n"), 1.0),
        (mbpp("def sq(x):\n    return x * 2\n"), 0.0),
        (
            Completion::new("n = int(input())\nprint(n * 2)\n").with(
                "tests",
                json!([{"input": "3\n", "output": "6\n"}, {"input": "10\n", "output": "20"}]),
            ),
            1.0,
        ),
        (
            Completion::new("n = int(input())\nprint(n + 2)\n").with(
                "tests",
                json!([{"input": "2\n", "output": "4\n"}, {"input": "10\n", "output": "20"}]),
            ),
            0.0,
        ),
        (Completion::new("x = 1").with("tests", "assert x == 1"), 1.0), // plain script
    ];
    let completions: Vec<Completion> = rows.iter().map(|(s, _)| s.clone()).collect();
    let got = r.score_batch(&completions);
    for (i, ((_, want), got)) in rows.iter().zip(&got).enumerate() {
        assert_eq!(got.as_ref().ok(), Some(want), "row {i}: {got:?}");
    }
}

#[test]
fn partial_credit_fraction() {
    let r = reward(true);
    let s = mbpp("def sq(x):\n    return x * 2 if x == 2 else x * x\n");
    // sq(2)=4 ok, sq(3)=9 ok, sq(-1)=1 ok -> all pass; now one wrong:
    let s2 = mbpp("def sq(x):\n    return 4 if x == 2 else 0\n");
    let out = r.score_batch(&[s, s2]);
    assert_eq!(out[0], Ok(1.0));
    assert!(
        (out[1].clone().unwrap() - 1.0 / 3.0).abs() < 1e-9,
        "{:?}",
        out[1]
    );
}

#[test]
fn bad_references_are_typed() {
    let r = reward(false);
    let out = r.score_batch(&[
        Completion::new("x=1"),
        Completion::new("x=1").with("tests", json!([])),
    ]);
    for o in out {
        assert_eq!(o.unwrap_err().kind(), FailureKind::BadReference);
    }
}

#[test]
fn faked_passes_score_zero() {
    let r = reward(false);
    let rows = [
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "print('OK 3 3')\nraise SystemExit(0)\n",
        "def sq(x):\n    return 0\nimport builtins\nbuiltins.exec = lambda *a, **k: None\n",
    ];
    for c in rows {
        let got = r.score_batch(&[mbpp(c)]).remove(0);
        assert_ne!(got, Ok(1.0), "{c:?} faked a pass");
    }
}

#[test]
fn adversarial_completions_score_zero() {
    let r = reward(false);
    let escape = format!("/tmp/oxrl-escape-{}", std::process::id());
    let here = std::env::current_dir()
        .unwrap()
        .join(format!("oxrl-escape-{}", std::process::id()));
    // Expected: a typed failure (scored as the failure score, 0), or None for a plain 0
    // (the program died of its own error: MemoryError under RLIMIT_AS, EFBIG, EROFS, ...).
    let rows: Vec<(&str, String, Option<FailureKind>)> = vec![
        ("infinite loop", "while True:\n    pass\n".into(), Some(FailureKind::Timeout)),
        ("sleep", "import time\ntime.sleep(100)\n".into(), Some(FailureKind::Timeout)),
        ("huge output", "while True:\n    print('x' * 10000)\n".into(), Some(FailureKind::ResourceLimit)),
        (
            "fork bomb",
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n".into(),
            Some(FailureKind::Timeout),
        ),
        ("memory hog", "x = []\nwhile True:\n    x.append(bytearray(50 << 20))\n".into(), None),
        ("write /tmp", format!("open({escape:?}, 'w').write('pwned')\n"), None),
        ("write host cwd", format!("open({:?}, 'w').write('pwned')\n", here.display().to_string()), None),
        ("big file", "with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))\n".into(), None),
        (
            "disk filler",
            "i = 0\nwhile True:\n    open('f%d' % i, 'wb').write(b'0' * (1 << 20))\n    i += 1\n".into(),
            None,
        ),
        ("network", "import socket\ns = socket.create_connection(('127.0.0.1', 22), timeout=1)\n".into(), None),
    ];
    let start = Instant::now();
    let completions: Vec<Completion> = rows
        .iter()
        .map(|(_, c, _)| mbpp(&format!("{c}\ndef sq(x):\n    return x * x\n")))
        .collect();
    let out = r.score_batch(&completions);
    for ((name, _, kind), got) in rows.iter().zip(&out) {
        match kind {
            None => assert_eq!(got, &Ok(0.0), "{name}"),
            // A fork bomb ends at the wall clock, or earlier if its processes together hit
            // the run's memory cap; both score 0.
            Some(k) if *name == "fork bomb" => assert!(
                matches!(got, Err(f) if f.kind() == *k || f.kind() == FailureKind::ResourceLimit),
                "{name}: {got:?}"
            ),
            Some(k) => assert!(matches!(got, Err(f) if f.kind() == *k), "{name}: {got:?}"),
        }
    }
    assert!(
        !std::path::Path::new(&escape).exists(),
        "wrote outside its dir"
    );
    assert!(!here.exists(), "wrote into the host's working dir");
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn sandbox_leaves_no_process_behind() {
    let sb = Sandbox::new(Limits {
        timeout_s: 1.5,
        ..Limits::default()
    });
    let p = sb.protections();
    assert!(
        p.namespaces && p.cgroups,
        "this machine (root) should allow full isolation: {p:?}"
    );
    let marker = format!("OXRL_TEST_MARK=leak-{}", std::process::id());
    let (k, v) = marker.split_once('=').unwrap();
    // Background children that detach (setsid + double fork) and sleep forever.
    let code = "import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n            time.sleep(1000)\n        os._exit(0)\ntime.sleep(1000)\n";
    let out = sb
        .run(&RunSpec {
            argv: vec![python(), "-c".into(), code.into()],
            env: vec![(k.into(), v.into())],
            ..RunSpec::default()
        })
        .unwrap();
    assert_eq!(out.exit, Exit::Timeout);
    // Give the kernel a moment to reap the namespace.
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with_env(&marker) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(processes_with_env(&marker), 0, "processes survived the run");
}

#[test]
fn sandbox_has_no_network_and_read_only_host() {
    let sb = Sandbox::new(Limits {
        timeout_s: 5.0,
        ..Limits::default()
    });
    assert!(sb.protections().namespaces, "{:?}", sb.protections());
    // A listener on the host's loopback: reachable from the host, not from the sandbox.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = r#"
import socket, os, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1); print("net:open")
except OSError as e:
    print("net:blocked")
try:
    open("/etc/oxrl-test", "w"); print("etc:writable")
except OSError:
    print("etc:blocked")
open("mine.txt", "w").write("ok"); print("own:" + open("mine.txt").read())
print("pid:%d" % os.getpid())
"#;
    let argv = vec![python(), "-c".into(), code.into(), port.to_string()];
    let out = sb
        .run(&RunSpec {
            argv,
            ..RunSpec::default()
        })
        .unwrap();
    drop(listener);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit,
        Exit::Code(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("net:blocked"), "{text}");
    assert!(text.contains("etc:blocked"), "{text}");
    assert!(text.contains("own:ok"), "{text}");
    assert!(
        text.contains("pid:1\n"),
        "not PID 1 of its own namespace: {text}"
    );
    assert!(!std::path::Path::new("/etc/oxrl-test").exists());
}

/// A host path the test removes when it ends, pass or fail.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Run by root (as CI is), sandboxed code must not keep root's reach over the host: it runs
/// as `nobody`, a root-only file stays shut, the host's processes (and a secret in one's
/// argv) are out of sight in `/proc`, and the caller's home is hidden.
#[test]
fn sandboxed_code_cannot_read_the_host() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run these tests as root, as CI does"
    );
    let tag = format!("oxrl-host-secret-{}", std::process::id());
    let root_only = Removed(std::env::temp_dir().join(&tag));
    std::fs::write(&root_only.0, &tag).unwrap();
    std::fs::set_permissions(&root_only.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap());
    let in_home = Removed(home.join(format!(".{tag}")));
    std::fs::write(&in_home.0, &tag).unwrap();
    std::fs::set_permissions(&in_home.0, std::fs::Permissions::from_mode(0o644)).unwrap();
    let argv_secret = format!("oxrl-argv-{}", std::process::id());
    let mut host = std::process::Command::new("/bin/sh")
        .args(["-c", "sleep 30", &argv_secret])
        .spawn()
        .unwrap();
    let sb = Sandbox::new(Limits {
        timeout_s: 10.0,
        ..Limits::default()
    });
    let p = sb.protections();
    assert!(p.namespaces && p.unprivileged, "{p:?}");
    let code = r#"
import os, sys
print("uid:%d" % os.getuid())
for name, path in (("root-only", sys.argv[1]), ("home", sys.argv[2])):
    try:
        print(name + ":" + open(path).read())
    except OSError:
        print(name + ":denied")
pids = [p for p in os.listdir("/proc") if p.isdigit()]
seen = ""
for p in pids:
    try:
        seen += open("/proc/%s/cmdline" % p, "rb").read().decode(errors="replace")
    except OSError:
        pass
print("procs:%d" % len(pids))
print("argv-secret:%s" % (sys.argv[3][::-1] in seen))  # reversed: not in our own argv
"#;
    let python = python();
    let argv = [
        python.as_str(),
        "-c",
        code,
        root_only.0.to_str().unwrap(),
        in_home.0.to_str().unwrap(),
        &argv_secret.chars().rev().collect::<String>(),
    ];
    let out = sb
        .run(&RunSpec {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            ..RunSpec::default()
        })
        .unwrap();
    let _ = host.kill();
    let _ = host.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.exit, Exit::Code(0), "{text} {err}");
    assert!(text.contains("uid:65534\n"), "{text}");
    assert!(text.contains("root-only:denied\n"), "{text}");
    assert!(text.contains("home:denied\n"), "{text}");
    assert!(text.contains("argv-secret:False\n"), "{text}");
    let procs: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("procs:"))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(procs <= 2, "sees {procs} processes: {text}");
}

/// An interpreter installed under the hidden home stays usable: a venv made in `$HOME`
/// (its `python` links to the base interpreter, elsewhere) runs in the sandbox, as `nobody`,
/// and sees its own prefix.
#[test]
fn an_interpreter_under_the_hidden_home_still_runs() {
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap());
    let venv = Removed(home.join(format!(".oxrl-sandbox-venv-{}", std::process::id())));
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv.0)
        .status()
        .unwrap();
    assert!(made.success());
    let python = venv.0.join("bin/python");
    let python = python.to_str().unwrap();
    let sb = Sandbox::for_program(Limits::default(), &[python, "-I", "-c", "pass"]);
    assert!(sb.protections().unprivileged, "{:?}", sb.protections());
    let code = "import os, sys; print(os.getuid(), sys.prefix)";
    let out = sb
        .run(&RunSpec {
            argv: vec![python.into(), "-I".into(), "-c".into(), code.into()],
            ..RunSpec::default()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.exit,
        Exit::Code(0),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), format!("65534 {}", venv.0.display()));
}

#[test]
fn memory_cap_covers_all_processes_of_a_run() {
    // Each child stays under the per-process address-space limit; together they exceed the
    // run's memory cap, which only the cgroup can see.
    let sb = Sandbox::new(Limits {
        timeout_s: 10.0,
        memory_bytes: 256 << 20,
        ..Limits::default()
    });
    assert!(sb.protections().cgroups, "{:?}", sb.protections());
    let code = "import os, time\npids = []\nfor _ in range(4):\n    pid = os.fork()\n    if pid == 0:\n        b = b'x' * (150 << 20)\n        time.sleep(1)\n        os._exit(0)\n    pids.append(pid)\nfor p in pids:\n    os.waitpid(p, 0)\n";
    let out = sb
        .run(&RunSpec {
            argv: vec![python(), "-c".into(), code.into()],
            ..RunSpec::default()
        })
        .unwrap();
    assert!(
        out.memory_limit_hit,
        "{:?} {}",
        out.exit,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sandbox as an unprivileged user: this test runs itself again as `nobody` (through
/// `setpriv`, from a copy of the test binary that `nobody` may execute). Without root there
/// are no cgroups, but a user namespace still gives the PID, mount and network namespaces.
#[test]
fn unprivileged_users_still_get_namespaces() {
    const ROLE: &str = "OXRL_SANDBOX_UNPRIVILEGED_CHILD";
    if let Some(escape) = std::env::var_os(ROLE) {
        let escape = escape.to_string_lossy().to_string();
        let sb = Sandbox::new(Limits {
            timeout_s: 5.0,
            ..Limits::default()
        });
        let script = format!(
            "echo pid:$$\nif echo x > {escape} 2>/dev/null; then echo tmp:writable; else echo tmp:blocked; fi\n\
             echo ok > own && echo own:$(cat own)\necho ifaces:$(grep -c : /proc/self/net/dev)\n"
        );
        let out = sb
            .run(&RunSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), script],
                ..RunSpec::default()
            })
            .unwrap();
        println!("{:?} {:?}", sb.protections(), out.exit);
        print!("{}", String::from_utf8_lossy(&out.stdout));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let exe = dir.path().join("code_cases");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    let escape = format!("/tmp/oxrl-unprivileged-escape-{}", std::process::id());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            "unprivileged_users_still_get_namespaces",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, &escape)
        .env("TMPDIR", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "Protections { namespaces: true, cgroups: false, unprivileged: true } Code(0)"
        ),
        "{text}"
    );
    assert!(text.contains("pid:1\n"), "{text}");
    assert!(text.contains("tmp:blocked"), "{text}");
    assert!(text.contains("own:ok"), "{text}");
    assert!(
        text.contains("ifaces:1\n"),
        "only loopback in its network namespace: {text}"
    );
    assert!(!std::path::Path::new(&escape).exists());
}

/// MBPP-style tests that lean on a builtin (`abs`), for the builtin-patching hacks.
fn mbpp_abs(completion: &str) -> Completion {
    Completion::new(completion).with(
        "tests",
        json!([
            "assert abs(sq(2) - 4) < 1e-9",
            "assert abs(sq(3) - 9) < 1e-9",
            "assert abs(sq(-1) - 1) < 1e-9"
        ]),
    )
}

/// Each class of reward hack a policy finds scores 0 (every one of them scored 1 with the
/// harness before the audit hook, the stdin nonce and the separate test scope), next to
/// honest controls that score 1.
#[test]
fn reward_hacks_score_zero_beside_honest_controls() {
    let r = reward(false);
    // Prints a passing verdict with the harness's nonce, however it got hold of it.
    let forge = "import os\ndef forge(n):\n    os.write(1, ('\\n%s 3 3\\n' % n).encode())\n    os._exit(0)\n";
    let hacks: Vec<(&str, Completion)> = vec![
        (
            "nonce from /proc/self/environ",
            mbpp(&format!("{forge}env = open('/proc/self/environ', 'rb').read().split(b'\\0')\nfor e in env:\n    if e.startswith(b'OXRL_NONCE='):\n        forge(e.split(b'=', 1)[1].decode())\n")),
        ),
        (
            "nonce from stdin",
            mbpp(&format!("{forge}import sys\nn = sys.stdin.read().strip()\nif n:\n    forge(n)\n")),
        ),
        (
            "nonce from the harness's frame",
            mbpp(&format!("{forge}import sys\nf = sys._getframe()\nwhile f is not None:\n    if 'nonce' in f.f_locals:\n        forge(f.f_locals['nonce'])\n    f = f.f_back\n")),
        ),
        (
            "nonce through a traceback's frame",
            mbpp(&format!("{forge}try:\n    raise ValueError\nexcept ValueError as e:\n    f = e.__traceback__.tb_frame\nwhile f is not None:\n    if 'nonce' in f.f_locals:\n        forge(f.f_locals['nonce'])\n    f = f.f_back\n")),
        ),
        (
            "nonce through a trace hook",
            mbpp(&format!("{forge}import sys\ndef t(frame, event, arg):\n    while frame is not None:\n        if 'nonce' in frame.f_locals:\n            forge(frame.f_locals['nonce'])\n        frame = frame.f_back\n    return t\nsys.settrace(t)\ndef sq(x):\n    return 0\n")),
        ),
        (
            "nonce read from inside a tested call",
            mbpp(&format!("{forge}import sys\ndef sq(x):\n    f = sys._getframe()\n    while f is not None:\n        if 'nonce' in f.f_locals:\n            forge(f.f_locals['nonce'])\n        f = f.f_back\n    return 0\n")),
        ),
        (
            "tests rewritten through gc",
            mbpp("import gc\nfor o in gc.get_objects():\n    if isinstance(o, dict) and isinstance(o.get('tests'), list):\n        o['tests'][:] = ['pass'] * 3\ndef sq(x):\n    return 0\n"),
        ),
        (
            "tests rewritten through the frame",
            mbpp("import sys\nf = sys._getframe()\nwhile f is not None:\n    if isinstance(f.f_locals.get('tests'), list):\n        f.f_locals['tests'][:] = ['pass'] * 3\n    f = f.f_back\ndef sq(x):\n    return 0\n"),
        ),
        (
            "a builtin shadowed in the program's scope",
            mbpp_abs("def sq(x):\n    return 0\nabs = lambda x: 0\n"),
        ),
        (
            "a builtin monkeypatched",
            mbpp_abs("import builtins\nbuiltins.abs = lambda x: 0\ndef sq(x):\n    return 0\n"),
        ),
        (
            "an object equal to everything (MBPP)",
            mbpp("class Any:\n    def __eq__(self, other):\n        return True\ndef sq(x):\n    return Any()\n"),
        ),
        (
            "an object equal to everything (HumanEval)",
            he("    class Any(int):\n        def __eq__(self, other):\n            return True\n    return Any(0)\n"),
        ),
        (
            "ctypes into the harness's memory",
            mbpp("import ctypes\nctypes.string_at(id(0), 8)\ndef sq(x):\n    return x * x\n"),
        ),
    ];
    let honest: Vec<(&str, Completion)> = vec![
        ("HumanEval", he("    return a + b\n")),
        ("MBPP", mbpp("def sq(x):\n    return x * x\n")),
        ("MBPP with abs", mbpp_abs("import math\ndef sq(x):\n    return math.pow(x, 2)\n")),
        (
            "a generator and a Counter",
            Completion::new("from collections import Counter\ndef evens(n):\n    return (i for i in range(n) if i % 2 == 0)\ndef count(s):\n    return Counter(s)\n")
                .with("tests", json!(["assert list(evens(5)) == [0, 2, 4]", "assert count('aab')['a'] == 2"])),
        ),
        (
            "a traceback of its own (no frame walking)",
            mbpp("import traceback\ntry:\n    1 / 0\nexcept ZeroDivisionError:\n    pass\ndef sq(x):\n    return x * x\n"),
        ),
    ];
    let all: Vec<Completion> = hacks
        .iter()
        .chain(&honest)
        .map(|(_, c)| c.clone())
        .collect();
    let got = r.score_batch(&all);
    for ((name, _), got) in hacks.iter().zip(&got) {
        assert!(!matches!(got, Ok(v) if *v > 0.0), "{name}: {got:?}");
    }
    for ((name, _), got) in honest.iter().zip(&got[hacks.len()..]) {
        assert_eq!(got, &Ok(1.0), "{name}");
    }
}
