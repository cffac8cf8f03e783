//! The Prometheus collectors of one run and how a step's results update them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::names as n;
use crate::learner::metrics as learner;
use crate::train::eval::EvalReport;
use crate::train::step_record::{EpisodeStats, StepRecord};
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};

/// Completion length buckets (tokens).
const LENGTH_BUCKETS: [f64; 10] = [
    8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];
/// Phase duration buckets (seconds).
const PHASE_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

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
    rank_phases: GaugeVec,
    dropped: IntCounter,
    skipped: IntCounter,
    staleness: IntGauge,
    stale_dropped: IntCounter,
    refills: IntCounter,
    /// Multi-turn tasks: turns per episode, tool calls and failures, environment failures,
    /// tokens per episode by source.
    turns: Gauge,
    tool_calls: IntCounter,
    tool_failures: IntCounter,
    env_failures: IntCounter,
    episode_tokens: GaugeVec,
    /// Engine-vs-learner logprob gap: mean |Δ|, max |Δ|, KL (either engine).
    mismatch: [Gauge; 3],
    /// Gauges registered when first set: the learner's (whose names depend on the algorithm)
    /// and the eval ones (absent from runs that never evaluate).
    lazy: Mutex<BTreeMap<String, Gauge>>,
}

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
        let rank_phases = GaugeVec::new(
            Opts::new(
                n::RANK_PHASE_SECONDS,
                "Each rank's seconds in each phase of the last step",
            ),
            &["rank", "phase"],
        )?;
        r.register(Box::new(rank_phases.clone()))?;
        let episode_tokens = GaugeVec::new(
            Opts::new(
                n::EPISODE_TOKENS,
                "Mean tokens per episode of the last step, by source (model, env)",
            ),
            &["source"],
        )?;
        r.register(Box::new(episode_tokens.clone()))?;
        Ok(Self {
            turns: gauge(
                &r,
                n::EPISODE_TURNS,
                "Mean model turns per episode of the last step",
            )?,
            tool_calls: int_counter(n::TOOL_CALLS_TOTAL, "Tool calls answered by the environments")?,
            tool_failures: int_counter(n::TOOL_FAILURES_TOTAL, "Tool calls answered with an error")?,
            env_failures: int_counter(
                n::ENV_FAILURES_TOTAL,
                "Episodes whose environment failed (crashed, hung, refused a turn)",
            )?,
            episode_tokens,
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
            refills: int_counter(
                n::ROLLOUT_REFILL_BATCHES_TOTAL,
                "Extra rollout batches generated by dynamic sampling to refill steps",
            )?,
            mismatch: [
                gauge(
                    &r,
                    n::ROLLOUT_LOGPROB_ABS_DIFF_MEAN,
                    "Mean |learner - engine| logprob per completion token under the same weights (vLLM: the whole batch; native: the update's first step)",
                )?,
                gauge(
                    &r,
                    n::ROLLOUT_LOGPROB_ABS_DIFF_MAX,
                    "Largest |learner - engine| logprob of a completion token under the same weights",
                )?,
                gauge(
                    &r,
                    n::ROLLOUT_LOGPROB_KL,
                    "KL(engine || learner) per completion token under the same weights, k3 estimate",
                )?,
            ],
            reward_by_name,
            failures,
            lengths,
            phases,
            rank_phases,
            lazy: Mutex::new(BTreeMap::new()),
            registry: r,
        })
    }

    fn observe_episodes(&self, e: &EpisodeStats) {
        self.turns.set(e.turns_mean);
        self.tool_calls.inc_by(e.tool_calls as u64);
        self.tool_failures.inc_by(e.tool_failures as u64);
        self.env_failures.inc_by(e.env_failures as u64);
        for (source, mean) in [("model", e.model_tokens_mean), ("env", e.env_tokens_mean)] {
            self.episode_tokens.with_label_values(&[source]).set(mean);
        }
        self.phases
            .with_label_values(&["environment"])
            .observe(e.env_seconds);
    }

    /// Records one finished step.
    pub fn observe_step(&self, r: &StepRecord) {
        self.steps.inc();
        self.step.set(r.step as i64);
        self.version.set(r.policy_version as i64);
        self.reward.set(r.rewards.mean);
        self.reward_std.set(r.rewards.std);
        for named in &r.rewards.by_name {
            let name = named.name.as_str();
            self.reward_by_name
                .with_label_values(&[name])
                .set(named.mean);
            for (kind, count) in &named.failures {
                self.failures
                    .with_label_values(&[name, kind.as_str()])
                    .inc_by(*count as u64);
            }
        }
        for &len in &r.completions.lengths {
            self.lengths.observe(len as f64);
        }
        self.clipped.set(r.completions.clipped_ratio);
        self.rollout_tps
            .set(r.rollout.tokens_per_second.unwrap_or(0.0));
        self.learner_tps.set(r.learner_tokens_per_second());
        for (phase, seconds) in [
            ("generate", r.time.generate),
            ("reward", r.time.reward),
            ("update", r.time.update),
        ] {
            self.phases.with_label_values(&[phase]).observe(seconds);
        }
        if let Some(sync) = r.time.sync {
            self.phases.with_label_values(&["sync"]).observe(sync);
        }
        if let Some(e) = &r.episodes {
            self.observe_episodes(e);
        }
        for (rank, t) in r.rank_times.iter().enumerate() {
            for (phase, seconds) in t.phases() {
                self.rank_phases
                    .with_label_values(&[&rank.to_string(), phase])
                    .set(seconds);
            }
        }
        if let Some(m) = &r.rollout.mismatch {
            for (gauge, value) in self.mismatch.iter().zip([m.mean_abs, m.max_abs, m.kl]) {
                gauge.set(value);
            }
        }
        self.dropped.inc_by(r.dropped_samples() as u64);
        self.skipped.inc_by(r.skipped_steps() as u64);
        self.staleness.set(r.rollout.staleness as i64);
        // The record carries the run's running total; the counter follows it.
        let stale = r.rollout.dropped_stale_samples.unwrap_or(0);
        self.stale_dropped
            .inc_by(stale.saturating_sub(self.stale_dropped.get()));
        self.refills
            .inc_by(r.rollout.refill_batches.unwrap_or(0) as u64);
        self.observe_learner(&r.learner);
    }

    /// Records an evaluation of the policy after `step` updates that took `seconds`: the
    /// `oxrl_eval_*` gauges and the `eval` phase duration.
    pub fn observe_eval(&self, step: usize, report: &EvalReport, seconds: f64) {
        let gauges = [
            (n::EVAL_PASS_AT_1, "Held-out pass@1", report.pass_at_1),
            (
                n::EVAL_PASS_AT_K,
                "Held-out unbiased pass@k",
                report.pass_at_k,
            ),
            (
                n::EVAL_MAJORITY_VOTE,
                "Held-out majority-vote accuracy",
                report.majority_vote,
            ),
            (
                n::EVAL_REWARD_MEAN,
                "Held-out mean total reward",
                report.reward_mean,
            ),
            (
                n::EVAL_STEP,
                "Policy version of the last evaluation",
                step as f64,
            ),
        ];
        for (name, help, value) in gauges {
            self.set_lazy(name, help, value);
        }
        self.phases.with_label_values(&["eval"]).observe(seconds);
    }

    /// Records how many dataset rows were skipped as malformed.
    pub fn observe_skipped_rows(&self, rows: usize) {
        self.set_lazy(
            n::DATASET_SKIPPED_ROWS,
            "Dataset rows skipped as malformed (env.data.on_bad_row = \"skip\")",
            rows as f64,
        );
    }

    /// Time spent writing a checkpoint.
    pub fn observe_checkpoint(&self, seconds: f64) {
        self.phases
            .with_label_values(&["checkpoint"])
            .observe(seconds);
    }

    /// Every learner metric becomes a gauge of its name and help text, except those a
    /// trainer series already exports.
    fn observe_learner(&self, metrics: &crate::learner::Metrics) {
        for (&name, &value) in metrics {
            if n::NOT_EXPORTED_LEARNER_METRICS.contains(&name) {
                continue;
            }
            let help = learner::ALL
                .iter()
                .find(|(known, _)| *known == name)
                .map_or("Learner metric (docs/learner.md)", |(_, help)| *help);
            self.set_lazy(name, help, value);
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
    use crate::train::step_record::{
        CompletionStats, EpisodeStats, NamedRewardStats, PhaseTimes, RewardStats, RolloutStats,
    };

    /// The value of the sample line `name value` in the exposition text.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// A step record with every field set to something other than its default, and every
    /// learner metric present.
    fn full_record() -> StepRecord {
        StepRecord {
            step: 3,
            policy_version: 4,
            rewards: RewardStats {
                mean: 0.5,
                std: 0.25,
                by_name: vec![NamedRewardStats {
                    name: "math".into(),
                    mean: 0.75,
                    failures: [("timeout".to_owned(), 2)].into(),
                }],
            },
            completions: CompletionStats::of(vec![3, 8, 8], 8),
            episodes: Some(EpisodeStats {
                turns_mean: 2.5,
                tool_calls: 3,
                tool_failures: 1,
                env_failures: 2,
                model_tokens_mean: 40.0,
                env_tokens_mean: 12.0,
                env_seconds: 0.25,
            }),
            rollout: RolloutStats {
                tokens_per_second: Some(100.0),
                staleness: 1,
                dropped_stale_samples: Some(8),
                refill_batches: Some(2),
                mismatch: Some(crate::learner::LogprobGap {
                    mean_abs: 0.25,
                    max_abs: 0.5,
                    kl: 0.125,
                    tokens: 10,
                }),
            },
            time: PhaseTimes {
                generate: 1.0,
                reward: 0.5,
                update: 2.0,
                step: 3.5,
                sync: Some(0.75),
            },
            rank_times: vec![
                PhaseTimes::default(),
                PhaseTimes {
                    update: 2.5,
                    ..Default::default()
                },
            ],
            learner: learner::ALL.iter().map(|(name, _)| (*name, 1.0)).collect(),
        }
    }

    #[test]
    fn every_field_of_a_step_record_reaches_metrics() {
        let m = RunMetrics::new().unwrap();
        let record = full_record();
        m.observe_step(&record);
        let text = m.render();
        let family = |name: &str| text.lines().any(|l| l.starts_with(name));
        for (name, value) in [
            (n::STEPS_TOTAL, 1.0),
            (n::STEP, 3.0),
            (n::POLICY_VERSION, 4.0),
            (n::REWARD, 0.5),
            (n::REWARD_STD, 0.25),
            (n::COMPLETION_CLIPPED_RATIO, 2.0 / 3.0),
            (n::ROLLOUT_TOKENS_PER_SECOND, 100.0),
            (n::ROLLOUT_STALENESS, 1.0),
            (n::ROLLOUT_DROPPED_STALE_SAMPLES_TOTAL, 8.0),
            (n::ROLLOUT_REFILL_BATCHES_TOTAL, 2.0),
            (n::ROLLOUT_LOGPROB_ABS_DIFF_MEAN, 0.25),
            (n::ROLLOUT_LOGPROB_ABS_DIFF_MAX, 0.5),
            (n::ROLLOUT_LOGPROB_KL, 0.125),
            (n::LEARNER_TOKENS_PER_SECOND, 0.5),
            (n::DROPPED_SAMPLES_TOTAL, 1.0),
            (n::SKIPPED_STEPS_TOTAL, 1.0),
            (n::EPISODE_TURNS, 2.5),
            (n::TOOL_CALLS_TOTAL, 3.0),
            (n::TOOL_FAILURES_TOTAL, 1.0),
            (n::ENV_FAILURES_TOTAL, 2.0),
        ] {
            assert_eq!(sample(&text, name), Some(value), "{name}");
        }
        assert!(text.contains(&format!(
            "{}{{reward=\"math\"}} 0.75",
            n::REWARD_MEAN_BY_NAME
        )));
        assert!(text.contains(&format!(
            "{}{{kind=\"timeout\",reward=\"math\"}} 2",
            n::REWARD_FAILURES_TOTAL
        )));
        assert!(text.contains(&format!("{}_count 3", n::COMPLETION_LENGTH_TOKENS)));
        assert!(text.contains(&format!(
            "{}{{phase=\"update\",rank=\"1\"}} 2.5",
            n::RANK_PHASE_SECONDS
        )));
        assert!(text.contains(&format!("{}{{source=\"env\"}} 12", n::EPISODE_TOKENS)));
        for phase in ["generate", "reward", "update", "sync", "environment"] {
            assert!(family(&format!(
                "{}_count{{phase=\"{phase}\"}} 1",
                n::PHASE_SECONDS
            )));
        }
        // Every learner metric is a gauge with its own help text, or covered by a trainer
        // series and not exported twice.
        for (name, help) in learner::ALL {
            let exported = sample(&text, name).is_some();
            assert_eq!(
                exported,
                !n::NOT_EXPORTED_LEARNER_METRICS.contains(name),
                "{name}"
            );
            if exported {
                assert!(text.contains(&format!("# HELP {name} {help}")), "{name}");
            }
        }
    }

    #[test]
    fn every_field_of_a_step_record_reaches_the_jsonl_line() {
        let line = full_record().to_json();
        for key in [
            n::STEP_KEY,
            n::REWARD_KEY,
            n::REWARD_STD_KEY,
            &n::reward_mean_key("math"),
            &n::reward_failures_key("math"),
            n::MEAN_LENGTH_KEY,
            n::MAX_LENGTH_KEY,
            n::CLIPPED_RATIO_KEY,
            n::ROLLOUT_TOKENS_PER_SECOND_KEY,
            n::STALENESS_KEY,
            n::DROPPED_STALE_SAMPLES_KEY,
            n::REFILL_BATCHES_KEY,
            n::LOGPROB_ABS_DIFF_MEAN_KEY,
            n::LOGPROB_ABS_DIFF_MAX_KEY,
            n::LOGPROB_KL_KEY,
            n::SYNC_SECONDS_KEY,
            n::GENERATE_SECONDS_KEY,
            n::REWARD_SECONDS_KEY,
            n::UPDATE_SECONDS_KEY,
            n::STEP_SECONDS_KEY,
            n::EPISODE_TURNS_MEAN_KEY,
            n::EPISODE_TOOL_CALLS_KEY,
            n::EPISODE_TOOL_FAILURES_KEY,
            n::EPISODE_ENV_FAILURES_KEY,
            n::EPISODE_MODEL_TOKENS_MEAN_KEY,
            n::EPISODE_ENV_TOKENS_MEAN_KEY,
            n::ENV_SECONDS_KEY,
        ] {
            assert!(
                line.get(key).is_some_and(|v| v.is_number()),
                "{key}: {line}"
            );
        }
        for (name, _) in learner::ALL {
            assert_eq!(line[name], 1.0, "{name}");
        }
        assert_eq!(line[n::MAX_LENGTH_KEY], 8.0);
        assert_eq!(line[&n::reward_failures_key("math")], 2);
        let serialized: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&full_record()).unwrap()).unwrap();
        assert_eq!(serialized, line);
    }

    #[test]
    fn eval_gauges_appear_with_the_first_evaluation() {
        let m = RunMetrics::new().unwrap();
        assert!(
            !m.render().contains("oxrl_eval_"),
            "no eval, no eval series"
        );
        let report = EvalReport {
            prompts: 4,
            samples_per_prompt: 2,
            k: 2,
            pass_at_1: 0.25,
            pass_at_k: 0.5,
            majority_vote: 0.75,
            reward_mean: 0.125,
        };
        m.observe_eval(6, &report, 1.5);
        let text = m.render();
        assert_eq!(sample(&text, n::EVAL_PASS_AT_1), Some(0.25));
        assert_eq!(sample(&text, n::EVAL_PASS_AT_K), Some(0.5));
        assert_eq!(sample(&text, n::EVAL_MAJORITY_VOTE), Some(0.75));
        assert_eq!(sample(&text, n::EVAL_REWARD_MEAN), Some(0.125));
        assert_eq!(sample(&text, n::EVAL_STEP), Some(6.0));
        assert!(text.contains("oxrl_phase_duration_seconds_count{phase=\"eval\"} 1"));
    }

    #[test]
    fn staleness_gauge_and_stale_drop_counter_follow_the_step_records() {
        let m = RunMetrics::new().unwrap();
        let step = |staleness: u64, dropped: u64| {
            let mut record = full_record();
            record.rollout.staleness = staleness;
            record.rollout.dropped_stale_samples = Some(dropped);
            m.observe_step(&record)
        };
        step(1, 8);
        step(0, 8);
        step(2, 12);
        let text = m.render();
        assert_eq!(sample(&text, n::ROLLOUT_STALENESS), Some(2.0));
        // A running total of 12, not 8 + 8 + 12.
        assert_eq!(
            sample(&text, n::ROLLOUT_DROPPED_STALE_SAMPLES_TOTAL),
            Some(12.0)
        );
    }
}
