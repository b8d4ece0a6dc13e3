"""What the HTTP layer costs: one-query latency and throughput with 16 clients over HTTP ``/v1/embeddings`` and
TEI ``/embed`` beside gRPC ``Embed``, on the same ``milvus-embed serve`` process and the same dense-only work.

- ``grpc``: ``SidecarClient.embed([q], sparse=False)`` (dense only, float32 packed);
- ``tei-embed``: ``POST /embed {"inputs": [q]}`` (JSON floats), httpx with keep-alive;
- ``openai``: ``POST /v1/embeddings {"model", "input": [q], "encoding_format": "base64"}`` (what the openai
  client sends by default), httpx with keep-alive.

One-query p50/p99: calls one after another on one connection. Throughput: 16 clients, each on its own
connection, back to back for ``--duration`` seconds (default 10, ``--quick`` 2). Goals (issue 17): HTTP p50
<= 1.2x gRPC, HTTP throughput >= 0.8x gRPC; the ratios are in ``extra_info`` and the summary. Figures mean
something only on a quiet machine: ``pytest bench/test_http.py`` (add ``--full-model`` for BGE-M3's cost).
"""

from __future__ import annotations

import asyncio
import itertools

import benchlib
import numpy as np
import pytest

TRANSPORTS = ["grpc", "tei-embed", "openai"]
CLIENTS = 16
_P50: dict[str, float] = {}
_QPS: dict[str, float] = {}


@pytest.fixture(scope="module")
def queries() -> list[str]:
    from milvus_embed_ext.search.synthetic import generate_corpus, generate_queries

    return generate_queries(generate_corpus(200, seed=7), 50, seed=8)


@pytest.fixture(scope="module")
def sidecar(request, bench_model_dir, bench_device, tmp_path_factory):
    """``milvus-embed serve`` with HTTP on a free loopback port (a fresh Lite file: Embed needs no data)."""
    if request.config.getoption("--sidecar-address"):
        pytest.skip("the HTTP suite starts its own sidecar (it needs the HTTP port too)")
    work = tmp_path_factory.mktemp("bench-http")
    port = benchlib.free_port()
    env = {"MEE_HTTP_LISTEN": f"127.0.0.1:{port}", **benchlib.parse_env(request.config.getoption("--sidecar-env"))}
    with benchlib.start_sidecar(bench_model_dir, work / "data" / "milvus.db", work, device=bench_device,
                                extra_env=env) as sc:
        sc.http = f"http://127.0.0.1:{port}"
        yield sc


def _http_body(transport: str, q: str) -> tuple[str, dict]:
    if transport == "tei-embed":
        return "/embed", {"inputs": [q]}
    return "/v1/embeddings", {"model": "bge-m3", "input": [q], "encoding_format": "base64"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_one_query(benchmark, request, transport, sidecar, queries, bench_full, bench_record):
    import httpx

    cycle = itertools.cycle(queries)
    rounds = 20 if bench_full else (50 if request.config.getoption("--quick") else 200)
    if transport == "grpc":
        client = sidecar.client(timeout=60.0)

        def call() -> None:
            res = client.embed([next(cycle)], sparse=False)
            assert res.dense is not None
    else:
        client = httpx.Client(base_url=sidecar.http, timeout=60.0,
                              headers={"Authorization": f"Bearer {sidecar.api_key}"})

        def call() -> None:
            path, body = _http_body(transport, next(cycle))
            r = client.post(path, json=body)
            assert r.status_code == 200, r.text

    try:
        benchmark.group = "http-one-query"
        benchmark.pedantic(call, rounds=rounds, warmup_rounds=5)
    finally:
        client.close()
    ms = np.asarray(benchmark.stats.stats.data) * 1000.0
    p50, p99 = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    info = benchmark.extra_info
    info.update(transport=transport, p50_ms=p50, p99_ms=p99)
    figures = {"p50_ms": p50, "p99_ms": p99}
    if transport == "grpc":
        _P50["grpc"] = p50
    elif "grpc" in _P50:
        info["p50_vs_grpc"] = figures["p50_vs_grpc"] = p50 / _P50["grpc"]
    bench_record("http-1q", transport, **figures)


async def _drive(sidecar, transport: str, clients: int, duration: float,
                 queries: list[str]) -> tuple[int, list[float], int, float]:
    """``clients`` clients, each on its own connection, back to back for ``duration`` seconds after a warm-up call."""
    import httpx

    if transport == "grpc":
        conns = [sidecar.async_client(timeout=60.0) for _ in range(clients)]

        async def one(c, q: str) -> None:
            await c.embed([q], sparse=False)
    else:
        headers = {"Authorization": f"Bearer {sidecar.api_key}"}
        conns = [httpx.AsyncClient(base_url=sidecar.http, timeout=60.0, headers=headers,
                                   limits=httpx.Limits(max_connections=1)) for _ in range(clients)]

        async def one(c, q: str) -> None:
            path, body = _http_body(transport, q)
            r = await c.post(path, json=body)
            if r.status_code != 200:
                raise RuntimeError(r.text)

    return await benchlib.drive_clients(conns, one, queries, duration)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_throughput_16_clients(benchmark, request, transport, sidecar, queries, bench_record):
    duration = float(benchlib.sized_option(request.config, "--duration", 10.0, 2.0))
    box: dict = {}

    def run() -> None:
        box["n"], box["lat"], box["errors"], box["elapsed"] = asyncio.run(
            _drive(sidecar, transport, CLIENTS, duration, queries))

    benchmark.group = "http-throughput-16"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert box["errors"] == 0, f"{box['errors']} calls failed; sidecar log:\n{sidecar.log_tail()}"
    qps = box["n"] / box["elapsed"]
    figures = {"qps": qps, **benchlib.percentiles_ms(box["lat"])}
    info = benchmark.extra_info
    info.update(transport=transport, clients=CLIENTS, duration_s=duration, calls=box["n"], harness_timing=True,
                **figures)
    if transport == "grpc":
        _QPS["grpc"] = qps
    elif "grpc" in _QPS:
        info["qps_vs_grpc"] = figures["qps_vs_grpc"] = qps / _QPS["grpc"]
    bench_record("http-x16", transport, **figures)
