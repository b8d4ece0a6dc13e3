"""Encoder threads under a busy machine: one-query Embed latency with the default and with one thread per core.

Embedded Milvus Lite runs on the sidecar's own machine, so the encoder rarely has every core to itself. torch's
threads meet at the end of every operator; when another process holds one core, the thread waiting for it
stalls the whole forward pass. ``encoder_threads=0`` (auto) therefore leaves one core to Lite when it is
embedded. This suite starts the sidecar once per setting, keeps every core busy with plain spinning processes
(bounded in time, one per core, like Lite answering searches), and times one-query Embed calls; then the same
without the load.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

import benchlib
import pytest

SETTINGS = {"auto": {}, "per-core": {"MEE_ENCODER_THREADS": str(os.cpu_count() or 1)}}
SPIN = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass\n"


def _busy_cores(seconds: float) -> list[subprocess.Popen]:
    """One spinning process per core, each ending by itself after ``seconds``."""
    return [subprocess.Popen([sys.executable, "-c", SPIN, str(seconds)]) for _ in range(os.cpu_count() or 1)]


@pytest.fixture(scope="module", params=list(SETTINGS), ids=list(SETTINGS))
def threads_sidecar(request, bench_model_dir, bench_device, tmp_path_factory):
    if request.config.getoption("--sidecar-address"):
        pytest.skip("--sidecar-address: this suite sets the sidecar's encoder threads itself")
    work = tmp_path_factory.mktemp(f"bench-threads-{request.param}")
    env = {**benchlib.parse_env(request.config.getoption("--sidecar-env")), **SETTINGS[request.param]}
    with benchlib.start_sidecar(bench_model_dir, work / "threads.db", work, device=bench_device, extra_env=env) as s:
        yield request.param, s


@pytest.mark.parametrize("load", ["busy", "idle"])
def test_one_query_embed(benchmark, request, threads_sidecar, load, bench_record):
    setting, sidecar = threads_sidecar
    from milvus_embed_ext.search.synthetic import generate_corpus, generate_queries

    queries = generate_queries(generate_corpus(200, seed=31), 40, seed=32)
    rounds = 20 if request.config.getoption("--quick") else 60
    client = sidecar.client(timeout=60.0)
    cycle = itertools.cycle(queries)
    spinners = _busy_cores(120.0) if load == "busy" else []
    try:
        time.sleep(0.5 if spinners else 0.0)
        benchmark.group = f"threads-{load}"
        benchmark.pedantic(lambda: client.embed([next(cycle)]), rounds=rounds, warmup_rounds=3)
    finally:
        for p in spinners:
            p.kill()
            p.wait(10)
        client.close()
    info = benchmark.extra_info
    info.update(setting=setting, load=load, env=SETTINGS[setting], cores=os.cpu_count())
    bench_record(f"threads-{load}", setting, **benchlib.percentiles_ms(benchmark.stats.stats.data))
