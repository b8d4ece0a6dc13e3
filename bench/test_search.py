"""Hybrid search: the sidecar over gRPC beside the code a user writes today, same data, same checkpoint.

- ``milvus-embed``: ``SidecarClient.hybrid_search`` against ``milvus-embed serve`` (a subprocess on loopback,
  or ``--sidecar-address``): query encode in the sidecar's batcher, candidates from Milvus, exact re-score,
  fusion. Fusions: ``m3`` (the default plan: dense + sparse + ColBERT, BGE-M3 ``compute_score`` weights),
  ``rrf`` and ``weighted`` over dense + sparse (the baseline's representations).
- ``flagembedding``: FlagEmbedding ``BGEM3FlagModel.encode`` in-process (dense + sparse, as pymilvus-model's
  ``BGEM3EmbeddingFunction`` does) plus ``MilvusClient.hybrid_search`` with ``RRFRanker(60)`` /
  ``WeightedRanker(0.4, 0.2)`` over a dense (AUTOINDEX, IP) and a sparse (inverted, IP) field.

Both search the same documents (one encoding of the corpus, written to two Milvus Lite files, since a Lite
file opens in one process only). Per query: p50/p99 latency; per implementation: recall@k against the exact
``compute_score`` top-k over the whole corpus (fidelity), and the top-k overlap of the two implementations
for the same fusion. Throughput: N concurrent clients on loopback for a fixed time, HybridSearch and a
one-query Embed, to show what the sidecar's dynamic batching buys over one client at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import benchlib
import numpy as np
import pytest

K = 10
DEPTH = 100
SIDECAR_PLANS = {
    "m3": {},
    "rrf": {"rerank": ["dense", "sparse"], "fusion": "rrf"},
    "weighted": {"rerank": ["dense", "sparse"], "fusion": "weighted", "normalization": "arctan",
                 "weights": {"dense": benchlib.M3_WEIGHTS[0], "sparse": benchlib.M3_WEIGHTS[1]}},
}
CASES = [("milvus-embed", "m3"), ("milvus-embed", "rrf"), ("milvus-embed", "weighted"),
         ("flagembedding", "rrf"), ("flagembedding", "weighted")]
MAX_CLIENTS = 64


@pytest.fixture(scope="module")
def live(request) -> str | None:
    return request.config.getoption("--sidecar-address")


@pytest.fixture(scope="module")
def search_data(request, live):
    """The cached corpus (local runs) or just the query set (a live sidecar holds its own data)."""
    n_docs = int(benchlib.sized_option(request.config, "--search-docs", 10000, 1000))
    n_queries = int(benchlib.sized_option(request.config, "--search-queries", 50, 20))
    if live:
        from milvus_embed_ext.search.synthetic import generate_corpus, generate_queries

        queries = generate_queries(generate_corpus(500, seed=7), n_queries, seed=8)
        return benchlib.SearchData(Path(), 0, 0, queries, [], K)
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    log = (lambda msg: tr.write_line(msg)) if tr else print
    encoder = request.getfixturevalue("m3_encoder")  # only here: a live sidecar needs no local model
    corpus_dtype = request.config.getoption("--corpus-dtype")
    corpus_encoder = encoder
    if corpus_dtype != encoder.dtype:
        from milvus_embed_ext.encoder import M3Encoder

        corpus_encoder = M3Encoder.from_pretrained(str(request.getfixturevalue("bench_model_dir")),
                                                   device=str(encoder.device), dtype=corpus_dtype, max_length=8192)
    return benchlib.ensure_search_data(encoder, request.getfixturevalue("bench_model_dir"), n_docs, n_queries,
                                       k=K, log=log, corpus_encoder=corpus_encoder,
                                       codec=request.config.getoption("--colbert-codec"))


@pytest.fixture(scope="module")
def sidecar(request, live, search_data, bench_device, tmp_path_factory):
    if live:
        yield benchlib.live_sidecar(live, request.config.getoption("--sidecar-collection"),
                                    request.config.getoption("--sidecar-tls"), request.config.getoption("--sidecar-ca"))
        return
    work = tmp_path_factory.mktemp("bench-search")
    sidecar_db, _ = search_data.copy_to(work / "data")
    env = {**search_data.sidecar_env, **benchlib.parse_env(request.config.getoption("--sidecar-env"))}
    model_dir = request.getfixturevalue("bench_model_dir")
    with benchlib.start_sidecar(model_dir, sidecar_db, work, device=bench_device, extra_env=env) as s:
        yield s


@pytest.fixture(scope="module")
def baseline(request, live, search_data, tmp_path_factory):
    """(MilvusClient on a copy of the baseline file, BGEM3FlagModel)."""
    if live:
        pytest.skip("--sidecar-address: the baseline needs the local search data")
    flag = request.getfixturevalue("flag_model")
    from pymilvus import MilvusClient

    work = tmp_path_factory.mktemp("bench-baseline")
    _, db = search_data.copy_to(work)
    client = MilvusClient(str(db))
    yield client, flag
    client.close()


class Impls:
    """``search(impl, fusion)`` -> ``fn(query) -> ids`` and ``answers(impl, fusion)`` -> every query's top-k ids
    (computed once, untimed, for recall and overlap). The baseline is attached by the first test needing it."""

    def __init__(self, sidecar, queries: list[str]) -> None:
        self.sidecar, self.queries = sidecar, queries
        self.client = sidecar.client(timeout=60.0)
        self.baseline = None
        self._fns: dict[tuple[str, str], Callable[[str], list[str]]] = {}
        self._answers: dict[tuple[str, str], list[list[str]]] = {}
        self.stages: dict[tuple[str, str], list[dict[str, float]]] = {}
        """Per call: each stage's milliseconds (the sidecar's own timings; the baseline's encode and search)."""

    def search(self, impl: str, fusion: str) -> Callable[[str], list[str]]:
        if (impl, fusion) not in self._fns:
            self._fns[(impl, fusion)] = self._make(impl, fusion)
        return self._fns[(impl, fusion)]

    def _make(self, impl: str, fusion: str) -> Callable[[str], list[str]]:
        if impl == "milvus-embed":
            plan = dict(SIDECAR_PLANS[fusion])
            if not self.sidecar.live:  # a live deployment keeps its own depth unless the fusion says otherwise
                plan["candidate_k"] = DEPTH
            client, collection = self.client, self.sidecar.collection

            stages = self.stages.setdefault((impl, fusion), [])

            def fn(q: str) -> list[str]:
                t = time.perf_counter()
                res = client.hybrid_search(q, collection=collection, top_k=K, output_fields=["text"], **plan)
                stages.append({**res.timings.stages_ms, "client": (time.perf_counter() - t) * 1000.0,
                               "#colbert_read": float(res.colbert_read), "#candidates": float(res.candidates)})
                return [h.id for h in res.hits]

            return fn
        if self.baseline is None:
            raise RuntimeError("the baseline fixture was not attached")
        base, flag = self.baseline

        stages = self.stages.setdefault((impl, fusion), [])

        def fn(q: str) -> list[str]:
            t0 = time.perf_counter()
            dense, sparse = benchlib.flag_encode(flag, [q])
            t1 = time.perf_counter()
            ids = benchlib.baseline_search(base, benchlib.BASELINE_COLLECTION, dense[0], sparse[0],
                                           fusion=fusion, top_k=K, depth=DEPTH)
            stages.append({"encode": (t1 - t0) * 1000.0, "hybrid_search": (time.perf_counter() - t1) * 1000.0})
            return ids

        return fn

    def answers(self, impl: str, fusion: str) -> list[list[str]]:
        if (impl, fusion) not in self._answers:
            fn = self.search(impl, fusion)
            self._answers[(impl, fusion)] = [fn(q) for q in self.queries]
        return self._answers[(impl, fusion)]


@pytest.fixture(scope="module")
def impls(sidecar, search_data):
    made = Impls(sidecar, search_data.queries)
    yield made
    made.client.close()


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


@pytest.mark.parametrize(("impl", "fusion"), CASES, ids=[f"{i}-{f}" for i, f in CASES])
def test_hybrid_search(benchmark, request, impl, fusion, search_data, impls, live, bench_record):
    with_baseline = not live and not request.config.getoption("--no-baseline")
    if impl == "flagembedding" or (with_baseline and fusion != "m3"):
        impls.baseline = request.getfixturevalue("baseline")  # skips the baseline cases where it cannot run
    fn = impls.search(impl, fusion)
    ids = impls.answers(impl, fusion)
    info = benchmark.extra_info
    info.update(impl=impl, fusion=fusion, docs=search_data.n_docs, queries=len(search_data.queries), k=K, depth=DEPTH)
    info["config"] += f" docs={search_data.n_docs or 'live'}"
    if search_data.truth:
        info[f"recall_at_{K}"] = _mean(benchlib.overlap_at_k(got, truth, K)
                                       for got, truth in zip(ids, search_data.truth, strict=True))
    if with_baseline and fusion != "m3":
        other = impls.answers("flagembedding" if impl == "milvus-embed" else "milvus-embed", fusion)
        info[f"overlap_at_{K}"] = _mean(benchlib.overlap_at_k(a, b, K) for a, b in zip(ids, other, strict=True))
    benchmark.group = f"search-{search_data.n_docs or 'live'}{search_data.group_suffix}"
    cycle = itertools.cycle(search_data.queries)
    rounds = max(len(search_data.queries), 30 if request.config.getoption("--quick") else 100)
    impls.stages.get((impl, fusion), []).clear()  # the timed rounds only (not the untimed answers above)
    benchmark.pedantic(lambda: fn(next(cycle)), rounds=rounds, warmup_rounds=3)
    timed = impls.stages.get((impl, fusion), [])[3:]  # drop the warm-up calls
    if timed:
        p50 = {name: float(np.percentile([t[name] for t in timed if name in t], 50))
               for name in sorted({n for t in timed for n in t})}
        # stages_ms: time per stage (bench/plots.py stacks them); the counts and the client's view apart
        info["stages_ms"] = {k: v for k, v in p50.items() if not k.startswith("#") and k != "client"}
        info.update({f"{k.lstrip('#')}_p50": v for k, v in p50.items() if k.startswith("#")})
        if "client" in p50:
            info["client_p50_ms"] = p50["client"]
    bench_record(f"search-{fusion}", impl, **benchlib.percentiles_ms(benchmark.stats.stats.data))


# ------------------------------------------------------------------------------------------ throughput


def _levels(request) -> list[int]:
    raw = benchlib.sized_option(request.config, "--concurrency", "1,4,16", "1,8")
    levels = sorted({int(x) for x in str(raw).split(",") if x.strip()} | {1})
    if levels[-1] > MAX_CLIENTS or levels[0] < 1:
        raise pytest.UsageError(f"--concurrency: client counts must be between 1 and {MAX_CLIENTS}, got {raw}")
    return levels


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "clients" in metafunc.fixturenames:
        metafunc.parametrize("clients", _levels(metafunc), ids=lambda n: f"{n}c")


_SEQUENTIAL_QPS: dict[str, float] = {}


async def _drive(sidecar, rpc: str, clients: int, duration: float,
                 queries: list[str]) -> tuple[int, list[float], int, float]:
    """``clients`` clients, each on its own channel, calling back to back for ``duration`` seconds (after one
    warm-up call each); returns (calls, latencies, errors, seconds from the start to the last answer)."""
    conns = [sidecar.async_client(timeout=30.0) for _ in range(clients)]

    async def one(c, q: str) -> None:
        if rpc == "search":
            await c.hybrid_search(q, collection=sidecar.collection, top_k=K)
        else:
            await c.embed([q])

    return await benchlib.drive_clients(conns, one, queries, duration)


@pytest.mark.parametrize("rpc", ["search", "embed"])
def test_throughput(benchmark, request, rpc, clients, sidecar, search_data, bench_record):
    duration = float(benchlib.sized_option(request.config, "--duration", 10.0, 2.0))
    before = sidecar.metric_sum_count("mee_batch_texts")
    box: dict = {}

    def run() -> None:
        box["n"], box["lat"], box["errors"], box["elapsed"] = asyncio.run(
            _drive(sidecar, rpc, clients, duration, search_data.queries))

    benchmark.group = f"throughput-{rpc}"
    benchmark.pedantic(run, rounds=1, iterations=1)
    after = sidecar.metric_sum_count("mee_batch_texts")
    assert box["errors"] == 0, f"{box['errors']} calls failed under {clients} clients; sidecar log:\n{sidecar.log_tail()}"
    qps = box["n"] / box["elapsed"]
    info = benchmark.extra_info
    info.update(rpc=rpc, clients=clients, duration_s=duration, calls=box["n"], qps=qps, harness_timing=True,
                docs=search_data.n_docs, **benchlib.percentiles_ms(box["lat"]))
    info["config"] += f" docs={search_data.n_docs or 'live'}"
    if before and after and after[1] > before[1]:
        info["mean_batch_texts"] = (after[0] - before[0]) / (after[1] - before[1])
    if clients == 1:
        _SEQUENTIAL_QPS[rpc] = qps
    elif rpc in _SEQUENTIAL_QPS:
        info["speedup_vs_sequential"] = qps / _SEQUENTIAL_QPS[rpc]
    bench_record(f"{rpc}-x{clients}", "milvus-embed", qps=qps, **benchlib.percentiles_ms(box["lat"]))
