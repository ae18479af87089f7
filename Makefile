# Lyra — top-level targets.  `make run` and `make test` do the whole set-up
# on a fresh Debian 12 machine (packages, pinned llama.cpp, build, models).
#
#   make deps [CUDA=1]         packages + llama.cpp v0.5.0 into deps/
#   make build                 build/lyra (+ tests, tools)
#   make models                build/models/{tiny,small}.gguf
#   make test [SANITIZE=address|thread]
#   make fuzz [FUZZ_SECONDS=60]  libFuzzer harnesses (clang) in build-fuzz/, each for FUZZ_SECONDS
#   make run                   serve the generated demo model on 127.0.0.1:8000
#   make bench                 benchmarks side by side with llama-server

SANITIZE ?=
CUDA ?= 0
JOBS ?= $(shell nproc)
BUILD_DIR := build$(if $(SANITIZE),-$(SANITIZE))
MODELS_DIR := build/models
VOCAB_DIR := deps/llama/share/vocab
CMAKE_FLAGS ?=
FUZZ_SECONDS ?= 60

.PHONY: all deps packages build models node-deps test fuzz run bench clean format

all: build

packages:
	@scripts/setup-packages.sh

deps: packages
	@CUDA=$(CUDA) scripts/deps.sh

$(BUILD_DIR)/build.ninja:
	@cmake -S . -B $(BUILD_DIR) -G Ninja -DLYRA_SANITIZE=$(SANITIZE) $(CMAKE_FLAGS) >/dev/null

build: deps $(BUILD_DIR)/build.ninja
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# Deterministic test models (same seed, same bytes), regenerated only when
# missing or older than the generator.
models: build
	@scripts/models.sh $(BUILD_DIR)

# The official openai and ollama npm clients, for the API compatibility
# tests (pinned by tests/node/package-lock.json).  Installed again whenever
# the lock file is newer than the stamp of the last install.
NODE_STAMP := tests/node/node_modules/.lyra-installed
node-deps: $(NODE_STAMP)
$(NODE_STAMP): tests/node/package-lock.json tests/node/package.json
	@npm ci --prefix tests/node --no-audit --no-fund --loglevel=error && touch $@

test: models node-deps
	@cd $(BUILD_DIR) && ctest --output-on-failure -j 2

# Builds build-fuzz/ with clang and runs every harness of tests/fuzz/ for
# FUZZ_SECONDS (docs/fuzzing.md); fails on the first crash or leak.
fuzz: deps
	@FUZZ_SECONDS=$(FUZZ_SECONDS) JOBS=$(JOBS) scripts/fuzz.sh run

run: models
	$(BUILD_DIR)/lyra serve --home build/demo-home --models-dir build/models $(ARGS)

bench: models
	@bench/run.sh $(BUILD_DIR)
	@bench/inference.sh $(BUILD_DIR)
	@bench/swap.sh $(BUILD_DIR)

format:
	@clang-format -i src/*/*.[ch] tests/*/*.[ch] tools/*.c

clean:
	rm -rf build build-address build-thread build-fuzz
