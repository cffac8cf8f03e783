//! Adaptive thread count: libtorch's OpenMP team shrinks while other processes keep cores
//! busy and grows back when they stop (`runtime.adapt_threads`).
//!
//! An OpenMP team is as fast as its slowest thread: beside a busy process, a team of one
//! thread per core has one thread waiting for a core at almost every barrier, and the whole
//! team runs at a fraction of what the free cores would give (`bench/contention.sh`: 2 threads
//! beside one busy loop on 2 cores made 0.3-0.6 of the fair share, 1 thread 0.98). So every
//! [`ADAPT_EVERY`], between two parallel sections, [`adapt_threads`] reads how much CPU other
//! processes (reward sandboxes and other children included) used on this process's cores and
//! sets the team to the cores they left free.
//!
//! The thread count changes how libtorch's GEMMs and reductions split their sums, so with
//! adaptation on, the last bits of logits and gradients depend on the machine's load; a run
//! that must be bit-reproducible sets `adapt_threads = false`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the team's size is reconsidered: long enough that reading `/proc` costs
/// nothing against the work in between, short enough to follow a reward sandbox or a
/// training step of another process.
pub const ADAPT_EVERY: Duration = Duration::from_millis(500);

/// The largest team [`adapt_threads`] uses; 0 = adaptation off (the default).
static MAX_THREADS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Each thread that runs parallel sections has its own team (libgomp) and thread count
    /// (libtorch keeps it per thread once set), so its own governor.
    static GOVERNOR: RefCell<Option<Governor>> = const { RefCell::new(None) };
}

/// Turns adaptation on, with teams of at most `max_threads`, or off (`None`).
pub fn set_adaptive(max_threads: Option<usize>) {
    MAX_THREADS.store(max_threads.unwrap_or(0), Ordering::Relaxed);
}

/// Call between parallel sections (a decode step, a micro-batch): at most every
/// [`ADAPT_EVERY`] sets libtorch's thread count for this thread to the cores other processes
/// left free meanwhile. Does nothing while adaptation is off.
pub fn adapt_threads() {
    let max = MAX_THREADS.load(Ordering::Relaxed);
    if max == 0 {
        return;
    }
    GOVERNOR.with(|g| {
        let mut g = g.borrow_mut();
        match g.as_mut() {
            Some(governor) => governor.tick(max),
            None => *g = Governor::start(),
        }
    });
}

/// One thread's measurements since it last decided.
struct Governor {
    /// The cores this process may run on.
    cpus: Vec<usize>,
    at: Instant,
    sample: Sample,
    threads: usize,
}

/// CPU time in clock ticks: the busy time of `Governor::cpus` and this process's own.
#[derive(Clone, Copy)]
struct Sample {
    busy: u64,
    own: u64,
}

impl Governor {
    fn start() -> Option<Self> {
        let cpus = allowed_cpus()?;
        Some(Self {
            sample: Sample::read(&cpus)?,
            cpus,
            at: Instant::now(),
            threads: tch::get_num_threads().max(1) as usize,
        })
    }

    fn tick(&mut self, max: usize) {
        let elapsed = self.at.elapsed();
        if elapsed < ADAPT_EVERY {
            return;
        }
        let Some(now) = Sample::read(&self.cpus) else {
            return;
        };
        let others = self
            .sample
            .others_cores(now, elapsed.as_secs_f64(), ticks_per_second());
        let threads = team_size(self.cpus.len(), others, max);
        if threads != self.threads {
            tch::set_num_threads(threads as i32);
            self.threads = threads;
        }
        (self.sample, self.at) = (now, Instant::now());
    }
}

/// The team for `cores` cores of which other processes kept `others_cores` busy: the free
/// cores, rounded to the nearest whole core (a background using under half a core is
/// ignored), at least 1 and at most `max`.
pub fn team_size(cores: usize, others_cores: f64, max: usize) -> usize {
    let free = cores as f64 - others_cores.max(0.0);
    (free.round() as usize).clamp(1, max.max(1))
}

impl Sample {
    /// The cores other processes kept busy, on average, from `self` to `later`, `seconds`
    /// apart, with `hz` clock ticks a second.
    fn others_cores(self, later: Sample, seconds: f64, hz: f64) -> f64 {
        let busy = later.busy.saturating_sub(self.busy) as f64;
        let own = later.own.saturating_sub(self.own) as f64;
        (busy - own).max(0.0) / hz / seconds
    }

    fn read(cpus: &[usize]) -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        Some(Self {
            busy: busy_ticks(&stat, cpus)?,
            own: own_ticks(&own)?,
        })
    }
}

/// Busy clock ticks (user, nice, system, irq, softirq, steal) of `cpus` in `/proc/stat`.
fn busy_ticks(stat: &str, cpus: &[usize]) -> Option<u64> {
    let mut total = 0;
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(cpu) = fields.next().and_then(|n| n.strip_prefix("cpu")) else {
            continue;
        };
        let Ok(cpu) = cpu.parse::<usize>() else {
            continue; // the "cpu" line: all CPUs together
        };
        if !cpus.contains(&cpu) {
            continue;
        }
        let t: Vec<u64> = fields.take(8).map(|f| f.parse().unwrap_or(0)).collect();
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        total += t
            .iter()
            .enumerate()
            .filter(|(i, _)| ![3, 4].contains(i))
            .map(|(_, v)| v)
            .sum::<u64>();
    }
    Some(total)
}

/// This process's user + system clock ticks from `/proc/self/stat` (children not included:
/// their CPU counts as other processes').
fn own_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11); // field 3 (state) .. 13
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The CPUs this process may run on (its affinity mask).
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size is that of `set`.
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return None;
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_team_takes_the_cores_others_leave() {
        assert_eq!(team_size(2, 0.0, 2), 2, "alone");
        assert_eq!(team_size(2, 0.3, 2), 2, "a light background is ignored");
        assert_eq!(team_size(2, 0.7, 2), 1, "one busy process beside");
        assert_eq!(team_size(2, 1.0, 2), 1);
        assert_eq!(team_size(2, 3.0, 2), 1, "never below one thread");
        assert_eq!(team_size(16, 4.0, 8), 8, "never above the configured team");
        assert_eq!(team_size(16, 10.2, 8), 6);
    }

    #[test]
    fn others_are_the_busy_time_this_process_did_not_use() {
        let before = Sample { busy: 100, own: 50 };
        let after = Sample {
            busy: 300,
            own: 150,
        };
        assert_eq!(before.others_cores(after, 1.0, 100.0), 1.0);
        assert_eq!(before.others_cores(after, 0.5, 100.0), 2.0);
        // Ticks are counted at different moments: never below zero.
        let alone = Sample {
            busy: 140,
            own: 150,
        };
        assert_eq!(before.others_cores(alone, 1.0, 100.0), 0.0);
    }

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  10 0 10 100 5 0 0 0 0 0\n\
                    cpu0 4 1 2 50 3 1 1 1 0 0\n\
                    cpu1 6 0 8 50 2 0 0 0 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(busy_ticks(stat, &[0]), Some(4 + 1 + 2 + 1 + 1 + 1));
        assert_eq!(busy_ticks(stat, &[0, 1]), Some(10 + 14));
        let own = "42 (a (weird) name) R 1 42 42 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 3 0";
        assert_eq!(own_ticks(own), Some(10));
    }

    #[test]
    fn this_process_reads_its_cores_and_ticks() {
        let cpus = allowed_cpus().expect("an affinity mask");
        assert!(!cpus.is_empty());
        let a = Sample::read(&cpus).expect("/proc is readable");
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::spin_loop();
        }
        let b = Sample::read(&cpus).expect("/proc is readable");
        assert!(b.own >= a.own && b.busy >= a.busy);
    }
}
