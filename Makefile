# The two commands a new user types: `make train` and `make test`. Both run the idempotent
# set-up first (scripts/setup.sh: libtorch + reference Python in a per-user cache, the
# bundled model), then source the environment file it prints.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
SETUP := source "$$(bash scripts/setup.sh)"
SMOLLM2_DIR = $$OXRL_CACHE/models/SmolLM2-135M-Instruct

.PHONY: setup build test train model lint

setup:
	@$(SETUP) && echo "libtorch: $$LIBTORCH" && echo "bundled model: $$OXRL_SMOLLM2_GGUF"

build:
	$(SETUP) && cargo build --release --workspace

lint:
	$(SETUP) && cargo fmt --all --check && cargo clippy --workspace --all-targets -- -D warnings

# One libtorch thread per test: cargo runs tests in parallel, and OpenMP threads
# oversubscribing the cores slow every test down many times over.
test: lint
	$(SETUP) && OMP_NUM_THREADS=1 cargo test --workspace

# Imports the bundled GGUF into the model cache as an HF directory (once).
model: build
	$(SETUP) && if [[ ! -f "$(SMOLLM2_DIR)/model.safetensors" ]]; then \
	    ./target/release/oxrl import "$$OXRL_SMOLLM2_GGUF" "$(SMOLLM2_DIR)"; \
	else echo "model cache: $(SMOLLM2_DIR)"; fi

# The trainer (`oxrl train`) is not built yet; until it is, this runs the nearest working
# thing — the bundled model answering a math question — and says so.
train: model
	@echo "NOTE: 'oxrl train' does not exist yet; running generation with the bundled model instead."
	$(SETUP) && ./target/release/oxrl generate --model "$(SMOLLM2_DIR)" --chat \
	    --prompt "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?" \
	    --max-tokens 128
