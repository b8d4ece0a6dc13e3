"""BGE-M3 relevance scores (pure numpy), with FlagEmbedding's ``compute_score`` semantics.

- dense: inner product of the L2-normalised CLS vectors (cosine).
- lexical: sum over shared token ids of ``w_q * w_d``.
- colbert: mean over query vectors of the max inner product over document vectors (MaxSim).
- m3: ``(w_dense*dense + w_sparse*lexical + w_colbert*colbert) / sum(weights)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InvalidArgument
from .output import M3Output

DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)  # dense, sparse, colbert: BGE-M3's recommended mix


def dense_score(q: np.ndarray, p: np.ndarray) -> float | np.ndarray:
    """Inner product; ``q [d]`` x ``p [d]`` gives a float, matrices give ``q @ p.T``."""
    q_arr, p_arr = np.asarray(q, dtype=np.float32), np.asarray(p, dtype=np.float32)
    if q_arr.shape[-1] != p_arr.shape[-1]:
        raise InvalidArgument(f"dense_score: dimensions differ ({q_arr.shape[-1]} vs {p_arr.shape[-1]})")
    out = q_arr @ p_arr.T
    return float(out) if np.ndim(out) == 0 else out


def lexical_score(q_sparse: Mapping[int, float], p_sparse: Mapping[int, float]) -> float:
    """Sum of ``w_q * w_d`` over token ids present in both."""
    if len(q_sparse) > len(p_sparse):
        q_sparse, p_sparse = p_sparse, q_sparse
    return float(sum(w * p_sparse[t] for t, w in q_sparse.items() if t in p_sparse))


def colbert_score(q_vecs: np.ndarray, p_vecs: np.ndarray) -> float:
    """MaxSim: for each query vector the best document vector, averaged over query vectors."""
    q_arr, p_arr = np.asarray(q_vecs, dtype=np.float32), np.asarray(p_vecs, dtype=np.float32)
    if q_arr.ndim != 2 or p_arr.ndim != 2:
        raise InvalidArgument("colbert_score takes two 2-d arrays [tokens, dim]")
    if q_arr.shape[0] == 0 or p_arr.shape[0] == 0:
        return 0.0
    if q_arr.shape[1] != p_arr.shape[1]:
        raise InvalidArgument(f"colbert_score: dimensions differ ({q_arr.shape[1]} vs {p_arr.shape[1]})")
    return float((q_arr @ p_arr.T).max(axis=1).mean(dtype=np.float64))


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    if len(weights) != 3:
        raise InvalidArgument(f"weights must be three numbers (dense, sparse, colbert), got {list(weights)}")
    w = tuple(float(x) for x in weights)
    if sum(w) == 0:
        raise InvalidArgument("weights must not sum to zero")
    return w  # type: ignore[return-value]


def _one_row(out: M3Output, name: str) -> tuple[np.ndarray, dict[int, float], np.ndarray]:
    if len(out) != 1:
        raise InvalidArgument(f"m3_score: {name} must be a one-row M3Output (use output.row(i)), got {len(out)} rows")
    if out.dense is None or out.sparse is None or out.colbert is None:
        raise InvalidArgument(f"m3_score: {name} must be encoded with dense, sparse and colbert")
    return out.dense[0], out.sparse[0], out.colbert[0]


def m3_scores(q: M3Output, p: M3Output, weights: Sequence[float] = DEFAULT_WEIGHTS) -> dict[str, float]:
    """All of ``compute_score``'s keys: dense, sparse, colbert, sparse+dense, colbert+sparse+dense."""
    wd, ws, wc = _check_weights(weights)
    qd, qs, qc = _one_row(q, "query")
    pd, ps, pc = _one_row(p, "passage")
    d = float(dense_score(qd, pd))
    s = lexical_score(qs, ps)
    c = colbert_score(qc, pc)
    sparse_dense = (s * ws + d * wd) / (ws + wd) if (ws + wd) else 0.0
    return {
        "dense": d,
        "sparse": s,
        "colbert": c,
        "sparse+dense": sparse_dense,
        "colbert+sparse+dense": (c * wc + s * ws + d * wd) / (wd + ws + wc),
    }


def m3_score(q: M3Output, p: M3Output, weights: Sequence[float] = DEFAULT_WEIGHTS) -> float:
    """The weighted BGE-M3 score (``compute_score``'s ``colbert+sparse+dense``) of one query and one passage."""
    return m3_scores(q, p, weights)["colbert+sparse+dense"]
