# Every README command goes through here. `make setup` is idempotent and works offline-from-hub.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
TEST_MODEL := .cache/test-model-tiny
# A Milvus *server* process for tests/server: milvus-lite 3.2.2 (pure Python, runs as a gRPC server) in a venv
# of its own; it cannot share .venv with the embedded milvus-lite 2.5.1 (same distribution name).
MILVUS_SERVER_VENV ?= .venv-lite3
MILVUS_SERVER_PINS := "milvus-lite==3.2.2" "pymilvus==2.6.17"
MILVUS_SERVER_BIN := $(CURDIR)/$(MILVUS_SERVER_VENV)/bin/milvus-lite
TEST_ENV := MEE_TEST_MILVUS_SERVER_BIN=$(MILVUS_SERVER_BIN)

.PHONY: setup milvus-server run demo test test-server test-slow test-reliability lint typecheck proto proto-check bench bench-compare bench-report gpu-check clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" 
	# torch first, pinned: this is the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# milvus-lite 3.2.2 imports pymilvus without declaring it, hence the explicit pin.
$(MILVUS_SERVER_VENV)/.installed:
	$(PYTHON) -m venv $(MILVUS_SERVER_VENV)
	$(MILVUS_SERVER_VENV)/bin/pip install -q $(MILVUS_SERVER_PINS)
	touch $@

milvus-server: $(MILVUS_SERVER_VENV)/.installed

run: setup
	$(VENV)/bin/milvus-embed serve

demo: setup
	$(VENV)/bin/milvus-embed demo

test: setup milvus-server
	$(TEST_ENV) $(PY) -m pytest -q

# The server tier alone, slow runs included: a Milvus server process killed with -9 and restarted, and three
# backfill workers sharing one re-encode while two of them are killed with -9.
test-server: setup milvus-server
	$(TEST_ENV) $(PY) -m pytest -q tests/server tests/server_backfill --run-slow

test-slow: setup milvus-server
	$(TEST_ENV) $(PY) -m pytest -q -m slow --run-slow

# Fuzzing, faults, load and security against a real sidecar (docs/reliability.md); figures go to .cache/reliability.jsonl
test-reliability: setup milvus-server
	mkdir -p .cache && rm -f .cache/reliability.jsonl
	MEE_RELIABILITY_REPORT=$(CURDIR)/.cache/reliability.jsonl $(TEST_ENV) $(PY) -m pytest -q tests/reliability tests/server --run-slow

lint: setup
	$(VENV)/bin/ruff check milvus_embed_ext tests bench migrations

# mypy over milvus_embed_ext (configured in pyproject.toml; the generated stubs are left out)
typecheck: setup
	$(PY) -m mypy

proto: setup
	$(PY) -m milvus_embed_ext.devtools.protogen

proto-check: setup
	$(PY) -m milvus_embed_ext.devtools.protogen --check

bench: setup
	$(PY) -m pytest bench -q --timeout 0 --benchmark-autosave --benchmark-storage=.benchmarks

bench-compare: setup
	$(PY) bench/compare.py --storage .benchmarks --threshold 0.25

bench-report: setup
	$(PY) bench/report.py --storage .benchmarks

gpu-check:
	bash bench/gpu_check.sh

clean:
	rm -rf $(VENV) $(MILVUS_SERVER_VENV) .cache .pytest_cache data
