//! `oxrl reward` scores JSONL through the rewards crate, one output line per input line.

use std::process::Command;

#[test]
fn reward_command_scores_each_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let lines = [
        r#"{"completion": "so the answer is \\boxed{\\frac{1}{2}}", "answer": "0.5"}"#,
        r#"{"completion": "Natalia sold 48 + 24 = 72 clips.\n#### 72", "answer": "72"}"#,
        r#"{"completion": "I think 41", "answer": "42"}"#,
        r#"{"completion": "no reference here"}"#,
    ];
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oxrl"))
        .args(["reward", "--reward", "math", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let scores: Vec<f64> = rows.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert_eq!(scores, [1.0, 1.0, 0.0, 0.0]);
    assert!(rows[2].get("error").is_none());
    assert!(rows[3]["error"].as_str().unwrap().contains("answer"));
}

/// The `oxrl-sandbox-*` run groups of process `pid`, in the cgroup hierarchy this process
/// (and so its children) belong to.
fn run_groups_of(pid: u32) -> Vec<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut bases = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let root = std::path::Path::new("/sys/fs/cgroup");
        let base = match controllers {
            "" => root.to_path_buf(),
            c if c.split(',').any(|c| c == "pids") => root.join("pids"),
            _ => continue,
        };
        bases.push(base.join(path.trim_start_matches('/')));
    }
    let prefix = format!("oxrl-sandbox-{pid}-");
    bases
        .iter()
        .flat_map(|b| std::fs::read_dir(b).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
        })
        .collect()
}

#[test]
fn a_killed_oxrl_leaves_no_program_running_and_the_next_start_sweeps_its_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("loop.jsonl");
    std::fs::write(
        &input,
        r#"{"completion": "while True:\n    pass\n", "tests": "pass"}"#,
    )
    .unwrap();
    let options = dir.path().join("code.toml");
    std::fs::write(&options, "timeout_s = 600.0\n").unwrap();
    let mut oxrl = Command::new(env!("CARGO_BIN_EXE_oxrl"))
        .args(["reward", "--reward", "code", "--config"])
        .arg(&options)
        .arg("--input")
        .arg(&input)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = oxrl.id();
    // Wait until the program runs in its run group.
    let start = std::time::Instant::now();
    let busy = |groups: &[std::path::PathBuf]| {
        groups.iter().any(|g| {
            std::fs::read_to_string(g.join("cgroup.procs")).is_ok_and(|p| !p.trim().is_empty())
        })
    };
    while !busy(&run_groups_of(pid)) {
        assert!(
            start.elapsed().as_secs() < 60,
            "the sandboxed program never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    oxrl.kill().unwrap(); // SIGKILL: no clean-up code runs
    oxrl.wait().unwrap();
    let temp = std::env::temp_dir();
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(&temp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("oxrl-code-{pid}-")))
            .collect()
    };
    // The program died with its parent (its wall clock died with oxrl).
    let start = std::time::Instant::now();
    while busy(&run_groups_of(pid)) {
        assert!(
            start.elapsed().as_secs() < 10,
            "the sandboxed program outlived oxrl"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        !leftovers().is_empty() || !run_groups_of(pid).is_empty(),
        "nothing was left to sweep"
    );
    // The next sandbox sweeps the dead run's temp dir and cgroups.
    let quick = dir.path().join("quick.jsonl");
    std::fs::write(
        &quick,
        r#"{"completion": "x = 1", "tests": "assert x == 1"}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oxrl"))
        .args(["reward", "--reward", "code", "--input"])
        .arg(&quick)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(leftovers().is_empty(), "stale temp dirs: {:?}", leftovers());
    assert!(
        run_groups_of(pid).is_empty(),
        "stale run groups: {:?}",
        run_groups_of(pid)
    );
}
