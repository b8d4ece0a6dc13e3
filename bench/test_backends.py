"""Encoder backends (torch, onnx, onnx-int8) beside FlagEmbedding, same checkpoint, same process.

    pytest bench/test_backends.py                  # tiny checkpoint: checks the suite works
    pytest bench/test_backends.py --full-model     # BGE-M3 shapes; the first run exports the ONNX models (minutes)

Same workloads as test_encode.py (passages of 50-500 tokens -> tokens/s; one short query -> p50/p99).
bench/measure_backends.py measures the same interleaved, adds fidelity and FLOP share, and writes the
"cpu-backends" section of RESULTS.md.
"""

from __future__ import annotations

import itertools

import benchlib
import numpy as np
import pytest

BACKENDS = ["torch", "onnx", "onnx-int8", "flagembedding"]


@pytest.fixture(scope="module")
def backend_encoders(bench_model_dir, bench_device):
    """One encoder per backend, loaded lazily (an ONNX backend needs onnxruntime and a CPU)."""
    from milvus_embed_ext.encoder import M3Encoder

    return benchlib.per_backend(
        lambda name: M3Encoder.from_pretrained(str(bench_model_dir), device=bench_device, backend=name), bench_device)


@pytest.fixture(scope="module")
def texts(backend_encoders, bench_full):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from measure_backends import make_passages, make_queries

    return make_passages(backend_encoders("torch"), 8 if bench_full else 32, 50, 500), make_queries(32)


def _fn(name: str, backend_encoders, request):
    if name == "flagembedding":
        flag = request.getfixturevalue("flag_model")
        return lambda t: flag.encode(t, max_length=8192, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    enc = backend_encoders(name)
    return lambda t: enc.encode(t)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_passages(benchmark, backend, backend_encoders, texts, bench_full, bench_record, request):
    passages, _ = texts
    fn = _fn(backend, backend_encoders, request)
    tokens = int(sum(backend_encoders("torch").count_tokens(passages)))
    benchmark.group = "backend-passages"
    benchmark.extra_info.update(tokens=tokens, texts=len(passages), backend=backend)
    out = benchmark.pedantic(fn, args=(passages,), rounds=2 if bench_full else 5, warmup_rounds=1)
    assert out is not None
    mean = benchmark.stats.stats.mean
    bench_record("backend-passages", backend, tokens_per_s=tokens / mean, texts_per_s=len(passages) / mean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_query(benchmark, backend, backend_encoders, texts, bench_full, bench_record, request):
    _, queries = texts
    fn = _fn(backend, backend_encoders, request)
    cycle = itertools.cycle(queries)
    benchmark.group = "backend-query"
    benchmark.extra_info.update(backend=backend)
    out = benchmark.pedantic(lambda: fn([next(cycle)]), rounds=10 if bench_full else 50, warmup_rounds=2)
    assert out is not None
    data = np.asarray(benchmark.stats.stats.data) * 1000
    bench_record("backend-query", backend, p50_ms=float(np.percentile(data, 50)), p99_ms=float(np.percentile(data, 99)))
