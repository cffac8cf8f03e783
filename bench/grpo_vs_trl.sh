#!/usr/bin/env bash
# Seconds per GRPO step, oxrl vs TRL's GRPOTrainer, on the bundled SmolLM2-135M (dense f32 HF
# directory), the same prompts (envs/tests/fixtures/gsm8k_sample.jsonl), 1 prompt x 8
# completions of <= 64 tokens, beta 0, lr 1e-6, and the same thread count, back to back.
# Installs trl into the set-up's venv on first use. Run from the repo root after `make build`.
# Usage: bench/grpo_vs_trl.sh [STEPS=4] [THREADS=nproc]
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh 2>/dev/null)"
STEPS="${1:-4}"
THREADS="${2:-$(nproc)}"
OXRL=./target/release/oxrl
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
MODEL="$OXRL_CACHE/models/SmolLM2-135M-Instruct"
[[ -f $MODEL/model.safetensors ]] || "$OXRL" import "$OXRL_SMOLLM2_GGUF" "$MODEL"
"$OXRL_PYTHON" -c "import trl" 2>/dev/null || "$OXRL_PYTHON" -m pip install -q "trl==1.16.0"
export OXRL_BENCH_PROMPTS="$PWD/envs/tests/fixtures/gsm8k_sample.jsonl"
export OMP_NUM_THREADS="$THREADS"

trl_line=$("$OXRL_PYTHON" bench/trl_grpo.py "$MODEL" "$OXRL_BENCH_PROMPTS" "$STEPS" "$THREADS" 2>/dev/null | grep '^trl_s_per_step=')
trl=${trl_line#trl_s_per_step=}

rm -rf /tmp/oxrl-grpo-bench
"$OXRL" train bench/grpo_vs_trl.toml --set "steps=$STEPS" >/dev/null 2>&1
oxrl=$("$OXRL_PYTHON" -c "
import json
times = [json.loads(l)['time/step_seconds'] for l in open('/tmp/oxrl-grpo-bench/metrics.jsonl')]
later = times[1:] or times
print(f'{sum(later) / len(later):.2f}')")
echo "steps=$STEPS threads=$THREADS group=8 max_completion_tokens=64 dtype=f32 device=cpu"
echo "oxrl_s_per_step=$oxrl trl_s_per_step=$trl ratio=$(echo "$trl / $oxrl" | bc -l | cut -c1-5)"
