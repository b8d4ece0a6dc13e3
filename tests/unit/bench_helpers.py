"""Helpers for the tests of the bench/ tooling (imported as ``tests.unit.bench_helpers``): load a bench script
as a module, and write small synthetic saved runs (never real benchmarks)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench"
# bench scripts import these siblings under their own names; the others load as bench_<name>
SIBLINGS = ("compare", "plots", "resultsmd")


def load_bench(name: str) -> ModuleType:
    """bench/<name>.py as a module, loaded once per session."""
    module_name = name if name in SIBLINGS else f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def bench(name: str, median: float = 0.01, group: str = "g", config: str = "model=tiny", **extra: Any) -> dict:
    """One pytest-benchmark result as a saved run holds it."""
    return {"name": name, "fullname": f"bench/t.py::{name}", "group": group, "params": {},
            "stats": {"median": median, "mean": median}, "extra_info": {"config": config, **extra}}


def run_file(folder: Path, n: int, benchmarks: list[dict], when: str, **machine: Any) -> Path:
    """A saved run ``<n>_run.json`` in ``folder`` (machine_info gets ``machine`` on top of a test machine)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"datetime": when, "benchmarks": benchmarks, "commit_info": {"id": "abcdef1234567", "dirty": False},
            "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "cpu_count": 2, "system": "Linux",
                             "python_version": "3.11", **machine}}
    path = folder / f"{n:04d}_run.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
