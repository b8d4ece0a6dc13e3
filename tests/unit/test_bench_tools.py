"""The pure parts of the benchmark tooling: bench/compare.py (regressions), bench/report.py (sections of the
shared RESULTS.md) and bench/benchlib.py's helpers (storage accounting, overlap, exact scores)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.unit.bench_helpers import bench, load_bench, run_file

compare = load_bench("compare")
resultsmd = load_bench("resultsmd")
report = load_bench("report")
benchlib = load_bench("benchlib")


# ------------------------------------------------------------------------------------------ compare.py


def test_directions():
    assert compare.direction("median_s") == -1
    assert compare.direction("p99_ms") == -1
    assert compare.direction("bytes_per_doc") == -1 and compare.direction("lite_file_bytes_per_doc") == -1
    assert compare.direction("docs_per_s") == 1 and compare.direction("qps") == 1
    assert compare.direction("recall_at_10") == 1 and compare.direction("overlap_at_10") == 1
    assert compare.direction("load_1m") == 0 and compare.direction("docs") == 0


def test_regressions_are_flagged_in_the_bad_direction_only(tmp_path):
    old = compare.Run(tmp_path / "a", {"benchmarks": [
        bench("slower", 1.0), bench("faster", 1.0), bench("qps", 1.0, harness_timing=True, qps=100.0),
        bench("recall", 0.1, recall_at_10=0.9), bench("bytes", 0.1, bytes_per_doc=1000.0),
        bench("edge", 1.0)]})
    new = compare.Run(tmp_path / "b", {"benchmarks": [
        bench("slower", 1.3), bench("faster", 0.5), bench("qps", 9.0, harness_timing=True, qps=70.0),
        bench("recall", 0.1, recall_at_10=0.6), bench("bytes", 0.1, bytes_per_doc=900.0),
        bench("edge", 1.2)]})
    rows = {(r.benchmark.split("::")[1], r.metric): r for r in compare.compare(old, new, 0.25)}
    assert rows[("slower", "median_s")].regressed
    assert not rows[("faster", "median_s")].regressed and rows[("faster", "median_s")].change == pytest.approx(0.5)
    assert ("qps", "median_s") not in rows, "harness timings are not compared"
    assert rows[("qps", "qps")].regressed
    assert rows[("recall", "recall_at_10")].regressed
    assert not rows[("bytes", "bytes_per_doc")].regressed
    assert not rows[("edge", "median_s")].regressed  # 20% worse is within 25%
    assert compare.compare(old, new, 0.5, ignore=["*"]) == []
    assert {r.benchmark for r in compare.compare(old, new, 0.25, ignore=["*slower:*"])} == {
        f"bench/t.py::{n}" for n in ("faster", "qps", "recall", "bytes", "edge")}


def test_benchmarks_with_another_config_are_not_matched(tmp_path):
    old = compare.Run(tmp_path / "a", {"benchmarks": [bench("x", 1.0, config="quick=True")]})
    new = compare.Run(tmp_path / "b", {"benchmarks": [bench("x", 9.0, config="quick=False")]})
    assert compare.compare(old, new, 0.25) == []
    assert not compare.comparable(old, new)


def test_latest_pair_skips_runs_without_common_benchmarks_and_other_machines(tmp_path):
    m1, m2 = tmp_path / "Linux-A", tmp_path / "Linux-B"
    run_file(m1, 1, [bench("x", 1.0)], "2026-01-01T00:00:00")
    run_file(m2, 1, [bench("x", 1.0)], "2026-01-03T00:00:00")
    run_file(m1, 2, [bench("y", 1.0)], "2026-01-02T00:00:00")
    run_file(m1, 3, [bench("x", 2.0), bench("y", 1.0)], "2026-01-04T00:00:00")
    runs = compare.find_runs(tmp_path)
    assert [r.when[:10] for r in runs] == ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"]
    old, new = compare.latest_pair(runs)
    assert new.path.name == "0003_run.json" and old.path == m1 / "0002_run.json"
    assert compare.latest_pair(runs[:1]) is None


def test_main_exit_codes(tmp_path, capsys):
    store = tmp_path / "store"
    assert compare.main(["--storage", str(store)]) == compare.EXIT_NOTHING
    assert "nothing to compare" in capsys.readouterr().err
    run_file(store / "m", 1, [bench("x", 1.0)], "2026-01-01T00:00:00")
    run_file(store / "m", 2, [bench("x", 1.1)], "2026-01-02T00:00:00")
    assert compare.main(["--storage", str(store), "--threshold", "0.25"]) == compare.EXIT_OK
    run_file(store / "m", 3, [bench("x", 2.0)], "2026-01-03T00:00:00")
    assert compare.main(["--storage", str(store), "--threshold", "0.25"]) == compare.EXIT_REGRESSION
    assert "REGRESSION" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    with pytest.raises(SystemExit, match="not a pytest-benchmark JSON"):
        compare.main(["--runs", str(bad), str(bad)])


# ------------------------------------------------------------------------------------------ report.py

FOREIGN = "<!-- colbert-codecs:start -->\n## ColBERT codecs\n| a | b |\n<!-- colbert-codecs:end -->"


def test_parse_sections_knows_both_marker_styles_and_rejects_broken_files():
    text = f"# T\n\n{FOREIGN}\n\n<!-- BEGIN mine -->\nx\n<!-- END mine -->\n"
    sections = report.parse_sections(text)
    assert set(sections) == {"colbert-codecs", "mine"}
    start, stop = sections["mine"]
    assert text[start:stop] == "<!-- BEGIN mine -->\nx\n<!-- END mine -->"
    for broken in ("<!-- BEGIN a -->", "<!-- END a -->", "<!-- BEGIN a --><!-- BEGIN b --><!-- END b --><!-- END a -->",
                   "<!-- BEGIN a --><!-- END a --><!-- BEGIN a --><!-- END a -->",
                   "<!-- x:start --><!-- END x -->x<!-- y:end -->"):
        with pytest.raises(ValueError):
            report.parse_sections(broken)


def test_splice_replaces_only_its_own_section():
    text = f"# T\n\nintro by hand\n\n{FOREIGN}\n\n<!-- BEGIN mine -->\nold\n<!-- END mine -->\n\ntrailing text\n"
    out = report.splice(text, "mine", "new body")
    assert out == text.replace("\nold\n", "\nnew body\n")
    added = report.splice(text, "other", "o", after="colbert-codecs")
    assert added.index(FOREIGN) < added.index("<!-- BEGIN other -->") < added.index("<!-- BEGIN mine -->")
    assert report.splice(added, "other", "o", after="colbert-codecs") == added
    top = report.splice(text, "goals", "g", top=True)
    assert top.startswith("# T\n\n<!-- BEGIN goals -->\ng\n<!-- END goals -->\n") and top.endswith(text[4:])
    assert report.splice("", "s", "b").startswith("# Benchmark results")
    with pytest.raises(ValueError, match="must not contain"):
        report.splice(text, "mine", "<!-- END mine -->")


def _encode_and_search(quick: bool, load: float) -> list[dict]:
    return [
        bench("test_passages[milvus-embed]", 1.0, group="passages", impl="milvus-embed", tokens=5000, texts=10),
        bench("test_passages[flagembedding]", 2.5, group="passages", impl="flagembedding", tokens=5000, texts=10),
        bench("test_single_query[milvus-embed]", group="query", impl="milvus-embed", p50_ms=4.0, p99_ms=9.0),
        bench("test_single_query[flagembedding]", group="query", impl="flagembedding", p50_ms=10.0, p99_ms=20.0),
        bench("s-m3", group="search-1000", impl="milvus-embed", fusion="m3", p50_ms=8.0, recall_at_10=1.0),
        bench("s-b", group="search-1000", impl="flagembedding", fusion="rrf", p50_ms=10.0, recall_at_10=0.5,
              stages_ms={"encode": 7.5, "hybrid_search": 2.5}),
        bench("s-rrf", group="search-1000", impl="milvus-embed", fusion="rrf", p50_ms=9.0, recall_at_10=0.4,
              stages_ms={"encode": 3.0, "candidates": 2.0, "total": 5.5}, colbert_read_p50=0.0, candidates_p50=90.0),
        bench("t1", group="throughput-embed", clients=1, qps=100.0, harness_timing=True),
        bench("t8", group="throughput-embed", clients=8, qps=350.0, harness_timing=True, mean_batch_texts=6.0),
    ]


def test_render_all_fills_owned_sections_keeps_others_and_is_idempotent(tmp_path):
    store = tmp_path / "runs"
    run_file(store / "m", 1, _encode_and_search(False, 0.1), "2026-01-01T00:00:00",
             load_avg_start=[0.1, 0.1, 0.1], bench_options={"quick": False})
    runs = compare.find_runs(store)
    text = f"# Benchmark results\n\n{FOREIGN}\n"
    out = report.render_all(text, runs)
    assert FOREIGN in out
    sections = report.parse_sections(out)
    assert {"bench-goals", "bench-encode", "bench-search", "bench-throughput", "bench-ingest",
            "bench-storage", "colbert-codecs"} <= set(sections)
    goals = out[slice(*sections["bench-goals"])]
    assert "| Encoder tokens/s vs FlagEmbedding (CPU, fp32) | >= 2x | 2.50x | met |" in goals
    assert "| One-query encode latency (p50) vs FlagEmbedding | <= 0.5x | 0.40x | met |" in goals
    assert "| Sidecar m3 p50 vs the fastest baseline, 1000 docs | <= 1x, recall@10 >= 0.99 | 0.80x, recall 1.00 | met |" \
        in goals
    assert "| Sidecar rrf p50 vs the baseline's rrf, 1000 docs | <= 0.8x | 0.90x | not met |" in goals
    search = out[slice(*sections["bench-search"])]
    assert "| implementation | fusion | encode | candidates | total | hybrid_search | ColBERT read |" in search
    assert "| milvus-embed | rrf | 3 | 2 | 5.5 |  | 0 of 90 |" in search
    assert "| flagembedding | rrf | 7.5 |  |  | 2.5 |  |" in search
    assert "| Concurrent throughput vs sequential (embed) | >= 3x | 3.50x | met |" in goals
    assert "Not final" not in out and "Test CPU, 2 cores" in out
    assert "No saved run" in out[slice(*sections["bench-storage"])]
    assert report.render_all(out, runs) == out


def test_busy_or_quick_runs_are_labelled(tmp_path):
    store = tmp_path / "runs"
    run_file(store / "m", 1, _encode_and_search(True, 7.5), "2026-01-01T00:00:00",
             load_avg_start=[7.5, 7.0, 6.0], bench_options={"quick": True})
    out = report.render_all("", compare.find_runs(store))
    assert "**Not final figures**: measured with --quick sizes and a busy machine (load 7.5 on 2 cores" in out


KEPT_ENCODE = ("<!-- BEGIN bench-encode -->\n_Not re-measured: kept from another machine's runs._\n\n"
               "## Encode\n\n| passages | tokens/s | 140 |\n<!-- END bench-encode -->")
KEPT_STORAGE = "<!-- BEGIN bench-storage -->\n## Storage\n\n| fp32 | 38,209 |\n<!-- END bench-storage -->"


def _search_only(store: Path) -> list:
    run_file(store / "m", 1, [b for b in _encode_and_search(False, 0.1) if b["group"].startswith("search-")],
             "2026-01-01T00:00:00", load_avg_start=[0.1, 0.1, 0.1])
    return compare.find_runs(store)


def test_sections_without_a_saved_run_keep_their_text(tmp_path):
    runs = _search_only(tmp_path / "runs")
    text = f"# Benchmark results\n\n{KEPT_ENCODE}\n\nby hand\n\n{KEPT_STORAGE}\n"
    rendered = report.render(text, runs)
    assert rendered.kept == ["bench-encode", "bench-storage"]
    out = rendered.text
    assert KEPT_ENCODE in out and KEPT_STORAGE in out and "by hand" in out
    sections = report.parse_sections(out)
    assert "| milvus-embed | m3 |" in out[slice(*sections["bench-search"])]
    assert "No saved run" in out[slice(*sections["bench-ingest"])], "a section the file lacks gets the placeholder"
    goals = out[slice(*sections["bench-goals"])]
    assert "| Encoder tokens/s vs FlagEmbedding (CPU, fp32) | >= 2x | — | — |" in goals
    assert "Kept as they were" in goals and "`bench-encode`, `bench-storage`" in goals
    assert report.render(out, runs) == rendered


def test_report_says_on_stdout_which_sections_it_kept(tmp_path, capsys):
    store = tmp_path / "runs"
    _search_only(store)
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Benchmark results\n\n{KEPT_ENCODE}\n\n{KEPT_STORAGE}\n", encoding="utf-8")
    args = ["--storage", str(store), "--results", str(results), "--figures", str(tmp_path / "figures"),
            "--data", str(tmp_path / "data")]
    assert report.main(args) == 0
    out = capsys.readouterr().out
    assert f"section bench-encode kept as it was: no saved run under {store}" in out
    assert "section bench-storage kept as it was" in out and "bench-search" not in out
    text = results.read_text(encoding="utf-8")
    assert KEPT_ENCODE in text and KEPT_STORAGE in text
    assert report.main([*args, "--check"]) == 0


def test_rerank_stage_searches_go_to_the_rerank_section_only(tmp_path):
    store = tmp_path / "runs"
    rerank = [bench(f"test_search_with_rerank[{n}]", 0.05, group="search-rerank", top_n=n) for n in (0, 10)]
    rerank.append(bench("test_one_reranker_call_over_50_pairs", 0.02, group="search-rerank"))
    run_file(store / "m", 1, _encode_and_search(False, 0.1), "2026-01-01T00:00:00")
    run_file(store / "m", 2, rerank, "2026-01-02T00:00:00")
    runs = compare.find_runs(store)
    out = report.render_all("", runs)
    sections = report.parse_sections(out)
    search, rerank_text = out[slice(*sections["bench-search"])], out[slice(*sections["bench-rerank"])]
    assert "### 1000 documents" in search and "rerank" not in search.replace("bench-search", "")
    assert "0002_run.json" not in search, "the search section names only the runs it shows"
    assert "| no stage 3 | 50 | — |" in rerank_text and "| stage 3 over N=10 | 50 | — |" in rerank_text
    assert "| test_one_reranker_call_over_50_pairs | 20 | — |" in rerank_text
    assert set(report.latest_by_group(runs, report.corpus_search_group)) == {"search-1000"}
    assert report.corpus_search_group("search-live") and not report.corpus_search_group("searching-1000")


def test_http_and_threads_sections_list_every_group_in_one_table(tmp_path):
    store = tmp_path / "runs"
    run_file(store / "m", 1, [
        bench("h-tei", group="http-one-query", transport="tei-embed", p50_ms=11.0, p50_vs_grpc=1.1),
        bench("h-grpc", group="http-one-query", transport="grpc", p50_ms=10.0),
        bench("q-openai", group="http-throughput-16", transport="openai", qps=90.0, qps_vs_grpc=0.9),
        bench("t-idle", group="threads-idle", load="idle", setting="auto", p50_ms=8.0),
        bench("t-busy-pc", group="threads-busy", load="busy", setting="per-core", env={"MEE_ENCODER_THREADS": "2"},
              p50_ms=13.0),
        bench("t-busy", group="threads-busy", load="busy", setting="auto", p50_ms=10.0),
    ], "2026-01-01T00:00:00")
    out = report.render_all("", compare.find_runs(store))
    sections = report.parse_sections(out)
    http = out[slice(*sections["bench-http"])].splitlines()
    rows = [line for line in http if line.startswith("| one-query") or line.startswith("| throughput-16")]
    assert rows == ["| one-query | grpc | 10 | — | — | — |", "| one-query | tei-embed | 11 | — | — | 1.10x |",
                    "| throughput-16 | openai | — | — | 90 | 0.90x |"]
    threads = out[slice(*sections["bench-threads"])].splitlines()
    assert [line for line in threads if line.startswith(("| busy", "| idle"))] == [
        "| busy | auto | — | 10 | — |", "| busy | per-core | MEE_ENCODER_THREADS=2 | 13 | — |",
        "| idle | auto | — | 8 | — |"]
    assert sum("Run `0001_run.json`" in line for line in http) == 1
    goals = out[slice(*sections["bench-goals"])]
    assert "| One-query p50 over HTTP (tei-embed) vs gRPC Embed | <= 1.2x | 1.10x | met |" in goals
    assert "| 16-client throughput over HTTP (openai) vs gRPC | >= 0.8x | 0.90x | met |" in goals


def test_report_check_mode(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n", encoding="utf-8")
    args = ["--storage", str(tmp_path / "none"), "--results", str(results),  # figures: never the checkout's
            "--figures", str(tmp_path / "figures"), "--data", str(tmp_path / "data")]
    assert report.main([*args, "--check"]) == 1
    assert report.main(args) == 0
    assert report.main([*args, "--check"]) == 0


# ------------------------------------------------------------------------------------------ benchlib.py


def test_field_bytes():
    assert benchlib.field_bytes("FLOAT_VECTOR", [0.0] * 3, 1024) == 4096
    assert benchlib.field_bytes("FLOAT16_VECTOR", b"", 8) == 16
    assert benchlib.field_bytes("SPARSE_FLOAT_VECTOR", {1: 0.5, 7: 0.1}) == 16
    assert benchlib.field_bytes("VARCHAR", "héllo") == 6
    assert benchlib.field_bytes("JSON", {"a": 1}) == len('{"a":1}')
    assert benchlib.field_bytes("INT64", 3) == 8 and benchlib.field_bytes("VARCHAR", None) == 0
    with pytest.raises(ValueError, match="no size rule"):
        benchlib.field_bytes("GEOMETRY", "x")


def test_overlap_percentiles_env():
    assert benchlib.overlap_at_k(["a", "b", "c"], ["c", "a", "z"], 3) == pytest.approx(2 / 3)
    assert benchlib.overlap_at_k([], [], 10) == 1.0
    p = benchlib.percentiles_ms([0.001] * 99 + [1.0])
    assert p["p50_ms"] == pytest.approx(1.0) and p["p99_ms"] > 1.0
    assert benchlib.parse_env(["OMP_NUM_THREADS=1", "A=b=c"]) == {"OMP_NUM_THREADS": "1", "A": "b=c"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        benchlib.parse_env(["nokey"])


class _Config:
    def __init__(self, **options):
        self.options = options

    def getoption(self, name):
        return self.options.get(name)


def test_sized_option_prefers_the_option_then_quick():
    assert benchlib.sized_option(_Config(**{"--docs": 7, "--quick": True}), "--docs", 100, 10) == 7
    assert benchlib.sized_option(_Config(**{"--quick": True}), "--docs", 100, 10) == 10
    assert benchlib.sized_option(_Config(**{"--quick": False}), "--docs", 100, 10) == 100


def test_per_backend_loads_once_and_skips_onnx_off_the_cpu():
    loads = []
    get = benchlib.per_backend(lambda name: loads.append(name) or f"model-{name}", "cuda")
    assert get("torch") == "model-torch" and get("torch") == "model-torch" and loads == ["torch"]
    with pytest.raises(pytest.skip.Exception):
        get("onnx")
    assert loads == ["torch"]


def test_drive_clients_counts_calls_and_errors_and_closes_every_connection():
    import asyncio

    class Conn:
        def __init__(self, fail: bool) -> None:
            self.fail, self.queries, self.closed = fail, [], False

        async def call(self, q: str) -> None:
            self.queries.append(q)
            await asyncio.sleep(0.001)
            if self.fail and len(self.queries) > 1:  # the warm-up call succeeds
                raise RuntimeError("refused")

        async def close(self) -> None:
            self.closed = True

    conns = [Conn(False), Conn(True)]
    calls, latencies, errors, elapsed = asyncio.run(
        benchlib.drive_clients(conns, lambda c, q: c.call(q), ["a", "b", "c"], 0.2))
    assert [c.queries[0] for c in conns] == ["a", "b"], "one warm-up call per connection, queries in turn"
    assert conns[0].queries[1:3] == ["a", "c"] and conns[1].queries[1:3] == ["b", "a"]
    assert calls == len(latencies) == len(conns[0].queries) - 1 >= 1
    assert errors == len(conns[1].queries) - 1 >= 1 and elapsed > 0
    assert all(c.closed for c in conns)


def test_exact_m3_scores_match_the_evaluation_helpers(tiny_encoder):
    from milvus_embed_ext.devtools.synthetic import generate_corpus, generate_queries
    from milvus_embed_ext.search.evaluation import brute_force_m3

    docs = generate_corpus(40, seed=3)
    queries = generate_queries(docs, 3, seed=4)
    d_enc, q_enc = tiny_encoder.encode([d.text for d in docs]), tiny_encoder.encode(queries)
    ids = [d.id for d in docs]
    scores = benchlib.exact_m3_scores(q_enc, d_enc)
    for qi in range(len(queries)):
        truth = brute_force_m3(q_enc.row(qi), d_enc, ids, 5)
        assert benchlib._top_ids(scores[qi], ids, 5) == [i for i, _ in truth]
        assert np.allclose([scores[qi][ids.index(i)] for i, _ in truth], [s for _, s in truth], atol=1e-5)


@pytest.mark.slow  # ~2 min on 2 loaded cores: fp16/bf16 on the CPU are slow
def test_gpu_check_reranker_step_dry_runs_on_cpu(tiny_model_dir: Path, tmp_path: Path):
    """bench/gpu_check.py step 4 on the CPU with the tiny checkpoint: the reranker made from the encoder's body
    loads, scores per dtype and lands in the report and its Markdown."""
    import random

    gpu = load_bench("gpu_check")
    report_: dict = {}
    gpu.rerank_check(tiny_model_dir, tmp_path / "rr", "cpu", 0.05, 8, random.Random(0), report_)
    rr = report_["reranker"]
    assert set(rr["throughput"]) == {"fp32", "fp16", "bf16"} and set(rr["parity"]) == {"fp16", "bf16"}
    assert rr["parity"]["fp16"]["logit_std_fp32"] > 0.05  # the random head tells pairs apart
    from milvus_embed_ext.encoder import Reranker

    r = Reranker.from_pretrained(str(tmp_path / "rr"), device="cpu")  # the made checkpoint is a real reranker
    assert len(set(r.compute_score([("q", "a b c"), ("q", "x y z")]))) == 2
    md = gpu.to_markdown({"device": "cpu", "torch": "-", "transformers": "-", "python": "-", "checkpoint": "tiny",
                          "bench_passages": 0, "bench_tokens": 0, "throughput": {}, "query_latency": {},
                          "parity": {}, "peak_gpu_mem_gib": 0, "checkpoint_ready_s": 0, **report_})
    assert "Reranker" in md and "| fp16 |" in md


def test_write_section_replaces_or_appends_only_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "R.md"
    path.write_text(f"# T\n\nby hand\n\n{FOREIGN}\n", encoding="utf-8")
    resultsmd.write_section(path, "mine", "first")
    resultsmd.write_section(path, "mine", "second", append=True)
    text = path.read_text(encoding="utf-8")
    assert FOREIGN in text and "by hand" in text
    assert resultsmd.section_body(text, "mine") == "first\n\nsecond"
    resultsmd.write_section(path, "colbert-codecs", "new")  # an old-style section is rewritten in place
    text = path.read_text(encoding="utf-8")
    assert resultsmd.section_body(text, "colbert-codecs") == "new" and text.index("colbert-codecs") < text.index("mine")
    assert resultsmd.table(["a", "b"], [["1", "2"]], align="---:").splitlines()[1] == "| ---: | ---: |"


def test_publish_prints_and_writes_only_when_asked(tmp_path: Path, capsys) -> None:
    import argparse

    results = tmp_path / "R.md"
    results.write_text(f"# T\n\n{FOREIGN}\n", encoding="utf-8")
    resultsmd.publish(argparse.Namespace(results=str(results), no_write=True), "mine", "body one")
    assert capsys.readouterr().out == "body one\n" and resultsmd.section_body(results.read_text(), "mine") is None
    resultsmd.publish(argparse.Namespace(results=str(results), no_write=False), "mine", "body one")
    resultsmd.publish(argparse.Namespace(results=str(results), write=True), "mine", "body two", append=True)
    captured = capsys.readouterr()
    assert captured.out == "body one\nbody two\n" and f"wrote section mine of {results}" in captured.err
    text = results.read_text(encoding="utf-8")
    assert resultsmd.section_body(text, "mine") == "body one\n\nbody two" and FOREIGN in text
    assert resultsmd.data_path(argparse.Namespace(results=str(results)), "x.json") == tmp_path / "results" / "x.json"


def test_cpu_encoder_loads_the_named_checkpoint_in_fp32(tiny_model_dir: Path) -> None:
    import argparse

    encoder, label = resultsmd.cpu_encoder(argparse.Namespace(model=str(tiny_model_dir), size="tiny"))
    assert label == f"checkpoint {tiny_model_dir.name}"
    assert (encoder.device, encoder.dtype, encoder.max_length) == ("cpu", "fp32", 512)


def test_measure_scripts_share_the_results_options() -> None:
    import argparse

    p = argparse.ArgumentParser()
    resultsmd.add_model_args(p, size="full")
    resultsmd.add_results_args(p, "s", opt_in=True)
    args = p.parse_args(["--model-dir", "/x"])
    assert args.model == "/x" and args.size == "full" and not resultsmd.should_write(args)
    assert resultsmd.should_write(p.parse_args(["--write"]))
    q = argparse.ArgumentParser()
    resultsmd.add_results_args(q, "s")
    assert resultsmd.should_write(q.parse_args([])) and not resultsmd.should_write(q.parse_args(["--no-write"]))


def test_search_data_in_another_codec_is_served_by_revisions_that_state_it(tmp_path: Path) -> None:
    from milvus_embed_ext.migrations.script import builtin_migrations_dir, load_scripts

    builtin = builtin_migrations_dir() / "0001_initial_layout.py"
    namespace: dict = {}
    exec(compile(builtin.read_text(encoding="utf-8"), str(builtin), "exec"), namespace)  # noqa: S102 - our own script
    assert benchlib.builtin_colbert_codec() == namespace["LAYOUT"]["colbert_codec"]
    assert benchlib._migrations_stating(benchlib.builtin_colbert_codec(), tmp_path / "same") is None

    folder = benchlib._migrations_stating("int6", tmp_path / "m")
    copied = {s.revision: s for s in load_scripts(folder)}
    original = {s.revision: s for s in load_scripts(builtin_migrations_dir())}
    assert set(copied) == set(original)
    text = (folder / "0001_initial_layout.py").read_text(encoding="utf-8")
    assert '"colbert_codec": "int6"' in text and '"colbert_codec": "int8"' not in text
    # data built by the built-in texts is accepted: the copy still names them
    assert set(original["0001_initial"].replaces_checksums) <= set(copied["0001_initial"].replaces_checksums)
    assert copied["0002_dense_256"].checksum == original["0002_dense_256"].checksum


@pytest.mark.parametrize(("group", "search"), [
    ("search-10000", True), ("search-50000-int6", True), ("search-live", True),
    ("search-rerank", False), ("search-10000-x/y", False), ("throughput-search", False)])
def test_search_section_groups(group: str, search: bool) -> None:
    assert report.corpus_search_group(group) is search
