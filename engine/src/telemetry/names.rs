//! Metric names, one place for all of them: prefix `oxrl_`, base units in the name, counters
//! end in `_total` (Prometheus conventions; see ../shared REFERENCE.md's list). Learner
//! metrics keep the names of `learner::metrics` and are exported as gauges.

/// Steps completed.
pub const STEPS_TOTAL: &str = "oxrl_steps_total";
/// Current step (0-based index of the last completed step).
pub const STEP: &str = "oxrl_step";
/// Version of the policy weights.
pub const POLICY_VERSION: &str = "oxrl_policy_version";
/// Mean total reward of the last step.
pub const REWARD: &str = "oxrl_reward";
/// Standard deviation of the total reward of the last step.
pub const REWARD_STD: &str = "oxrl_reward_std";
/// Mean of each named reward in the last step (label `reward`).
pub const REWARD_MEAN_BY_NAME: &str = "oxrl_reward_mean";
/// Reward failures by reward and kind.
pub const REWARD_FAILURES_TOTAL: &str = "oxrl_reward_failures_total";
/// Completion lengths in tokens.
pub const COMPLETION_LENGTH_TOKENS: &str = "oxrl_completion_length_tokens";
/// Fraction of completions cut at max_tokens in the last step.
pub const COMPLETION_CLIPPED_RATIO: &str = "oxrl_completion_clipped_ratio";
/// Generated tokens per second in the last step's rollout.
pub const ROLLOUT_TOKENS_PER_SECOND: &str = "oxrl_rollout_tokens_per_second";
/// Trained tokens per second in the last step's update.
pub const LEARNER_TOKENS_PER_SECOND: &str = "oxrl_learner_tokens_per_second";
/// Policy versions between the learner and the rollouts of the last batch trained on.
pub const ROLLOUT_STALENESS: &str = "oxrl_rollout_staleness";
/// Async rollouts: samples of batches dropped for exceeding `rollout.max_staleness`.
pub const ROLLOUT_DROPPED_STALE_SAMPLES_TOTAL: &str = "oxrl_rollout_dropped_stale_samples_total";
/// Duration of each phase (label `phase`: generate, reward, update, checkpoint, eval).
pub const PHASE_SECONDS: &str = "oxrl_phase_duration_seconds";
/// Samples the algorithm dropped (dynamic sampling, filtering).
pub const DROPPED_SAMPLES_TOTAL: &str = "oxrl_dropped_samples_total";
/// Optimizer steps skipped for NaN/inf.
pub const SKIPPED_STEPS_TOTAL: &str = "oxrl_skipped_steps_total";
/// Held-out evaluation (`[eval]`): mean fraction of correct completions. The eval gauges
/// appear with the run's first evaluation.
pub const EVAL_PASS_AT_1: &str = "oxrl_eval_pass_at_1";
/// Held-out evaluation: unbiased pass@k.
pub const EVAL_PASS_AT_K: &str = "oxrl_eval_pass_at_k";
/// Held-out evaluation: fraction of prompts whose most common answer is correct.
pub const EVAL_MAJORITY_VOTE: &str = "oxrl_eval_majority_vote";
/// Held-out evaluation: mean total reward.
pub const EVAL_REWARD_MEAN: &str = "oxrl_eval_reward_mean";
/// Policy version (steps trained) of the last evaluation.
pub const EVAL_STEP: &str = "oxrl_eval_step";
/// CUDA runs: GPU memory held by this process (label `gpu`, the NVML index).
pub const GPU_MEMORY_PROCESS_BYTES: &str = "oxrl_gpu_memory_process_bytes";
/// CUDA runs: GPU memory in use on the device, by any process.
pub const GPU_MEMORY_USED_BYTES: &str = "oxrl_gpu_memory_used_bytes";
/// CUDA runs: the device's memory.
pub const GPU_MEMORY_TOTAL_BYTES: &str = "oxrl_gpu_memory_total_bytes";
/// Prefix of the learner's own metric names, exported as they are.
pub const LEARNER_PREFIX: &str = "oxrl_learner_";
