"""Shared pieces of the service-level benchmark suites (search, throughput, ingestion, storage).

- :class:`Sidecar` / :func:`start_sidecar`: ``milvus-embed serve`` as a subprocess on loopback, or a handle
  on a running deployment (``--sidecar-address``);
- :func:`ensure_search_data`: a synthetic corpus encoded once and written twice — into the sidecar's
  collection (every representation, through the library's ``DocumentStore``) and into the collection a user
  writes today (dense + sparse, ``MilvusClient``) — two Milvus Lite files, because a Lite file opens in one
  process only; plus the exact BGE-M3 ``compute_score`` top-k of every query (the fidelity reference).
  Cached under ``.cache/bench/`` and reused while the inputs match;
- the baseline: FlagEmbedding encode (as pymilvus-model's ``BGEM3EmbeddingFunction`` calls it) and
  ``MilvusClient.hybrid_search`` with ``RRFRanker`` / ``WeightedRanker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("MEE_TEST_CACHE", REPO_ROOT / ".cache"))
DATA_VERSION = 2
"""Bump when the cached search data's layout or contents change (the encodings cache stays valid)."""
BASELINE_COLLECTION = "baseline"
SIDECAR_COLLECTION = "documents"
M3_WEIGHTS = (0.4, 0.2, 0.4)
"""dense, sparse, colbert: BGE-M3's usual ``compute_score`` weights (also the sidecar's m3 default)."""


# ------------------------------------------------------------------------------------------ small helpers


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / mean of per-call durations given in seconds, in milliseconds."""
    data = np.asarray(seconds, dtype=np.float64) * 1000.0
    if data.size == 0:
        return {}
    return {"p50_ms": float(np.percentile(data, 50)), "p99_ms": float(np.percentile(data, 99)),
            "mean_ms": float(data.mean())}


def overlap_at_k(a: Sequence[str], b: Sequence[str], k: int) -> float:
    """Share of the first ``k`` ids of ``b`` also among the first ``k`` of ``a`` (1.0 when both are empty)."""
    a_k, b_k = list(a)[:k], list(b)[:k]
    if not b_k:
        return 1.0 if not a_k else 0.0
    return len(set(a_k) & set(b_k)) / len(b_k)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sized_option(config: Any, name: str, default: Any, quick_default: Any) -> Any:
    """pytest option ``name`` when given, else ``quick_default`` under --quick, else ``default``."""
    value = config.getoption(name)
    if value is not None:
        return value
    return quick_default if config.getoption("--quick") else default


T = TypeVar("T")


def per_backend(load: Callable[[str], T], device: str) -> Callable[[str], T]:
    """``get(backend)``: ``load(backend)``, loaded on first use and kept; an ONNX backend (anything but torch)
    skips the test without onnxruntime or off the CPU."""
    import pytest

    cache: dict[str, T] = {}

    def get(name: str) -> T:
        if name not in cache:
            if name != "torch":
                pytest.importorskip("onnxruntime")
                if device != "cpu":
                    pytest.skip("the onnx backends run on the CPU")
            cache[name] = load(name)
        return cache[name]

    return get


async def drive_clients(conns: Sequence[Any], call: Callable[[Any, str], Awaitable[Any]], queries: Sequence[str],
                        duration: float) -> tuple[int, list[float], int, float]:
    """Closed-loop load: one client per connection, each awaiting ``call(conn, query)`` back to back for
    ``duration`` seconds after one warm-up call per connection (connection set-up is not throughput); closes
    the connections. Returns (calls, latencies in seconds, errors, seconds from the start to the last answer)."""
    clients = len(conns)
    latencies: list[float] = []
    errors = 0
    stop = 0.0

    async def worker(i: int, c: Any) -> None:
        nonlocal errors
        n = i
        while time.perf_counter() < stop:
            q = queries[n % len(queries)]
            n += clients
            t = time.perf_counter()
            try:
                await call(c, q)
            except Exception:  # counted; the suites fail a run with errors
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    try:
        for i, c in enumerate(conns):
            await call(c, queries[i % len(queries)])
        started = time.perf_counter()
        stop = started + duration
        await asyncio.gather(*(worker(i, c) for i, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
    finally:
        for c in conns:
            await (c.aclose() if hasattr(c, "aclose") else c.close())
    return len(latencies), latencies, errors, elapsed


def load_1m() -> float:
    try:
        return float(os.getloadavg()[0])
    except OSError:  # pragma: no cover - not on every platform
        return float("nan")


# ------------------------------------------------------------------------------------------ the sidecar


@dataclass
class Sidecar:
    """A sidecar to benchmark: started here (``proc`` set) or a live deployment."""

    address: str
    api_key: str | None = None
    tls: Any = None
    collection: str = ""
    metrics_url: str = ""
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    live: bool = False

    def client(self, **kw: Any):
        from milvus_embed_ext.client import SidecarClient

        return SidecarClient(self.address, api_key=self.api_key, tls=self.tls, **kw)

    def async_client(self, **kw: Any):
        from milvus_embed_ext.client import AsyncSidecarClient

        return AsyncSidecarClient(self.address, api_key=self.api_key, tls=self.tls, **kw)

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]

    def metric_sum_count(self, name: str) -> tuple[float, float] | None:
        """``<name>_sum`` and ``<name>_count`` of a Prometheus histogram (summed over labels), or None."""
        if not self.metrics_url:
            return None
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:  # noqa: S310 - loopback URL we built
                text = resp.read().decode("utf-8", errors="replace")
        except OSError:
            return None
        total = {"_sum": 0.0, "_count": 0.0}
        for line in text.splitlines():
            for suffix in total:
                head = name + suffix
                if line.startswith(head) and line[len(head):len(head) + 1] in (" ", "{"):
                    total[suffix] += float(line.rsplit(" ", 1)[1])
        return total["_sum"], total["_count"]


def live_sidecar(address: str, collection: str, tls: bool, ca: str | None) -> Sidecar:
    """A running deployment. The API key comes from ``MEE_BENCH_API_KEY``, else the first of ``MEE_API_KEYS``
    (as the CLI does); it is never taken from a flag, so it stays out of shell history and saved runs."""
    key = os.environ.get("MEE_BENCH_API_KEY") or ""
    if not key:
        keys = [k.strip() for k in os.environ.get("MEE_API_KEYS", "").split(",") if k.strip()]
        key = keys[0] if keys else ""
    tls_cfg: Any = None
    if tls or ca:
        from milvus_embed_ext.client import TLSConfig

        tls_cfg = TLSConfig(ca=ca)
    return Sidecar(address=address, api_key=key or None, tls=tls_cfg, collection=collection, live=True)


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (``--sidecar-env``) as a dict; says what is wrong with a malformed pair."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--sidecar-env expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    return out


def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark process dies, so a killed run leaves no sidecar behind."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def start_sidecar(model_dir: Path, db_path: Path, workdir: Path, *, device: str = "cpu",
                  extra_env: dict[str, str] | None = None, start_timeout_s: float = 300.0) -> Iterator[Sidecar]:
    """``milvus-embed serve`` on a loopback port, over ``db_path`` (Milvus Lite); stopped with SIGTERM on exit.

    Serve applies the built-in migrations to a brand-new database itself. The API key is random per run,
    so the auth path is on, as in a deployment.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, db_path = Path(model_dir).resolve(), Path(db_path).resolve()  # serve runs in workdir
    port, mport = free_port(), free_port()
    key = os.urandom(12).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEE_")}
    env.update({
        "MEE_MODEL": str(model_dir), "MEE_DEVICE": device, "MEE_DTYPE": "auto",  # the default: bf16 on CPUs with native bf16
        "MEE_MILVUS_URI": str(db_path), "MEE_LISTEN": f"127.0.0.1:{port}",
        "MEE_METRICS_LISTEN": f"127.0.0.1:{mport}", "MEE_API_KEYS": key, "MEE_ALLOW_DEMO_MODEL": "false",
        "MEE_LOG_LEVEL": "WARNING", "MEE_SHUTDOWN_GRACE_S": "5",
        "MEE_HTTP_LISTEN": "",  # off unless a suite asks for it (extra_env): several sidecars run side by side
    })
    env.update(extra_env or {})
    exe = Path(sys.executable).with_name("milvus-embed")
    cmd = [str(exe), "serve"] if exe.exists() else [sys.executable, "-m", "milvus_embed_ext.cli", "serve"]
    log_path = workdir / "sidecar.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    sidecar = Sidecar(address=f"127.0.0.1:{port}", api_key=key, collection="",
                      metrics_url=f"http://127.0.0.1:{mport}/metrics", proc=proc, log_path=log_path)
    try:
        with grpc.insecure_channel(sidecar.address) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            deadline = time.monotonic() + start_timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"sidecar exited with {proc.returncode} during start-up:\n{sidecar.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sidecar not SERVING after {start_timeout_s:.0f}s:\n{sidecar.log_tail()}")
                with contextlib.suppress(grpc.RpcError):
                    req = health_pb2.HealthCheckRequest()
                    if stub.Check(req, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                        break
                time.sleep(0.25)
        yield sidecar
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ------------------------------------------------------------------------------------------ the baseline


def baseline_create(client: Any, name: str, dim: int) -> None:
    """The collection of the pymilvus hybrid-search tutorial: text, dense (AUTOINDEX, IP), sparse (inverted, IP)."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("text", DataType.VARCHAR, max_length=65535)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    index = client.prepare_index_params()
    index.add_index(field_name="dense", index_type="AUTOINDEX", metric_type="IP")
    index.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index)


def flag_encode(flag_model: Any, texts: Sequence[str], batch_size: int = 16) -> tuple[np.ndarray, list[dict[int, float]]]:
    """Dense + sparse as pymilvus-model's ``BGEM3EmbeddingFunction`` gets them (no ColBERT, max_length 8192)."""
    out = flag_model.encode(list(texts), batch_size=batch_size, max_length=8192, return_dense=True,
                            return_sparse=True, return_colbert_vecs=False)
    dense = np.asarray(out["dense_vecs"], dtype=np.float32).reshape(len(texts), -1)
    sparse = [{int(k): float(v) for k, v in w.items()} for w in out["lexical_weights"]]
    return dense, sparse


def baseline_rows(ids: Sequence[str], texts: Sequence[str], metadata: Sequence[dict | None], dense: np.ndarray,
                  sparse: Sequence[dict[int, float]]) -> list[dict]:
    return [{"id": i, "text": t, "metadata": m or {}, "dense": d.tolist(), "sparse": s}
            for i, t, m, d, s in zip(ids, texts, metadata, dense, sparse, strict=True)]


def baseline_search(client: Any, collection: str, dense: np.ndarray, sparse: dict[int, float], *, fusion: str,
                    top_k: int, depth: int, weights: tuple[float, float] = M3_WEIGHTS[:2]) -> list[str]:
    """``MilvusClient.hybrid_search`` over dense + sparse with ``RRFRanker(60)`` or ``WeightedRanker``."""
    from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

    reqs = [AnnSearchRequest(data=[dense.tolist()], anns_field="dense", param={"metric_type": "IP"}, limit=depth)]
    ranker_weights = [weights[0]]
    if sparse:  # an all-zero query has no lexical part; Milvus rejects an empty sparse vector
        reqs.append(AnnSearchRequest(data=[sparse], anns_field="sparse", param={"metric_type": "IP"}, limit=depth))
        ranker_weights.append(weights[1])
    ranker = RRFRanker(60) if fusion == "rrf" else WeightedRanker(*ranker_weights)
    res = client.hybrid_search(collection, reqs, ranker=ranker, limit=top_k, output_fields=["text"])
    return [str(hit["id"]) for hit in res[0]]


# ------------------------------------------------------------------------------------------ search data


@dataclass
class SearchData:
    """A cached corpus in two Lite files, its queries, and the exact m3 top-k of each query."""

    root: Path
    n_docs: int
    hidden: int
    queries: list[str]
    truth: list[list[str]]
    k: int
    encode_s: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sidecar_db(self) -> Path:
        return self.root / "sidecar.db"

    @property
    def baseline_db(self) -> Path:
        return self.root / "baseline.db"

    @property
    def sidecar_env(self) -> dict[str, str]:
        """What a sidecar serving a copy of this data needs: the revisions that created it, when not the built-ins."""
        folder = self.root / "migrations"
        return {"MEE_MIGRATIONS_DIR": str(folder)} if folder.is_dir() else {}

    @property
    def group_suffix(self) -> str:
        """``-<codec>`` for data in another codec than the built-ins' (its own benchmark group), else empty."""
        codec = str(self.meta.get("colbert_codec") or "")
        return f"-{codec}" if codec and codec != builtin_colbert_codec() else ""

    def copy_to(self, dest: Path) -> tuple[Path, Path]:
        """Working copies of both files (searches never write, but a killed run must not spoil the cache)."""
        dest.mkdir(parents=True, exist_ok=True)
        return (Path(shutil.copy2(self.sidecar_db, dest / "sidecar.db")),
                Path(shutil.copy2(self.baseline_db, dest / "baseline.db")))


def exact_m3_scores(q_enc: Any, d_enc: Any, weights: Sequence[float] = M3_WEIGHTS) -> np.ndarray:
    """float64 ``[n_queries, n_docs]`` BGE-M3 ``compute_score`` (dense, lexical, ColBERT MaxSim), vectorised.

    Same definition as :func:`milvus_embed_ext.search.evaluation.brute_force_scores` (checked against it on
    the first chunk of every build).
    """
    dense = q_enc.dense.astype(np.float64) @ d_enc.dense.astype(np.float64).T
    sparse = np.zeros_like(dense)
    for qi, q in enumerate(q_enc.sparse):
        if q:
            sparse[qi] = [sum(w * p.get(t, 0.0) for t, w in q.items()) for p in d_enc.sparse]
    lengths = np.array([m.shape[0] for m in d_enc.colbert])
    all_rows = np.concatenate(d_enc.colbert).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    colbert = np.empty_like(dense)
    for qi, q in enumerate(q_enc.colbert):
        sims = q.astype(np.float32) @ all_rows.T  # [q_tokens, all doc tokens]
        colbert[qi] = np.maximum.reduceat(sims, starts, axis=1).mean(axis=0)
    w = np.asarray(weights, dtype=np.float64)
    return (w[0] * dense + w[1] * sparse + w[2] * colbert) / w.sum()


def _top_ids(scores: np.ndarray, ids: Sequence[str], k: int) -> list[str]:
    from milvus_embed_ext.search import fusion

    head = np.argsort(-scores, kind="stable")[: max(4 * k, k + 16)]
    return [i for i, _ in fusion.order({ids[j]: float(scores[j]) for j in head})[:k]]


def _save_encoding(path: Path, enc: Any) -> None:
    """One chunk of corpus encodings: dense and truncated fp32, sparse as flat arrays, ColBERT as fp16."""
    lengths = np.asarray([len(s) for s in enc.sparse], dtype=np.int64)
    arrays = {
        "dense": enc.dense, "token_counts": enc.token_counts, "sparse_lengths": lengths,
        "sparse_ids": np.asarray([t for s in enc.sparse for t in s], dtype=np.int64),
        "sparse_weights": np.asarray([w for s in enc.sparse for w in s.values()], dtype=np.float32),
        "colbert_lengths": np.asarray([m.shape[0] for m in enc.colbert], dtype=np.int64),
        "colbert": np.concatenate(enc.colbert).astype(np.float16),
        **{f"truncated_{d}": v for d, v in enc.truncated.items()},
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_encoding(path: Path) -> Any:
    from milvus_embed_ext.encoder import M3Output

    z = np.load(path)
    bounds = np.concatenate([[0], np.cumsum(z["sparse_lengths"])])
    ids, weights = z["sparse_ids"].tolist(), z["sparse_weights"].tolist()
    sparse = [dict(zip(ids[a:b], weights[a:b], strict=True)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    rows = z["colbert"].astype(np.float32)
    rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)  # unit again after fp16 rounding
    cb_bounds = np.concatenate([[0], np.cumsum(z["colbert_lengths"])])
    colbert = [rows[a:b] for a, b in zip(cb_bounds[:-1], cb_bounds[1:], strict=True)]
    truncated = {int(k.split("_", 1)[1]): z[k] for k in z.files if k.startswith("truncated_")}
    return M3Output(dense=z["dense"], sparse=sparse, colbert=colbert, truncated=truncated,
                    token_counts=z["token_counts"])


def encoded_chunks(encoder: Any, docs: Sequence[Any], dims: Sequence[int], *, seed: int, chunk: int,
                   log: Any = print) -> Iterator[tuple[int, Any, float]]:
    """``(start, encoding, encode seconds)`` per chunk of ``docs``, encoded once and cached as fp16 ColBERT.

    Rebuilding the Lite files (a new layout, codec or DATA_VERSION) then costs no model time: at BGE-M3's
    widths encoding is most of a build. Every chunk is returned as cached (ColBERT rows rounded to fp16 and
    renormalised), so the exact reference scores and the stored vectors come from the same numbers.
    """
    root = CACHE_DIR / "bench" / f"enc-{encoder.fingerprint[:12]}-{encoder.dtype}-{len(docs)}-s{seed}-c{chunk}"
    root.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(docs), chunk):
        path = root / f"chunk-{start:07d}-{'_'.join(map(str, dims)) or 'none'}.npz"
        seconds = 0.0
        if not path.exists():
            t = time.perf_counter()
            enc = encoder.encode([d.text for d in docs[start:start + chunk]], truncate_dims=tuple(dims))
            seconds = time.perf_counter() - t
            _save_encoding(path, enc)
        yield start, _load_encoding(path), seconds


_BUILTIN_CODEC = re.compile(r'"colbert_codec":\s*"(\w+)"')


@functools.cache
def builtin_colbert_codec() -> str:
    """The ColBERT codec the built-in 0001 states (what `make run` creates)."""
    from milvus_embed_ext.migrations.script import builtin_migrations_dir

    found = _BUILTIN_CODEC.search((builtin_migrations_dir() / "0001_initial_layout.py").read_text(encoding="utf-8"))
    if found is None:
        raise RuntimeError("the built-in 0001 no longer states its colbert_codec as expected; update benchlib")
    return found.group(1)


def _migrations_stating(codec: str, folder: Path) -> Path | None:
    """None for the built-ins' own codec; else a copy of the built-in revisions whose 0001 states ``codec`` (its
    REPLACES_CHECKSUMS still name the earlier texts, so data built by one of them is served without drift)."""
    from milvus_embed_ext.migrations.script import builtin_migrations_dir

    if codec == builtin_colbert_codec():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for src in builtin_migrations_dir().glob("*.py"):
        text = src.read_text(encoding="utf-8")
        if src.name.startswith("0001_"):
            text = _BUILTIN_CODEC.sub(f'"colbert_codec": "{codec}"', text, count=1)
        (folder / src.name).write_text(text, encoding="utf-8")
    return folder


def ensure_search_data(encoder: Any, model_dir: Path, n_docs: int, n_queries: int, *, k: int = 10, seed: int = 7,
                       chunk: int = 512, log: Any = print, corpus_encoder: Any = None,
                       codec: str | None = None) -> SearchData:
    """Build (once) and return the cached search data for this checkpoint and size.

    ``corpus_encoder`` (default ``encoder``) encodes the documents, e.g. the same checkpoint in bf16 where the
    CPU runs it much faster: the corpus is data, and the exact reference scores come from what is stored.
    Queries are encoded with ``encoder``, as each implementation encodes them at search time.
    """
    corpus_encoder = corpus_encoder or encoder
    from milvus_embed_ext import migrations
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.search.evaluation import brute_force_scores
    from milvus_embed_ext.search.synthetic import generate_corpus, generate_queries
    from milvus_embed_ext.store import Document, DocumentStore, MilvusStore

    codec = codec or builtin_colbert_codec()
    root = (CACHE_DIR / "bench" / f"search-v{DATA_VERSION}-{encoder.fingerprint[:12]}-{n_docs}-{n_queries}-s{seed}-"
                                  f"{codec}-{corpus_encoder.dtype}")
    migrations_dir = _migrations_stating(codec, root / "migrations")
    manifest = root / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text(encoding="utf-8"))
        return SearchData(root, m["n_docs"], m["hidden"], m["queries"], m["truth"], m["k"], m["encode_s"], m)

    log(f"building search data: {n_docs} docs, {n_queries} queries -> {root} (once; cached)")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    docs = generate_corpus(n_docs, seed=seed, min_words=8, max_words=60)
    queries = generate_queries(docs, n_queries, seed=seed + 1)
    ids = [d.id for d in docs]
    q_enc = encoder.encode(queries)
    settings = load_settings(env={}, overrides={"model": str(model_dir), "milvus_uri": str(root / "sidecar.db"),
                                                "collection": SIDECAR_COLLECTION,
                                                "migrations_dir": str(migrations_dir or "")})
    store = MilvusStore.connect(settings)
    from pymilvus import MilvusClient

    base = MilvusClient(str(root / "baseline.db"))
    scores = np.empty((len(queries), n_docs), dtype=np.float64)
    encode_s = 0.0
    try:
        migrations.upgrade(settings, "head", store=store)
        ds = DocumentStore.open(store, SIDECAR_COLLECTION)
        hidden = int(ds.layout.dense_dim)
        baseline_create(base, BASELINE_COLLECTION, hidden)
        dims = tuple(t.dim for t in ds.layout.truncated if t.projection == "prefix")
        for start, enc, seconds in encoded_chunks(corpus_encoder, docs, dims, seed=seed, chunk=chunk, log=log):
            part = docs[start:start + chunk]
            encode_s += seconds
            ds.write([Document(d.id, d.text, d.metadata) for d in part], enc)
            base.insert(BASELINE_COLLECTION, baseline_rows([d.id for d in part], [d.text for d in part],
                                                           [d.metadata for d in part], enc.dense, enc.sparse))
            scores[:, start:start + len(part)] = exact_m3_scores(q_enc, enc)
            if start == 0:  # the vectorised exact scores must equal the evaluation helpers'
                ref = brute_force_scores(q_enc.row(0), enc)
                w = np.asarray(M3_WEIGHTS)
                fused = sum(w[i] * ref[r] for i, r in enumerate(("dense", "sparse", "colbert"))) / w.sum()
                if not np.allclose(fused, scores[0, :len(part)], atol=1e-4):
                    raise AssertionError("exact_m3_scores disagrees with search.evaluation.brute_force_scores")
            log(f"  {min(start + chunk, n_docs)}/{n_docs} docs" + (f" (encoded in {seconds:.0f}s)" if seconds else ""))
        # Milvus Lite keeps fresh rows in growing segments; flushing seals them as a long-running server would
        for name in (SIDECAR_COLLECTION, ds.layout.companion_name):
            store.client.flush(name)
        base.flush(BASELINE_COLLECTION)
    finally:
        store.close()
        base.close()
    truth = [_top_ids(scores[qi], ids, k) for qi in range(len(queries))]
    meta = {"n_docs": n_docs, "hidden": hidden, "queries": queries, "truth": truth, "k": k, "encode_s": encode_s,
            "seed": seed, "model_fingerprint": encoder.fingerprint, "truncated": list(dims),
            "corpus_dtype": corpus_encoder.dtype,
            "colbert_codec": ds.layout.colbert_codec}
    manifest.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")  # written last: the "done" mark
    return SearchData(root, n_docs, hidden, queries, truth, k, encode_s, meta)


# ------------------------------------------------------------------------------------------ storage accounting


def field_bytes(dtype_name: str, value: Any, dim: int | None = None) -> int:
    """Raw bytes of one stored field value as Milvus keeps it in its binlogs (before compression)."""
    name = dtype_name.upper()
    if value is None:
        return 0
    if name in ("INT64", "DOUBLE"):
        return 8
    if name in ("INT32", "FLOAT"):
        return 4
    if name == "INT16":
        return 2
    if name in ("INT8", "BOOL"):
        return 1
    if name == "VARCHAR":
        return len(str(value).encode("utf-8"))
    if name == "JSON":
        raw = value if isinstance(value, (str, bytes)) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if name == "FLOAT_VECTOR":
        return 4 * int(dim or len(value))
    if name in ("FLOAT16_VECTOR", "BFLOAT16_VECTOR"):
        return 2 * int(dim or len(value))
    if name == "INT8_VECTOR":
        return int(dim or len(value))
    if name == "BINARY_VECTOR":
        return int(dim or 8 * len(value)) // 8
    if name == "SPARSE_FLOAT_VECTOR":
        return 8 * len(value)  # uint32 index + float32 value per non-zero
    if name == "ARRAY":
        return sum(field_bytes("VARCHAR" if isinstance(v, str) else "INT64", v) for v in value)
    raise ValueError(f"no size rule for Milvus field type {dtype_name}")


def collection_bytes(client: Any, name: str, page: int = 50) -> tuple[int, dict[str, int]]:
    """Rows and raw bytes per field of a whole collection, read back from Milvus.

    Read with a query iterator in small pages (it pages by primary key): a companion row holds up to 64 KiB of
    ColBERT text, and Milvus refuses a query whose result, offset included, passes its size limit ("query results
    exceed the limit size": offset paging through fp32 rows at 1024-d did)."""
    desc = client.describe_collection(name)
    types = {f["name"]: (getattr(f["type"], "name", str(f["type"])), (f.get("params") or {}).get("dim"))
             for f in desc["fields"]}
    totals = dict.fromkeys(types, 0)
    rows = 0
    pages = client.query_iterator(name, batch_size=page, filter="", output_fields=list(types))
    try:
        while batch := pages.next():
            for row in batch:
                for fname, (tname, dim) in types.items():
                    totals[fname] += field_bytes(tname, row.get(fname), int(dim) if dim else None)
            rows += len(batch)
    finally:
        pages.close()
    return rows, totals
