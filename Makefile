# Every README command goes through here. `make setup` is idempotent and works offline-from-hub.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := requirements/constraints.txt
TEST_MODEL := .cache/test-model-tiny

.PHONY: setup run demo test test-slow test-reliability lint typecheck proto proto-check bench bench-compare bench-report gpu-check clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24" 
	# torch first, pinned: this is the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/milvus-embed serve

demo: setup
	$(VENV)/bin/milvus-embed demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow --run-slow

# Fuzzing, faults, load and security against a real sidecar (docs/reliability.md); figures go to .cache/reliability.jsonl
test-reliability: setup
	mkdir -p .cache && rm -f .cache/reliability.jsonl
	MEE_RELIABILITY_REPORT=$(CURDIR)/.cache/reliability.jsonl $(PY) -m pytest -q tests/reliability --run-slow

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
	rm -rf $(VENV) .cache .pytest_cache data
