"""Figures for bench/RESULTS.md, drawn from saved runs only (never by hand): `make bench-report` calls this.

Sources: the pytest-benchmark runs under .benchmarks/ (groups ``search-<docs>``, ``throughput-<rpc>``) and the
measure scripts' JSON under bench/results/ (``"kind": "recall"`` from measure_recall.py, ``"kind": "codecs"`` from
measure_codecs.py). Plans, stage names, routes and codecs are read from the data, never listed here, so new ones
show up by themselves. A figure whose data is missing is not drawn; its link says what to run instead.

Search stages: a search benchmark may record its per-stage p50 in ``extra_info["stages_ms"]`` (or
``"stage_p50_ms"``) as ``{stage: ms}``; measure_recall.py records its stage medians in its JSON.

matplotlib is a ``bench`` extra (not a runtime dependency); it is imported only when a figure is drawn.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# group name -> (run, that run's benchmarks of the group), as report.latest_by_group returns it
Groups = Mapping[str, tuple[Any, list[dict]]]

BASELINE_IMPL = "flagembedding"
STAGE_KEYS = ("stages_ms", "stage_p50_ms")
# Not stacked: the sum itself, and sub-stages ("candidates.dense") that run inside their parent stage.
_NOT_STACKED = {"total"}


@dataclass
class Figure:
    """One figure: its file, its alt text, the data it is drawn from (empty: not drawn, ``missing`` says why)."""

    name: str
    title: str
    data: Any
    missing: str
    draw: Callable[[Any, Any], None] = field(repr=False, default=lambda data, ax: None)
    panels: int = 1
    multi: bool = False  # draw() takes the row of axes, not one

    @property
    def file(self) -> str:
        return f"{self.name}.png"

    @property
    def available(self) -> bool:
        return bool(self.data)

    def markdown(self, results: Path, figures: Path) -> str:
        """The link RESULTS.md carries (relative to the results file), or why there is no figure."""
        if not self.available:
            return f"_Figure \u201c{self.title}\u201d not drawn: {self.missing}_"
        rel = Path(os.path.relpath(figures / self.file, results.parent)).as_posix()
        return f"![{self.title}]({rel})"


# ------------------------------------------------------------------------------------------ data


def _extra(b: dict) -> dict:
    return b.get("extra_info") or {}


def _impl(b: dict) -> str:
    return str(_extra(b).get("impl") or (b.get("params") or {}).get("impl") or "")


def _plan(ex: dict) -> str:
    return str(ex.get("plan") or ex.get("fusion") or "?")


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def search_group(group: str) -> tuple[int, str] | None:
    """``search-<docs>[-<codec>]`` (bench/test_search.py's groups; a codec names data in another codec than the
    built-ins') -> (docs, codec or ""); None for any other group, ``search-live`` included."""
    tail = group.removeprefix("search-")
    docs, _, codec = tail.partition("-")
    if tail == group or not docs.isdigit() or (codec and not codec.isalnum()):
        return None
    return int(docs), codec


def _docs(group: str) -> int | None:
    parsed = search_group(group)
    return parsed[0] if parsed else None


def _codec(group: str) -> str:
    """`` (int6)`` for a group of data in another codec than the built-ins', else empty."""
    parsed = search_group(group)
    return f" ({parsed[1]})" if parsed and parsed[1] else ""


def search_p50_data(groups: Groups) -> dict[str, list[tuple[int, float]]]:
    """``"impl plan"`` -> [(corpus size, p50 ms)] from the ``search-<docs>`` groups, sizes ascending."""
    out: dict[str, list[tuple[int, float]]] = {}
    for group, (_, benches) in groups.items():
        docs = _docs(group)
        if docs is None:
            continue
        for b in benches:
            p50 = _num(_extra(b).get("p50_ms"))
            if p50 is not None:
                label = f"{_impl(b)} {_plan(_extra(b))}"
                if _impl(b) != BASELINE_IMPL:  # the baseline stores no ColBERT: one series whatever the codec
                    label += _codec(group)
                out.setdefault(label, []).append((docs, p50))
    return {k: sorted(v) for k, v in sorted(out.items(), key=lambda kv: (kv[0].startswith(BASELINE_IMPL), kv[0]))}


def stage_data(groups: Groups, recall_runs: Sequence[dict]) -> list[tuple[str, dict[str, float]]]:
    """(bar label, {stage: ms}) per search plan that recorded its stages, then measure_recall's stage medians."""
    bars: list[tuple[str, dict[str, float]]] = []
    for group in sorted(groups, key=lambda g: (_docs(g) or 0, g)):
        docs = _docs(group)
        if docs is None:
            continue
        for b in sorted(groups[group][1], key=lambda b: (_impl(b) == BASELINE_IMPL, _impl(b), _plan(_extra(b)))):
            ex = _extra(b)
            stages = next((ex[k] for k in STAGE_KEYS if isinstance(ex.get(k), dict)), None)
            if stages:
                bars.append((f"{_impl(b)} {_plan(ex)}{_codec(group)}, {docs:,} docs", _stacked(stages)))
    for run in recall_runs:
        if isinstance(run.get("stages_ms"), dict) and run["stages_ms"]:
            label = f"measure_recall, depth {run.get('stage_depth', '?')}, {run.get('docs', '?')} docs"
            bars.append((label, _stacked(run["stages_ms"])))
    return [(label, stages) for label, stages in bars if stages]


def _stacked(stages: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for name, ms in stages.items():
        v = _num(ms)
        if v is not None and name not in _NOT_STACKED and "." not in name:
            out[str(name)] = max(v, 0.0)
    return out


def recall_data(recall_runs: Sequence[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """panel title -> route -> [(candidate depth, recall@k)], from the newest measure_recall.py JSON."""
    if not recall_runs:
        return {}
    run = recall_runs[-1]
    k = run.get("k", 10)
    panels = {"pipeline": f"dense + sparse candidates, exact re-score: recall@{k}",
              "alone": f"one dense route only: recall@{k}",
              "prefetch": f"truncated field's ANN hits vs full-dense top-{k}"}
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for key, title in panels.items():
        series: dict[str, list[tuple[int, float]]] = {}
        for row in run.get(key) or []:
            depth, value = row.get("depth"), _num(row.get("recall"))
            if isinstance(depth, int) and value is not None:
                series.setdefault(str(row.get("route")), []).append((depth, value))
        if series:
            out[title] = {r: sorted(v) for r, v in series.items()}
    return out


def throughput_data(groups: Groups) -> dict[str, list[tuple[int, float, float | None]]]:
    """rpc -> [(clients, calls/s, p50 ms)] from the ``throughput-<rpc>`` groups."""
    out: dict[str, list[tuple[int, float, float | None]]] = {}
    for group, (_, benches) in sorted(groups.items()):
        if not group.startswith("throughput-"):
            continue
        rpc = group.removeprefix("throughput-")
        for b in benches:
            ex = _extra(b)
            qps = _num(ex.get("qps"))
            if isinstance(ex.get("clients"), int) and qps is not None:
                out.setdefault(rpc, []).append((ex["clients"], qps, _num(ex.get("p50_ms"))))
    return {k: sorted(v) for k, v in out.items()}


def codec_data(codec_runs: Sequence[dict]) -> dict[str, list[tuple[str, float, float]]]:
    """series (checkpoint and ColBERT dim) -> [(codec, stored bytes per document, top-10 overlap)]."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    for run in codec_runs:
        label = f"{run.get('dim', '?')}-d ColBERT ({run.get('label', 'checkpoint ?')})"
        for row in run.get("codecs") or []:
            size, overlap = _num(row.get("bytes_per_doc")), _num(row.get("top10_overlap"))
            if size is not None and overlap is not None:
                out.setdefault(label, []).append((str(row.get("codec")), size, overlap))
    return out


def load_results(folder: Path) -> dict[str, list[dict]]:
    """bench/results/*.json by ``kind`` (files without one, like the GPU check's, are not figure data), oldest first."""
    out: dict[str, list[dict]] = {}
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("kind"), str):
            out.setdefault(data["kind"], []).append({**data, "_file": path.name})
    for runs in out.values():
        runs.sort(key=lambda d: str(d.get("when", "")))
    return out


# ------------------------------------------------------------------------------------------ drawing


def _plain_ticks(axis: Any, pattern: str) -> None:
    """Log axes read 20, 50, 100 rather than 2x10^1."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: pattern.format(v)))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _draw_search(data: dict[str, list[tuple[int, float]]], ax: Any) -> None:
    for label, points in data.items():
        xs, ys = zip(*points, strict=True)
        baseline = label.startswith(BASELINE_IMPL)
        ax.plot(xs, ys, marker="s" if baseline else "o", linestyle="--" if baseline else "-", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.xaxis, "{:,.0f}")
    _plain_ticks(ax.yaxis, "{:g}")
    ax.set_xlabel("documents in the collection")
    ax.set_ylabel("search p50, ms (log)")
    ax.set_title("Hybrid search p50 per plan vs corpus size (dashed: baseline)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)


def _draw_stages(data: list[tuple[str, dict[str, float]]], ax: Any) -> None:
    stages: list[str] = []
    for _, per in data:
        stages += [s for s in per if s not in stages]
    labels = [label for label, _ in data]
    left = [0.0] * len(data)
    for stage in stages:
        widths = [per.get(stage, 0.0) for _, per in data]
        ax.barh(labels, widths, left=left, label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.3g} ms", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per stage (p50 or median; the label is their sum)")
    ax.set_title("Search latency per stage")
    ax.set_xlim(0, max(left) * 1.18 if max(left) > 0 else 1)
    ax.legend(fontsize=8, title="stage", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _draw_recall(data: dict[str, dict[str, list[tuple[int, float]]]], axes: Any) -> None:
    for ax, (title, series) in zip(axes, data.items(), strict=False):
        for route, points in series.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label=route)
        ax.set_xscale("log")
        ax.set_xticks(sorted({x for points in series.values() for x, _ in points}))
        ax.xaxis.set_major_formatter("{x:g}")
        ax.xaxis.set_minor_formatter("")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("candidate depth per route")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("recall")


def _draw_throughput(data: dict[str, list[tuple[int, float, float | None]]], axes: Any) -> None:
    from matplotlib.ticker import FuncFormatter

    for rpc, points in data.items():
        clients = [p[0] for p in points]
        axes[0].plot(clients, [p[1] for p in points], marker="o", label=rpc)
        lat = [(c, p[2]) for c, p in zip(clients, points, strict=True) if p[2] is not None]
        if lat:
            axes[1].plot(*zip(*lat, strict=True), marker="o", label=rpc)
    for ax, ylabel in zip(axes, ("calls/s", "p50 latency, ms"), strict=True):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax, i in ((axes[0], 1), (axes[1], 2)):  # embed and search may differ by orders of magnitude
        values = [p[i] for points in data.values() for p in points if p[i] is not None and p[i] > 0]
        if values and max(values) > 20 * min(values):
            ax.set_yscale("log")
            _plain_ticks(ax.yaxis, "{:g}")
            ax.set_ylabel(ax.get_ylabel() + " (log)")
    axes[0].set_title("Throughput vs clients")
    axes[1].set_title("Latency vs clients")


def _draw_codecs(data: dict[str, list[tuple[str, float, float]]], ax: Any) -> None:
    for label, points in data.items():
        xs = [p[1] for p in points]
        ys = [p[2] for p in points]
        ax.plot(xs, ys, marker="o", linestyle=":", label=label)
        for codec, x, y in points:
            ax.annotate(codec, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    _plain_ticks(ax.xaxis, "{:,.0f}")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("stored ColBERT bytes per document (log)")
    ax.set_ylabel("top-10 overlap with fp32")
    ax.set_title("ColBERT codecs: size vs ranking fidelity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


# ------------------------------------------------------------------------------------------ the set


def figures(search_groups: Groups, throughput_groups: Groups, results: Mapping[str, list[dict]]) -> dict[str, Figure]:
    """Every figure of RESULTS.md with its data (possibly empty), keyed by name."""
    bench = "`make bench` (or `pytest bench -k {k} --benchmark-autosave --benchmark-storage=.benchmarks`), " \
            "then `make bench-report`"
    recall, codecs = results.get("recall", []), results.get("codecs", [])
    figs = [
        Figure("search_p50", "search p50 per plan vs corpus size, beside the baseline", search_p50_data(search_groups),
               "no saved search benchmark yet: " + bench.format(k="hybrid_search"), _draw_search),
        Figure("search_stages", "search latency per stage", stage_data(search_groups, recall),
               "no saved run recorded per-stage times (a search benchmark's extra_info \"stages_ms\", or "
               "bench/measure_recall.py's JSON): run `python bench/measure_recall.py`, then `make bench-report`",
               _draw_stages),
        Figure("recall_depth", "recall@10 vs candidate depth", recall_data(recall),
               "no bench/results/recall*.json yet: run `python bench/measure_recall.py`, then `make bench-report`",
               _draw_recall, multi=True),
        Figure("throughput_clients", "throughput vs concurrent clients", throughput_data(throughput_groups),
               "no saved throughput benchmark yet: " + bench.format(k="throughput"), _draw_throughput, panels=2, multi=True),
        Figure("codecs_overlap", "ColBERT codec bytes per document vs top-10 overlap", codec_data(codecs),
               "no bench/results/codecs*.json yet: run `python bench/measure_codecs.py` (and `--size full --docs 200 "
               "--queries 40 --append`), then `make bench-report`", _draw_codecs),
    ]
    for f in figs:
        if f.name == "recall_depth":
            f.panels = max(len(f.data), 1)
    return {f.name: f for f in figs}


def draw(fig: Figure, folder: Path) -> Path | None:
    """Write ``fig`` as PNG under ``folder`` (byte-stable: no timestamps in the file); None when it has no data."""
    if not fig.available:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    width = 6.4 * fig.panels if fig.panels > 1 else 8.0
    height = 4.8 if fig.name != "search_stages" else max(3.2, 1.4 + 0.5 * len(fig.data))
    f, axes = plt.subplots(1, fig.panels, figsize=(min(width, 18.0), height), squeeze=False)
    try:
        fig.draw(fig.data, axes[0] if fig.multi else axes[0][0])
        f.tight_layout()
        path = folder / fig.file
        f.savefig(path, dpi=100, metadata={"Software": None})
    finally:
        plt.close(f)
    return path


def save_results(kind: str, data: Mapping[str, Any], path: Path) -> Path:
    """A measure script's figures as JSON under bench/results (``kind`` and a UTC ``when`` added), for the plots."""
    import datetime

    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"kind": kind, "when": when, **data}, indent=1) + "\n", encoding="utf-8")
    return path
