"""How closely one encoder's outputs follow another's: parity for exact backends, fidelity for int8.

Used by tests/encoder/test_onnx.py and bench/measure_backends.py, so the figures in bench/RESULTS.md and
the thresholds the tests assert come from the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidArgument
from .output import M3Output
from .scoring import colbert_score, lexical_score


def max_abs_diff(a: M3Output, b: M3Output) -> dict[str, float]:
    """Largest element-wise difference per representation (sparse: over the union of keys, absent = 0)."""
    out: dict[str, float] = {}
    if a.dense is not None and b.dense is not None:
        out["dense"] = float(np.abs(a.dense - b.dense).max(initial=0.0))
    for d in a.truncated:
        if d in b.truncated:
            out[f"truncated_{d}"] = float(np.abs(a.truncated[d] - b.truncated[d]).max(initial=0.0))
    if a.sparse is not None and b.sparse is not None:
        worst = 0.0
        for x, y in zip(a.sparse, b.sparse, strict=True):
            for k in x.keys() | y.keys():
                worst = max(worst, abs(x.get(k, 0.0) - y.get(k, 0.0)))
        out["sparse"] = worst
    if a.colbert is not None and b.colbert is not None:
        worst = 0.0
        for cx, cy in zip(a.colbert, b.colbert, strict=True):
            if cx.shape != cy.shape:
                return {**out, "colbert": float("inf")}
            if cx.size:
                worst = max(worst, float(np.abs(cx - cy).max()))
        out["colbert"] = worst
    return out


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (scipy.stats.rankdata's default), without needing scipy."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.arange(1, x.size + 1, dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two score lists (1.0 when both are constant)."""
    ra, rb = rankdata(np.asarray(a)), rankdata(np.asarray(b))
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return 1.0 if denom == 0.0 else float((ra * rb).sum() / denom)


def score_fidelity(ref_q: M3Output, ref_p: M3Output, cand_q: M3Output, cand_p: M3Output) -> dict[str, float]:
    """Candidate vs reference on a query x passage set.

    ``dense_cos_min`` / ``dense_cos_mean``: cosine between the two encoders' dense vectors of the same text
    (queries and passages); ``lexical_spearman`` / ``colbert_spearman`` / ``dense_spearman``: rank
    correlation of all query-passage scores.
    """
    for out in (ref_q, ref_p, cand_q, cand_p):
        if out.dense is None or out.sparse is None or out.colbert is None:
            raise InvalidArgument("score_fidelity needs dense, sparse and colbert in every output")
    rq, rp, cq, cp = ref_q.need_dense(), ref_p.need_dense(), cand_q.need_dense(), cand_p.need_dense()
    cos = np.concatenate([(rq * cq).sum(1), (rp * cp).sum(1)])
    pairs = [(i, j) for i in range(len(ref_q)) for j in range(len(ref_p))]
    lex_ref = [lexical_score(ref_q.need_sparse()[i], ref_p.need_sparse()[j]) for i, j in pairs]
    lex_cand = [lexical_score(cand_q.need_sparse()[i], cand_p.need_sparse()[j]) for i, j in pairs]
    col_ref = [colbert_score(ref_q.need_colbert()[i], ref_p.need_colbert()[j]) for i, j in pairs]
    col_cand = [colbert_score(cand_q.need_colbert()[i], cand_p.need_colbert()[j]) for i, j in pairs]
    return {
        "dense_cos_min": float(cos.min()),
        "dense_cos_mean": float(cos.mean()),
        "dense_spearman": spearman((rq @ rp.T).ravel(), (cq @ cp.T).ravel()),
        "lexical_spearman": spearman(lex_ref, lex_cand),
        "colbert_spearman": spearman(col_ref, col_cand),
    }
