"""bench/plots.py and the figures `make bench-report` draws: from small synthetic saved runs (never real
benchmarks), names read from the data, and an honest note instead of an empty plot when data is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.bench_helpers import bench, load_bench, run_file

PNG = b"\x89PNG\r\n\x1a\n"
MACHINE = {"load_avg_start": [0.1], "bench_options": {}}

compare = load_bench("compare")
plots = load_bench("plots")
report = load_bench("report")


STAGES = {"encode": 9.0, "candidates": 8.0, "candidates.dense": 7.5, "fetch": 40.0, "rescore": 7.0,
          "late_stage": 3.0, "total": 70.0}


def saved_runs(store: Path, *, stages: bool = True) -> None:
    """Two runs: 1,000 documents in the first, 10,000 in the second (a plan the first lacked: "m3-fast")."""
    extra = {"stages_ms": STAGES} if stages else {}
    run_file(store / "m", 1, [
        bench("a", group="search-1000", impl="milvus-embed", fusion="m3", p50_ms=20.0, **extra),
        bench("b", group="search-1000", impl="milvus-embed", fusion="rrf", p50_ms=8.0),
        bench("c", group="search-1000", impl="flagembedding", fusion="rrf", p50_ms=10.0),
        bench("t1", group="throughput-embed", clients=1, qps=100.0, p50_ms=9.0),
        bench("t4", group="throughput-embed", clients=4, qps=300.0, p50_ms=12.0),
        bench("t16", group="throughput-embed", clients=16, qps=420.0, p50_ms=30.0),
        bench("s1", group="throughput-search", clients=1, qps=6.0, p50_ms=140.0),
        bench("s4", group="throughput-search", clients=4, qps=7.0, p50_ms=600.0),
    ], "2026-01-01T00:00:00", **MACHINE)
    run_file(store / "m", 2, [
        bench("a", group="search-10000", impl="milvus-embed", fusion="m3", p50_ms=60.0, **extra),
        bench("d", group="search-10000", impl="milvus-embed", plan="m3-fast", fusion="m3", p50_ms=25.0),
        bench("b", group="search-10000", impl="milvus-embed", fusion="rrf", p50_ms=12.0),
        bench("c", group="search-10000", impl="flagembedding", fusion="rrf", p50_ms=11.0),
    ], "2026-01-02T00:00:00", **MACHINE)


def saved_results(folder: Path) -> None:
    rows = lambda route, base: [{"route": route, "depth": d, "recall": min(1.0, base + d / 250), "candidates": 2 * d}  # noqa: E731
                                for d in (10, 20, 50, 100)]
    plots.save_results("recall", {"k": 10, "docs": 300, "pipeline": rows("dense (64, full)", 0.5) + rows("dense_16 pca", 0.4),
                                  "alone": rows("dense (64, full)", 0.05), "prefetch": rows("dense_16 pca", 0.3),
                                  "stage_depth": 100, "stages_ms": {"candidates": 10.0, "fetch": 80.0, "total": 95.0}},
                       folder / "recall.json")
    plots.save_results("codecs", {"label": "tiny test checkpoint", "dim": 64, "codecs": [
        {"codec": "fp32", "bytes_per_doc": 28000.0, "top10_overlap": 1.0},
        {"codec": "fp16", "bytes_per_doc": 14000.0, "top10_overlap": 1.0},
        {"codec": "int8", "bytes_per_doc": 7400.0, "top10_overlap": 0.99},
        {"codec": "bits", "bytes_per_doc": 1100.0, "top10_overlap": 0.4}]}, folder / "codecs_64d.json")
    (folder / "gpu_check_x.json").write_text(json.dumps({"device": "not figure data"}), encoding="utf-8")


def test_data_comes_from_the_runs_with_names_read_from_them(tmp_path: Path) -> None:
    saved_runs(tmp_path / "runs")
    saved_results(tmp_path / "data")
    runs = compare.find_runs(tmp_path / "runs")
    figs = report.figure_set(runs, tmp_path / "data")
    assert figs["search_p50"].data == {
        "milvus-embed m3": [(1000, 20.0), (10000, 60.0)], "milvus-embed m3-fast": [(10000, 25.0)],
        "milvus-embed rrf": [(1000, 8.0), (10000, 12.0)], "flagembedding rrf": [(1000, 10.0), (10000, 11.0)]}
    bars = figs["search_stages"].data
    assert [label for label, _ in bars] == ["milvus-embed m3, 1,000 docs", "milvus-embed m3, 10,000 docs",
                                            "measure_recall, depth 100, 300 docs"]
    # every stage the data names, in its order; not the total, not sub-stages of a stage
    assert list(bars[0][1]) == ["encode", "candidates", "fetch", "rescore", "late_stage"]
    assert figs["throughput_clients"].data["embed"] == [(1, 100.0, 9.0), (4, 300.0, 12.0), (16, 420.0, 30.0)]
    recall = figs["recall_depth"].data
    assert len(recall) == 3 and all(len(series) >= 1 for series in recall.values())
    assert [c for c, _, _ in figs["codecs_overlap"].data["64-d ColBERT (tiny test checkpoint)"]] == [
        "fp32", "fp16", "int8", "bits"]


def test_bench_report_draws_every_figure_and_links_it(tmp_path: Path) -> None:
    saved_runs(tmp_path / "runs")
    saved_results(tmp_path / "data")
    results = tmp_path / "bench" / "RESULTS.md"
    results.parent.mkdir()
    recall_section = "<!-- hybrid-search-recall:start -->\n## Hybrid search recall\n| a |\n<!-- hybrid-search-recall:end -->"
    results.write_text(f"# Benchmark results\n\n{recall_section}\n", encoding="utf-8")
    figures = tmp_path / "bench" / "figures"
    args = ["--storage", str(tmp_path / "runs"), "--results", str(results), "--figures", str(figures),
            "--data", str(tmp_path / "data")]
    assert report.main(args) == 0
    drawn = sorted(p.name for p in figures.iterdir())
    assert drawn == ["codecs_overlap.png", "recall_depth.png", "search_p50.png", "search_stages.png",
                     "throughput_clients.png"]
    for name in drawn:
        data = (figures / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, name
    text = results.read_text(encoding="utf-8")
    for name in drawn:
        assert f"](figures/{name})" in text, name
    sections = report.parse_sections(text)
    assert "![search p50 per plan" in text[slice(*sections["bench-search"])]
    assert "](figures/throughput_clients.png)" in text[slice(*sections["bench-throughput"])]
    assert sections["hybrid-search-recall"][1] < sections["bench-figure-recall"][0], "the figure follows its table"
    assert recall_section in text and "not drawn" not in text
    assert report.main([*args, "--check"]) == 0
    # regenerated from the same data: the same bytes (no timestamps in the files)
    before = {n: (figures / n).read_bytes() for n in drawn}
    assert report.main(args) == 0
    assert {n: (figures / n).read_bytes() for n in drawn} == before


def test_missing_data_is_said_not_drawn(tmp_path: Path) -> None:
    saved_runs(tmp_path / "runs", stages=False)
    results = tmp_path / "RESULTS.md"
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "recall_depth.png").write_bytes(PNG)  # from data that is gone now
    assert report.main(["--storage", str(tmp_path / "runs"), "--results", str(results), "--figures", str(figures),
                        "--data", str(tmp_path / "no-data")]) == 0
    assert sorted(p.name for p in figures.iterdir()) == ["search_p50.png", "throughput_clients.png"]
    text = results.read_text(encoding="utf-8")
    assert "_Figure \u201csearch latency per stage\u201d not drawn: no saved run recorded per-stage times" in text
    assert "recall@10 vs candidate depth\u201d not drawn: no bench/results/recall*.json yet" in text
    assert "not drawn: no bench/results/codecs*.json yet: run `python bench/measure_codecs.py`" in text

    empty = tmp_path / "empty.md"
    assert report.main(["--storage", str(tmp_path / "none"), "--results", str(empty), "--figures",
                        str(tmp_path / "f2"), "--data", str(tmp_path / "no-data")]) == 0
    assert not (tmp_path / "f2").exists()
    text = empty.read_text(encoding="utf-8")
    assert "search p50 per plan" not in text, "a section without runs already says so; no second note"


@pytest.mark.parametrize("kind", ["recall", "codecs"])
def test_results_files_are_read_by_kind(tmp_path: Path, kind: str) -> None:
    saved_results(tmp_path)
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")
    loaded = plots.load_results(tmp_path)
    assert set(loaded) == {"recall", "codecs"} and loaded[kind][0]["when"].endswith("Z")
