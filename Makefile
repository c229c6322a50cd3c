# lvm-queue: two commands for a newcomer — `make demo` and `make test`.
# Both do all set-up first: virtualenv, dependencies (torch pinned to 2.13.0, CPU build),
# and (demo) the default model artifacts. Later runs reuse what exists.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEV_STAMP := $(VENV)/.dev-stamp

.PHONY: setup setup-dev redis-server debian-tools model demo test test-fast chaos lint bench bench-device clean-artifacts

# What the demo, workers and the gateway need. The test and lint tools come with setup-dev, so a
# first `make demo` does not install them (8.8 s of its 48 s set-up, measured here).
setup: $(STAMP)

# pip compiles each installed file to bytecode one at a time; without that the two installs took
# 44 s instead of 91 s on a 2-core host, and compileall then compiled the venv on both cores in 35 s,
# so no process start pays for it (docs/benchmarks.md, first run). Like pip's own step, it passes
# over the few files that do not compile on this Python (torch ships one written for 3.12).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile "torch==2.13.0"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -e ".[engine,gateway]"
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	@touch $@

setup-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[engine,gateway,otel,dev]"
	@touch $@

# redis-server is needed by the integration tests (they start their own on a free port)
# and by the demo when no Redis answers at LVM_REDIS_URL.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing redis-server with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server not found: install it (apt-get install redis-server / brew install redis)"; exit 1; \
	  fi; }

# What the tests need that Debian 12 lacks: a Redis 7.2+ server for WAITAOF (Valkey 8.0 from
# bookworm-backports) and docker compose v2 to validate the compose file (Debian 13's package),
# each checked against its SHA-256 and unpacked into .cache/, not installed system-wide
# (harness/debian_tools.py). Offline, the tests that need them skip and say so.
debian-tools: setup
	@$(BIN)/python -m harness.debian_tools fetch

model: setup
	$(BIN)/lvmq model prepare

# The demo serves the LSTM. It serves the default artifacts (`make model`) when they exist; on a
# first run it builds the quick ones instead (half the lead sections, 3 epochs, into artifacts/demo:
# about a quarter of the time on 2 cores). It ends by serving the chat page (lvmq gateway) and printing
# its URL; Ctrl-C stops it all.
demo: setup redis-server
	$(BIN)/lvmq demo --serve --prepare

# Two test processes (pytest-xdist), each file whole in one of them so its fixtures are built once:
# most tests wait on a worker process, Redis or a browser, so two halve the wall time on 2 cores
# (12.5 -> 6.7 min here). TEST_WORKERS=0 runs them in one process.
TEST_WORKERS ?= 2
test: setup-dev redis-server debian-tools
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test-fast: setup-dev
	$(BIN)/pytest -q -m "not integration and not slow"

# The fault-injection suite at full size (SIGKILLs, Redis restarts and pauses, 1,000 hostile
# job hashes), then its table. `make test` runs the same scenarios small.
chaos: setup-dev redis-server debian-tools
	@rm -f .chaos.jsonl
	LVM_CHAOS_FULL=1 LVM_CHAOS_REPORT=.chaos.jsonl $(BIN)/pytest -q -m chaos
	@$(BIN)/python -m chaos report .chaos.jsonl

# ruff, the import-graph contracts in pyproject.toml (layers, no cycles, no torch in the light
# parts, serving apart from training), the generated configuration page, and the docs naming
# only files, modules, functions, settings, make targets and commands that exist.
lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m lvmq.docs --check
	$(BIN)/python -m lvmq.docrefs

bench: model redis-server
	$(BIN)/lvmq bench model --checkpoint artifacts/lstm.pt
	$(BIN)/lvmq bench pipeline
	$(BIN)/lvmq bench queue

# On a CUDA host: model, queue, load (C=32 and C=128) and overhead benchmarks on LVM_DEVICE
# (default cuda), and CPU-vs-device answer agreement, as one JSON. See bench/device.sh.
bench-device: model redis-server
	PATH=$(BIN):$$PATH PYTHON=$(BIN)/python bash bench/device.sh

clean-artifacts:
	rm -rf artifacts
