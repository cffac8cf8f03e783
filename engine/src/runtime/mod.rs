//! How oxrl's threads share the CPU cores with other work: `[runtime]`.
//!
//! libtorch's CPU kernels, and oxrl's own (`kernels/omp.rs`), run on libgomp's OpenMP team.
//! A thread that waits, at the barrier ending a parallel region or for the next one, spins
//! `GOMP_SPINCOUNT` times (`pause` in a loop; 300,000 by default, a few milliseconds) before
//! it sleeps. Alone on the machine that costs nothing. Beside other busy processes it is
//! ruinous: when the scheduler takes a team thread off its core, its teammates spin out their
//! time slices at every barrier, and generation fell to a fraction of its share of the cores
//! (`bench/contention.sh`; numbers in docs/rollout.md, "Sharing the cores"). oxrl itself starts
//! such work: code-reward sandboxes, tool calls, a local vLLM server.
//!
//! libgomp reads `GOMP_SPINCOUNT` and `OMP_WAIT_POLICY` once, when it is loaded, and the `oxrl`
//! binary links libtorch (and with it libgomp), so that is before `main`; no call changes them
//! afterwards. [`reexec_with_omp_env`] therefore sets `GOMP_SPINCOUNT` and executes the binary
//! again, once, at the start of a command, unless the user set either variable: what the user
//! exported always wins.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use serde::{Deserialize, Serialize};

pub mod threads;
pub use threads::adapt_threads;

/// libgomp's environment variable for the busy-wait length (`pause` iterations).
pub const SPIN_VAR: &str = "GOMP_SPINCOUNT";
/// The OpenMP standard's wait policy variable (`active`/`passive`), which libgomp also reads.
pub const POLICY_VAR: &str = "OMP_WAIT_POLICY";

/// The busy-wait oxrl gives libgomp unless told otherwise, in `pause` iterations: ~40 µs on
/// the 2-core machine of docs/rollout.md ("Sharing the cores"), where a `pause` takes 13 ns.
///
/// Measured with `bench/contention.sh`: that covers most gaps between a decode step's
/// parallel regions, so alone generation is as fast as with libgomp's 300,000 (1,000 cost a
/// fifth of it), while beside a busy process a thread whose teammate lost its core sleeps
/// soon enough to give its own core away (2x libgomp's default there; 10,000: 1.4x).
pub const DEFAULT_OMP_SPIN: u64 = 3_000;

/// `[runtime]`: threads and waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// libgomp's busy-wait before an idle OpenMP thread sleeps, in `pause` iterations
    /// (`GOMP_SPINCOUNT`); 0 sleeps at once (`OMP_WAIT_POLICY=passive`). Unset:
    /// [`DEFAULT_OMP_SPIN`]. `GOMP_SPINCOUNT` or `OMP_WAIT_POLICY` in the environment win.
    pub omp_spin: Option<u64>,
    /// libtorch's intra-op threads (the OpenMP team's size); 0 = libtorch's default, one per
    /// core (or `OMP_NUM_THREADS`). Fewer leave cores to reward processes or a local vLLM
    /// server for good.
    pub threads: usize,
    /// Shrink the team while other processes keep cores busy, and grow it back to `threads`
    /// when they stop ([`threads`]). Off: bit-reproducible numerics whatever the load.
    pub adapt_threads: bool,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            omp_spin: None,
            threads: 0,
            adapt_threads: true,
        }
    }
}

impl RuntimeSection {
    /// Applies the thread settings to this process: libtorch's thread count, and whether
    /// [`threads::adapt_threads`] may change it.
    pub fn apply_threads(&self) {
        if self.threads > 0 {
            tch::set_num_threads(self.threads as i32);
        }
        let max = tch::get_num_threads().max(1) as usize;
        threads::set_adaptive(self.adapt_threads.then_some(max));
    }
}

/// What to do about libgomp's waiting, given the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OmpEnv {
    /// The environment already says how to wait (the user's variables, or ours after the
    /// re-exec): leave it.
    Keep,
    /// Run with `GOMP_SPINCOUNT` set to this.
    Set(u64),
}

/// Decides the spin count for `section`, reading the environment through `var`; a variable
/// the user set (even to a value oxrl would not choose) is kept, so it is never overridden.
pub fn plan(section: &RuntimeSection, var: impl Fn(&str) -> Option<OsString>) -> OmpEnv {
    if var(SPIN_VAR).is_some() || var(POLICY_VAR).is_some() {
        return OmpEnv::Keep;
    }
    OmpEnv::Set(section.omp_spin.unwrap_or(DEFAULT_OMP_SPIN))
}

/// Executes this binary again with `GOMP_SPINCOUNT` set, when [`plan`] says so; otherwise (or
/// if the exec fails, with a warning) returns and the command runs as it is. Call it before
/// any thread starts: the new image replaces the whole process (same pid, arguments, stdio).
pub fn reexec_with_omp_env(section: &RuntimeSection) {
    let OmpEnv::Set(spin) = plan(section, |k| std::env::var_os(k)) else {
        if let Some(spin) = section.omp_spin {
            if std::env::var_os(SPIN_VAR).as_deref() != Some(spin.to_string().as_ref()) {
                eprintln!("note: runtime.omp_spin = {spin} is not applied: {SPIN_VAR} or {POLICY_VAR} is set in the environment");
            }
        }
        return;
    };
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    // /proc/self/exe is this very file even when argv[0] is a bare name found on $PATH, or the
    // binary was replaced on disk since (a rebuild).
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(SPIN_VAR, spin.to_string())
        .exec();
    eprintln!("warning: could not re-execute oxrl with {SPIN_VAR}={spin} ({err}); OpenMP threads keep libgomp's default busy-wait");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.into())
    }

    #[test]
    fn default_and_configured_spin_counts_are_set() {
        let section = RuntimeSection::default();
        assert_eq!(plan(&section, env(&[])), OmpEnv::Set(DEFAULT_OMP_SPIN));
        let passive = RuntimeSection {
            omp_spin: Some(0),
            ..Default::default()
        };
        assert_eq!(plan(&passive, env(&[("PATH", "/bin")])), OmpEnv::Set(0));
    }

    #[test]
    fn the_section_defaults_to_oxrls_spin_and_adaptive_threads() {
        let empty: RuntimeSection = toml::from_str("").unwrap();
        assert_eq!(empty, RuntimeSection::default());
        assert_eq!(
            (empty.omp_spin, empty.threads, empty.adapt_threads),
            (None, 0, true)
        );
        let set: RuntimeSection =
            toml::from_str("omp_spin = 0\nthreads = 1\nadapt_threads = false").unwrap();
        assert_eq!(
            (set.omp_spin, set.threads, set.adapt_threads),
            (Some(0), 1, false)
        );
        assert!(toml::from_str::<RuntimeSection>("omp_wait = 1").is_err());
    }

    #[test]
    fn the_users_variables_win() {
        let section = RuntimeSection {
            omp_spin: Some(0),
            ..Default::default()
        };
        for vars in [
            &[(POLICY_VAR, "active")][..],
            &[(SPIN_VAR, "300000")][..],
            &[(SPIN_VAR, "")][..],
        ] {
            let vars: &'static [(&str, &str)] = vars;
            assert_eq!(plan(&section, env(vars)), OmpEnv::Keep, "{vars:?}");
        }
    }
}
