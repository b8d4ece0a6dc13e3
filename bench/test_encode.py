"""M3Encoder.encode beside FlagEmbedding's BGEM3FlagModel.encode, same checkpoint, same process.

Both compute all three representations (dense, sparse, ColBERT) without truncation. Two workloads:
passages of mixed lengths (50-500 tokens) in one call -> tokens/s and texts/s; single short queries,
one call each -> p50/p99 latency. The ratios are printed at the end of the run (bench/conftest.py).

FlagEmbedding gets ``batch_size = len(texts)`` unless ``--flag-batch-size`` says otherwise: before each
call it runs a trial forward pass of ``batch_size`` copies of the longest text (to probe for OOM), and
its default of 256 would make that trial pass dominate every small call.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

IMPLS = ["milvus-embed", "flagembedding"]


def _words() -> list[str]:
    from milvus_embed_ext.encoder.testmodel import _corpus_lines

    return " ".join(_corpus_lines()).split()


@pytest.fixture(scope="module")
def passages(m3_encoder, bench_full: bool) -> list[str]:
    """Texts whose token counts spread evenly over 50..500 (deterministic)."""
    rng = random.Random(7)
    words = _words()
    n = 16 if bench_full else 64
    texts: list[str] = []
    for target in np.linspace(50, 500, n).astype(int):
        start = rng.randrange(len(words))
        chosen: list[str] = []
        k = 0
        while True:
            chosen.append(words[(start + k) % len(words)])
            k += 1
            if k % 8 == 0 and m3_encoder.count_tokens([" ".join(chosen)])[0] >= target:
                break
        texts.append(" ".join(chosen))
    rng.shuffle(texts)
    return texts


@pytest.fixture(scope="module")
def queries() -> list[str]:
    rng = random.Random(11)
    words = _words()
    return [" ".join(rng.sample(words, rng.randint(4, 12))) for _ in range(64)]


def _encode_fn(impl: str, m3_encoder, flag_model_factory, flag_batch_size: int):
    if impl == "milvus-embed":
        return lambda texts: m3_encoder.encode(texts)
    flag = flag_model_factory()
    # batch_size = the call's size: one FlagEmbedding batch per call, and a trial pass no bigger than it.
    return lambda texts: flag.encode(texts, batch_size=flag_batch_size or len(texts), max_length=8192,
                                     return_dense=True, return_sparse=True, return_colbert_vecs=True)


@pytest.fixture
def flag_model_factory(request):
    """Only the FlagEmbedding runs build it, so `--no-baseline` still runs our side."""
    return lambda: request.getfixturevalue("flag_model")


@pytest.mark.parametrize("impl", IMPLS)
def test_passages(benchmark, impl, m3_encoder, flag_model_factory, flag_batch_size, passages, bench_full,
                  bench_record):
    fn = _encode_fn(impl, m3_encoder, flag_model_factory, flag_batch_size)
    tokens = int(sum(m3_encoder.count_tokens(passages)))
    benchmark.group = "passages"
    benchmark.extra_info.update(tokens=tokens, texts=len(passages))
    result = benchmark.pedantic(fn, args=(passages,), rounds=3 if bench_full else 5, warmup_rounds=1)
    assert result is not None
    mean = benchmark.stats.stats.mean
    bench_record("passages", impl, tokens_per_s=tokens / mean, texts_per_s=len(passages) / mean,
           mean_s=mean, tokens=tokens)


@pytest.mark.parametrize("impl", IMPLS)
def test_single_query(benchmark, impl, m3_encoder, flag_model_factory, flag_batch_size, queries, bench_full,
                      bench_record):
    fn = _encode_fn(impl, m3_encoder, flag_model_factory, flag_batch_size)
    cycle = itertools.cycle(queries)
    benchmark.group = "query"
    result = benchmark.pedantic(lambda: fn([next(cycle)]), rounds=20 if bench_full else 100, warmup_rounds=2)
    assert result is not None
    data = np.asarray(benchmark.stats.stats.data) * 1000
    bench_record("query", impl, p50_ms=float(np.percentile(data, 50)), p99_ms=float(np.percentile(data, 99)))
