"""Writes oxrl.json, the Grafana dashboard of a run (rows: rewards, evaluation, policy,
episodes, throughput, system).

Run: python3 dashboards/make_dashboard.py. Every PromQL expression here is also checked against
a live run scraped by a real Prometheus in tests/prometheus_scrape.rs (it reads PANELS from the
generated JSON).
"""
import json
import os

ROWS = {
    "Rewards": [
        ("Total reward (mean, std)", ["oxrl_reward", "oxrl_reward_std"]),
        ("Reward by function", ["oxrl_reward_mean"]),
        ("Groups with zero reward std", ["oxrl_learner_frac_reward_zero_std"]),
        ("Reward failures / s", ["sum by (reward, kind) (rate(oxrl_reward_failures_total[5m]))"]),
    ],
    "Evaluation": [
        ("Held-out pass@1, pass@k, majority vote",
         ["oxrl_eval_pass_at_1", "oxrl_eval_pass_at_k", "oxrl_eval_majority_vote"]),
        ("Held-out reward (mean)", ["oxrl_eval_reward_mean"]),
        ("Policy version evaluated", ["oxrl_eval_step"]),
    ],
    "Policy": [
        ("Loss", ["oxrl_learner_loss", "oxrl_learner_policy_loss"]),
        ("KL and entropy", ["oxrl_learner_entropy", "oxrl_learner_kl"]),
        ("Clip fractions", ["oxrl_learner_clip_fraction_low", "oxrl_learner_clip_fraction_high"]),
        ("Importance ratio", ["oxrl_learner_ratio_mean", "oxrl_learner_ratio_min", "oxrl_learner_ratio_max"]),
        ("Grad norm", ["oxrl_learner_grad_norm"]),
        ("Learning rate", ["oxrl_learner_learning_rate"]),
    ],
    "Episodes (multi-turn tasks)": [
        ("Model turns per episode", ["oxrl_episode_turns"]),
        ("Tokens per episode, model vs environment", ["oxrl_episode_tokens"]),
        ("Tool calls, tool failures and environment failures / s",
         ["rate(oxrl_tool_calls_total[5m])", "rate(oxrl_tool_failures_total[5m])",
          "rate(oxrl_env_failures_total[5m])"]),
    ],
    "Throughput": [
        ("Tokens / s", ["oxrl_rollout_tokens_per_second", "oxrl_learner_tokens_per_second"]),
        ("Phase duration p50 (s)",
         ["histogram_quantile(0.5, sum by (phase, le) (rate(oxrl_phase_duration_seconds_bucket[5m])))"]),
        ("Phase seconds by rank (data-parallel runs)", ["oxrl_rank_phase_seconds"]),
        ("Completion length p50 / p95 (tokens)",
         ["histogram_quantile(0.5, sum by (le) (rate(oxrl_completion_length_tokens_bucket[5m])))",
          "histogram_quantile(0.95, sum by (le) (rate(oxrl_completion_length_tokens_bucket[5m])))"]),
        ("Clipped completions", ["oxrl_completion_clipped_ratio"]),
        ("Step and policy version", ["oxrl_step", "oxrl_policy_version"]),
        ("Rollout staleness (policy versions)", ["oxrl_rollout_staleness"]),
        ("Engine vs learner logprobs (f32: native ~3e-6, vLLM ~5e-6 per token)",
         ["oxrl_rollout_logprob_abs_diff_mean", "oxrl_rollout_logprob_abs_diff_max",
          "oxrl_rollout_logprob_kl"]),
        ("Rollout correction pi_old / mu (vLLM)",
         ["oxrl_learner_rollout_is_weight_mean", "oxrl_learner_rollout_is_clipped_fraction"]),
        ("Dropped samples and skipped steps / s",
         ["rate(oxrl_dropped_samples_total[5m])", "rate(oxrl_rollout_dropped_stale_samples_total[5m])",
          "rate(oxrl_skipped_steps_total[5m])"]),
    ],
    "System": [
        ("Resident memory (bytes)", ["process_resident_memory_bytes"]),
        ("CPU seconds / s", ["rate(process_cpu_seconds_total[1m])"]),
        ("GPU memory (bytes, CUDA runs)",
         ["oxrl_gpu_memory_process_bytes", "oxrl_gpu_memory_used_bytes", "oxrl_gpu_memory_total_bytes"]),
    ],
}


def panel(pid, title, exprs, x, y):
    return {
        "id": pid, "type": "timeseries", "title": title,
        "datasource": {"type": "prometheus", "uid": "prometheus"},
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "targets": [{"refId": chr(65 + i), "expr": e, "legendFormat": "__auto"} for i, e in enumerate(exprs)],
    }


def dashboard():
    panels, pid, y = [], 1, 0
    for row, items in ROWS.items():
        panels.append({"id": pid, "type": "row", "title": row, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        for i, (title, exprs) in enumerate(items):
            panels.append(panel(pid, title, exprs, (i % 3) * 8, y + (i // 3) * 8))
            pid += 1
        y += ((len(items) + 2) // 3) * 8
    return {
        "uid": "oxrl-run", "title": "oxrl run", "schemaVersion": 39, "version": 1,
        "refresh": "10s", "time": {"from": "now-1h", "to": "now"}, "tags": ["oxrl"],
        "panels": panels,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oxrl.json")
    with open(out, "w") as f:
        json.dump(dashboard(), f, indent=2)
        f.write("\n")
