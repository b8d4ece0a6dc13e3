"""Regenerate the benchmark sections of bench/RESULTS.md from the latest saved benchmark runs.

    python bench/report.py                  # make bench-report: sections from .benchmarks/
    python bench/report.py --all            # also rerun bench/measure_codecs.py and bench/measure_recall.py
    python bench/report.py --run -- -k search --search-docs 100000   # run `pytest bench` (autosave) first
    python bench/report.py --check          # exit 1 if RESULTS.md is not what the saved runs give

It also draws the figures (bench/plots.py, matplotlib from the `bench` extra) into bench/figures/ and links them
from the sections; a figure without data is not drawn and its link says what to run.

RESULTS.md is shared: every section sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->``. This script
rewrites only the sections it owns (``bench-*``) and leaves every other section and all text outside sections as
they are (the measure scripts' ``<!-- name:start -->`` / ``<!-- name:end -->`` sections too). A section takes each
benchmark group from the newest run that has it, and names the run, the machine, and the load average when
the run started: figures measured with --quick or on a busy machine say so. A section no saved run has benchmarks
for keeps its current text (say, figures from another machine's runs), and the script says so on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plots  # noqa: E402
from compare import Run, find_runs  # noqa: E402
from resultsmd import RESULTS, TITLE, begin, end, parse_sections, section_body, splice, table  # noqa: E402,F401

REPO = Path(__file__).resolve().parent.parent
FIGURES = REPO / "bench" / "figures"
RESULTS_DATA = REPO / "bench" / "results"
BUSY_LOAD_PER_CORE = 0.5
"""Load average per core at the start of a run above which its figures are flagged as measured on a busy machine."""

# ------------------------------------------------------------------------------------------ runs


Groups = dict[str, tuple[Run, list[dict]]]
"""group -> (the newest run that has it, that run's benchmarks of the group)."""

RERANK_GROUPS = ("rerank-pairs", "rerank-request", "search-rerank")
"""bench/test_rerank.py's groups, in the rerank section's order."""


def corpus_search_group(group: str) -> bool:
    """bench/test_search.py's ``search-<docs>`` groups (``search-live`` against a live sidecar): the search
    section's tables, one per corpus size. bench/test_rerank.py's ``search-rerank`` is the rerank section's."""
    return group == "search-live" or plots.search_group(group) is not None


def latest_by_group(runs: Sequence[Run], match: Callable[[str], bool]) -> Groups:
    """The groups ``match`` accepts, each from the newest run that has it."""
    out: Groups = {}
    for run in reversed(runs):
        for group in {str(b.get("group")) for b in run.benchmarks if match(str(b.get("group")))}:
            if group not in out:
                out[group] = (run, [b for b in run.benchmarks if str(b.get("group")) == group])
    return out


def machine_line(run: Run) -> str:
    mi = run.data.get("machine_info") or {}
    cpu = mi.get("cpu") or {}
    cores = mi.get("cpu_count") or cpu.get("count") or "?"
    parts = [f"{cpu.get('brand_raw') or mi.get('processor') or mi.get('machine', '?')}, {cores} cores",
             f"{mi.get('system', '')} {mi.get('release', '')}".strip(),
             f"Python {mi.get('python_version', '?')}"]
    if mi.get("torch"):
        parts.append(f"torch {mi['torch']} ({mi.get('torch_threads', '?')} threads)")
    if mi.get("gpu"):
        parts.append(f"GPU {mi['gpu']}")
    if mi.get("cpu_simd"):
        parts.append("CPU flags " + " ".join(mi["cpu_simd"]))
    load = mi.get("load_avg_start") or []
    if load:
        parts.append("load average at start " + "/".join(f"{x:.1f}" for x in load))
    commit = run.data.get("commit_info") or {}
    sha = (commit.get("id") or "?")[:10] + ("+uncommitted" if commit.get("dirty") else "")
    return f"{run.when[:16].replace('T', ' ')} UTC, commit {sha}; " + "; ".join(parts)


def options_line(run: Run) -> str:
    opts = (run.data.get("machine_info") or {}).get("bench_options") or {}
    size = opts.get("model_size") or ("full" if opts.get("full_model") else "tiny")  # runs saved before model_size
    model = opts.get("model_dir") or {"full": "full-size random checkpoint", "tiny": "tiny test checkpoint",
                                      "wide": "wide random checkpoint (BGE-M3's 1024-d widths, 2 layers)"}[size]
    bits = [f"model: {model}", f"device {opts.get('bench_device', 'cpu')}"]
    mi = run.data.get("machine_info") or {}
    if mi.get("sidecar_dtype"):  # what the sidecar's dtype auto resolved to (the in-process baselines run fp32)
        bits.append(f"sidecar dtype auto = {mi['sidecar_dtype']}")
    if opts.get("corpus_dtype") and opts["corpus_dtype"] != "fp32":
        bits.append(f"corpus encoded in {opts['corpus_dtype']}")
    if opts.get("sidecar_address"):
        bits.append(f"live sidecar {opts['sidecar_address']}")
    if opts.get("sidecar_env"):
        bits.append("sidecar env " + " ".join(opts["sidecar_env"]))
    if opts.get("quick"):
        bits.append("--quick")
    return ", ".join(bits)


def caveat(run: Run) -> str:
    """A warning line when the run's figures are not final (quick sizes, busy machine, tiny model)."""
    mi = run.data.get("machine_info") or {}
    opts = mi.get("bench_options") or {}
    load = (mi.get("load_avg_start") or [0.0])[0]
    cores = mi.get("cpu_count") or (mi.get("cpu") or {}).get("count") or 1
    why = []
    if opts.get("quick"):
        why.append("--quick sizes")
    if load > BUSY_LOAD_PER_CORE * cores:
        why.append(f"a busy machine (load {load:.1f} on {cores} cores when the run started)")
    if not why:
        return ""
    return ("> **Not final figures**: measured with " + " and ".join(why) + ". Rerun `make bench` on a quiet "
            "machine, then `make bench-report`.")


def sources(used: Sequence[Run]) -> str:
    seen: list[Run] = []
    for r in used:
        if all(r.path != s.path for s in seen):
            seen.append(r)
    lines = []
    for r in seen:
        lines.append(f"Run `{r.path.name}`: {machine_line(r)}. {options_line(r)}.")
        if caveat(r):
            lines.append(caveat(r))
    return "\n\n".join(lines)


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if isinstance(x, (int, float)):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)


def frac(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b




def _impl(b: dict) -> str:
    params = b.get("params") or {}
    return str((b.get("extra_info") or {}).get("impl") or params.get("impl") or "")


def _x(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}x"


class NoRunYet(str):
    """A section body that only says no saved run has the section's benchmarks: it fills a section the file does
    not have yet, and never replaces what an existing section holds (figures kept from an earlier machine's runs)."""


NO_RUN = "No saved run has these benchmarks yet"


def no_run(head: str, k: str) -> NoRunYet:
    return NoRunYet(f"{head}\n\n{NO_RUN}: `make bench` (or `pytest bench -k {k} --benchmark-autosave "
                    "--benchmark-storage=.benchmarks`), then `make bench-report`.")


def _keeps_figures(text: str, name: str) -> bool:
    """Whether section ``name`` of ``text`` holds more than the "no saved run" placeholder."""
    body = section_body(text, name)
    return body is not None and NO_RUN not in body


# ------------------------------------------------------------------------------------------ section bodies


def extras_by_group(groups: Groups, order: str) -> Iterator[tuple[str, dict]]:
    """(group, a benchmark's extra_info) over the groups by name, each group's benchmarks by ``extra_info[order]``."""
    for group in sorted(groups):
        for ex in sorted(((b.get("extra_info") or {}) for b in groups[group][1]), key=lambda ex: str(ex.get(order))):
            yield group, ex


def runs_of(groups: Groups) -> list[Run]:
    """The runs the groups came from, in the groups' name order."""
    return [groups[g][0] for g in sorted(groups)]


class Built(NamedTuple):
    """What a section builder makes: the paragraphs and tables under the section's head, and the runs they show."""

    parts: list[str]
    runs: list[Run]


@dataclass(frozen=True)
class Section:
    """A bench-* section: the benchmark groups it reports (``match``), its heading and intro (``head``), and
    ``build(groups, goals)``, what goes under the head from the newest run of each group (it may add to ``goals``),
    followed by the runs it names. Without any of its groups in the runs the body is the "no saved run"
    placeholder (``k``: pytest's -k)."""

    name: str
    match: Callable[[str], bool]
    k: str
    head: str
    build: Callable[[Groups, dict[str, Any]], Built]

    def body(self, runs: Sequence[Run], goals: dict[str, Any]) -> str:
        groups = latest_by_group(runs, self.match)
        if not groups:
            return no_run(self.head, self.k)
        parts, used = self.build(groups, goals)
        return "\n\n".join([self.head, *parts, sources(used)])


def section(name: str, match: Callable[[str], bool], k: str, head: str
            ) -> Callable[[Callable[[Groups, dict[str, Any]], Built]], Section]:
    """Decorator: the builder below becomes the Section ``name``."""
    return lambda build: Section(name, match, k, head, build)


@section("bench-encode", lambda g: g in ("passages", "query"), "encode",
         ("## Encode: M3Encoder beside FlagEmbedding BGEM3FlagModel.encode\n\n"
          "bench/test_encode.py: same checkpoint, same process, dense + sparse + ColBERT. Passages of 50-500 "
          "tokens in one call; single short queries, one call each."))
def encode_section(groups: Groups, goals: dict[str, Any]) -> Built:
    rows = []
    if "passages" in groups:
        _, benches = groups["passages"]
        per = {_impl(b): b for b in benches}
        vals = {}
        for impl, b in per.items():
            mean = b["stats"]["mean"]
            ex = b.get("extra_info") or {}
            vals[impl] = (ex.get("tokens", 0) / mean, ex.get("texts", 0) / mean)
        ours, ref = vals.get("milvus-embed"), vals.get("flagembedding")
        r_tok = ratio(ours and ours[0], ref and ref[0])
        goals["encode_tokens"] = r_tok
        rows.append(["passages", "tokens/s", fmt(ours and ours[0]), fmt(ref and ref[0]), _x(r_tok), ">= 2x"])
        rows.append(["passages", "texts/s", fmt(ours and ours[1]), fmt(ref and ref[1]),
                     _x(ratio(ours and ours[1], ref and ref[1])), ""])
    if "query" in groups:
        _, benches = groups["query"]
        per = {_impl(b): (b.get("extra_info") or {}) for b in benches}
        ours, ref = per.get("milvus-embed", {}), per.get("flagembedding", {})
        for pct in ("p50_ms", "p99_ms"):
            r = ratio(ours.get(pct), ref.get(pct))
            if pct == "p50_ms":
                goals["encode_p50"] = r
            rows.append(["one query", pct.replace("_ms", " ms"), fmt(ours.get(pct)), fmt(ref.get(pct)), _x(r),
                         "<= 0.5x" if pct == "p50_ms" else ""])
    body = table(["workload", "figure", "milvus-embed", "FlagEmbedding", "ratio", "goal"], rows)
    return Built([body], [r for r, _ in groups.values()])


@section("bench-search", corpus_search_group, "hybrid_search",
         ("## Hybrid search: the sidecar over gRPC beside FlagEmbedding + MilvusClient.hybrid_search\n\n"
          "bench/test_search.py: same Milvus Lite data and checkpoint. recall@10: share of the exact BGE-M3 "
          "`compute_score` top-10 over the whole corpus (dense 0.4, sparse 0.2, ColBERT 0.4) that a search "
          "returns. overlap@10: share of the other implementation's top-10 for the same fusion. milvus-embed m3 "
          "is the default plan (exact dense, lexical and ColBERT re-scoring of the candidates); rrf and weighted "
          "fuse dense + sparse, like the baseline's `RRFRanker(60)` and `WeightedRanker(0.4, 0.2)`."))
def search_section(groups: Groups, goals: dict[str, Any]) -> Built:
    parts = []
    used = []
    for group in sorted(groups, key=lambda g: (len(g), g)):
        run, benches = groups[group]
        used.append(run)
        docs = group.removeprefix("search-")
        size, codec = plots.search_group(group) or (docs, "")
        rows = []
        by = {}
        for b in sorted(benches, key=lambda b: (_impl(b) != "milvus-embed", str(b.get("name")))):
            ex = b.get("extra_info") or {}
            by[(_impl(b), ex.get("fusion"))] = ex
            rows.append([_impl(b), str(ex.get("fusion", "")), fmt(ex.get("p50_ms")), fmt(ex.get("p99_ms")),
                         frac(ex.get("recall_at_10")), frac(ex.get("overlap_at_10"))])
        parts.append(f"### {size} documents" + (f", ColBERT {codec}" if codec else "") + "\n\n" + table(
            ["implementation", "fusion", "p50 ms", "p99 ms", "recall@10", "overlap@10"], rows))
        stage_table = _stages_table(by)
        if stage_table:
            parts.append("Per-stage p50 (ms; each stage's own median, so they need not add up to the total). "
                         "Sidecar stages come from its reply's timings; ColBERT read: candidates whose ColBERT "
                         "vectors were read, of all candidates (p50). The baseline's `encode` is FlagEmbedding "
                         "in-process, `hybrid_search` the Milvus call.\n\n"
                         + stage_table)
        base = [v for (impl, _), v in by.items() if impl == "flagembedding"]
        ours = by.get(("milvus-embed", "m3"))
        if ours and base:
            fastest = min(base, key=lambda v: v.get("p50_ms") or float("inf"))
            r = ratio(ours.get("p50_ms"), fastest.get("p50_ms"))
            goals.setdefault("search", []).append((docs, r, ours.get("recall_at_10")))
            parts.append(f"milvus-embed m3 p50 / fastest baseline p50 ({fastest.get('fusion')}): {_x(r)} (goal <= 1x); "
                         f"recall@10 {frac(ours.get('recall_at_10'))} (goal >= 0.99; the baseline's best "
                         f"{frac(max((v.get('recall_at_10') or 0.0) for v in base))}).")
        for fusion_name in ("rrf", "weighted"):
            mine, theirs = by.get(("milvus-embed", fusion_name)), by.get(("flagembedding", fusion_name))
            if mine and theirs:
                goals.setdefault("same_fusion", []).append(
                    (docs, fusion_name, ratio(mine.get("p50_ms"), theirs.get("p50_ms"))))
    return Built(parts, used)


def _stages_table(by: dict[tuple[str, Any], dict]) -> str:
    """implementation/fusion rows by stage columns, from each benchmark's ``stages_ms`` (names from the data),
    then how many candidates had their ColBERT vectors read (``colbert_read_p50`` of ``candidates_p50``)."""
    have = {key: ex for key, ex in by.items() if ex.get("stages_ms")}
    if not have:
        return ""
    first = ["encode", "candidates", "fetch", "rescore", "fuse", "fields", "total", "hybrid_search"]
    names = sorted({n for ex in have.values() for n in ex["stages_ms"]},
                   key=lambda n: (n not in first, first.index(n) if n in first else 0, n))
    rows = []
    for (impl, fusion_name), ex in sorted(have.items(), key=lambda kv: (kv[0][0] != "milvus-embed", str(kv[0][1]))):
        st = ex["stages_ms"]
        read = (f"{fmt(ex['colbert_read_p50'])} of {fmt(ex.get('candidates_p50'))}"
                if ex.get("colbert_read_p50") is not None else "")
        rows.append([impl, str(fusion_name), *(fmt(st.get(n)) if n in st else "" for n in names), read])
    return table(["implementation", "fusion", *names, "ColBERT read"], rows)


@section("bench-throughput", lambda g: g.startswith("throughput-"), "throughput",
         ("## Throughput under concurrent clients (dynamic batching)\n\n"
          "bench/test_search.py::test_throughput: N clients on loopback, each on its own channel, calling back to "
          "back for a fixed time. texts/pass: mean texts per encoder forward pass over the level (from the "
          "sidecar's `mee_batch_texts` metric), the batching at work."))
def throughput_section(groups: Groups, goals: dict[str, Any]) -> Built:
    parts = []
    used = []
    for group in sorted(groups):
        run, benches = groups[group]
        used.append(run)
        rpc = group.removeprefix("throughput-")
        rows = []
        seq = None
        best = None
        for b in sorted(benches, key=lambda b: (b.get("extra_info") or {}).get("clients", 0)):
            ex = b.get("extra_info") or {}
            if ex.get("clients") == 1:
                seq = ex.get("qps")
            speed = ratio(ex.get("qps"), seq)
            if ex.get("clients", 1) > 1 and speed is not None:
                best = speed if best is None else max(best, speed)
            rows.append([str(ex.get("clients")), fmt(ex.get("qps")), fmt(ex.get("p50_ms")), fmt(ex.get("p99_ms")),
                         fmt(ex.get("mean_batch_texts")), _x(speed)])
        goals.setdefault("throughput", []).append((rpc, best))
        name = "HybridSearch" if rpc == "search" else "Embed (one query per call)" if rpc == "embed" else rpc
        parts.append(f"### {name}\n\n" + table(["clients", "calls/s", "p50 ms", "p99 ms", "texts/pass",
                                                "x sequential"], rows))
    return Built(parts, used)


@section("bench-http", lambda g: g.startswith("http-"), "http",
         ("## HTTP face (TEI and OpenAI dialects) beside gRPC Embed\n\n"
          "bench/test_http.py: the same sidecar answers gRPC `Embed`, TEI `POST /embed` and OpenAI "
          "`POST /v1/embeddings` for one query per call (p50 over sequential calls), and with 16 concurrent "
          "clients (calls/s). The ratios are what the HTTP layer costs."))
def http_section(groups: Groups, goals: dict[str, Any]) -> Built:
    rows = []
    for group, ex in extras_by_group(groups, "transport"):
        rows.append([group.removeprefix("http-"), str(ex.get("transport")), fmt(ex.get("p50_ms")),
                     fmt(ex.get("p99_ms")), fmt(ex.get("qps")),
                     _x(ex.get("p50_vs_grpc") if ex.get("p50_vs_grpc") is not None else ex.get("qps_vs_grpc"))])
        if ex.get("p50_vs_grpc") is not None and ex.get("transport") != "grpc":
            goals.setdefault("http_p50", []).append((ex.get("transport"), ex["p50_vs_grpc"]))
        if ex.get("qps_vs_grpc") is not None and ex.get("transport") != "grpc":
            goals.setdefault("http_qps", []).append((ex.get("transport"), ex["qps_vs_grpc"]))
    return Built([table(["measure", "transport", "p50 ms", "p99 ms", "calls/s", "vs gRPC"], rows)], runs_of(groups))


@section("bench-rerank", lambda g: g in RERANK_GROUPS, "rerank",
         ("## Cross-encoder reranker beside FlagReranker, and search with stage 3\n\n"
          "bench/test_rerank.py: the same checkpoint in one process. rerank-pairs: one query against passages of "
          "50-400 tokens (pairs/s); rerank-request: a query and 10 passages of 40-80 tokens (p50 per request); "
          "search-rerank: HybridSearcher over the sample corpus with stage 3 over the fused top N, beside one "
          "reranker call over 50 pairs."))
def rerank_section(groups: Groups, goals: dict[str, Any]) -> Built:
    parts, used = [], []
    for group in RERANK_GROUPS:
        if group not in groups:
            continue
        run, benches = groups[group]
        used.append(run)
        rows = []
        by: dict[str, dict] = {}
        for b in sorted(benches, key=lambda b: str(b.get("name"))):
            ex = b.get("extra_info") or {}
            median_s = float((b.get("stats") or {}).get("median") or 0.0)
            name = str(ex.get("backend") or ex.get("top_n", b.get("name")))
            by[name] = {"median_s": median_s, **ex}
            if group == "rerank-pairs":
                rows.append([name, str(ex.get("pairs")), fmt(ex.get("pairs", 0) / median_s if median_s else None),
                             fmt(ex.get("tokens", 0) / median_s if median_s else None)])
            else:
                label = (f"stage 3 over N={name}" if group == "search-rerank" and name.isdigit() and name != "0"
                         else "no stage 3" if name == "0" else name)
                rows.append([label, fmt(ex.get("p50_ms") or median_s * 1000.0), fmt(ex.get("p99_ms"))])
        if group == "rerank-pairs":
            parts.append("### Pairs per second\n\n" + table(["backend", "pairs", "pairs/s", "tokens/s"], rows))
            if "torch" in by and "flagreranker" in by and by["torch"]["median_s"]:
                r = by["flagreranker"]["median_s"] / by["torch"]["median_s"]
                goals["rerank_pairs"] = r
                parts.append(f"milvus-embed (torch) pairs/s / FlagReranker pairs/s: {_x(r)} (goal >= 2x).")
        else:
            title = "### One request" if group == "rerank-request" else "### Search with stage 3"
            parts.append(title + "\n\n" + table(["case", "p50 ms", "p99 ms"], rows))
    return Built(parts, used)


@section("bench-threads", lambda g: g.startswith("threads-"), "threads",
         ("## Encoder threads on a busy machine\n\n"
          "bench/test_threads.py: one-query Embed p50 over gRPC with `encoder_threads` auto (default: one core "
          "left to embedded Milvus Lite) and with one thread per core, while every core is kept busy by a "
          "spinning process (as Lite answering searches would), and on an idle machine."))
def threads_section(groups: Groups, goals: dict[str, Any]) -> Built:  # noqa: ARG001
    rows = [[str(ex.get("load")), str(ex.get("setting")),
             " ".join(f"{k}={v}" for k, v in (ex.get("env") or {}).items()) or "—",
             fmt(ex.get("p50_ms")), fmt(ex.get("p99_ms"))] for _, ex in extras_by_group(groups, "setting")]
    return Built([table(["machine", "encoder_threads", "sidecar env", "p50 ms", "p99 ms"], rows)], runs_of(groups))


@section("bench-ingest", lambda g: g == "ingest", "ingest",
         ("## Ingestion: documents per second, text to every representation stored\n\n"
          "bench/test_ingest.py: milvus-embed streams documents to the sidecar (Upsert stream, chunks of 64); the "
          "baseline loops FlagEmbedding encode (dense + sparse, batch 16) and `MilvusClient.insert` per chunk of 64."))
def ingest_section(groups: Groups, goals: dict[str, Any]) -> Built:
    run, benches = groups["ingest"]
    per = {_impl(b): (b.get("extra_info") or {}) for b in benches}
    ref = per.get("flagembedding", {}).get("docs_per_s")
    rows = [[impl, fmt(ex.get("docs_per_s")), fmt(ex.get("tokens_per_s")), fmt(ex.get("docs")), str(ex.get("stored", "")),
             _x(ratio(ex.get("docs_per_s"), ref)) if impl != "flagembedding" else ""]
            for impl, ex in sorted(per.items())[::-1]]
    goals["ingest"] = ratio(per.get("milvus-embed", {}).get("docs_per_s"), ref)
    return Built([table(["implementation", "docs/s", "tokens/s", "docs per round", "stored", "x baseline"], rows)],
                 [run])


@section("bench-storage", lambda g: g == "storage", "storage",
         ("## Storage: bytes per document in Milvus\n\n"
          "bench/test_storage.py: raw bytes of every stored field value read back from Milvus (before Milvus' "
          "compression; index memory not counted), per document, and the Milvus Lite file's growth per document. "
          "ColBERT vectors live in the companion collection (VARCHAR rows: int6 as text, the other codecs base64); `baseline` is the dense + sparse "
          "collection of the pymilvus tutorial."))
def storage_section(groups: Groups, goals: dict[str, Any]) -> Built:  # noqa: ARG001
    run, benches = groups["storage"]
    dims: list[int] = []
    for b in benches:
        dims = sorted(set(dims) | set((b.get("extra_info") or {}).get("truncated") or []))
    rows = []
    order = {"fp32": 0, "fp16": 1, "int8": 2, "int6": 3, "bits": 4, "baseline": 9}
    first = {}
    for b in sorted(benches, key=lambda b: order.get((b.get("extra_info") or {}).get("codec"), 5)):
        ex = b.get("extra_info") or {}
        first = first or ex
        fields = ex.get("fields_bytes_per_doc") or {}
        colls = ex.get("collections_bytes_per_doc") or {}
        other = sum(v for k, v in fields.items() if k not in {"dense", "sparse"} and not k.startswith("dense_"))
        companion = sum(v for k, v in colls.items() if k != "main" and not k.endswith("rows/doc"))
        rows.append([str(ex.get("codec")), fmt(fields.get("dense"), 4)]
                    + [fmt(fields.get(f"dense_{d}"), 4) for d in dims]
                    + [fmt(fields.get("sparse"), 4), fmt(other, 4), fmt(companion, 4) if companion else "—",
                       fmt(ex.get("bytes_per_doc"), 4), fmt(ex.get("lite_file_bytes_per_doc"), 4),
                       fmt(ex.get("write_docs_per_s"))])
    header = (["codec", "dense"] + [f"dense_{d}" for d in dims]
              + ["sparse", "id, text, metadata, bookkeeping", "ColBERT (companion)", "total", "Lite file", "write docs/s"])
    context = (f"{first.get('docs')} synthetic documents, dense dim {first.get('dense_dim')}, "
               f"{fmt(first.get('colbert_tokens_per_doc'))} ColBERT vectors per document; bytes per document.")
    return Built([context, table(header, rows)], [run])


def goals_section(goals: dict[str, Any]) -> str:
    def met(value: float | None, ok: Callable[[float], bool]) -> str:
        return "—" if value is None else ("met" if ok(value) else "not met")

    rows = [["Encoder tokens/s vs FlagEmbedding (CPU, fp32)", ">= 2x", _x(goals.get("encode_tokens")),
             met(goals.get("encode_tokens"), lambda v: v >= 2)],
            ["One-query encode latency (p50) vs FlagEmbedding", "<= 0.5x", _x(goals.get("encode_p50")),
             met(goals.get("encode_p50"), lambda v: v <= 0.5)]]
    for docs, r, recall in goals.get("search") or [(None, None, None)]:
        fidelity_ok = recall is not None and recall >= 0.99
        rows.append([f"Sidecar m3 p50 vs the fastest baseline, {docs or '—'} docs", "<= 1x, recall@10 >= 0.99",
                     f"{_x(r)}, recall {frac(recall)}",
                     "—" if r is None else ("met" if r <= 1 and fidelity_ok else "not met")])
    for docs, fusion_name, r in goals.get("same_fusion") or []:
        rows.append([f"Sidecar {fusion_name} p50 vs the baseline's {fusion_name}, {docs} docs", "<= 0.8x", _x(r),
                     met(r, lambda v: v <= 0.8)])
    if goals.get("rerank_pairs") is not None:
        rows.append(["Rerank pairs/s vs FlagReranker (CPU, fp32)", ">= 2x", _x(goals["rerank_pairs"]),
                     met(goals["rerank_pairs"], lambda v: v >= 2)])
    for transport, r in goals.get("http_p50") or []:
        rows.append([f"One-query p50 over HTTP ({transport}) vs gRPC Embed", "<= 1.2x", _x(r), met(r, lambda v: v <= 1.2)])
    for transport, r in goals.get("http_qps") or []:
        rows.append([f"16-client throughput over HTTP ({transport}) vs gRPC", ">= 0.8x", _x(r),
                     met(r, lambda v: v >= 0.8)])
    for rpc, best in goals.get("throughput") or [("—", None)]:
        rows.append([f"Concurrent throughput vs sequential ({rpc})", ">= 3x", _x(best), met(best, lambda v: v >= 3)])
    if goals.get("ingest") is not None:
        rows.append(["Ingestion docs/s vs the baseline loop", "(tracked)", _x(goals["ingest"]), ""])
    return ("## Goals\n\nRatios against the baselines, from the sections below (targets, not asserts). Each figure "
            "carries its run's caveats.\n\n" + table(["goal", "target", "measured", ""], rows))


SECTIONS: list[Section] = [encode_section, search_section, throughput_section, rerank_section, http_section,
                           threads_section, ingest_section, storage_section]


def figure_set(runs: Sequence[Run], data_dir: Path = RESULTS_DATA) -> dict[str, plots.Figure]:
    """The figures' data: the newest run of each search/throughput group, and bench/results/*.json."""
    return plots.figures(latest_by_group(runs, corpus_search_group),
                         latest_by_group(runs, lambda g: g.startswith("throughput-")),
                         plots.load_results(data_dir))


def _with_figures(name: str, body: str, figs: dict[str, plots.Figure], results: Path, figures_dir: Path) -> str:
    """Figure links under the bench-* sections whose runs exist (a section without a run already says so)."""
    links = {"bench-search": ["search_p50", "search_stages"], "bench-throughput": ["throughput_clients"]}
    names = links.get(name, [])
    if not names or not figs[names[0]].available:
        return body
    return body + "\n\n" + "\n\n".join(figs[n].markdown(results, figures_dir) for n in names)


# Figures of the measure scripts' sections: own sections placed right after theirs (never edited here).
FIGURE_SECTIONS = (("bench-figure-recall", "hybrid-search-recall", "recall_depth", "measure_recall.py", "recall"),
                   ("bench-figure-codecs", "colbert-codecs", "codecs_overlap", "measure_codecs.py", "codecs"))


@dataclass
class Rendered:
    """RESULTS.md's new text, and the bench-* sections left as they were because no saved run has their benchmarks."""

    text: str
    kept: list[str]


def render(text: str, runs: Sequence[Run], *, figs: dict[str, plots.Figure] | None = None,
           results: Path = RESULTS, figures_dir: Path = FIGURES) -> Rendered:
    """RESULTS.md text with every bench-* section regenerated from ``runs`` (oldest first) and figure links
    (relative to ``results``) to the PNGs ``draw_figures`` writes into ``figures_dir``.

    A section none of ``runs`` has benchmarks for keeps its current text (its figures may come from another
    machine's runs); only a section the file lacks gets the "no saved run" placeholder.
    """
    figs = figure_set(runs) if figs is None else figs
    goals: dict[str, Any] = {}
    bodies = [(sec.name, sec.body(runs, goals)) for sec in SECTIONS]
    kept = [name for name, body in bodies if isinstance(body, NoRunYet) and _keeps_figures(text, name)]
    note = ("_Sections `bench-*` are generated by `make bench-report` (bench/report.py) from the runs saved under "
            ".benchmarks/; edit the generator, not the text._")
    if kept:
        note += (" _Kept as they were, since no saved run here has their benchmarks (their goals read — above): "
                 + ", ".join(f"`{name}`" for name in kept) + "._")
    text = splice(text or TITLE, "bench-goals", goals_section(goals) + "\n\n" + note, top=True)
    prev = "bench-goals"
    for name, body in bodies:
        if name not in kept:
            text = splice(text, name, _with_figures(name, body, figs, results, figures_dir), after=prev)
        prev = name
    gpu = gpu_section()
    if gpu is not None:
        text = splice(text, "gpu-check", gpu, after=prev)
    for name, after, fig_name, script, kind in FIGURE_SECTIONS:
        fig = figs[fig_name]
        note = (f"_Drawn by `make bench-report` from bench/results/{kind}*.json, which bench/{script} writes._"
                if fig.available else "")
        text = splice(text, name, f"{fig.markdown(results, figures_dir)}\n\n{note}".strip(), after=after)
    return Rendered(text, kept)


def render_all(text: str, runs: Sequence[Run], *, figs: dict[str, plots.Figure] | None = None,
               results: Path = RESULTS, figures_dir: Path = FIGURES) -> str:
    """``render``'s text."""
    return render(text, runs, figs=figs, results=results, figures_dir=figures_dir).text


def draw_figures(figs: dict[str, plots.Figure], figures_dir: Path) -> list[Path]:
    """Write every figure that has data; remove the PNG of one that has none (its link is gone too)."""
    drawn = []
    for fig in figs.values():
        path = plots.draw(fig, figures_dir)
        if path is not None:
            drawn.append(path)
        elif (figures_dir / fig.file).exists():
            (figures_dir / fig.file).unlink()
    return drawn


def gpu_section() -> str | None:
    """The GPU check (bench/gpu_check.sh) figures saved as bench/results/gpu_check*.json, newest device first."""
    files = sorted((REPO / "bench" / "results").glob("gpu_check*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
    if not files:
        return None
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_check import to_markdown

    parts = ["## GPU check: CUDA path of M3Encoder (fp32 / fp16 / bf16)", "",
             "Regenerate on a CUDA machine: `bash bench/gpu_check.sh bench/results` (under 5 minutes), then "
             "`make bench-report`. Parity is against fp32 on the same GPU; the checkpoint has BGE-M3's exact shapes "
             "and random weights, so throughput is BGE-M3's but scores carry no meaning.",
             "",
             "Tried and not kept: copying the token ids to the GPU from pinned host memory (`pin_memory()` + "
             "`non_blocking`), measured in a second run on another H100 of the same kind: fp16 169,608 tokens/s and "
             "one-query p50 18.3 ms, against 173,996 and 12.3 ms without it (fp32: 47,998 vs 44,692 tokens/s). "
             "The inputs are a few KB of int64 ids per pass; pinning them per call costs more than it saves."]
    for f in files:
        parts += ["", f"### {f.name}", "", to_markdown(json.loads(f.read_text(encoding="utf-8"))).strip()]
    return "\n".join(parts)


def run_measure_scripts(python: str) -> None:
    for script in ("measure_codecs.py", "measure_recall.py"):
        print(f"running bench/{script} ...", file=sys.stderr)
        subprocess.run([python, str(REPO / "bench" / script)], cwd=REPO, check=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storage", default=str(REPO / ".benchmarks"), help="folder of saved runs")
    p.add_argument("--results", default=str(RESULTS), help="the Markdown file to update")
    p.add_argument("--figures", default=str(FIGURES), help="folder of the PNG figures (linked from the results file)")
    p.add_argument("--data", default=str(RESULTS_DATA), help="folder of the measure scripts' JSON (bench/results)")
    p.add_argument("--all", action="store_true", help="also rerun measure_codecs.py and measure_recall.py")
    p.add_argument("--run", action="store_true",
                   help="first run `pytest bench --benchmark-autosave` (arguments after -- go to pytest)")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if the file would change")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: extra pytest arguments for --run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    extra = [a for a in args.pytest_args if a != "--"]
    if extra and not args.run:
        print("error: pytest arguments given without --run", file=sys.stderr)
        return 2
    if args.run:
        cmd = [sys.executable, "-m", "pytest", "bench", "-q", "--benchmark-autosave",
               f"--benchmark-storage={args.storage}", *extra]
        print("running " + " ".join(cmd), file=sys.stderr)
        rc = subprocess.run(cmd, cwd=REPO).returncode
        if rc != 0:
            print(f"error: the benchmark run failed (exit {rc}); RESULTS.md left as it was", file=sys.stderr)
            return rc
    if args.all and not args.check:
        run_measure_scripts(sys.executable)
    storage = Path(args.storage)
    runs = find_runs(storage) if storage.is_dir() else []
    path = Path(args.results)
    before = path.read_text(encoding="utf-8") if path.exists() else ""
    figs = figure_set(runs, Path(args.data))
    try:
        rendered = render(before, runs, figs=figs, results=path, figures_dir=Path(args.figures))
    except ValueError as exc:
        print(f"error: {path}: {exc}; fix the markers by hand, nothing was written", file=sys.stderr)
        return 2
    after = rendered.text
    for name in rendered.kept:
        print(f"{path}: section {name} kept as it was: no saved run under {storage} has its benchmarks")
    if args.check:
        if after != before:
            print(f"{path} is out of date: run `make bench-report`", file=sys.stderr)
            return 1
        return 0
    if after != before:
        path.write_text(after, encoding="utf-8")
    drawn = draw_figures(figs, Path(args.figures))
    print(f"{path}: {len(SECTIONS) + 1 - len(rendered.kept)} sections from {len(runs)} saved run(s); "
          f"{len(drawn)} figure(s) in {args.figures}", file=sys.stderr)
    for fig in figs.values():
        if not fig.available:
            print(f"  not drawn: {fig.title}: {fig.missing}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
