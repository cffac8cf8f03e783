#!/usr/bin/env bash
# The results table (docs/results.md): every algorithm on the task of configs/grpo_math.toml
# (the bundled SmolLM2-135M, two-term arithmetic, the same prompts, held-out split and eval:
# pass@1, pass@4 and majority vote of 4 samples at T = 1 on 100 held-out problems), the same
# 4 x 4 completions of <= 64 tokens a step, each algorithm at its paper's or TRL's defaults.
# CONFIG=configs/grpo_gsm8k.toml runs the same rows on GSM8K-style word problems
# (docs/results_gsm8k.md; `bench/results.sh grpo_dapo ppo` for the two the issue asks there).
#
# Budget, the same for every row: each learning rate of LRS with seed 0; the best (final
# held-out pass@1) is run again with every other seed of SEEDS. Rows that need another run
# (ReFT: PPO from the SFT run's final model; offline TOPR: the GRPO run's logged samples)
# start from that run at its best learning rate. A run whose output holds a final eval line
# is not run again, so the script resumes where it stopped; every run's config.toml sits
# next to its metrics in runs/results/<config name>/<row>/lr<LR>-seed<S>/. Then bench/results_report.py
# writes docs/results.md and docs/results.png.
#
# Usage: bench/results.sh [ROW ...]        (default: every row, in dependency order)
# Env:   STEPS=60 LRS="1e-5 3e-5" SEEDS="0 1" EVAL_EVERY=20 CONFIG=configs/grpo_math.toml
#        OUT=runs/results/<config name>, EXTRA="k=v ..."
#        (more --set overrides for every run: a quick check of the script with
#        STEPS=2 EXTRA="eval.max_prompts=4" OUT=/tmp/results-check)
# Cost on 2 cores: about 6 minutes a run at 60 steps; 11 rows x (2 + 1) runs = 3.3 hours.
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh 2>/dev/null)"
STEPS="${STEPS:-60}"
LRS="${LRS:-1e-5 3e-5}"
SEEDS="${SEEDS:-0 1}"
EVAL_EVERY="${EVAL_EVERY:-20}"
CONFIG="${CONFIG:-configs/grpo_math.toml}"
NAME=$(basename "$CONFIG" .toml)
OUT="$(realpath -m "${OUT:-runs/results/$NAME}")"
EXTRA="${EXTRA:-}"
OXRL=./target/release/oxrl
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
MODEL="$OXRL_CACHE/models/SmolLM2-135M-Instruct"
[[ -f $MODEL/model.safetensors ]] || "$OXRL" import "$OXRL_SMOLLM2_GGUF" "$MODEL"
"$OXRL_PYTHON" -c "import matplotlib" 2>/dev/null || "$OXRL_PYTHON" -m pip install -q "matplotlib==3.10.7"

# name | overrides of the config (space-separated --set values)
ROWS=(
  'grpo_dapo|log.samples="all"'
  'grpo|learner.grpo.loss_type="grpo" learner.grpo.epsilon_high=0.2'
  'dr_grpo|learner.grpo.loss_type="dr_grpo" learner.grpo.scale_rewards="none" learner.grpo.max_completion_length=64 learner.grpo.epsilon_high=0.2'
  'rloo|learner.grpo.baseline="leave_one_out" learner.grpo.scale_rewards="none" learner.grpo.epsilon_high=0.2'
  'ppo|learner.algorithm="ppo"'
  'topr|learner.algorithm="topr" learner.topr.baseline="group_mean"'
  'expert_iteration|learner.algorithm="expert_iteration"'
  'online_dpo|learner.algorithm="dpo"'
  'sft|learner.algorithm="sft" rollout.source="dataset" rollout.group_size=1 rollout.prompts_per_step=16'
  'reft|learner.algorithm="ppo" model.path="@sft/final"'
  'topr_offline|learner.algorithm="topr" learner.topr.baseline="group_mean" rollout.source="dataset" rollout.samples_path="@grpo_dapo/replay.jsonl"'
)

done_run() { [[ -f $1/.done ]]; }

# The run directory of ROW's best learning rate at seed 0 (final held-out pass@1).
best_dir() {
  "$OXRL_PYTHON" bench/results_report.py --best "$OUT/$1"
}

run() {  # ROW OVERRIDES LR SEED
  local dir="$OUT/$1/lr$3-seed$4" sets=() s
  if done_run "$dir"; then echo "[results] $dir: done"; return; fi
  for s in $2 $EXTRA; do
    if [[ $s == *'"@'* ]]; then  # "@row/file": that row's best run
      local ref=${s#*\"@} ; ref=${ref%\"}
      s="${s%%=*}=\"$(best_dir "${ref%%/*}")/${ref#*/}\""
    fi
    sets+=(--set "$s")
  done
  rm -rf "$dir"; mkdir -p "$dir"
  echo "[results] $dir"
  OMP_NUM_THREADS=$(nproc) "$OXRL" train "$CONFIG" --set "output_dir=\"$dir\"" \
    --set "steps=$STEPS" --set "seed=$4" --set "learner.optim.lr=$3" --set "eval.every=$EVAL_EVERY" \
    --set 'metrics.listen=""' --set "checkpoint.every=$STEPS" "${sets[@]}" > "$dir/train.log" 2>&1 \
    || { echo "[results] $dir failed: see $dir/train.log" >&2; exit 1; }
  # 1.6 GB of checkpoint per run: keep only what another row starts from (SFT's model).
  rm -rf "$dir/checkpoints"; [[ $1 == sft ]] || rm -rf "$dir/final"
  touch "$dir/.done"
}

wanted=("$@")
for entry in "${ROWS[@]}"; do
  name=${entry%%|*}; sets=${entry#*|}
  if (( ${#wanted[@]} )) && [[ ! " ${wanted[*]} " == *" $name "* ]]; then continue; fi
  for lr in $LRS; do run "$name" "$sets" "$lr" 0; done
  best=$(best_dir "$name"); lr=${best##*/lr}; lr=${lr%-seed*}
  for seed in $SEEDS; do [[ $seed == 0 ]] || run "$name" "$sets" "$lr" "$seed"; done
done
DOC=docs/results.md; [[ $NAME == grpo_math ]] || DOC=docs/results_${NAME#grpo_}.md
"$OXRL_PYTHON" bench/results_report.py "$OUT" --steps "$STEPS" --lrs "$LRS" --seeds "$SEEDS" --doc "$DOC"
