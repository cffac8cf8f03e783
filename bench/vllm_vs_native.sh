#!/usr/bin/env bash
# Native oxrl vs vLLM (the CPU build, `make vllm`) on the bundled SmolLM2-135M, f32, in one
# run: generation tok/s at each batch size (temperature 1, EOS ignored, same new tokens and
# threads), then GRPO seconds per step with each engine (configs/grpo_vllm.toml, the same run
# with rollout.engine = "native", and on vLLM with rollout.async = true; the mean over steps
# 2..STEPS). Run on a quiet machine from the repo root after `make build`.
# Usage: bench/vllm_vs_native.sh [NEW_TOKENS=64] [THREADS=nproc] [STEPS=6] [BATCH...=8 32]
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh 2>/dev/null)"
export OXRL_VLLM_PYTHON="${OXRL_VLLM_PYTHON:-$(bash scripts/setup_vllm.sh 2>/dev/null)}"
N="${1:-64}"
THREADS="${2:-$(nproc)}"
STEPS="${3:-6}"
shift $(( $# > 3 ? 3 : $# )) || true
BATCHES=("${@:-8 32}")
OXRL=./target/release/oxrl
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
MODEL="${MODEL:-$OXRL_CACHE/models/SmolLM2-135M-Instruct}"
[[ -f $MODEL/model.safetensors ]] || "$OXRL" import "$OXRL_SMOLLM2_GGUF" "$MODEL"
WORK="$(mktemp -d)"
trap 'kill %1 2>/dev/null || true; rm -rf "$WORK"' EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
OMP_NUM_THREADS=$THREADS VLLM_CPU_OMP_THREADS_BIND=nobind VLLM_CPU_KVCACHE_SPACE=2 \
    "$OXRL_VLLM_PYTHON" -m vllm.entrypoints.openai.api_server --model "$MODEL" \
    --served-model-name oxrl-policy --dtype float32 --enforce-eager --port "$PORT" \
    > "$WORK/vllm.log" 2>&1 &
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
    kill -0 %1 2>/dev/null || { tail -20 "$WORK/vllm.log"; exit 1; }
    sleep 2
done
printf "%6s %14s %14s %7s\n" batch "native tok/s" "vLLM tok/s" ratio
for B in ${BATCHES[@]}; do
    ours=$("$OXRL" bench rollout --model "$MODEL" --batch "$B" --max-tokens "$N" --threads "$THREADS" --dtype f32 | sed -n 's/^tokens_per_s=//p')
    theirs=$("$OXRL_VLLM_PYTHON" bench/vllm_rollout.py "http://127.0.0.1:$PORT" "$B" "$N" | sed -n 's/^tokens_per_s=//p')
    printf "%6s %14s %14s %7.2f\n" "$B" "$ours" "$theirs" "$(echo "$ours / $theirs" | bc -l)"
done
kill %1; wait %1 2>/dev/null || true

step_mean() {  # mean time/step_seconds of steps 2.., and the engine/learner logprob gap
    python3 - "$1/metrics.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if '"eval/' not in l]
t = [l["time/step_seconds"] for l in lines][1:]
gaps = [l["rollout/logprob_abs_diff_mean"] for l in lines if "rollout/logprob_abs_diff_mean" in l]
worst = max((l["rollout/logprob_abs_diff_max"] for l in lines if "rollout/logprob_abs_diff_max" in l), default=float("nan"))
gap = f"{sum(gaps)/len(gaps):.2e} (max {worst:.2e}, {len(gaps)} fresh steps)" if gaps else "n/a (stale batches)"
print(f"{sum(t)/len(t):.2f} s/step, logprob gap mean {gap}")
PY
}
# The same run on the native engine: the config without its engine line and [rollout.vllm].
sed '/^engine = "vllm"/d; /^\[rollout.vllm\]/,/^$/d' configs/grpo_vllm.toml > "$WORK/native.toml"
for engine in native vllm vllm-async; do
    config=configs/grpo_vllm.toml
    sets=(--set "steps=$STEPS" --set "output_dir=$WORK/$engine" --set "model.path=$MODEL")
    if [[ $engine == native ]]; then config="$WORK/native.toml"; else sets+=(--set "rollout.vllm.threads=$THREADS"); fi
    if [[ $engine == vllm-async ]]; then sets+=(--set "rollout.async=true"); fi
    OMP_NUM_THREADS=$THREADS "$OXRL" train "$config" "${sets[@]}" >/dev/null 2>"$WORK/$engine.err" \
        || { tail -20 "$WORK/$engine.err"; exit 1; }
    echo "grpo $engine: $(step_mean "$WORK/$engine")"
done
echo "new_tokens=$N threads=$THREADS steps=$STEPS dtype=f32 device=cpu"
