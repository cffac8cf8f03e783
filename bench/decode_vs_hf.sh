#!/usr/bin/env bash
# Single-sequence greedy decode speed of the bundled SmolLM2-135M (f32, CPU), oxrl vs
# transformers on the same prompts, token count and thread count. Run from the repo root
# after `make build`. Usage: bench/decode_vs_hf.sh [NEW_TOKENS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh 2>/dev/null)"
N="${1:-64}"
export OMP_NUM_THREADS="${2:-$(nproc)}"
PROMPTS=("Once upon a time" "The three primary colors are" "def quicksort(xs):")
OXRL=./target/release/oxrl
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
# Both sides load the same dense HF directory (transformers keeps GGUF weights packed).
MODEL="${MODEL:-$OXRL_CACHE/models/SmolLM2-135M-Instruct}"
[[ -f $MODEL/model.safetensors ]] || "$OXRL" import "$OXRL_SMOLLM2_GGUF" "$MODEL"
mapfile -t HF < <("$OXRL_PYTHON" bench/hf_decode.py "$MODEL" "$N" "${PROMPTS[@]}" | sed 's/tokens_per_s=//')
printf "%-32s %12s %12s %7s\n" prompt "oxrl tok/s" "hf tok/s" ratio
for i in "${!PROMPTS[@]}"; do
    ours=$("$OXRL" generate --model "$MODEL" --prompt "${PROMPTS[$i]}" --max-tokens "$N" --ignore-eos 2>&1 >/dev/null \
        | sed -n 's/.*tokens_per_s=\([0-9.]*\).*/\1/p')
    printf "%-32s %12s %12s %7.2f\n" "${PROMPTS[$i]}" "$ours" "${HF[$i]}" "$(echo "$ours / ${HF[$i]}" | bc -l)"
done
echo "threads=$OMP_NUM_THREADS new_tokens=$N dtype=f32 batch=1"
