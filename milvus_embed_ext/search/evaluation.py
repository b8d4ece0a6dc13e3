"""Ground truth for recall and fidelity: brute-force scores over a whole corpus, and recall@k.

The brute force deliberately uses the encoder's per-pair scoring helpers
(:mod:`milvus_embed_ext.encoder.scoring`, FlagEmbedding ``compute_score`` semantics) rather than the
planner's vectorised re-scoring, so a pipeline result compared with it checks both the candidate
stages and the re-scoring code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..encoder import M3Output, colbert_score, dense_score, lexical_score
from . import fusion
from .planner import DEFAULT_WEIGHTS, REPRESENTATIONS, HybridSearcher, SearchRequest


def brute_force_scores(
    query: M3Output, corpus: M3Output, representations: Sequence[str] = REPRESENTATIONS
) -> dict[str, np.ndarray]:
    """Each representation's score of one query (one row) against every corpus row: float64 ``[n]``."""
    out: dict[str, np.ndarray] = {}
    n = len(corpus)
    for rep in representations:
        if rep == "dense":
            out[rep] = np.asarray(dense_score(query.need_dense()[0], corpus.need_dense()),
                                  dtype=np.float64).reshape(n)
        elif rep == "sparse":
            q = query.need_sparse()[0]
            out[rep] = np.array([lexical_score(q, p) for p in corpus.need_sparse()], dtype=np.float64)
        elif rep == "colbert":
            qc = query.need_colbert()[0]
            out[rep] = np.array([colbert_score(qc, p) for p in corpus.need_colbert()], dtype=np.float64)
        else:
            raise ValueError(f"unknown representation {rep!r}")
    return out


def brute_force_m3(
    query: M3Output,
    corpus: M3Output,
    ids: Sequence[str],
    k: int,
    representations: Sequence[str] = REPRESENTATIONS,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
) -> fusion.Ranking:
    """The exact ``compute_score`` top-``k`` over the whole corpus (ties by id, like the planner)."""
    scores = brute_force_scores(query, corpus, representations)
    w = {r: float(weights[REPRESENTATIONS.index(r)]) for r in representations}
    total = sum(w.values())
    fused = np.asarray(sum(w[r] * scores[r] for r in representations), dtype=np.float64) / total
    return fusion.order(dict(zip(ids, fused.tolist(), strict=True)))[:k]


def brute_force_dense(query_vec: np.ndarray, corpus_vecs: np.ndarray, ids: Sequence[str], k: int) -> list[str]:
    """Exact top-``k`` ids by inner product (for truncated-field recall against full dense)."""
    scores = np.asarray(corpus_vecs, dtype=np.float32) @ np.asarray(query_vec, dtype=np.float32).reshape(-1)
    return [i for i, _ in fusion.order(dict(zip(ids, scores.tolist(), strict=True)))[:k]]


def recall_at_k(found: Sequence[str], truth: Sequence[str], k: int) -> float:
    """|found[:k] ∩ truth[:k]| / k."""
    if k <= 0:
        raise ValueError("k must be > 0")
    truth_k = list(truth)[:k]
    if not truth_k:
        return 1.0
    return len(set(list(found)[:k]) & set(truth_k)) / len(truth_k)


@dataclass
class RecallRow:
    """Recall@k of one configuration, per query (``mean`` for the table)."""

    what: str  # "pipeline" | "prefetch"
    projection: str  # "prefix" | "pca" | "full"
    dim: int
    depth: int
    recalls: list[float]
    candidates: list[int] = field(default_factory=list)
    stage_ms: dict[str, list[float]] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.recalls)) if self.recalls else float("nan")


def pipeline_recall(
    searcher: HybridSearcher,
    queries: Sequence[str],
    query_encodings: M3Output,
    truths: Sequence[Sequence[str]],
    dims: Sequence[int],
    depths: Sequence[int],
    k: int = 10,
    plan: Mapping[str, Any] | None = None,
    projection: str = "prefix",
) -> list[RecallRow]:
    """Recall@k of the full pipeline (truncated dense + sparse candidates, exact m3) against ``truths``."""
    rows = []
    for dim in dims:
        for depth in depths:
            row = RecallRow("pipeline", projection, dim, depth, [])
            for i, (text, truth) in enumerate(zip(queries, truths, strict=True)):
                res = searcher.search(
                    SearchRequest(text, top_k=k, plan={**(plan or {}), "truncate_dim": dim, "depth": depth}),
                    query_encoding=query_encodings.row(i),
                )
                if not res.complete:
                    raise RuntimeError(f"incomplete search result in a recall run: {res.degraded}")
                row.recalls.append(recall_at_k([h.id for h in res.hits], truth, k))
                row.candidates.append(res.candidates)
                for stage, ms in res.timings_ms.items():
                    row.stage_ms.setdefault(stage, []).append(ms)
            rows.append(row)
    return rows


def prefetch_recall(
    doc_store: Any,
    query_dense: np.ndarray,
    corpus_dense: np.ndarray,
    ids: Sequence[str],
    dims: Sequence[int],
    depths: Sequence[int],
    k: int = 10,
    projection: str = "prefix",
) -> list[RecallRow]:
    """Recall@k of the truncated-field ANN prefetch (Milvus) against exact full-dense top-``k``.

    Recall at depth ``d``: the share of the full-dense top-k that the truncated search returns in its
    first ``d`` hits (what stage 1 hands to the re-scorer).
    """
    truths = [brute_force_dense(q, corpus_dense, ids, k) for q in query_dense]
    rows = []
    for dim in dims:
        field_name = f"dense_{dim}"
        for depth in depths:
            row = RecallRow("prefetch", projection, dim, depth, [])
            for q, truth in zip(query_dense, truths, strict=True):
                projected = doc_store.project(np.asarray(q)[None, :], dim).reshape(-1)
                hits = doc_store.search_dense(field_name, projected, depth, "")
                row.recalls.append(len({i for i, _ in hits} & set(truth)) / len(truth))
            rows.append(row)
    return rows


__all__ = [
    "RecallRow",
    "brute_force_dense",
    "brute_force_m3",
    "brute_force_scores",
    "pipeline_recall",
    "prefetch_recall",
    "recall_at_k",
]
