"""Cross-encoder reranker beside FlagEmbedding's FlagReranker (same checkpoint, same process), and search
with stage 3 as a function of N.

    pytest bench/test_rerank.py                      # tiny checkpoints: checks the suite works, ratios mean little
    pytest bench/test_rerank.py --full-model         # bge-reranker-v2-m3's shape (random weights, ~2.3 GB, built once)
    pytest bench/test_rerank.py --reranker-dir DIR   # any one-logit cross-encoder directory, e.g. the real one

Workloads:

- ``rerank-pairs``: one query against passages of 50-400 tokens (the shape of a rerank over search hits)
  -> pairs/s for our torch / onnx / onnx-int8 backends and for FlagReranker (fp32 on CPU, fp16 on GPU);
- ``rerank-request``: one request, a query and 10 passages of ~60 tokens -> p50/p99 latency;
- ``search-rerank``: HybridSearcher over the sample corpus (88 passages) in embedded Milvus Lite, p50 with
  stage 3 off and with N = 10, 25, 50, beside one reranker call over 50 pairs (the goal: stage 3 at N=50
  costs about one batched reranker pass over the plain search, not one pass per hit).
"""

from __future__ import annotations

import itertools
import time

import benchlib
import numpy as np
import pytest

BACKENDS = ["torch", "onnx", "onnx-int8", "flagreranker"]
QUERY = "are probiotics good for the stomach and the gut flora"


@pytest.fixture(scope="module")
def rerankers(bench_reranker_dir, bench_device):
    """One Reranker per backend, loaded lazily (an ONNX backend needs onnxruntime and a CPU)."""
    from milvus_embed_ext.encoder import Reranker

    dtype = "fp32" if bench_device == "cpu" else "fp16"
    return benchlib.per_backend(
        lambda name: Reranker.from_pretrained(str(bench_reranker_dir), device=bench_device,
                                              dtype=dtype if name == "torch" else "fp32", backend=name), bench_device)


def _passages(n: int, lo: int, hi: int, seed: int = 3) -> list[str]:
    """Passages of lo..hi words drawn from the shipped multilingual text (roughly as many tokens)."""
    from milvus_embed_ext.encoder.testmodel import _corpus_lines

    words = [w for line in _corpus_lines() for w in line.split()]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, max(1, len(words) - k)))
        out.append(" ".join(words[start:start + k]))
    return out


def _fn(name: str, rerankers, request):
    if name == "flagreranker":
        flag = request.getfixturevalue("flag_reranker")
        return lambda pairs: flag.compute_score(pairs, batch_size=max(1, len(pairs)))
    r = rerankers(name)
    return lambda pairs: r.compute_score(pairs)


def _impl(name: str) -> str:
    return {"torch": "milvus-embed", "flagreranker": "flagreranker"}.get(name, f"milvus-embed-{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rerank_pairs(benchmark, backend, rerankers, bench_full, bench_record, request):
    pairs = [(QUERY, p) for p in _passages(16 if bench_full else 64, 50, 400)]
    fn = _fn(backend, rerankers, request)
    tokens = int(sum(rerankers("torch").count_tokens(pairs)))
    benchmark.group = "rerank-pairs"
    benchmark.extra_info.update(tokens=tokens, pairs=len(pairs), backend=backend)
    out = benchmark.pedantic(fn, args=(pairs,), rounds=2 if bench_full else 5, warmup_rounds=1)
    assert len(out) == len(pairs)
    mean = benchmark.stats.stats.mean
    bench_record("rerank-pairs", _impl(backend), pairs_per_s=len(pairs) / mean, tokens_per_s=tokens / mean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rerank_request(benchmark, backend, rerankers, bench_full, bench_record, request):
    requests = [[(QUERY, p) for p in _passages(10, 40, 80, seed=s)] for s in range(8)]
    fn = _fn(backend, rerankers, request)
    cycle = itertools.cycle(requests)
    benchmark.group = "rerank-request"
    benchmark.extra_info.update(backend=backend, pairs=10)
    out = benchmark.pedantic(lambda: fn(next(cycle)), rounds=8 if bench_full else 40, warmup_rounds=1)
    assert len(out) == 10
    ms = np.asarray(benchmark.stats.stats.data) * 1000.0
    bench_record("rerank-request", _impl(backend), p50_ms=float(np.percentile(ms, 50)),
                 p99_ms=float(np.percentile(ms, 99)))


# ------------------------------------------------------------------ search with stage 3


@pytest.fixture(scope="module")
def corpus_searcher(tmp_path_factory, m3_encoder):
    """The sample corpus in a fresh embedded Milvus Lite, and a HybridSearcher over it."""
    from milvus_embed_ext import demo
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.search import HybridSearcher
    from milvus_embed_ext.store import MilvusStore

    work = tmp_path_factory.mktemp("rerank-search")
    settings = load_settings(env={}, overrides={"model": str(m3_encoder.path), "milvus_uri": str(work / "m.db"),
                                                "collection": "rerank_bench"})
    store = MilvusStore.connect(settings)
    doc_store, _ = demo.ensure_collection(settings, store)
    docs = demo.load_corpus()
    demo.load_documents(doc_store, m3_encoder, docs)
    searcher = HybridSearcher(doc_store, m3_encoder.encode, settings=settings)
    yield searcher, {d.id: d.text for d in docs}
    searcher.close()
    store.close()


def _queries() -> list[str]:
    return [q.text for q in __import__("milvus_embed_ext.demo", fromlist=["DEFAULT_QUERIES"]).DEFAULT_QUERIES]


@pytest.mark.parametrize("top_n", [0, 10, 25, 50])
def test_search_with_rerank(benchmark, top_n, corpus_searcher, rerankers, bench_full, bench_record):
    from milvus_embed_ext.search import SearchRequest
    from milvus_embed_ext.search.crossencoder import CrossEncoderStage

    searcher, _ = corpus_searcher
    reranker = rerankers("torch")
    stage = CrossEncoderStage(top_n=top_n) if top_n else None
    cycle = itertools.cycle(_queries())

    def run():
        return searcher.search(SearchRequest(query=next(cycle), top_k=min(10, top_n or 10), cross_encoder=stage),
                               scorer=reranker)

    benchmark.group = "search-rerank"
    benchmark.extra_info.update(top_n=top_n)
    res = benchmark.pedantic(run, rounds=5 if bench_full else 25, warmup_rounds=1)
    assert res.hits and (top_n == 0 or "cross_encoder" in res.timings_ms)
    ms = np.asarray(benchmark.stats.stats.data) * 1000.0
    bench_record("search-rerank", f"N={top_n}", p50_ms=float(np.percentile(ms, 50)))


def test_one_reranker_call_over_50_pairs(benchmark, corpus_searcher, rerankers, bench_full, bench_record):
    """The yardstick for the N=50 search: one batched reranker call over 50 sample passages."""
    _, texts = corpus_searcher
    pairs = [(_queries()[0], t) for t in list(texts.values())[:50]]
    reranker = rerankers("torch")
    benchmark.group = "search-rerank"
    started = time.perf_counter()
    out = benchmark.pedantic(reranker.compute_score, args=(pairs,), rounds=5 if bench_full else 25, warmup_rounds=1)
    assert len(out) == 50 and time.perf_counter() > started
    ms = np.asarray(benchmark.stats.stats.data) * 1000.0
    bench_record("search-rerank", "rerank-50-pairs", p50_ms=float(np.percentile(ms, 50)))
