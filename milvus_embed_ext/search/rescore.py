"""Exact stage-2 scores of one query against many candidates, vectorised (this is the search hot path).

Each function scores a whole candidate set in a few numpy calls and agrees with the per-pair helpers in
:mod:`milvus_embed_ext.encoder.scoring` (FlagEmbedding ``compute_score`` semantics) up to float rounding.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidArgument

_SIM_BUDGET = 1 << 22  # float32 cells of one query-by-candidate-tokens similarity block (16 MiB)
_PER_DOC_MIN_ELEMENTS = 1 << 15  # a document matrix this large is scored on its own (see colbert_scores)

# Re-scoring products are small (a query's dozen vectors against a few thousand candidate tokens). A
# multi-threaded BLAS spends longer waking and syncing its threads than computing them, and on a busy host
# (encoder threads, concurrent searches) far longer: measured on the 2-core dev box under load, one
# 12 x 64 by 64 x 9500 product took 21-75 ms with 2 OpenBLAS threads and 2-3 ms with one. So the product
# runs with BLAS limited to one thread; concurrent searches still run in parallel on the thread pool.
# The limit is process-wide (BLAS has no per-thread setting), so it is reference-counted: set by the first
# search that enters, restored by the last that leaves. Torch's encoder uses OpenMP, which this leaves alone.
_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: Any = None
_blas_controller: Any = None


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Run the enclosed numpy products with one BLAS thread (no-op without threadpoolctl)."""
    global _blas_users, _blas_limiter, _blas_controller
    with _blas_lock:
        if _blas_users == 0:
            try:
                if _blas_controller is None:
                    from threadpoolctl import ThreadpoolController

                    _blas_controller = ThreadpoolController()
                _blas_limiter = _blas_controller.limit(limits=1, user_api="blas")
            except Exception:  # noqa: BLE001 - threadpoolctl absent or unable: run unlimited
                _blas_limiter = None
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def dense_scores(query: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Inner products ``docs @ query``: float32 ``[n]`` for ``query [d]`` and ``docs [n, d]``."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    d = np.asarray(docs, dtype=np.float32)
    if d.size == 0:
        return np.zeros(0, dtype=np.float32)
    if d.ndim != 2 or d.shape[1] != q.shape[0]:
        raise InvalidArgument(f"dense re-score: query is {q.shape[0]}-d, stored vectors are {d.shape}")
    return d @ q


def lexical_scores(query: Mapping[int, float], docs: Sequence[Mapping[int, float]]) -> np.ndarray:
    """Sum over shared token ids of ``w_q * w_d`` for every document: float64 ``[n]``.

    All documents' (token, weight) pairs are flattened once; query weights are looked up with one
    ``searchsorted`` and summed per document with ``bincount``.
    """
    n = len(docs)
    if n == 0 or not query:
        return np.zeros(n, dtype=np.float64)
    q_ids = np.fromiter(query.keys(), dtype=np.int64, count=len(query))
    q_w = np.fromiter(query.values(), dtype=np.float64, count=len(query))
    sort = np.argsort(q_ids)
    q_ids, q_w = q_ids[sort], q_w[sort]
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(n, dtype=np.float64)
    tok = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=total)
    w = np.fromiter((v for d in docs for v in d.values()), dtype=np.float64, count=total)
    owner = np.repeat(np.arange(n), lengths)
    pos = np.searchsorted(q_ids, tok)
    pos_clipped = np.minimum(pos, q_ids.size - 1)
    hit = q_ids[pos_clipped] == tok
    contrib = np.where(hit, w * q_w[pos_clipped], 0.0)
    return np.bincount(owner, weights=contrib, minlength=n)


def _token_matrix(doc: np.ndarray, dim: int) -> np.ndarray:
    """One candidate's ColBERT vectors as float32 ``[tokens, dim]``, or InvalidArgument naming the mismatch."""
    d = np.asarray(doc, dtype=np.float32)
    if d.ndim != 2 or d.shape[1] != dim:
        raise InvalidArgument(f"colbert re-score: query is {dim}-d, stored token vectors are {d.shape}")
    return d


def colbert_scores(query: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """MaxSim for every document: mean over query rows of the max dot product over that document's rows.

    One matmul against all candidates' token vectors stacked, then a segmented max (``maximum.reduceat``).
    A document without token vectors scores 0, like ``colbert_score``. Returns float64 ``[n]``.
    """
    n = len(docs)
    q = np.asarray(query, dtype=np.float32)
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    if q.ndim != 2:
        raise InvalidArgument("colbert re-score: query vectors must be 2-d [tokens, dim]")
    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=n)
    out = np.zeros(n, dtype=np.float64)
    nonempty = np.flatnonzero(lengths > 0)
    if q.shape[0] == 0 or nonempty.size == 0:
        return out
    dim = q.shape[1]
    if float(lengths[nonempty].mean()) * dim >= _PER_DOC_MIN_ELEMENTS:
        # Large matrices (BGE-M3's 1024-d rows): one product per document costs no more than one over all of
        # them, and skips copying every matrix into a stack (measured: 3.2 vs 5.1 ms for 28 x 120 x 1024).
        with single_thread_blas():
            for i in nonempty.tolist():
                out[i] = (q @ _token_matrix(docs[i], dim).T).max(axis=1).mean(dtype=np.float64)
        return out
    # Small matrices: stack candidates in chunks (the similarity matrix stays bounded for long documents and
    # long queries), so numpy's fixed cost per call is paid once per chunk rather than per document.
    budget = max(1, _SIM_BUDGET // q.shape[0])
    chunk_start = 0
    while chunk_start < nonempty.size:
        chunk_end, tokens = chunk_start, 0
        while chunk_end < nonempty.size and (chunk_end == chunk_start or tokens + lengths[nonempty[chunk_end]] <= budget):
            tokens += int(lengths[nonempty[chunk_end]])
            chunk_end += 1
        members = nonempty[chunk_start:chunk_end]
        stacked = np.concatenate([_token_matrix(docs[i], dim) for i in members], axis=0)
        with single_thread_blas():
            sims = q @ stacked.T  # [query tokens, chunk tokens]
        starts = np.concatenate([[0], np.cumsum(lengths[members])[:-1]])
        best = np.maximum.reduceat(sims, starts, axis=1)  # [query tokens, chunk docs]
        out[members] = best.mean(axis=0, dtype=np.float64)
        chunk_start = chunk_end
    return out


__all__ = ["colbert_scores", "dense_scores", "lexical_scores"]
