#!/usr/bin/env bash
# Step time of configs/grpo_math.toml (SmolLM2-135M, 4 prompts x 4 completions) on 1 and on
# 2 local ranks (`oxrl train --nproc N`, Gloo through libtorch's c10d), each rank with
# cores / N OpenMP threads. The same global batch either way; on a 2-core machine expect no
# speed-up: the point is that it runs and what the collectives cost. Prints the mean step
# seconds after the first step, and each phase. Run from the repo root after `make build`
# (and `make train`'s model import); a few minutes.
# Usage: bench/dist_steps.sh [STEPS=6]
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh 2>/dev/null)"
STEPS="${1:-6}"
OXRL="${OXRL:-./target/release/oxrl}"
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
MODEL="$OXRL_CACHE/models/SmolLM2-135M-Instruct"
[[ -f $MODEL/model.safetensors ]] || "$OXRL" import "$OXRL_SMOLLM2_GGUF" "$MODEL"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
printf "%6s %10s %10s %10s %10s\n" ranks "step s" "generate" "update" "reward"
for n in 1 2; do
    "$OXRL" train configs/grpo_math.toml --nproc "$n" --set steps="$STEPS" --set eval.every=0 \
        --set metrics.listen='""' --set output_dir="$WORK/n$n" >/dev/null 2>"$WORK/n$n.log" ||
        { cat "$WORK/n$n.log" >&2; exit 1; }
    "$OXRL_PYTHON" - "$WORK/n$n/metrics.jsonl" "$n" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])][1:]  # the first step warms up
mean = lambda k: sum(l[k] for l in lines) / len(lines)
print(f"{sys.argv[2]:>6} {mean('time/step_seconds'):10.2f} {mean('time/generate_seconds'):10.2f} "
      f"{mean('time/update_seconds'):10.2f} {mean('reward'):10.3f}")
PY
done
