"""Compare the latest two saved benchmark runs; exit 1 when something regressed past the threshold.

    python bench/compare.py --storage .benchmarks --threshold 0.25      # make bench-compare
    python bench/compare.py --runs OLD.json NEW.json                    # two given runs
    python bench/compare.py --ignore '*:p99_ms'                         # skip noisy figures

Runs are the JSON files ``pytest bench --benchmark-autosave --benchmark-storage=.benchmarks`` writes. The newest
run is compared with the newest earlier run from the same machine folder that shares benchmarks with it. A
benchmark is matched by its full name and its ``config`` (model, device, sizes: see bench/conftest.py), so a
--quick run is never compared with a full one. Per matched benchmark:

- the median time per call (lower is better), unless the timing is the harness's (``harness_timing``: the
  throughput tests time a fixed-length loop and report ``qps`` instead);
- figures from ``extra_info`` by name: ``*_per_s``, ``qps``, ``recall_at_*``, ``overlap_at_*`` (higher is better),
  ``*_ms``, ``*bytes_per_doc`` (lower is better). Other entries are context and are not compared.

A regression is a relative change in the bad direction larger than ``--threshold``.
Exit status: 0 no regression, 1 regression, 2 nothing to compare (say why).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_REGRESSION, EXIT_NOTHING = 0, 1, 2


@dataclass(frozen=True)
class Run:
    path: Path
    data: dict[str, Any]

    @property
    def when(self) -> str:
        return str(self.data.get("datetime", ""))

    @property
    def benchmarks(self) -> list[dict[str, Any]]:
        return list(self.data.get("benchmarks") or [])

    @property
    def label(self) -> str:
        commit = (self.data.get("commit_info") or {}).get("id") or "?"
        dirty = "+dirty" if (self.data.get("commit_info") or {}).get("dirty") else ""
        return f"{self.path.name} ({self.when[:19]}, {commit[:10]}{dirty})"


@dataclass(frozen=True)
class Row:
    benchmark: str
    metric: str
    old: float
    new: float
    change: float
    """Relative change, signed so that negative is worse."""
    regressed: bool


def load_run(path: Path) -> Run:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read benchmark run {path}: {exc}") from None
    if not isinstance(data, dict) or "benchmarks" not in data:
        raise SystemExit(f"error: {path} is not a pytest-benchmark JSON file (no 'benchmarks')")
    return Run(Path(path), data)


def find_runs(storage: Path) -> list[Run]:
    """Every saved run under ``storage``, oldest first (by the run's own datetime, then file name)."""
    runs = [load_run(p) for p in sorted(Path(storage).rglob("*.json"))]
    return sorted(runs, key=lambda r: (r.when, r.path.name))


def key(bench: dict[str, Any]) -> tuple[str, str]:
    return str(bench.get("fullname") or bench.get("name")), str((bench.get("extra_info") or {}).get("config", ""))


def direction(metric: str) -> int:
    """+1 higher is better, -1 lower is better, 0 not compared."""
    if metric.endswith("_per_s") or metric == "qps" or metric.startswith(("recall_at_", "overlap_at_")):
        return 1
    if metric == "median_s" or metric.endswith("_ms") or metric.endswith("bytes_per_doc"):
        return -1
    return 0


def figures(bench: dict[str, Any]) -> dict[str, float]:
    """The compared figures of one saved benchmark."""
    extra = bench.get("extra_info") or {}
    out: dict[str, float] = {}
    median = (bench.get("stats") or {}).get("median")
    if median is not None and not extra.get("harness_timing"):
        out["median_s"] = float(median)
    for name, value in extra.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or direction(name) == 0:
            continue
        if math.isfinite(float(value)):
            out[name] = float(value)
    return out


def compare(old: Run, new: Run, threshold: float, ignore: Sequence[str] = ()) -> list[Row]:
    """Rows for every figure of every benchmark present (same name and config) in both runs."""
    if threshold < 0:
        raise ValueError("threshold must be >= 0")
    before = {key(b): b for b in old.benchmarks}
    rows: list[Row] = []
    for bench in new.benchmarks:
        prev = before.get(key(bench))
        if prev is None:
            continue
        name = key(bench)[0]
        old_figs = figures(prev)
        for metric, value in figures(bench).items():
            if metric not in old_figs or any(fnmatch.fnmatch(f"{name}:{metric}", pat) for pat in ignore):
                continue
            base = old_figs[metric]
            if base == 0:
                continue
            change = direction(metric) * (value - base) / abs(base)
            rows.append(Row(name, metric, base, value, change, change < -threshold))
    return rows


def comparable(old: Run, new: Run) -> bool:
    return bool({key(b) for b in old.benchmarks} & {key(b) for b in new.benchmarks})


def latest_pair(runs: Sequence[Run], any_machine: bool = False) -> tuple[Run, Run] | None:
    """The newest run and the newest earlier one that shares benchmarks with it (same machine folder)."""
    if len(runs) < 2:
        return None
    new = runs[-1]
    for old in reversed(runs[:-1]):
        if (any_machine or old.path.parent == new.path.parent) and comparable(old, new):
            return old, new
    return None


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def render(rows: Iterable[Row], threshold: float) -> str:
    rows = list(rows)
    width = max([len(r.benchmark) for r in rows] + [9])
    fig = max([len(r.metric) for r in rows] + [6])
    lines = [f"{'benchmark':<{width}}  {'figure':<{fig}} {'old':>10} {'new':>10} {'change':>8}"]
    for r in rows:
        flag = f"  REGRESSION (> {threshold:.0%} worse)" if r.regressed else ""
        lines.append(f"{r.benchmark:<{width}}  {r.metric:<{fig}} {_fmt(r.old):>10} {_fmt(r.new):>10} "
                     f"{r.change:>+8.1%}{flag}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", default=".benchmarks", help="folder of saved runs (default .benchmarks)")
    p.add_argument("--threshold", type=float, default=0.25,
                   help="relative change in the bad direction that counts as a regression (default 0.25)")
    p.add_argument("--runs", nargs=2, metavar=("OLD", "NEW"), help="compare these two run files instead")
    p.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="skip figures matching 'benchmark-fullname:figure' (fnmatch), e.g. '*:p99_ms'; repeatable")
    p.add_argument("--any-machine", action="store_true", help="also pair runs saved from another machine folder")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threshold < 0:
        print("error: --threshold must be >= 0", file=sys.stderr)
        return EXIT_NOTHING
    if args.runs:
        old, new = load_run(Path(args.runs[0])), load_run(Path(args.runs[1]))
    else:
        storage = Path(args.storage)
        runs = find_runs(storage) if storage.is_dir() else []
        pair = latest_pair(runs, args.any_machine)
        if pair is None:
            print(f"nothing to compare: {len(runs)} saved run(s) under {storage}, and the newest shares no benchmark "
                  "(same name and config) with an earlier run of this machine. Run `make bench` twice with the "
                  "same options.", file=sys.stderr)
            return EXIT_NOTHING
        old, new = pair
    rows = compare(old, new, args.threshold, args.ignore)
    print(f"old: {old.label}\nnew: {new.label}\n")
    if not rows:
        print("no benchmark with the same name and config in both runs", file=sys.stderr)
        return EXIT_NOTHING
    print(render(rows, args.threshold))
    bad = [r for r in rows if r.regressed]
    print(f"\n{len(bad)} regression(s) past {args.threshold:.0%} among {len(rows)} figures")
    return EXIT_REGRESSION if bad else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
