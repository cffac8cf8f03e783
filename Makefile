# The two commands a new user types: `make train` and `make test`. Both run the idempotent
# set-up first (scripts/setup.sh: libtorch + reference Python in a per-user cache, the
# bundled model), then source the environment file it prints.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
SETUP := source "$$(bash scripts/setup.sh)"
# The vLLM CPU build the vLLM-engine tests run against (its own venv; scripts/setup_vllm.sh).
SETUP_VLLM := export OXRL_VLLM_PYTHON="$$(bash scripts/setup_vllm.sh)"
SMOLLM2_DIR = $$OXRL_CACHE/models/SmolLM2-135M-Instruct

.PHONY: setup build test train model lint vllm

setup:
	@$(SETUP) && echo "libtorch: $$LIBTORCH" && echo "bundled model: $$OXRL_SMOLLM2_GGUF"

# Installs (once) the vLLM CPU build for `[rollout] engine = "vllm"`; prints its python.
vllm:
	@bash scripts/setup_vllm.sh

build:
	$(SETUP) && cargo build --release --workspace

lint:
	$(SETUP) && cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings

# One libtorch thread per test: cargo runs tests in parallel, and OpenMP threads
# oversubscribing the cores slow every test down many times over.
test: lint
	$(SETUP) && $(SETUP_VLLM) && OMP_NUM_THREADS=1 cargo test --workspace

# Imports the bundled GGUF into the model cache as an HF directory (once).
model: build
	$(SETUP) && if [[ ! -f "$(SMOLLM2_DIR)/model.safetensors" ]]; then \
	    ./target/release/oxrl import "$$OXRL_SMOLLM2_GGUF" "$(SMOLLM2_DIR)"; \
	else echo "model cache: $(SMOLLM2_DIR)"; fi

# The default run: GRPO on arithmetic with the bundled model (configs/grpo_math.toml).
train: model
	$(SETUP) && ./target/release/oxrl train configs/grpo_math.toml
