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
#   make install [PREFIX=/usr/local] [DESTDIR=]
#                              bin/lyra, lib/lyra/ (llama.cpp, backends), share/lyra/
#                              (unit, nginx template), docs, bash completion

SANITIZE ?=
CUDA ?= 0
JOBS ?= $(shell nproc)
BUILD_DIR := build$(if $(SANITIZE),-$(SANITIZE))
MODELS_DIR := build/models
VOCAB_DIR := deps/llama/share/vocab
CMAKE_FLAGS ?=
FUZZ_SECONDS ?= 60
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all deps packages build models node-deps ui-deps test test-ui fuzz run demo-model bench install clean format

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

# puppeteer-core for the dashboard's browser tests (tests/ui/, pinned by its
# package-lock.json): installed again whenever the lock file changes (the
# copy in node_modules/ is the stamp of what was installed).
UI_LOCK := tests/ui/package-lock.json
UI_STAMP := tests/ui/node_modules/.package-lock.stamp
ui-deps:
	@cmp -s $(UI_LOCK) $(UI_STAMP) 2>/dev/null || { npm ci --prefix tests/ui --no-audit --no-fund --loglevel=error && cp $(UI_LOCK) $(UI_STAMP); }

test: models node-deps ui-deps
	@cd $(BUILD_DIR) && ctest --output-on-failure -j 2

# The dashboard in Debian's chromium, every check (sign-in, live events,
# streamed chat, a pull to 100 %, viewer and revoked keys, 360 px, idle CPU),
# with a screenshot per view in build/ui-screenshots/ (docs/ui.md).
test-ui: build models ui-deps
	@cd $(BUILD_DIR) && LYRA_UI_FULL=1 LYRA_UI_SCREENSHOTS=$(CURDIR)/build/ui-screenshots \
		LYRA_UI_RESULTS=$(CURDIR)/build/ui-screenshots/results.json ctest --output-on-failure -R '^integration.it_ui$$'

# Builds build-fuzz/ with clang and runs every harness of tests/fuzz/ for
# FUZZ_SECONDS (docs/fuzzing.md); fails on the first crash or leak.
fuzz: deps
	@FUZZ_SECONDS=$(FUZZ_SECONDS) JOBS=$(JOBS) scripts/fuzz.sh run

# The committed demo model (models/demo.gguf, trained by `make demo-model`)
# beside the generated test models, linked into one models dir; demo is the
# default model (a request that names none).
DEMO_HOME := build/demo-home
run: models
	@mkdir -p $(DEMO_HOME)/models && chmod 700 $(DEMO_HOME)
	@# copies, not symlinks: the registry does not follow a link out of models.dir
	@for m in models/demo.gguf $(MODELS_DIR)/tiny.gguf $(MODELS_DIR)/small.gguf; do \
	    [ -L $(DEMO_HOME)/models/$$(basename $$m) ] && rm -f $(DEMO_HOME)/models/$$(basename $$m); \
	    cp -u $$m $(DEMO_HOME)/models/; done
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

# DESTDIR is read by cmake --install from the environment.
install: build
	@DESTDIR=$(DESTDIR) cmake --install $(BUILD_DIR) --prefix $(PREFIX)

format:
	@clang-format -i src/*/*.[ch] tests/*/*.[ch] tools/*.c

clean:
	rm -rf build build-address build-thread build-fuzz
