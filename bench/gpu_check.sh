#!/usr/bin/env bash
# CUDA checks on a GPU host whose `python3` has torch 2.11.0 (CUDA build) and transformers but
# which has no Rust: runs the binaries scripts/gpu_bundle.sh put in .gpu/. It runs the engine
# tests on CUDA, rollout throughput against transformers' generate, short GRPO runs (f32 and
# bf16, then a resume) while scraping /metrics, and the peak GPU memory and time of bf16-mixed
# GRPO updates of a Qwen2.5-0.5B-shaped model with the learner's memory options on and off.
# Usage: [DEVICE=cuda] [BATCHES="8 32 128"] [GROUP=8] bench/gpu_check.sh [LOG_DIR=/tmp/oxrl-gpu]
# (DEVICE=cpu BATCHES=8 GROUP=2 rehearses it on a machine without a GPU.)
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${1:-/tmp/oxrl-gpu}"
DEVICE="${DEVICE:-cuda}"
BATCHES="${BATCHES:-8 32 128}"
GROUP="${GROUP:-8}" # prompts per step and completions per prompt
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
OXRL=.gpu/oxrl
TORCH_LIB="$($PY -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
built_at="$(cat .gpu/built_at)"
[[ -e $built_at ]] || { mkdir -p "$(dirname "$built_at")" && ln -s "$PWD" "$built_at"; }
failed=()
section() { printf '\n== %s\n' "$*"; }
[[ $DEVICE == cpu ]] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

section "engine tests with OXRL_TEST_DEVICE=$DEVICE"
for t in model rollout rollout_pool learner_golden learner_grpo learner_ppo learner_dpo \
    learner_topr learner_expert learner_lora learner_batch learner_memory learner_precision \
    learner_rollout_correction; do
    if OXRL_TEST_DEVICE=$DEVICE timeout 300 ".gpu/tests/$t" >"$LOG/test_$t.log" 2>&1; then
        echo "$t: $(grep '^test result' "$LOG/test_$t.log")"
    else
        failed+=("test $t")
        echo "$t: FAILED"
        grep -E -A4 "^---- |panicked" "$LOG/test_$t.log" | head -40
    fi
done

section "a SmolLM2-135M-shaped model with random weights"
MODEL=/tmp/oxrl-smollm2-random
$PY - "$MODEL" <<'PY'
import shutil, sys, torch, transformers
torch.manual_seed(0)
config = transformers.AutoConfig.from_pretrained(".gpu/model")
transformers.AutoModelForCausalLM.from_config(config).save_pretrained(sys.argv[1])
for name in ["generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
    shutil.copy(f".gpu/model/{name}", sys.argv[1])
PY
ls -la "$MODEL"

section "rollout tokens/s on $DEVICE, oxrl vs transformers generate (64 new tokens, EOS ignored)"
printf "%6s %6s %12s %12s %7s\n" dtype batch "oxrl tok/s" "hf tok/s" ratio
for dtype in bf16 f32; do
    for B in $BATCHES; do
        ours=$($OXRL bench rollout --model "$MODEL" --device $DEVICE --dtype $dtype --batch $B \
            --max-tokens 64 2>>"$LOG/bench.log" | sed -n 's/^tokens_per_s=//p')
        hf=$($PY bench/hf_rollout.py "$MODEL" $B 64 "$(nproc)" 1.0 $dtype $DEVICE 2>>"$LOG/bench.log" |
            sed -n 's/^tokens_per_s=//p')
        [[ -n $ours && -n $hf ]] || failed+=("bench $dtype $B")
        printf "%6s %6s %12s %12s %7s\n" $dtype $B "$ours" "$hf" \
            "$($PY -c "print(f'{$ours / $hf:.2f}')" 2>/dev/null)"
    done
done

train() { # NAME DTYPE STEPS [ARGS...]: a GRPO run on $DEVICE, /metrics scraped every second
    local name=$1 dtype=$2 steps=$3
    shift 3
    cat >"$LOG/$name.toml" <<TOML
seed = 0
steps = $steps
output_dir = "/tmp/oxrl-gpu-$name"
[model]
path = "$MODEL"
dtype = "$dtype"
device = "$DEVICE"
[env]
task = "arithmetic"
[env.data]
generate = 512
seed = 0
[[rewards]]
name = "math"
[[rewards]]
name = "length"
type = "format"
overlong_max = 400
overlong_buffer = 300
[rollout]
prompts_per_step = $GROUP
group_size = $GROUP
max_tokens = 64
[learner]
algorithm = "grpo"
[learner.optim]
lr = 1e-5
[checkpoint]
every = 2
[metrics]
listen = "127.0.0.1:9464"
TOML
    (while sleep 1; do curl -sf 127.0.0.1:9464/metrics >"$LOG/$name.metrics.tmp" &&
        mv "$LOG/$name.metrics.tmp" "$LOG/$name.metrics"; done) &
    local scraper=$!
    timeout 300 $OXRL train "$LOG/$name.toml" "$@" >"$LOG/$name.log" 2>&1 || failed+=("train $name")
    kill $scraper
    tail -4 "$LOG/$name.log"
    grep -E "^oxrl_(gpu_memory|rollout_tokens_per_second|learner_tokens_per_second|steps_total)" \
        "$LOG/$name.metrics" 2>/dev/null | head -12
    sleep 2 # the port frees
}
section "GRPO on $DEVICE, f32: 4 steps"
train f32 f32 4
section "the same run resumed to 6 steps"
train f32 f32 6 --resume auto
section "GRPO on $DEVICE, bf16: 2 steps"
train bf16 bf16 2

section "GRPO updates of a Qwen2.5-0.5B-shaped model on $DEVICE, bf16-mixed, 4 completions x 512 tokens"
# `oxrl bench update` (precision auto: bf16-mixed), 2 updates each; the GPU's peak memory is
# nvidia-smi's (NVML) memory.used sampled every 100 ms over the whole run (CUDA context
# included); the second update's time is what every step of a run costs.
printf "%-44s %10s %14s\n" options "update 2 s" "peak GPU MiB"
# A rehearsal on the CPU runs a 2-layer model (bench/learner_memory.sh measures the CPU).
[[ $DEVICE == cpu ]] && SHAPE="--layers 2 --completion-tokens 64" || SHAPE=""
for opts in "" "--gradient-checkpointing" "--logprob-chunk-tokens 1024" \
    "--gradient-checkpointing --logprob-chunk-tokens 1024"; do
    smi=""
    if [[ $DEVICE != cpu ]]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$LOG/smi.txt" &
        smi=$!
    fi
    # shellcheck disable=SC2086 # $opts is a list of flags
    out=$(timeout 600 $OXRL bench update --device $DEVICE --dtype bf16 --updates 2 $SHAPE $opts 2>>"$LOG/bench.log") ||
        failed+=("bench update $opts")
    peak="-"
    [[ -n $smi ]] && { kill $smi; peak=$(sort -n "$LOG/smi.txt" | tail -1); }
    printf "%-44s %10s %14s\n" "${opts:-none}" "$(grep -o 'update_seconds=[^ ]*' <<<"$out" | cut -d= -f2)" "$peak"
done

section "summary"
if ((${#failed[@]})); then printf 'FAILED: %s\n' "${failed[@]}"; exit 1; fi
echo "all $DEVICE checks passed"
