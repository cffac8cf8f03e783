"""oxrl's and TRL's GRPO curves from the runs bench/grpo_curve_vs_trl.sh recorded:
docs/results_vs_trl.md and docs/results_vs_trl.png (reward per step, 5-step moving mean;
held-out pass@1 at the eval steps).

usage: curve_report.py RECORD --steps N --lr LR --seeds "0 1"
"""
import argparse
import json
import os
import statistics

from results_report import notes

SIDES = ("oxrl", "trl", "trl_padrow")  # trl_padrow: TRL with the pad row trained, when run
STYLES = ("-", "--", ":", "-.")


def load(out, side, seed):
    with open(os.path.join(out, side, f"seed{seed}", "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    steps = sorted((l["step"], l["reward"], l.get("time/step_seconds", 0.0)) for l in lines if "reward" in l)
    evals = {l["step"]: l for l in lines if "eval/pass_at_1" in l}
    return steps, evals


def moving(xs, n=5):
    return [statistics.fmean(xs[max(0, i - n + 1) : i + 1]) for i in range(len(xs))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps")
    parser.add_argument("--lr")
    parser.add_argument("--seeds")
    args = parser.parse_args()
    # The seeds asked for and every seed already recorded, so a run of one seed keeps the others.
    recorded = {d[len("seed"):] for side in SIDES if os.path.isdir(os.path.join(args.out, side))
                for d in os.listdir(os.path.join(args.out, side)) if d.startswith("seed")}
    seeds = sorted(set(args.seeds.split()) | recorded, key=int)
    done = lambda side, s: os.path.exists(os.path.join(args.out, side, f"seed{s}", "metrics.jsonl"))
    runs = {(side, s): load(args.out, side, s) for side in SIDES for s in seeds if done(side, s)}
    missing = [f"{side} seed {s}" for side in SIDES[:2] for s in seeds if not done(side, s)]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = {"oxrl": "tab:blue", "trl": "tab:orange", "trl_padrow": "tab:green"}
    for (side, seed), (steps, evals) in runs.items():
        style = STYLES[seeds.index(seed) % len(STYLES)]
        left.plot([s for s, _, _ in steps], moving([r for _, r, _ in steps]), style, color=colors[side], label=f"{side} seed {seed}")
        points = sorted(evals.items())
        right.plot([s for s, _ in points], [e["eval/pass_at_1"] for _, e in points], style, marker="o", color=colors[side], label=f"{side} seed {seed}")
    left.set(xlabel="step", ylabel="training reward (5-step moving mean)")
    right.set(xlabel="step", ylabel="held-out pass@1")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join("docs", "results_vs_trl.png"), dpi=110)

    eval_steps = sorted({s for (_, _), (_, e) in runs.items() for s in e})
    header = "| step | " + " | ".join(f"{side} seed {s}" for side, s in runs) + " |"
    rows = [header, "|" + "---|" * (1 + len(runs))]
    for step in eval_steps:
        cells = [runs[key][1].get(step) for key in runs]
        cells = ["–" if e is None else f"{e['eval/pass_at_1']:.3f}" for e in cells]
        rows.append(f"| {step} | " + " | ".join(cells) + " |")
    # Each side over its recorded seeds: seed noise is what the two sides are compared within.
    sides = [side for side in SIDES if any(k[0] == side for k in runs)]
    means = ["| step | " + " | ".join(sides) + " |", "|" + "---|" * (1 + len(sides))]
    for step in eval_steps:
        cells = []
        for side in sides:
            xs = [e[step]["eval/pass_at_1"] for (run_side, _), (_, e) in runs.items() if run_side == side and step in e]
            cells.append(f"{statistics.fmean(xs):.3f} ({min(xs):.3f}-{max(xs):.3f}, n={len(xs)})" if xs else "–")
        means.append(f"| {step} | " + " | ".join(cells) + " |")
    summary = []
    for (side, s), (steps, _) in runs.items():
        rewards = [r for _, r, _ in steps]
        summary.append(
            f"| {side} | {s} | {statistics.fmean(rewards[:10]):.3f} | {statistics.fmean(rewards[-10:]):.3f} |"
        )
    text = f"""# GRPO in oxrl next to TRL's GRPOTrainer

Written by `bench/curve_report.py` from the runs of `bench/grpo_curve_vs_trl.sh` (each run's
metrics.jsonl is recorded in `{os.path.relpath(args.out)}/SIDE/seedS/`; the script resumes
from them). The run of configs/grpo_math.toml on both sides: the bundled
SmolLM2-135M-Instruct (f32, CPU), the same training prompts (`oxrl config rows`,
rendered with the same chat template), 4 prompts x 4 completions of <= 64 tokens at T = 1,
DAPO loss, clip 0.2/0.28, beta 0, group-scaled rewards, AdamW at a constant lr {args.lr},
gradient norm 1, {args.steps} steps; oxrl's math verifier scores both (`oxrl reward` inside
TRL's reward function). Held-out pass@1: 100 problems x 4 samples at T = 1 by `oxrl eval`
(TRL's checkpoints loaded by oxrl), oxrl's in its training loop by the same protocol.
Differences left: each side shuffles the prompt pool with its own generator and samples with
its own random stream, and transformers' `padding_idx` keeps the input side of the pad token's
embedding row (`<|im_end|>`, which ends every chat message) from training in TRL
(`TRL_PAD_ROW=trained` removes that: the `trl_padrow` side; docs/train.md).

![reward per step and held-out pass@1](results_vs_trl.png)

{"Not recorded yet: " + ", ".join(missing) + " (`SIDES` and `SEEDS` of the script; it resumes)." if missing else ""}

Held-out pass@1:

{chr(10).join(rows)}

Each side's mean over its recorded seeds (lowest-highest, number of seeds):

{chr(10).join(means)}

Training reward (mean of the first and the last 10 steps; speed is measured on a quiet
machine in docs/train.md, "Speed against TRL", not here):

| side | seed | reward, first 10 | reward, last 10 |
|---|---|---|---|
{chr(10).join(summary)}
"""
    with open(os.path.join("docs", "results_vs_trl.md"), "w") as f:
        f.write(text + notes(args.out, "Reading the curves"))


if __name__ == "__main__":
    main()
