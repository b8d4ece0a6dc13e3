"""Load on loopback, bounded in count: concurrent HybridSearch and Upsert for a fixed number of requests.

Only OK and RESOURCE_EXHAUSTED (the overload answer) are allowed; every acknowledged upsert is readable afterwards;
the server's RSS (and Milvus Lite's) is sampled from /proc during the run and must stay bounded. Latency
percentiles and RSS are reported (printed, and appended to $MEE_RELIABILITY_REPORT), never asserted.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from milvus_embed_ext.errors import MilvusEmbedError
from tests._sidecar import Server, lite_server_pids, start_sidecar
from tests.reliability.rel_helpers import corpus, record

MIB = 1024 * 1024
RETRIES = 6
_rng = threading.local()


def rng_thread() -> random.Random:
    if not hasattr(_rng, "r"):
        _rng.r = random.Random(threading.get_ident())
    return _rng.r


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples VmRSS of the given processes every ``period`` seconds until stopped."""

    def __init__(self, pids: dict[str, int], period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pids, self.period = pids, period
        self.samples: dict[str, list[int]] = {name: [] for name in pids}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for name, pid in self.pids.items():
                value = rss_bytes(pid)
                if value is not None:
                    self.samples[name].append(value)
            self.halt.wait(self.period)

    def stop(self) -> dict[str, list[int]]:
        self.halt.set()
        self.join(10)
        return self.samples


def run_load(srv: Server, *, requests: int, threads: int, seed: int, prefix: str) -> dict[str, Any]:
    rng = random.Random(seed)
    words = ["river", "mountain", "harbor", "violin", "quantum", "pepper", "lantern", "orbit", "meadow", "cobalt"]
    plan = [("upsert" if rng.random() < 0.3 else "search", i) for i in range(requests)]
    with srv.client(timeout=120) as c:  # something to find
        c.upsert(corpus(prefix, 48), chunk_size=8)
    pids = {"sidecar": srv.pid, **{f"milvus-lite-{i}": p for i, p in enumerate(lite_server_pids(srv.pid))}}
    sampler = RssSampler(pids)
    local = threading.local()
    results: list[tuple[str, str, float]] = []
    acked: list[str] = []
    lock = threading.Lock()

    def one(job: tuple[str, int]) -> None:
        """One request; a RESOURCE_EXHAUSTED answer is retried with exponential backoff (what a client should do),
        at most ``RETRIES`` times. Every attempt's code is counted; latency is that of the final attempt."""
        kind, i = job
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = srv.client(timeout=120)
        docs = [{"id": f"{prefix}-load-{i}-{k}", "text": f"{words[(i + k) % 10]} {words[i % 7]} load {i}",
                 "metadata": {"i": i}} for k in range(4)]
        for attempt in range(RETRIES + 1):
            started = time.perf_counter()
            code = "OK"
            try:
                if kind == "upsert":
                    client.upsert(docs)
                    with lock:
                        acked.extend(d["id"] for d in docs)
                else:
                    client.hybrid_search(f"{words[i % 10]} {words[(i * 3) % 10]}", top_k=5,
                                         filter='metadata["n"] >= 0' if i % 4 == 0 else "")
            except MilvusEmbedError as exc:
                grpc_code = getattr(exc, "grpc_code", None)
                code = grpc_code.name if grpc_code is not None else type(exc).__name__
            with lock:
                results.append((kind, code, time.perf_counter() - started))
            if code != "RESOURCE_EXHAUSTED" or attempt == RETRIES:
                return
            time.sleep(0.02 * 2 ** attempt * (0.5 + rng_thread().random()))

    sampler.start()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, plan))
    wall = time.perf_counter() - t0
    samples = sampler.stop()

    codes: dict[str, int] = {}
    for _, code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    latency = {}
    for kind in ("search", "upsert"):
        ok = np.array([s for k, c, s in results if k == kind and c == "OK"]) * 1000
        if ok.size:
            latency[kind] = {"n": int(ok.size), "p50_ms": round(float(np.percentile(ok, 50)), 1),
                             "p99_ms": round(float(np.percentile(ok, 99)), 1), "max_ms": round(float(ok.max()), 1)}
    rss = {name: {"start_mib": round(v[0] / MIB, 1), "peak_mib": round(max(v) / MIB, 1), "end_mib": round(v[-1] / MIB, 1),
                  "samples": len(v)} for name, v in samples.items() if v}
    with srv.client(timeout=120) as c:  # every acknowledged upsert is readable
        found = {r["id"] for i in range(0, len(acked), 16) for r in c.get(acked[i:i + 16], allow_missing=True)}
    return {"requests": requests, "attempts": len(results), "threads": threads, "wall_s": round(wall, 1), "req_per_s": round(requests / wall, 1),
            "codes": codes, "latency": latency, "rss": rss, "acked_docs": len(acked), "acked_missing": len(set(acked) - found),
            "_samples": samples}


def _check(out: dict[str, Any]) -> None:
    assert set(out["codes"]) <= {"OK", "RESOURCE_EXHAUSTED"}, out["codes"]
    assert out["codes"].get("OK", 0) > 0
    assert out["acked_missing"] == 0
    side = out["_samples"]["sidecar"]
    assert side, "no RSS samples of the server process"
    growth = max(side) - side[0]
    assert growth < 512 * MIB, f"server RSS grew by {growth / MIB:.0f} MiB during {out['requests']} requests"


def test_concurrent_search_and_upsert(sidecar) -> None:
    """Fast: a few hundred mixed requests from 8 threads against the shared sidecar (no overload expected)."""
    out = run_load(sidecar, requests=240, threads=8, seed=1, prefix="lf")
    record("load fast", **{k: v for k, v in out.items() if not k.startswith("_")})
    _check(out)


@pytest.mark.slow
def test_overload_thousands_of_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Slow: 3000 requests from 32 threads at max_concurrent=8: RESOURCE_EXHAUSTED sheds load (clients back off and
    retry); RSS stays flat."""
    srv = start_sidecar(tiny_model_dir, tmp_path / "load", metrics=False, max_concurrent=8, max_queue=64,
                        shutdown_grace_s=5)
    try:
        out = run_load(srv, requests=3000, threads=32, seed=2, prefix="ls")
        log = srv.log()
    finally:
        srv.stop(signal.SIGTERM, timeout=30)
    record("load overload", **{k: v for k, v in out.items() if not k.startswith("_")})
    _check(out)
    assert out["codes"].get("RESOURCE_EXHAUSTED", 0) > 0, "32 callers against max_concurrent=8 must be shed"
    side = out["_samples"]["sidecar"]
    quarter = max(1, len(side) // 4)
    second, last = np.mean(side[quarter:2 * quarter]), np.mean(side[-quarter:])
    assert last - second < 0.25 * second + 64 * MIB, f"RSS kept growing: {second / MIB:.0f} -> {last / MIB:.0f} MiB"
    assert '"code": "INTERNAL"' not in log
