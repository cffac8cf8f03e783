//! Per-run Linux cgroups (v1 `pids`/`memory` hierarchies, or a v2 unified one) that cap the
//! number of processes and the total memory of one sandboxed run. Best effort: where the
//! hierarchy is missing or not writable, [`RunGroup::create`] returns `None` and the sandbox
//! relies on rlimits alone (see [`super::sandbox::Protections`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The cgroup directories of one run.
#[derive(Debug)]
pub struct RunGroup {
    dirs: Vec<PathBuf>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// This process's own path in a hierarchy, from `/proc/self/cgroup`.
fn own_path(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        hit.then(|| path.to_string())
    })
}

/// Prefix of a run's cgroup; the owner's pid follows, so a sweep can tell stale ones.
const PREFIX: &str = "oxrl-sandbox-";

fn make(base: &Path, limits: &[(&str, String)]) -> Option<PathBuf> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("{PREFIX}{}-{n}", std::process::id()));
    fs::create_dir(&dir).ok()?;
    for (file, value) in limits {
        if fs::write(dir.join(file), value).is_err() {
            let _ = fs::remove_dir(&dir);
            return None;
        }
    }
    Some(dir)
}

/// The hierarchies' directories this process's run groups are made in.
fn bases() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let under = |controller: &str, dir: PathBuf| {
        own_path(controller).map(|p| dir.join(p.trim_start_matches('/')))
    };
    if root.join("pids").is_dir() {
        [("pids", root.join("pids")), ("memory", root.join("memory"))]
            .into_iter()
            .filter_map(|(c, d)| under(c, d))
            .collect()
    } else {
        under("", root.to_path_buf()).into_iter().collect()
    }
}

/// Kills what is left in the run groups of processes that died without removing them, then
/// removes the groups.
pub fn sweep_stale() {
    let mut dirs = Vec::new();
    for base in bases() {
        for entry in fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if super::sandbox::owner(&name, PREFIX).is_some_and(super::sandbox::is_dead) {
                dirs.push(entry.path());
            }
        }
    }
    if !dirs.is_empty() {
        RunGroup { dirs }.destroy();
    }
}

impl RunGroup {
    /// Creates cgroups limiting processes and memory; `None` where no hierarchy is usable.
    pub fn create(max_processes: u64, memory_bytes: u64) -> Option<RunGroup> {
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = Vec::new();
        if root.join("pids").is_dir() {
            // cgroup v1: one hierarchy per controller.
            let pids_base = root
                .join("pids")
                .join(own_path("pids")?.trim_start_matches('/'));
            let mem_base = root
                .join("memory")
                .join(own_path("memory")?.trim_start_matches('/'));
            dirs.push(make(
                &pids_base,
                &[("pids.max", max_processes.to_string())],
            )?);
            match make(
                &mem_base,
                &[("memory.limit_in_bytes", memory_bytes.to_string())],
            ) {
                Some(d) => dirs.push(d),
                None => {
                    RunGroup { dirs }.destroy();
                    return None;
                }
            }
        } else if root.join("cgroup.controllers").is_file() {
            let base = root.join(own_path("")?.trim_start_matches('/'));
            dirs.push(make(
                &base,
                &[
                    ("pids.max", max_processes.to_string()),
                    ("memory.max", memory_bytes.to_string()),
                ],
            )?);
        } else {
            return None;
        }
        Some(RunGroup { dirs })
    }

    /// The `cgroup.procs` files a child writes `0` into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Whether the memory limit was hit during the run.
    pub fn memory_limit_hit(&self) -> bool {
        self.dirs.iter().any(|d| {
            fs::read_to_string(d.join("memory.failcnt")).is_ok_and(|s| s.trim() != "0")
                || fs::read_to_string(d.join("memory.events")).is_ok_and(|s| {
                    s.lines()
                        .any(|l| l.starts_with("oom_kill ") && l.trim() != "oom_kill 0")
                })
        })
    }

    /// Kills every process left in the groups, then removes them.
    pub fn destroy(self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &self.dirs {
            loop {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                let pids: Vec<i32> = procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect();
                for pid in &pids {
                    // SAFETY: kill(2) with a pid read from our own cgroup; no memory is touched.
                    unsafe {
                        libc::kill(*pid, libc::SIGKILL);
                    }
                }
                if fs::remove_dir(dir).is_ok() || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
