#!/usr/bin/env bash
# The results table (docs/results.md): every algorithm on the task of configs/grpo_math.toml
# (the bundled SmolLM2-135M, two-term arithmetic, the same prompts, held-out split and eval:
# pass@1, pass@4 and majority vote of 4 samples at T = 1 on 100 held-out problems), the same
# 4 x 4 completions of <= 64 tokens a step, each algorithm at its paper's or TRL's defaults.
# CONFIG=configs/grpo_gsm8k.toml runs the same rows on GSM8K-style word problems
# (docs/results_gsm8k.md). There the base model solves 0.5% at T = 1 and its samples earn no
# reward, so GRPO and PPO start from SFT's model, as in the ReFT paper (the runs of
# docs/results_gsm8k.md; RL from SFT wants a smaller rate than RL from the base model):
#   CONFIG=configs/grpo_gsm8k.toml LRS=1e-5 SEEDS=0 EVAL_EVERY=30 bench/results.sh sft
#   CONFIG=configs/grpo_gsm8k.toml LRS="1e-5 1e-6" SEEDS=0 STEPS=30 EVAL_EVERY=15 \
#     bench/results.sh sft_grpo reft
#
# Budget, the same for every row: each learning rate of LRS with seed 0; the best (final
# held-out pass@1) is run again with every other seed of SEEDS. Rows that need another run
# (ReFT: PPO from the SFT run's final model; offline TOPR: the GRPO run's logged samples)
# start from that run at its best learning rate.
#
# Every finished run is recorded in the repository: its config.toml and metrics.jsonl go to
# RECORD/<row>/lr<LR>-seed<S>/ (docs/results/<config name>/), which is what the report reads
# and what marks a run done, so the table resumes where it stopped, in any checkout. The run
# itself (logs, samples, the SFT model another row starts from) stays in OUT.
# bench/results_report.py then writes docs/results.md and docs/results.png.
#
# JOBS=2 runs two lanes of rows at once, each run on THREADS = cores / JOBS threads (on 2 cores
# more runs an hour than one 2-thread run at a time; a dependent row stays in its lane).
#
# Usage: bench/results.sh [ROW ...]        (default: every row, in dependency order)
# Env:   STEPS=60 LRS="1e-5 3e-5" SEEDS="0 1" EVAL_EVERY=20 CONFIG=configs/grpo_math.toml
#        JOBS=1 THREADS=cores/JOBS OUT=runs/results/<config name> RECORD=docs/results/<config name>
#        DOC=docs/results.md (docs/results_gsm8k.md for the GSM8K config)
#        EXTRA="k=v ..." (more --set overrides for every run: a quick check of the script with
#        STEPS=2 EXTRA="eval.max_prompts=4" OUT=/tmp/results-check RECORD=/tmp/results-check/record
#        DOC=/tmp/results-check/results.md)
# Cost on 2 cores with JOBS=2 (1 thread a run), measured at 60 steps with 4 evals of 400
# samples: expert iteration and GRPO from SFT 9 minutes a run, SFT 12, GRPO variants and TOPR
# 15-20, ReFT 23, PPO 38; 12 rows x (2 + 1) runs, about 5 hours.
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
RECORD="$(realpath -m "${RECORD:-docs/results/$NAME}")"
JOBS="${JOBS:-1}"
THREADS="${THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}"
EXTRA="${EXTRA:-}"
OXRL=./target/release/oxrl
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
MODEL="$OXRL_CACHE/models/SmolLM2-135M-Instruct"
[[ -f $MODEL/model.safetensors ]] || "$OXRL" import "$OXRL_SMOLLM2_GGUF" "$MODEL"
"$OXRL_PYTHON" -c "import matplotlib" 2>/dev/null || "$OXRL_PYTHON" -m pip install -q "matplotlib==3.10.7"

# name | overrides of the config (space-separated --set values)
# PPO makes one pass over each batch, as every other row does (verl's default, actor.ppo_epochs
# = 1; TRL's PPOTrainer makes 4, which costs 4x the update of policy and critic: 80 s a step here).
# Cheap rows first, so that a stopped table has most rows.
ROWS=(
  'grpo_dapo|log.samples="all"'
  'grpo|learner.grpo.loss_type="grpo" learner.grpo.epsilon_high=0.2'
  'dr_grpo|learner.grpo.loss_type="dr_grpo" learner.grpo.scale_rewards="none" learner.grpo.max_completion_length=64 learner.grpo.epsilon_high=0.2'
  'rloo|learner.grpo.baseline="leave_one_out" learner.grpo.scale_rewards="none" learner.grpo.epsilon_high=0.2'
  'topr|learner.algorithm="topr" learner.topr.baseline="group_mean"'
  'expert_iteration|learner.algorithm="expert_iteration"'
  'online_dpo|learner.algorithm="dpo"'
  'sft|learner.algorithm="sft" rollout.source="dataset" rollout.group_size=1 rollout.prompts_per_step=16'
  'topr_offline|learner.algorithm="topr" learner.topr.baseline="group_mean" rollout.source="dataset" rollout.samples_path="@grpo_dapo/replay.jsonl"'
  'ppo|learner.algorithm="ppo" learner.ppo.num_ppo_epochs=1'
  'reft|learner.algorithm="ppo" learner.ppo.num_ppo_epochs=1 model.path="@sft/final"'
  'sft_grpo|model.path="@sft/final"'
)

# The run name (lrLR-seed0) of ROW's best learning rate (final held-out pass@1).
best_run() {
  basename "$("$OXRL_PYTHON" bench/results_report.py --best "$RECORD/$1")"
}

# "@ROW/FILE": FILE of ROW's best run, which must still be in OUT.
resolve() {
  local ref=$1 row=${1%%/*} run path
  run=$(best_run "$row")
  path="$OUT/$row/$run/${ref#*/}"
  [[ -e $path ]] || { echo "[results] $path is gone (a run recorded in another checkout):" \
    "re-run it: rm -r $RECORD/$row/$run" >&2; exit 1; }
  echo "$path"
}

run() {  # ROW OVERRIDES LR SEED
  local name="lr$3-seed$4" dir="$OUT/$1/lr$3-seed$4" sets=() s
  if [[ -f $RECORD/$1/$name/metrics.jsonl ]]; then echo "[results] $1/$name: recorded"; return; fi
  for s in $2 $EXTRA; do
    if [[ $s == *'"@'* ]]; then  # "@row/file": that row's best run
      local ref=${s#*\"@} ; ref=${ref%\"}
      s="${s%%=*}=\"$(resolve "$ref")\""
    fi
    sets+=(--set "$s")
  done
  rm -rf "$dir"; mkdir -p "$dir"
  echo "[results] $dir"
  OMP_NUM_THREADS=$THREADS "$OXRL" train "$CONFIG" --set "output_dir=\"$dir\"" \
    --set "steps=$STEPS" --set "seed=$4" --set "learner.optim.lr=$3" --set "eval.every=$EVAL_EVERY" \
    --set 'metrics.listen=""' --set "checkpoint.every=$STEPS" "${sets[@]}" > "$dir/train.log" 2>&1 \
    || { echo "[results] $dir failed: see $dir/train.log" >&2; exit 1; }
  # A stopped run (SIGINT/SIGTERM) checkpoints and exits 0 too; only a finished one has final/.
  [[ -d $dir/final ]] || { echo "[results] $dir stopped before its last step: not recorded" >&2; exit 1; }
  # 1.6 GB of checkpoint per run: keep only what another row starts from (SFT's model).
  rm -rf "$dir/checkpoints"; [[ $1 == sft ]] || rm -rf "$dir/final"
  mkdir -p "$RECORD/$1/$name.tmp"
  cp "$dir/config.toml" "$dir/metrics.jsonl" "$RECORD/$1/$name.tmp/"
  mv "$RECORD/$1/$name.tmp" "$RECORD/$1/$name"
}

row_names() { for entry in "${ROWS[@]}"; do echo "${entry%%|*}"; done; }

wanted=("$@")
(( ${#wanted[@]} )) || mapfile -t wanted < <(row_names)
report() {
  local doc=docs/results.md; [[ $NAME == grpo_math ]] || doc=docs/results_${NAME#grpo_}.md
  doc=${DOC:-$doc}
  "$OXRL_PYTHON" bench/results_report.py "$RECORD" --lrs "$LRS" --seeds "$SEEDS" \
    --threads "$THREADS" --jobs "$JOBS" --doc "$doc"
}

if (( JOBS > 1 )) && [[ -z ${RESULTS_LANE:-} ]]; then
  # Lanes: a row and the rows that start from it stay together (grpo_dapo -> topr_offline,
  # sft -> reft); one PPO row in each.
  lanes=("" "")
  for row in grpo_dapo grpo dr_grpo rloo topr_offline ppo; do
    if [[ " ${wanted[*]} " == *" $row "* ]]; then lanes[0]+=" $row"; fi
  done
  for row in "${wanted[@]}"; do
    if [[ ! " ${lanes[0]} " == *" $row "* ]]; then lanes[1]+=" $row"; fi
  done
  pids=()
  for lane in "${lanes[@]}"; do
    [[ -n ${lane// } ]] || continue
    # shellcheck disable=SC2086
    RESULTS_LANE=1 THREADS=$THREADS "$0" $lane & pids+=($!)
  done
  status=0; for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  (( status == 0 )) || { echo "[results] a lane failed" >&2; exit 1; }
  report; exit
fi

for entry in "${ROWS[@]}"; do
  name=${entry%%|*}; sets=${entry#*|}
  [[ " ${wanted[*]} " == *" $name "* ]] || continue
  for lr in $LRS; do run "$name" "$sets" "$lr" 0; done
  best=$(best_run "$name"); lr=${best#lr}; lr=${lr%-seed*}
  for seed in $SEEDS; do [[ $seed == 0 ]] || run "$name" "$sets" "$lr" "$seed"; done
done
[[ -n ${RESULTS_LANE:-} ]] || report
