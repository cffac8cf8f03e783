#!/usr/bin/env bash
# GRPO's learning curve in oxrl next to TRL's GRPOTrainer on the run of configs/grpo_math.toml
# (docs/results_vs_trl.md): the same model, prompts (`oxrl config rows`), group size, max
# tokens, loss, clipping, lr, steps and reward (oxrl's math verifier on both sides); reward
# per step, and held-out pass@1 at the same steps by the same protocol (`oxrl eval`: 100
# held-out problems x 4 samples at T = 1; TRL's checkpoints are evaluated by oxrl's sampler).
# Every finished run is recorded in the repository (RECORD/SIDE/seedS/metrics.jsonl, and oxrl's
# config.toml), which is what the report reads and what marks a run done, so the comparison
# grows seed by seed in any checkout; the runs themselves stay in OUT.
# Usage: bench/grpo_curve_vs_trl.sh   Env: STEPS=60 SEEDS="0 1" LR=2e-5 EVAL_EVERY=20 SIDES="oxrl trl"
#        THREADS=cores OUT=runs/results_trl RECORD=docs/results/grpo_math_vs_trl/lrLR
#        TRL_PAD_ROW=frozen|trained (the pad token's input embedding row: transformers' padding_idx
#        freezes it, oxrl trains it; see bench/trl_grpo_curve.py)
# Cost on 2 cores (THREADS=2, 4 evals): oxrl 8-15 min and TRL ~22 min per seed at 60 steps, evals
# included; oxrl at THREADS=1 with EVAL_EVERY=10 (7 evals): 26 min; TRL at THREADS=1, two
# runs at once: ~35 min per seed.
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh 2>/dev/null)"
STEPS="${STEPS:-60}"
SEEDS="${SEEDS:-0 1}"
LR="${LR:-2e-5}"
EVAL_EVERY="${EVAL_EVERY:-20}"
SIDES="${SIDES:-oxrl trl}"
THREADS="${THREADS:-$(nproc)}"
OUT="$(realpath -m "${OUT:-runs/results_trl}")"
RECORD="$(realpath -m "${RECORD:-docs/results/grpo_math_vs_trl/lr$LR}")"
# TRL's runs with the pad row trained are a side of their own.
TRL_SIDE=trl; [[ ${TRL_PAD_ROW:-frozen} == frozen ]] || TRL_SIDE=trl_padrow
OXRL=$PWD/target/release/oxrl
CONFIG=configs/grpo_math.toml
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
MODEL="$OXRL_CACHE/models/SmolLM2-135M-Instruct"
[[ -f $MODEL/model.safetensors ]] || "$OXRL" import "$OXRL_SMOLLM2_GGUF" "$MODEL"
"$OXRL_PYTHON" -c "import matplotlib" 2>/dev/null || "$OXRL_PYTHON" -m pip install -q "matplotlib==3.10.7"
export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT"
"$OXRL" config rows "$CONFIG" > "$OUT/train_rows.jsonl"

eval_line() {  # MODEL_DIR STEP SEED: one eval line of metrics.jsonl's shape
  "$OXRL" eval "$CONFIG" --set "model.path=\"$1\"" --set "seed=$3" --samples 4 --k 4 2>/dev/null |
    "$OXRL_PYTHON" -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'step': $2, **{'eval/' + k: v for k, v in r.items()}}))"
}

# Copies a finished run's FILES to RECORD/SIDE/seedS: from then on the run counts as done.
record() {  # SIDE SEED FILE...
  local to=$RECORD/$1/seed$2
  mkdir -p "$to.tmp"; cp "${@:3}" "$to.tmp/"; rm -rf "$to"; mv "$to.tmp" "$to"
}
# True when SIDE is one of SIDES and its run with SEED is not recorded yet.
pending() { [[ " $SIDES " == *" ${1%_padrow} "* && ! -f $RECORD/$1/seed$2/metrics.jsonl ]]; }

for seed in $SEEDS; do
  d=$OUT/oxrl/seed$seed
  if pending oxrl "$seed"; then
    rm -rf "$d"; mkdir -p "$d"; echo "[curve] oxrl seed $seed"
    "$OXRL" train "$CONFIG" --set "output_dir=\"$d\"" --set "steps=$STEPS" --set "seed=$seed" \
      --set "learner.optim.lr=$LR" --set "eval.every=$EVAL_EVERY" --set 'metrics.listen=""' \
      --set "checkpoint.every=$STEPS" > "$d/train.log" 2>&1
    # A stopped run (SIGINT/SIGTERM) checkpoints and exits 0 too; only a finished one has final/.
    [[ -d $d/final ]] || { echo "[curve] oxrl seed $seed stopped before its last step" >&2; exit 1; }
    rm -rf "$d/checkpoints" "$d/final"; record oxrl "$seed" "$d/config.toml" "$d/metrics.jsonl"
  fi
  t=$OUT/$TRL_SIDE/seed$seed
  if pending "$TRL_SIDE" "$seed"; then
    rm -rf "$t"; mkdir -p "$t"; echo "[curve] TRL seed $seed"
    "$OXRL_PYTHON" bench/trl_grpo_curve.py "$MODEL" "$OUT/train_rows.jsonl" "$t" "$STEPS" "$seed" "$LR" \
      "$THREADS" "$EVAL_EVERY" "$OXRL" "$CONFIG" > "$t/train.log" 2>&1
    eval_line "$MODEL" 0 "$seed" >> "$t/metrics.jsonl"
    for step in $(seq "$EVAL_EVERY" "$EVAL_EVERY" "$STEPS"); do
      eval_line "$t/checkpoint-$step" "$step" "$seed" >> "$t/metrics.jsonl"
    done
    rm -rf "$t"/checkpoint-*; record "$TRL_SIDE" "$seed" "$t/metrics.jsonl"
  fi
done
"$OXRL_PYTHON" bench/curve_report.py "$RECORD" --steps "$STEPS" --lr "$LR" --seeds "$SEEDS"
