"""The results table from the runs bench/results.sh made: docs/results*.md and its plot.

usage: results_report.py RECORD --lrs "A B" --seeds "0 1" --threads T --jobs J
                         --doc docs/results.md   (writes that file and the plot beside it, .png)
       results_report.py --best RECORD/ROW       (prints the best seed-0 run)

RECORD holds one folder per finished run, RECORD/ROW/lrLR-seedS/{config.toml,metrics.jsonl}.

For each row (a folder of RECORD), the best learning rate is the seed-0 run with the highest final
held-out pass@1; the table shows that learning rate's runs over every seed: held-out pass@1,
pass@4 and majority vote before the first step and after the last (mean, and the spread
between seeds), the peak of the seeds' mean pass@1 and its step, completion tokens generated,
and wall time (steps + evals). The plot is held-out pass@1 against tokens generated, one line
per row (mean over seeds). RECORD/NOTES.md, hand-written, is appended as "Reading the table".
"""
import argparse
import json
import os
import re
import statistics
import tomllib

DESCRIPTIONS = {
    "grpo_dapo": "GRPO, DAPO loss (token mean over the batch, clip 0.2/0.28): the config as shipped",
    "grpo": "GRPO, `loss_type = \"grpo\"` (sequence means), clip 0.2",
    "dr_grpo": "Dr. GRPO: `dr_grpo` loss, no std scaling",
    "rloo": "RLOO: leave-one-out baseline, no std scaling, GRPO's clipped loss",
    "ppo": "PPO: critic + GAE (lam 0.95), k1 KL 0.05 in the reward, one epoch a batch (verl's default)",
    "topr": "TOPR (online), group-mean baseline, sequence taper",
    "expert_iteration": "Expert iteration: NLL on the completions with reward 1",
    "online_dpo": "Online DPO: best vs worst completion of each group, beta 0.1",
    "sft": "SFT on the rows' reference solutions (worked steps, `#### N`), 16 a step, nothing generated",
    "reft": "ReFT: PPO (as the ppo row) from the SFT run's final model",
    "topr_offline": "TOPR (offline) on the GRPO run's logged samples, nothing generated",
    "sft_grpo": "GRPO (as grpo_dapo) from the SFT run's final model",
}


def lines(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def config_of(run):
    with open(os.path.join(run, "config.toml"), "rb") as f:
        return tomllib.load(f)


def evals(run):
    return [l for l in lines(run) if "eval/pass_at_1" in l]


def runs(row_dir):
    """{(lr, seed): path} of the finished runs of a row (none when it has no folder yet)."""
    out = {}
    if not os.path.isdir(row_dir):
        return out
    for name in sorted(os.listdir(row_dir)):
        m = re.fullmatch(r"lr(.+)-seed(\d+)", name)
        path = os.path.join(row_dir, name)
        if m and os.path.exists(os.path.join(path, "metrics.jsonl")):
            out[(m.group(1), int(m.group(2)))] = path
    return out


def best(row_dir):
    seed0 = [(lr, p) for (lr, seed), p in runs(row_dir).items() if seed == 0]
    if not seed0:
        raise SystemExit(f"{row_dir}: no finished seed-0 run")
    return max(seed0, key=lambda x: evals(x[1])[-1]["eval/pass_at_1"])


def generated_tokens(run):
    """Cumulative completion tokens generated before each step (index = step - 1 + 1)."""
    rollout = config_of(run).get("rollout", {})
    generates = rollout.get("source", "policy") == "policy"
    per_step = rollout.get("prompts_per_step", 4) * rollout.get("group_size", 4)
    total, out = 0.0, [0.0]
    for l in lines(run):
        if "eval/pass_at_1" in l:
            continue
        if generates:
            total += l.get("completions/mean_length", 0.0) * per_step
        out.append(total)
    return out


def wall_seconds(run):
    return sum(l.get("time/step_seconds", 0.0) + l.get("time/eval_seconds", 0.0) for l in lines(run))


def spread(xs):
    mean = statistics.fmean(xs)
    return f"{mean:.3f}" if len(xs) < 2 else f"{mean:.3f} ± {(max(xs) - min(xs)) / 2:.3f}"


def task_of(run):
    """One line on the task a run trained on, from its config.toml."""
    cfg = config_of(run)
    rollout, ev = cfg.get("rollout", {}), cfg.get("eval", {})
    return (
        f"`env.task = \"{cfg['env']['task']}\"`, "
        f"{rollout.get('prompts_per_step', 4)} prompts x {rollout.get('group_size', 4)} completions of "
        f"<= {rollout.get('max_tokens', 96)} tokens a step; eval: the held-out split, "
        f"{ev.get('samples', 1)} samples each at temperature {ev.get('temperature', 0.0)}"
    )


def report(out, lrs, seeds, threads, jobs, doc):
    rows = [r for r in DESCRIPTIONS if runs(os.path.join(out, r))]
    pending = [r for r in DESCRIPTIONS if r not in rows]
    table = [
        "| row | lrs tried | best lr | steps | pass@1 before | pass@1 after | pass@1 peak (step) | pass@4 after | majority after | tokens generated | wall min | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    curves = {}
    bests = {r: best(os.path.join(out, r)) for r in rows}  # (lr, seed-0 run) of each row
    offline = [r for r in rows if generated_tokens(bests[r][1])[-1] == 0]
    for row in rows:
        row_runs = runs(os.path.join(out, row))
        lr, _ = bests[row]
        tried = ", ".join(sorted(l for (l, seed) in row_runs if seed == 0))
        chosen = sorted(p for (l, _), p in row_runs.items() if l == lr)
        first = [evals(p)[0] for p in chosen]
        last = [evals(p)[-1] for p in chosen]
        tokens = [generated_tokens(p)[-1] for p in chosen]
        points = {}
        for p in chosen:
            cum = generated_tokens(p)
            for e in evals(p):
                points.setdefault(e["step"], []).append((cum[min(e["step"], len(cum) - 1)], e["eval/pass_at_1"]))
        mean_curve = {step: statistics.fmean(a for _, a in v) for step, v in points.items()}
        peak_step = max(mean_curve, key=mean_curve.get)
        table.append(
            f"| {row} | {tried} | {lr} | {config_of(chosen[0])['steps']} | {spread([e['eval/pass_at_1'] for e in first])} "
            f"| {spread([e['eval/pass_at_1'] for e in last])} "
            f"| {mean_curve[peak_step]:.3f} ({peak_step}) "
            f"| {spread([e['eval/pass_at_k'] for e in last])} "
            f"| {spread([e['eval/majority_vote'] for e in last])} "
            f"| {statistics.fmean(tokens):,.0f} | {statistics.fmean(map(wall_seconds, chosen)) / 60:.1f} "
            f"| {len(chosen)} |"
        )
        curves[row] = [(statistics.fmean(t for t, _ in v), statistics.fmean(a for _, a in v)) for _, v in sorted(points.items())]
    image = os.path.splitext(doc)[0] + ".png"
    plot(curves, image)
    # The task as a generating row sees it (SFT's batch shape is its own).
    shown = next((r for r in rows if r not in offline), rows[0])
    task = task_of(bests[shown][1])
    described = "\n".join(f"- **{r}**: {DESCRIPTIONS[r]}" for r in rows)
    if offline:
        verb = "generates" if len(offline) == 1 else "generate"
        described += f"\n\n{', '.join(offline)} {verb} nothing, so the plot (against tokens generated) leaves {'it' if len(offline) == 1 else 'them'} out."
    if pending:
        described += "\n\nNot run yet: " + ", ".join(pending) + " (`bench/results.sh` resumes with them)."
    machine = f"{threads} thread{'s' if threads != 1 else ''} a run" + (f", {jobs} runs at a time" if jobs > 1 else "")
    text = f"""# Results: the algorithms on one task

Written by `bench/results_report.py` from the runs `bench/results.sh` made. Each run's
`config.toml` and `metrics.jsonl` are in `{os.path.relpath(out)}/ROW/lrLR-seedS/`; re-run a row
with `RECORD=/tmp/rerun bench/results.sh ROW`, or one run with `oxrl train` on its config.toml.

The bundled SmolLM2-135M-Instruct (f32, 2-core CPU, {machine}). Task: {task}:
pass@1, pass@4 and majority vote, before the first step and every few steps. Budget, the same
for every row: learning rates {lrs} with seed 0, then the best one (final pass@1) with seeds
{seeds}; "±" is half the range between seeds. A row with fewer learning rates tried or fewer
seeds than that is not finished. Wall time is each run's steps and evals as measured; runs that
shared the machine with other work took longer.

{described}

{chr(10).join(table)}

![held-out pass@1 against completion tokens generated]({os.path.basename(image)})
{notes(out, "Reading the table")}"""
    with open(doc, "w") as f:
        f.write(text)


def notes(record, heading):
    """RECORD/NOTES.md (what the numbers show, written by hand) as the doc's last section."""
    path = os.path.join(record, "NOTES.md")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f"\n## {heading}\n\n" + f.read()


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for row, pts in curves.items():
        if any(t > 0 for t, _ in pts):
            ax.plot([t for t, _ in pts], [a for _, a in pts], marker="o", label=row)
    ax.set_xlabel("completion tokens generated")
    ax.set_ylabel("held-out pass@1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--best", action="store_true")
    parser.add_argument("--lrs")
    parser.add_argument("--seeds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--doc", default="docs/results.md")
    args = parser.parse_args()
    if args.best:
        print(best(args.out)[1])
    else:
        report(args.out, args.lrs, args.seeds, args.threads, args.jobs, args.doc)
