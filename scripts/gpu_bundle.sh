#!/usr/bin/env bash
# Builds what bench/gpu_check.sh runs on a GPU host that has no Rust toolchain: the release
# `oxrl` binary and the engine's test binaries, stripped, in .gpu/ (copy that folder and the
# repo there; the binaries load the host's libtorch 2.11.0 through LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
source "$(bash scripts/setup.sh)"
cargo build --release -p oxrl-engine
rm -rf .gpu && mkdir -p .gpu/tests
install -s target/release/oxrl .gpu/oxrl
cargo test --release -p oxrl-engine --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do install -s "$exe" ".gpu/tests/$name"; done
# The bundled model's shape and tokenizer; gpu_check.sh gives it random weights there (the
# weights would not fit the copy).
MODEL="$OXRL_CACHE/models/SmolLM2-135M-Instruct"
[[ -f $MODEL/config.json ]] || .gpu/oxrl import "$OXRL_SMOLLM2_GGUF" "$MODEL"
mkdir -p .gpu/model
cp "$MODEL"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/model/
# The tests find their fixtures through the path they were built at.
pwd >.gpu/built_at
du -sh .gpu
