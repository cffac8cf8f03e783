//! Progress reporting: a one-line bar (steps, reward, tokens/s, ETA) redrawn in place on a
//! terminal, one plain log line per step otherwise (files, CI logs).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const BAR_WIDTH: usize = 24;

/// Reports progress of steps `first..total`.
pub struct Progress {
    first: usize,
    total: usize,
    start: Instant,
    terminal: bool,
    /// Report nothing (a data-parallel rank other than 0).
    quiet: bool,
}

impl Progress {
    /// Starts timing; `first` is the step the run (re)starts at.
    pub fn new(first: usize, total: usize) -> Self {
        Self {
            first,
            total,
            start: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            quiet: false,
        }
    }

    /// As [`new`](Self::new), reporting nothing when `quiet`.
    pub fn quiet_if(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Reports that `done` steps are complete; `loss` is `None` when the step made no update
    /// (every sample dropped: a batch with no passing sample, or only tied groups).
    pub fn update(&self, done: usize, reward: f64, tokens_per_s: f64, loss: Option<f64>) {
        if self.quiet {
            return;
        }
        let line = self.line(done, reward, tokens_per_s, loss, self.start.elapsed());
        let mut err = std::io::stderr().lock();
        // Progress output is best effort: a closed stderr must not stop training.
        let _ = if self.terminal {
            let end = if done == self.total { "\n" } else { "" };
            write!(err, "\r\x1b[2K{line}{end}")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }

    /// Prints `line` on a line of its own (an eval result): on a terminal the bar is cleared
    /// first and drawn again at the next update.
    pub fn log(&self, line: &str) {
        if self.quiet {
            return;
        }
        let mut err = std::io::stderr().lock();
        let clear = if self.terminal { "\r\x1b[2K" } else { "" };
        // Best effort, like the bar.
        let _ = writeln!(err, "{clear}{line}");
        let _ = err.flush();
    }

    fn line(
        &self,
        done: usize,
        reward: f64,
        tokens_per_s: f64,
        loss: Option<f64>,
        elapsed: Duration,
    ) -> String {
        let fraction = done as f64 / self.total.max(1) as f64;
        let filled = (fraction * BAR_WIDTH as f64).round() as usize;
        let bar = format!(
            "{}{}",
            "#".repeat(filled),
            "-".repeat(BAR_WIDTH - filled.min(BAR_WIDTH))
        );
        let ran = done.saturating_sub(self.first).max(1) as f64;
        let eta = elapsed.as_secs_f64() / ran * self.total.saturating_sub(done) as f64;
        // Offline (dataset) steps generate nothing and report no throughput.
        let throughput = match tokens_per_s.is_finite() {
            true => format!(" {tokens_per_s:.0} tok/s"),
            false => String::new(),
        };
        let loss = match loss {
            Some(loss) => format!("loss {loss:.4}"),
            None => "no update".to_owned(),
        };
        format!(
            "[{bar}] step {done}/{} reward {reward:.3} {loss}{throughput} ETA {}",
            self.total,
            format_duration(eta)
        )
    }
}

fn format_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_progress_and_eta_from_the_steps_run_here() {
        let p = Progress {
            first: 10,
            total: 20,
            start: Instant::now(),
            terminal: false,
            quiet: false,
        };
        // Resumed at 10, 5 steps in 50 s: 10 s a step, 5 left.
        let line = p.line(15, 0.5, 123.4, Some(0.01), Duration::from_secs(50));
        assert!(
            line.starts_with("[##################------] step 15/20"),
            "{line}"
        );
        assert!(
            line.contains("reward 0.500")
                && line.contains("123 tok/s")
                && line.ends_with("ETA 50s"),
            "{line}"
        );
        assert!(line.contains("loss 0.0100"), "{line}");
        let offline = p.line(15, 0.5, f64::NAN, Some(0.01), Duration::from_secs(50));
        assert!(!offline.contains("tok/s"), "{offline}");
        let idle = p.line(15, 0.0, 123.4, None, Duration::from_secs(50));
        assert!(idle.contains("reward 0.000 no update 123 tok/s"), "{idle}");
        assert_eq!(format_duration(3725.0), "1h02m");
        assert_eq!(format_duration(125.0), "2m05s");
    }
}
