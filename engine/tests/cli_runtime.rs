//! `[runtime] omp_spin` reaches libgomp: the `oxrl` binary re-executes itself with
//! `GOMP_SPINCOUNT` set before libgomp reads it, and leaves the user's own variables alone.
//! libgomp itself reports what it read (`OMP_DISPLAY_ENV=verbose` prints its settings when it
//! is loaded, once per executed image).

use std::path::Path;
use std::process::Command;

use oxrl::runtime::{DEFAULT_OMP_SPIN, POLICY_VAR, SPIN_VAR};

/// The values libgomp printed for `key`, one per time it was loaded in the process.
fn displayed(stderr: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key} = '");
    stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&prefix)?.strip_suffix('\''))
        .map(str::to_owned)
        .collect()
}

/// `oxrl config check configs/smoke.toml` with `env` (and no inherited wait settings) and
/// `--set` for each of `sets`; libgomp's displayed (spin counts, wait policies).
fn check(env: &[(&str, &str)], sets: &[&str]) -> (Vec<String>, Vec<String>) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/smoke.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oxrl"));
    cmd.args(["config", "check"])
        .arg(config)
        .env_remove(SPIN_VAR)
        .env_remove(POLICY_VAR)
        .env("OMP_DISPLAY_ENV", "verbose")
        .envs(env.iter().copied());
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    (displayed(&stderr, SPIN_VAR), displayed(&stderr, POLICY_VAR))
}

#[test]
fn libgomp_starts_with_oxrls_spin_count() {
    let (spins, _) = check(&[], &[]);
    // Loaded twice: with libgomp's default in the first image, ours after the re-exec.
    assert_eq!(spins.len(), 2, "{spins:?}");
    assert_eq!(spins[1], DEFAULT_OMP_SPIN.to_string());
    let (spins, _) = check(&[], &["runtime.omp_spin=0"]);
    assert_eq!(spins.last().map(String::as_str), Some("0"));
}

#[test]
fn the_users_wait_settings_are_kept() {
    let (spins, policies) = check(&[(POLICY_VAR, "active")], &["runtime.omp_spin=0"]);
    assert_eq!(policies, ["ACTIVE"], "no re-exec");
    assert_eq!(spins, ["30000000000"], "libgomp's active spin");
    let (spins, _) = check(&[(SPIN_VAR, "1234")], &[]);
    assert_eq!(spins, ["1234"]);
}
