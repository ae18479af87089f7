# Lyra — top-level targets.  `make run` and `make test` do the whole set-up
# on a fresh Debian 12 machine (packages, pinned llama.cpp, build, models).
#
#   make deps [CUDA=1]         packages + llama.cpp v0.5.0 into deps/
#   make build                 build/lyra (+ tests, tools)
#   make models                build/models/{tiny,small}.gguf
#   make test [SANITIZE=address|thread]
#   make fuzz [FUZZ_SECONDS=60]  libFuzzer harnesses (clang) in build-fuzz/, each for FUZZ_SECONDS
#   make run                   serve models/demo.gguf (as demo) and tiny/small on 127.0.0.1:8000
#   make demo-model [INSTALL=1]  retrain the demo model into build/demo/ (over models/ with INSTALL=1)
#   make bench                 benchmarks side by side with llama-server

SANITIZE ?=
CUDA ?= 0
JOBS ?= $(shell nproc)
BUILD_DIR := build$(if $(SANITIZE),-$(SANITIZE))
MODELS_DIR := build/models
VOCAB_DIR := deps/llama/share/vocab
CMAKE_FLAGS ?=
FUZZ_SECONDS ?= 60

.PHONY: all deps packages build models node-deps test fuzz run demo-model bench clean format

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

# The official openai npm client, for the API compatibility test (pinned by
# tests/node/package-lock.json; skipped if already installed).
node-deps:
	@[ -f tests/node/node_modules/openai/package.json ] || npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

test: models node-deps
	@cd $(BUILD_DIR) && ctest --output-on-failure -j 2

# Builds build-fuzz/ with clang and runs every harness of tests/fuzz/ for
# FUZZ_SECONDS (docs/fuzzing.md); fails on the first crash or leak.
fuzz: deps
	@FUZZ_SECONDS=$(FUZZ_SECONDS) JOBS=$(JOBS) scripts/fuzz.sh run

# The committed demo model (models/demo.gguf, trained by `make demo-model`)
# beside the generated test models, linked into one models dir; demo is the
# default model (a request that names none).
DEMO_HOME := build/demo-home
run: models
	@mkdir -p $(DEMO_HOME)/models
	@ln -sfn $(CURDIR)/models/demo.gguf $(DEMO_HOME)/models/demo.gguf
	@ln -sfn $(CURDIR)/$(MODELS_DIR)/tiny.gguf $(DEMO_HOME)/models/tiny.gguf
	@ln -sfn $(CURDIR)/$(MODELS_DIR)/small.gguf $(DEMO_HOME)/models/small.gguf
	LYRA_MODELS_DEFAULT_MODEL=$${LYRA_MODELS_DEFAULT_MODEL:-demo} $(BUILD_DIR)/lyra serve --home $(DEMO_HOME) --models-dir $(DEMO_HOME)/models $(ARGS)

# Retrains the demo model from the King James Bible (docs/demo-model.md):
# needs the Debian packages of `scripts/setup-packages.sh --demo`; about 40
# minutes on 2 shared cores.  INSTALL=1 copies the result over models/.
demo-model: build
	@INSTALL=$(INSTALL) scripts/demo-model.sh $(BUILD_DIR)

bench: models
	@bench/run.sh $(BUILD_DIR)
	@bench/inference.sh $(BUILD_DIR)
	@bench/swap.sh $(BUILD_DIR)

format:
	@clang-format -i src/*/*.[ch] tests/*/*.[ch] tools/*.c

clean:
	rm -rf build build-address build-thread build-fuzz
