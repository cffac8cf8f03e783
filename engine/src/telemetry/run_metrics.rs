//! The Prometheus collectors of one run and how a step's results update them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};
use serde_json::{Map, Value};

use super::names as n;

/// Completion length buckets (tokens).
const LENGTH_BUCKETS: [f64; 10] = [
    8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
/// Phase duration buckets (seconds).
const PHASE_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// What one step reports.
pub struct StepTelemetry<'a> {
    /// 0-based step index.
    pub step: usize,
    /// Policy version after the step.
    pub policy_version: u64,
    /// The step's metrics line (learner metrics, reward, timings...).
    pub line: &'a Map<String, Value>,
    /// Length of every completion, in tokens.
    pub completion_lengths: &'a [usize],
    /// Mean of each named reward.
    pub reward_means: &'a [(String, f64)],
    /// `(reward, failure kind, count)` for this step's failures.
    pub failures: &'a [(String, String, u64)],
}

/// Every collector of a run, registered in one registry.
pub struct RunMetrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    steps: IntCounter,
    step: IntGauge,
    version: IntGauge,
    reward: Gauge,
    reward_std: Gauge,
    reward_by_name: GaugeVec,
    failures: IntCounterVec,
    lengths: Histogram,
    clipped: Gauge,
    rollout_tps: Gauge,
    learner_tps: Gauge,
    phases: HistogramVec,
    dropped: IntCounter,
    skipped: IntCounter,
    staleness: IntGauge,
    stale_dropped: IntCounter,
    /// Gauges registered when first set: the learner's (whose names depend on the algorithm)
    /// and the eval ones (absent from runs that never evaluate).
    lazy: Mutex<BTreeMap<String, Gauge>>,
}

/// The eval line's keys and the gauges they set.
const EVAL_GAUGES: [(&str, &str, &str); 4] = [
    (
        crate::train::eval::PASS_AT_1,
        n::EVAL_PASS_AT_1,
        "Held-out pass@1",
    ),
    (
        crate::train::eval::PASS_AT_K,
        n::EVAL_PASS_AT_K,
        "Held-out unbiased pass@k",
    ),
    (
        crate::train::eval::MAJORITY_VOTE,
        n::EVAL_MAJORITY_VOTE,
        "Held-out majority-vote accuracy",
    ),
    (
        crate::train::eval::REWARD_MEAN,
        n::EVAL_REWARD_MEAN,
        "Held-out mean total reward",
    ),
];

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    let g = Gauge::new(name, help)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

impl RunMetrics {
    /// Creates and registers every collector, plus the process collector (memory, CPU).
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let int_counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            r.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let int_gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let reward_by_name = GaugeVec::new(
            Opts::new(n::REWARD_MEAN_BY_NAME, "Mean score of each reward"),
            &["reward"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(n::REWARD_FAILURES_TOTAL, "Reward failures"),
            &["reward", "kind"],
        )?;
        let lengths = Histogram::with_opts(
            HistogramOpts::new(n::COMPLETION_LENGTH_TOKENS, "Completion length")
                .buckets(LENGTH_BUCKETS.to_vec()),
        )?;
        let phases = HistogramVec::new(
            HistogramOpts::new(n::PHASE_SECONDS, "Duration of each phase of a step")
                .buckets(PHASE_BUCKETS.to_vec()),
            &["phase"],
        )?;
        r.register(Box::new(reward_by_name.clone()))?;
        r.register(Box::new(failures.clone()))?;
        r.register(Box::new(lengths.clone()))?;
        r.register(Box::new(phases.clone()))?;
        Ok(Self {
            steps: int_counter(n::STEPS_TOTAL, "Steps completed")?,
            step: int_gauge(n::STEP, "Index of the last completed step")?,
            version: int_gauge(n::POLICY_VERSION, "Policy version")?,
            reward: gauge(&r, n::REWARD, "Mean total reward of the last step")?,
            reward_std: gauge(
                &r,
                n::REWARD_STD,
                "Std of the total reward of the last step",
            )?,
            clipped: gauge(
                &r,
                n::COMPLETION_CLIPPED_RATIO,
                "Fraction of completions cut at max_tokens",
            )?,
            rollout_tps: gauge(
                &r,
                n::ROLLOUT_TOKENS_PER_SECOND,
                "Generated tokens per second",
            )?,
            learner_tps: gauge(
                &r,
                n::LEARNER_TOKENS_PER_SECOND,
                "Trained tokens per second",
            )?,
            dropped: int_counter(n::DROPPED_SAMPLES_TOTAL, "Samples dropped")?,
            skipped: int_counter(
                n::SKIPPED_STEPS_TOTAL,
                "Optimizer steps skipped for NaN/inf",
            )?,
            staleness: int_gauge(
                n::ROLLOUT_STALENESS,
                "Policy versions behind of the last batch trained on",
            )?,
            stale_dropped: int_counter(
                n::ROLLOUT_DROPPED_STALE_SAMPLES_TOTAL,
                "Samples of rollout batches dropped as too stale",
            )?,
            reward_by_name,
            failures,
            lengths,
            phases,
            lazy: Mutex::new(BTreeMap::new()),
            registry: r,
        })
    }

    /// Records one finished step.
    pub fn observe_step(&self, t: &StepTelemetry) {
        let get = |k: &str| t.line.get(k).and_then(Value::as_f64);
        self.steps.inc();
        self.step.set(t.step as i64);
        self.version.set(t.policy_version as i64);
        self.reward.set(get("reward").unwrap_or(0.0));
        self.reward_std.set(get("reward_std").unwrap_or(0.0));
        for (name, mean) in t.reward_means {
            self.reward_by_name
                .with_label_values(&[name.as_str()])
                .set(*mean);
        }
        for (reward, kind, count) in t.failures {
            self.failures
                .with_label_values(&[reward.as_str(), kind.as_str()])
                .inc_by(*count);
        }
        for &len in t.completion_lengths {
            self.lengths.observe(len as f64);
        }
        self.clipped
            .set(get("completions/clipped_ratio").unwrap_or(0.0));
        self.rollout_tps
            .set(get("rollout/tokens_per_second").unwrap_or(0.0));
        let update = get("time/update_seconds").unwrap_or(0.0);
        let trained = get(crate::learner::metrics::TRAINED_TOKENS).unwrap_or(0.0);
        self.learner_tps
            .set(if update > 0.0 { trained / update } else { 0.0 });
        for phase in ["generate", "reward", "update"] {
            if let Some(s) = get(&format!("time/{phase}_seconds")) {
                self.phases.with_label_values(&[phase]).observe(s);
            }
        }
        self.dropped
            .inc_by(get(crate::learner::metrics::DROPPED_SAMPLES).unwrap_or(0.0) as u64);
        self.skipped
            .inc_by(get(crate::learner::metrics::SKIPPED_STEPS).unwrap_or(0.0) as u64);
        self.staleness
            .set(get("rollout/staleness").unwrap_or(0.0) as i64);
        // The line carries the run's running total; the counter follows it.
        let stale = get("rollout/dropped_stale_samples").unwrap_or(0.0) as u64;
        self.stale_dropped
            .inc_by(stale.saturating_sub(self.stale_dropped.get()));
        self.observe_learner(t.line);
    }

    /// Records an evaluation: its `metrics.jsonl` line (`train::eval::EvalReport::line`)
    /// sets the `oxrl_eval_*` gauges and the `eval` phase duration.
    pub fn observe_eval(&self, line: &Map<String, Value>) {
        let get = |k: &str| line.get(k).and_then(Value::as_f64);
        for (key, name, help) in EVAL_GAUGES {
            if let Some(v) = get(key) {
                self.set_lazy(name, help, v);
            }
        }
        if let Some(step) = get("step") {
            self.set_lazy(n::EVAL_STEP, "Policy version of the last evaluation", step);
        }
        if let Some(s) = get(crate::train::eval::SECONDS) {
            self.phases.with_label_values(&["eval"]).observe(s);
        }
    }

    /// Time spent writing a checkpoint.
    pub fn observe_checkpoint(&self, seconds: f64) {
        self.phases
            .with_label_values(&["checkpoint"])
            .observe(seconds);
    }

    /// Every `oxrl_learner_*` value becomes a gauge of that name.
    fn observe_learner(&self, line: &Map<String, Value>) {
        for (name, value) in line
            .iter()
            .filter(|(k, _)| k.starts_with(n::LEARNER_PREFIX))
        {
            if let Some(v) = value.as_f64() {
                self.set_lazy(name, "Learner metric (see docs/learner.md)", v);
            }
        }
    }

    /// Sets the gauge `name`, registering it on first use.
    fn set_lazy(&self, name: &str, help: &str, value: f64) {
        let mut gauges = self.lazy.lock().unwrap_or_else(|e| e.into_inner());
        if !gauges.contains_key(name) {
            match gauge(&self.registry, name, help) {
                Ok(g) => {
                    gauges.insert(name.to_owned(), g);
                }
                Err(_) => return, // a name Prometheus rejects is skipped, never fatal
            }
        }
        gauges[name].set(value);
    }

    /// Adds GPU memory gauges read from NVML at each scrape (CUDA runs).
    pub fn watch_gpu_memory(&self) -> anyhow::Result<()> {
        let gpu = super::gpu::GpuMemory::new()?;
        self.registry.register(Box::new(gpu))?;
        Ok(())
    }

    /// The text exposition format of every collector.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = self.registry.gather();
        // TextEncoder only fails on invalid families, which registration already rejected.
        let _ = prometheus::TextEncoder::new().encode_utf8(&families, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    /// The value of the sample line `name value` in the exposition text.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn eval_gauges_appear_with_the_first_evaluation() {
        let m = RunMetrics::new().unwrap();
        assert!(
            !m.render().contains("oxrl_eval_"),
            "no eval, no eval series"
        );
        let report = crate::train::eval::EvalReport {
            prompts: 4,
            samples_per_prompt: 2,
            k: 2,
            pass_at_1: 0.25,
            pass_at_k: 0.5,
            majority_vote: 0.75,
            reward_mean: 0.125,
        };
        m.observe_eval(&report.line(6, 1.5));
        let text = m.render();
        assert_eq!(sample(&text, n::EVAL_PASS_AT_1), Some(0.25));
        assert_eq!(sample(&text, n::EVAL_PASS_AT_K), Some(0.5));
        assert_eq!(sample(&text, n::EVAL_MAJORITY_VOTE), Some(0.75));
        assert_eq!(sample(&text, n::EVAL_REWARD_MEAN), Some(0.125));
        assert_eq!(sample(&text, n::EVAL_STEP), Some(6.0));
        assert!(text.contains("oxrl_phase_duration_seconds_count{phase=\"eval\"} 1"));
    }

    #[test]
    fn staleness_gauge_and_stale_drop_counter_follow_the_step_lines() {
        let m = RunMetrics::new().unwrap();
        let step = |line: Value| {
            m.observe_step(&StepTelemetry {
                step: 0,
                policy_version: 1,
                line: &map(line),
                completion_lengths: &[],
                reward_means: &[],
                failures: &[],
            })
        };
        step(json!({"rollout/staleness": 1, "rollout/dropped_stale_samples": 8}));
        step(json!({"rollout/staleness": 0, "rollout/dropped_stale_samples": 8}));
        step(json!({"rollout/staleness": 2, "rollout/dropped_stale_samples": 12}));
        let text = m.render();
        assert_eq!(sample(&text, n::ROLLOUT_STALENESS), Some(2.0));
        // A running total of 12, not 8 + 8 + 12.
        assert_eq!(
            sample(&text, n::ROLLOUT_DROPPED_STALE_SAMPLES_TOTAL),
            Some(12.0)
        );
    }
}
