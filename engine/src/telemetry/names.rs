//! Every series a run reports, in one place: each `metrics.jsonl` key beside the Prometheus
//! name it is exported as. Prometheus names take the prefix `oxrl_`, base units in the name,
//! counters end in `_total` (docs/formulas.md, "Metrics"). The learner's own metrics keep the
//! names and help texts of `learner::metrics` and are exported as gauges, except the few that
//! a trainer series below already covers ([`NOT_EXPORTED_LEARNER_METRICS`]).

use crate::learner::metrics as learner;

/// `metrics.jsonl`: the 0-based step (or, on an eval line, the policy version evaluated).
pub const STEP_KEY: &str = "step";
/// Steps completed.
pub const STEPS_TOTAL: &str = "oxrl_steps_total";
/// Current step (0-based index of the last completed step).
pub const STEP: &str = "oxrl_step";
/// Version of the policy weights.
pub const POLICY_VERSION: &str = "oxrl_policy_version";

/// `metrics.jsonl`: mean total reward of the step.
pub const REWARD_KEY: &str = "reward";
/// Mean total reward of the last step.
pub const REWARD: &str = "oxrl_reward";
/// `metrics.jsonl`: standard deviation of the step's total rewards.
pub const REWARD_STD_KEY: &str = "reward_std";
/// Standard deviation of the total reward of the last step.
pub const REWARD_STD: &str = "oxrl_reward_std";
/// `metrics.jsonl`: `rewards/{name}/mean`, the mean of each named reward.
pub fn reward_mean_key(reward: &str) -> String {
    format!("rewards/{reward}/mean")
}
/// Mean of each named reward in the last step (label `reward`).
pub const REWARD_MEAN_BY_NAME: &str = "oxrl_reward_mean";
/// `metrics.jsonl`: `rewards/{name}/failures`, the step's failures of each named reward.
pub fn reward_failures_key(reward: &str) -> String {
    format!("rewards/{reward}/failures")
}
/// Reward failures by reward and kind.
pub const REWARD_FAILURES_TOTAL: &str = "oxrl_reward_failures_total";

/// `metrics.jsonl`: mean completion length (tokens).
pub const MEAN_LENGTH_KEY: &str = "completions/mean_length";
/// `metrics.jsonl`: longest completion (tokens).
pub const MAX_LENGTH_KEY: &str = "completions/max_length";
/// Completion lengths in tokens (the histogram behind both length keys).
pub const COMPLETION_LENGTH_TOKENS: &str = "oxrl_completion_length_tokens";
/// `metrics.jsonl`: fraction of completions cut at `max_tokens`.
pub const CLIPPED_RATIO_KEY: &str = "completions/clipped_ratio";
/// Fraction of completions cut at max_tokens in the last step.
pub const COMPLETION_CLIPPED_RATIO: &str = "oxrl_completion_clipped_ratio";

/// `metrics.jsonl`: generated tokens per second (absent when rows stand in for rollouts).
pub const ROLLOUT_TOKENS_PER_SECOND_KEY: &str = "rollout/tokens_per_second";
/// Generated tokens per second in the last step's rollout.
pub const ROLLOUT_TOKENS_PER_SECOND: &str = "oxrl_rollout_tokens_per_second";
/// `metrics.jsonl`: policy versions between the learner and the batch it trained on.
pub const STALENESS_KEY: &str = "rollout/staleness";
/// Policy versions between the learner and the rollouts of the last batch trained on.
pub const ROLLOUT_STALENESS: &str = "oxrl_rollout_staleness";
/// `metrics.jsonl` (async runs): the run's running total of samples dropped as too stale.
pub const DROPPED_STALE_SAMPLES_KEY: &str = "rollout/dropped_stale_samples";
/// Async rollouts: samples of batches dropped for exceeding `rollout.max_staleness`.
pub const ROLLOUT_DROPPED_STALE_SAMPLES_TOTAL: &str = "oxrl_rollout_dropped_stale_samples_total";
/// `metrics.jsonl` (dynamic sampling): extra rollout batches generated to refill the step.
pub const REFILL_BATCHES_KEY: &str = "rollout/refill_batches";
/// Dynamic sampling: extra rollout batches generated to refill steps.
pub const ROLLOUT_REFILL_BATCHES_TOTAL: &str = "oxrl_rollout_refill_batches_total";

/// `metrics.jsonl` (multi-turn tasks): mean model turns per episode.
pub const EPISODE_TURNS_MEAN_KEY: &str = "episodes/turns_mean";
/// Mean model turns per episode in the last step (multi-turn tasks).
pub const EPISODE_TURNS: &str = "oxrl_episode_turns";
/// `metrics.jsonl`: tool calls the step's environments answered.
pub const EPISODE_TOOL_CALLS_KEY: &str = "episodes/tool_calls";
/// Tool calls answered by the environments.
pub const TOOL_CALLS_TOTAL: &str = "oxrl_tool_calls_total";
/// `metrics.jsonl`: tool calls answered with an error.
pub const EPISODE_TOOL_FAILURES_KEY: &str = "episodes/tool_failures";
/// Tool calls answered with an error.
pub const TOOL_FAILURES_TOTAL: &str = "oxrl_tool_failures_total";
/// `metrics.jsonl`: episodes whose environment failed (crashed, hung, refused a turn).
pub const EPISODE_ENV_FAILURES_KEY: &str = "episodes/env_failures";
/// Episodes whose environment failed.
pub const ENV_FAILURES_TOTAL: &str = "oxrl_env_failures_total";
/// `metrics.jsonl`: mean tokens per episode the model generated.
pub const EPISODE_MODEL_TOKENS_MEAN_KEY: &str = "episodes/model_tokens_mean";
/// `metrics.jsonl`: mean tokens per episode the environments added.
pub const EPISODE_ENV_TOKENS_MEAN_KEY: &str = "episodes/env_tokens_mean";
/// Mean tokens per episode in the last step, by source (`model`, `env`).
pub const EPISODE_TOKENS: &str = "oxrl_episode_tokens";
/// `metrics.jsonl`: seconds the step spent in the environments (within generate_seconds).
pub const ENV_SECONDS_KEY: &str = "time/env_seconds";

/// `metrics.jsonl` (vLLM engine): mean |learner - engine| logprob per completion token.
pub const LOGPROB_ABS_DIFF_MEAN_KEY: &str = "rollout/logprob_abs_diff_mean";
/// Mean |learner - engine| logprob per completion token of the last step (vLLM engine).
pub const ROLLOUT_LOGPROB_ABS_DIFF_MEAN: &str = "oxrl_rollout_logprob_abs_diff_mean";
/// `metrics.jsonl` (vLLM engine): largest |learner - engine| logprob of a token.
pub const LOGPROB_ABS_DIFF_MAX_KEY: &str = "rollout/logprob_abs_diff_max";
/// Largest |learner - engine| logprob of a token in the last step (vLLM engine).
pub const ROLLOUT_LOGPROB_ABS_DIFF_MAX: &str = "oxrl_rollout_logprob_abs_diff_max";
/// `metrics.jsonl` (vLLM engine): KL(engine ‖ learner) per token (k3 estimate).
pub const LOGPROB_KL_KEY: &str = "rollout/logprob_kl";
/// KL(engine ‖ learner) per token of the last step (k3 estimate; vLLM engine).
pub const ROLLOUT_LOGPROB_KL: &str = "oxrl_rollout_logprob_kl";
/// `metrics.jsonl` (vLLM engine): seconds syncing the new weights to the servers.
pub const SYNC_SECONDS_KEY: &str = "time/sync_seconds";

/// `metrics.jsonl`: seconds spent generating (async: waiting for the batch).
pub const GENERATE_SECONDS_KEY: &str = "time/generate_seconds";
/// `metrics.jsonl`: seconds spent scoring.
pub const REWARD_SECONDS_KEY: &str = "time/reward_seconds";
/// `metrics.jsonl`: seconds spent in the learner update.
pub const UPDATE_SECONDS_KEY: &str = "time/update_seconds";
/// `metrics.jsonl`: seconds of the whole step.
pub const STEP_SECONDS_KEY: &str = "time/step_seconds";
/// `metrics.jsonl` (eval lines): seconds the evaluation took.
pub const EVAL_SECONDS_KEY: &str = "time/eval_seconds";
/// Duration of each phase (label `phase`: generate, reward, update, checkpoint, eval).
pub const PHASE_SECONDS: &str = "oxrl_phase_duration_seconds";
/// Data-parallel runs: each rank's seconds in each phase of the last step (labels `rank`,
/// `phase`: generate, reward, update, step). In `metrics.jsonl`: `time/rank{r}/{phase}_seconds`.
pub const RANK_PHASE_SECONDS: &str = "oxrl_rank_phase_seconds";
/// Trained tokens per second in the last step's update (learner trained tokens / update
/// seconds; no `metrics.jsonl` key of its own).
pub const LEARNER_TOKENS_PER_SECOND: &str = "oxrl_learner_tokens_per_second";
/// Samples the algorithm dropped (dynamic sampling, filtering): the learner's
/// `oxrl_learner_dropped_samples`, summed.
pub const DROPPED_SAMPLES_TOTAL: &str = "oxrl_dropped_samples_total";
/// Optimizer steps skipped for NaN/inf: the learner's `oxrl_learner_skipped_steps`, summed.
pub const SKIPPED_STEPS_TOTAL: &str = "oxrl_skipped_steps_total";

/// Learner metrics a trainer series already exports: the batch reward (`oxrl_reward`,
/// `oxrl_reward_std`) and the two counts that become counters.
pub const NOT_EXPORTED_LEARNER_METRICS: [&str; 4] = [
    learner::REWARD_MEAN,
    learner::REWARD_STD,
    learner::DROPPED_SAMPLES,
    learner::SKIPPED_STEPS,
];

/// Dataset rows dropped as malformed under `env.data.on_bad_row = "skip"` (set at start; each
/// is also logged with its file and line).
pub const DATASET_SKIPPED_ROWS: &str = "oxrl_dataset_skipped_rows";

/// `metrics.jsonl` (eval lines): mean fraction of correct completions.
pub const EVAL_PASS_AT_1_KEY: &str = "eval/pass_at_1";
/// Held-out evaluation (`[eval]`): mean fraction of correct completions. The eval gauges
/// appear with the run's first evaluation.
pub const EVAL_PASS_AT_1: &str = "oxrl_eval_pass_at_1";
/// `metrics.jsonl` (eval lines): unbiased pass@k.
pub const EVAL_PASS_AT_K_KEY: &str = "eval/pass_at_k";
/// Held-out evaluation: unbiased pass@k.
pub const EVAL_PASS_AT_K: &str = "oxrl_eval_pass_at_k";
/// `metrics.jsonl` (eval lines): fraction of prompts whose most common answer is correct.
pub const EVAL_MAJORITY_VOTE_KEY: &str = "eval/majority_vote";
/// Held-out evaluation: fraction of prompts whose most common answer is correct.
pub const EVAL_MAJORITY_VOTE: &str = "oxrl_eval_majority_vote";
/// `metrics.jsonl` (eval lines): mean total reward of the eval completions.
pub const EVAL_REWARD_MEAN_KEY: &str = "eval/reward_mean";
/// Held-out evaluation: mean total reward.
pub const EVAL_REWARD_MEAN: &str = "oxrl_eval_reward_mean";
/// `metrics.jsonl` (eval lines): prompts evaluated.
pub const EVAL_PROMPTS_KEY: &str = "eval/prompts";
/// `metrics.jsonl` (eval lines): completions sampled per prompt.
pub const EVAL_SAMPLES_KEY: &str = "eval/samples";
/// `metrics.jsonl` (eval lines): the k of pass@k.
pub const EVAL_K_KEY: &str = "eval/k";
/// Policy version (steps trained) of the last evaluation.
pub const EVAL_STEP: &str = "oxrl_eval_step";

/// CUDA runs: GPU memory held by this process (label `gpu`, the NVML index).
pub const GPU_MEMORY_PROCESS_BYTES: &str = "oxrl_gpu_memory_process_bytes";
/// CUDA runs: GPU memory in use on the device, by any process.
pub const GPU_MEMORY_USED_BYTES: &str = "oxrl_gpu_memory_used_bytes";
/// CUDA runs: the device's memory.
pub const GPU_MEMORY_TOTAL_BYTES: &str = "oxrl_gpu_memory_total_bytes";
