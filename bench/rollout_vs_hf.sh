#!/usr/bin/env bash
# Rollout throughput of oxrl vs transformers' `generate`, same model (bundled SmolLM2-135M,
# f32), prompts, batch size, sampling settings (temperature 1, no top-k/top-p, EOS ignored) and
# thread count, run back to back in this script. Run from the repo root after `make build`.
# Usage: [DTYPE=f32|bf16] bench/rollout_vs_hf.sh [NEW_TOKENS=64] [THREADS=nproc] [BATCH...=8 32]
# DTYPE applies to both sides (bf16 is fast on CPUs with AMX/AVX512-BF16).
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh 2>/dev/null)"
DTYPE="${DTYPE:-f32}"
N="${1:-64}"
THREADS="${2:-$(nproc)}"
shift $(( $# > 2 ? 2 : $# )) || true
BATCHES=("${@:-8 32}")
OXRL=./target/release/oxrl
[[ -x $OXRL ]] || { echo "build first: make build" >&2; exit 1; }
# Both sides load the same dense HF directory (transformers keeps GGUF weights packed).
MODEL="${MODEL:-$OXRL_CACHE/models/SmolLM2-135M-Instruct}"
[[ -f $MODEL/model.safetensors ]] || "$OXRL" import "$OXRL_SMOLLM2_GGUF" "$MODEL"
printf "%6s %12s %12s %7s %16s\n" batch "oxrl tok/s" "hf tok/s" ratio "bw floor tok/s"
for B in ${BATCHES[@]}; do
    out=$("$OXRL" bench rollout --model "$MODEL" --batch "$B" --max-tokens "$N" --threads "$THREADS" --dtype "$DTYPE")
    ours=$(sed -n 's/^tokens_per_s=//p' <<<"$out")
    floor=$(sed -n 's/^bandwidth_floor_tokens_per_s=\([0-9.]*\).*/\1/p' <<<"$out")
    hf=$("$OXRL_PYTHON" bench/hf_rollout.py "$MODEL" "$B" "$N" "$THREADS" 1.0 "$DTYPE" | sed -n 's/^tokens_per_s=//p')
    printf "%6s %12s %12s %7.2f %16s\n" "$B" "$ours" "$hf" "$(echo "$ours / $hf" | bc -l)" "$floor"
done
echo "new_tokens=$N threads=$THREADS dtype=$DTYPE device=cpu"
