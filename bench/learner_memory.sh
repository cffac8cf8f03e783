#!/usr/bin/env bash
# Peak memory and time of GRPO updates on a random Qwen2.5-0.5B-shaped model (f32, CPU), one
# group of GROUP completions of 512 tokens after a 64-token prompt: `oxrl bench update` with
# the learner's memory options off, each alone and both, next to TRL's GRPOTrainer (gradient
# checkpointing on, bf16 off; bench/trl_update_memory.py) on the same shape, batch and threads.
# Each run is its own process and runs UPDATES updates: the first allocates the gradients (and
# TRL's AdamW moments), the second is what every later step of a run costs. Then the padding of
# the learner's micro-batches on two completion-length spreads (`oxrl bench padding`). The
# runs `both8` and `trl8` store AdamW's moments in 8 bits (`optim = "adamw_8bit"`; TRL:
# `optim="adamw_bnb_8bit"`, bitsandbytes on the CPU). Prints
# markdown tables; ~20 minutes on 2 cores. A run killed for memory (the options-off run needs
# more than 18 GB) is reported as such; runs are made the OOM killer's first choice so that
# other processes are spared. Installs trl (and, for trl8, bitsandbytes) into the set-up's venv
# on first use. Run from the repo root after `make build`.
# Usage: bench/learner_memory.sh [THREADS=nproc]
#   env: OXRL=path/to/oxrl  GROUP=4  UPDATES=2  CHUNK=256 (logprob_chunk_tokens)
#        DTYPE=f32 (or bf16: oxrl bf16 weights with f32 masters, TRL `bf16=True`)
#        RUNS="off checkpointing chunked both both8 trl trl8 padding" (any subset, in this order;
#        default: all but both8 and trl8)
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh 2>/dev/null)"
THREADS="${1:-$(nproc)}"
OXRL="${OXRL:-./target/release/oxrl}"
GROUP="${GROUP:-4}"
DTYPE="${DTYPE:-f32}"
UPDATES="${UPDATES:-2}"
CHUNK="${CHUNK:-256}"
RUNS=" ${RUNS:-off checkpointing chunked both trl padding} "
BOTH8="oxrl, both, 8-bit AdamW"
TRL8="TRL GRPOTrainer, checkpointing, 8-bit AdamW (bitsandbytes)"
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
export OMP_NUM_THREADS="$THREADS"
echo 1000 >/proc/self/oom_score_adj 2>/dev/null || true # inherited by every run below

# The value of KEY in the `key=value` words of stdin (the last occurrence).
field() { grep -o "\b$1=[^ ]*" | tail -1 | cut -d= -f2; }
load() { cut -d' ' -f1 /proc/loadavg; }
wanted() { [[ $RUNS == *" $1 "* ]]; }

# One table row: NAME, the run's exit status and output, the 1-minute load when it started.
# Static memory is what any trainer of these weights holds from the second update on besides
# the parameters (in the baseline): their gradients and AdamW's two moments, and oxrl's f32
# masters of bf16 weights. In units of the parameters' bytes (`param_mib`): f32 gradients 1,
# f32 moments 2 (8-bit: 0.5); bf16 weights (oxrl) gradients 1, masters 1 (the 16 low bits of
# each f32), moments 4 (8-bit: 1); TRL's bf16 is autocast over f32 weights, so as f32. "Above static" is activations,
# temporaries and allocator slack.
static_factor() { # the run's output
    local out=$1 moments=2
    [[ $(field optim <<<"$out") == *8bit* ]] && moments=0.5 # oxrl: Adamw8bit; TRL: adamw_bnb_8bit
    if [[ $out == *generation_seconds* || $(field dtype <<<"$out") != bf16 ]]; then
        echo "1 + $moments"
    else # oxrl's bf16 weights
        echo "1 + 1 + 2 * $moments"
    fi
}
row() {
    local name=$1 rc=$2 out=$3 start=$4 peak base params static
    static=$(static_factor "$out")
    if [[ $rc != 0 ]]; then
        local why="exit status $rc"
        [[ $rc == 137 ]] && why="killed (out of memory?)"
        printf '| %s | %s | | | | | | %s |\n' "$name" "$why" "$start"
        return
    fi
    peak=$(field peak_rss_mib <<<"$out")
    base=$(field baseline_rss_mib <<<"$out")
    params=$(field param_mib <<<"$out")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" \
        "$(grep '^update=1 ' <<<"$out" | field peak_rss_mib)" "$peak" "$((peak - base))" \
        "$(bc <<<"$peak - $base - ($static) * $params" | cut -d. -f1)" "$(field update_seconds <<<"$out")" \
        "$(field update_cpu_seconds <<<"$out")" "$start"
    PEAK[$name]=$peak
    ABOVE[$name]=$((peak - base))
}

# Runs a command, then its row (a failed run is a row too, not the end of the script).
measure() {
    local name=$1 start out rc=0
    shift
    start=$(load)
    out=$("$@" 2>/dev/null) || rc=$?
    row "$name" "$rc" "$out" "$start"
    LAST_OUT=$out
}

oxrl_run() {
    local name=$1
    shift
    measure "$name" "$OXRL" bench update --threads "$THREADS" --group "$GROUP" --updates "$UPDATES" \
        --dtype "$DTYPE" "$@"
}

declare -A PEAK ABOVE
TRL="TRL GRPOTrainer, checkpointing"
BOTH="oxrl, both"
echo "threads=$THREADS group=$GROUP prompt_tokens=64 completion_tokens=512 updates=$UPDATES" \
    "dtype=$DTYPE device=cpu logprob_chunk_tokens=$CHUNK ($(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB)"
echo "| run | peak MiB, update 1 | peak MiB, update $UPDATES | $UPDATES: above baseline | $UPDATES: above static | $UPDATES: s | $UPDATES: CPU s | load at start |"
echo "|---|---|---|---|---|---|---|---|"
wanted off && oxrl_run "oxrl, options off"
wanted checkpointing && oxrl_run "oxrl, checkpointing" --gradient-checkpointing
wanted chunked && oxrl_run "oxrl, chunked logprobs" --logprob-chunk-tokens "$CHUNK"
wanted both && oxrl_run "$BOTH" --gradient-checkpointing --logprob-chunk-tokens "$CHUNK"
wanted both8 && oxrl_run "$BOTH8" --gradient-checkpointing --logprob-chunk-tokens "$CHUNK" \
    --optim adamw_8bit
trl_run() { # NAME OPTIM
    "$OXRL_PYTHON" -c "import trl" 2>/dev/null || "$OXRL_PYTHON" -m pip install -q "trl==1.16.0"
    measure "$1" "$OXRL_PYTHON" bench/trl_update_memory.py "$THREADS" "$UPDATES" "$GROUP" 64 512 "$2" \
        "$DTYPE"
    echo
    echo "$1: $(grep '^prompt_ids' <<<"$LAST_OUT"); generation (not in the table):" \
        "$(field generation_seconds <<<"$LAST_OUT") s, peak $(field generation_peak_rss_mib <<<"$LAST_OUT") MiB"
}
wanted trl && trl_run "$TRL" adamw_torch
if wanted trl8; then
    "$OXRL_PYTHON" -c "import bitsandbytes" 2>/dev/null ||
        "$OXRL_PYTHON" -m pip install -q "bitsandbytes==0.50.2"
    trl_run "$TRL8" adamw_bnb_8bit
fi
ratio() { # OURS THEIRS
    [[ -n ${PEAK[$1]:-} && -n ${PEAK[$2]:-} ]] || return 0
    echo "$1 / $2, update $UPDATES: peak $(bc -l <<<"${PEAK[$1]} / ${PEAK[$2]}" | cut -c1-4)," \
        "above baseline $(bc -l <<<"${ABOVE[$1]} / ${ABOVE[$2]}" | cut -c1-4)"
}
ratio "$BOTH" "$TRL"
ratio "$BOTH8" "$TRL"
ratio "$BOTH8" "$TRL8"

if wanted padding; then
    echo
    echo "Padding: positions run per step, relative to packing every row without padding."
    "$OXRL" bench padding --prompts 8 --group-size 8 --prompt-tokens 64-256 --completion-tokens 100-512
    "$OXRL" bench padding --prompts 4 --group-size 4 --prompt-tokens 40-60 --completion-tokens 5-64 \
        --budgets 0,256,128
fi
