"""Score fusion as pure functions.

Every function takes per-route results (``id -> score`` mappings, or ranked id lists for RRF) and returns
one fused ranking: a list of ``(id, score)`` sorted by score descending, ties broken by id ascending, so the
same input always gives the same order. Inputs are validated here once (NaN/inf scores, negative or
all-zero weights, RRF ``k <= 0``) and rejected with :class:`~milvus_embed_ext.errors.InvalidArgument`.

A document missing from a route contributes nothing for that route (0 after normalisation), as in Milvus
and Qdrant. The planner passes exact stage-2 scores for every candidate, so there every route covers every
candidate; the rule matters for direct callers.

Formulas follow the systems users compare against:

- ``rrf``: ``sum_i w_i / (k + rank_i)``, ranks from 1 (Milvus ``RRFRanker``; Cormack et al. 2009).
- ``weighted``: ``sum_i w_i * norm(s_i)`` with ``norm`` one of ``minmax``; ``arctan`` — Milvus
  ``WeightedRanker`` for IP: ``0.5 + arctan(x) / pi``; ``arctan_pos`` — Milvus's form for BM25 / non-negative
  scores: ``2 / pi * arctan(x)``; ``none``.
- ``dbsf``: Qdrant's distribution-based score fusion: each list mapped with
  ``(s - (mean - 3 sd)) / (6 sd)`` (sample standard deviation, no clamping), then a weighted sum.
- ``m3``: FlagEmbedding ``BGEM3FlagModel.compute_score``: ``sum_i w_i * s_i / sum_i w_i`` over the chosen
  representations (1.4.2 divides by the weight sum).

Degenerate lists (one element, or all scores equal) normalise to 0.5 under ``minmax`` and ``dbsf``, as in
Qdrant: the route carries no ordering information, and 0.5 neither rewards nor punishes presence much.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Mapping, Sequence

from ..errors import InvalidArgument
from ..limits import NORMALIZATIONS

Ranking = list[tuple[str, float]]
"""A fused result: ``(id, score)`` pairs, best first, ties by id ascending."""

NORMS = (*NORMALIZATIONS, "none")
DEGENERATE_SCORE = 0.5


def _check_scores(scores: Mapping[str, float], route: str) -> None:
    for doc_id, score in scores.items():
        if not isinstance(score, numbers.Real) or not math.isfinite(score):
            raise InvalidArgument(f"{route}: score of {doc_id!r} is {score!r}; scores must be finite numbers")


def check_weights(weights: Sequence[float], n: int, what: str = "weights") -> tuple[float, ...]:
    """Validate fusion weights: one per route, finite, >= 0, not all zero."""
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{what} must be numbers, got {weights!r}") from None
    if len(w) != n:
        raise InvalidArgument(f"{what}: expected {n} weights (one per route), got {len(w)}")
    for x in w:
        if not math.isfinite(x):
            raise InvalidArgument(f"{what} must be finite numbers, got {list(w)}")
        if x < 0:
            raise InvalidArgument(f"{what} must be >= 0, got {list(w)}")
    if not any(x > 0 for x in w):
        raise InvalidArgument(f"{what} must not all be zero, got {list(w)}")
    return w


def order(scores: Mapping[str, float]) -> Ranking:
    """Sort ``id -> score`` best first; equal scores in id order (deterministic tie-break)."""
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def rank_ids(scores: Mapping[str, float]) -> list[str]:
    """The ids of ``scores`` in :func:`order`'s order: a ranked list for :func:`rrf`."""
    _check_scores(scores, "ranking")
    return [doc_id for doc_id, _ in order(scores)]


def top(fused: Sequence[tuple[str, float]], k: int, offset: int = 0) -> Ranking:
    """The page ``fused[offset : offset + k]``; ``k`` must be > 0 and ``offset`` >= 0."""
    k, offset = _as_int(k, "top_k"), _as_int(offset, "offset")
    if k <= 0:
        raise InvalidArgument(f"top_k must be > 0, got {k}")
    if offset < 0:
        raise InvalidArgument(f"offset must be >= 0, got {offset}")
    return list(fused[offset : offset + k])


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidArgument(f"{name} must be an integer, got {value!r}") from None


def rrf(
    ranked_lists: Sequence[Sequence[str]], k: float = 60.0, weights: Sequence[float] | None = None
) -> Ranking:
    """Reciprocal rank fusion of ranked id lists (best first).

    An id listed twice in one route counts once, at its best rank.
    """
    if not isinstance(k, numbers.Real) or isinstance(k, bool) or not math.isfinite(k) or k <= 0:
        raise InvalidArgument(f"rrf k must be a finite number > 0, got {k!r}")
    w = check_weights(weights, len(ranked_lists), "rrf weights") if weights is not None else (1.0,) * len(
        ranked_lists
    )
    fused: dict[str, float] = {}
    for ids, weight in zip(ranked_lists, w, strict=True):
        seen: set[str] = set()
        for rank, doc_id in enumerate(ids, start=1):
            if doc_id in seen:
                continue
            seen.add(doc_id)
            fused[doc_id] = fused.get(doc_id, 0.0) + weight / (k + rank)
    return order(fused)


def normalize(scores: Mapping[str, float], norm: str = "minmax") -> dict[str, float]:
    """Map one route's scores to a comparable scale (see the module docstring for the formulas)."""
    _check_scores(scores, f"normalize({norm})")
    if norm == "none":
        return dict(scores)
    if norm == "arctan":
        return {i: 0.5 + math.atan(s) / math.pi for i, s in scores.items()}
    if norm == "arctan_pos":
        return {i: 2.0 * math.atan(s) / math.pi for i, s in scores.items()}
    if norm == "minmax":
        if not scores:
            return {}
        lo, hi = min(scores.values()), max(scores.values())
        return _rescale(scores, lo, hi)
    raise InvalidArgument(f"unknown normalisation {norm!r}; use one of {', '.join(NORMS)}")


def _rescale(scores: Mapping[str, float], lo: float, hi: float) -> dict[str, float]:
    span = hi - lo
    if not span > 0 or not math.isfinite(span):
        return dict.fromkeys(scores, DEGENERATE_SCORE)
    return {i: (s - lo) / span for i, s in scores.items()}


def distribution_normalize(scores: Mapping[str, float]) -> dict[str, float]:
    """Qdrant's DBSF normalisation: mean ± 3 sample standard deviations map to [0, 1]."""
    _check_scores(scores, "dbsf")
    n = len(scores)
    if n < 2:
        return dict.fromkeys(scores, DEGENERATE_SCORE)
    values = list(scores.values())
    mean = math.fsum(values) / n
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    sd = math.sqrt(var)
    return _rescale(scores, mean - 3.0 * sd, mean + 3.0 * sd)


def _weighted_sum(normalised: Iterable[Mapping[str, float]], weights: Sequence[float]) -> Ranking:
    fused: dict[str, float] = {}
    for scores, weight in zip(normalised, weights, strict=True):
        for doc_id, s in scores.items():
            fused[doc_id] = fused.get(doc_id, 0.0) + weight * s
    return order(fused)


def weighted(
    score_lists: Sequence[Mapping[str, float]], weights: Sequence[float], norm: str = "minmax"
) -> Ranking:
    """Weighted sum of per-route scores after normalisation (Milvus ``WeightedRanker`` style)."""
    if norm not in NORMS:
        raise InvalidArgument(f"unknown normalisation {norm!r}; use one of {', '.join(NORMS)}")
    w = check_weights(weights, len(score_lists), "weighted fusion weights")
    return _weighted_sum([normalize(s, norm) for s in score_lists], w)


def dbsf(score_lists: Sequence[Mapping[str, float]], weights: Sequence[float] | None = None) -> Ranking:
    """Distribution-based score fusion (Qdrant): normalise each list by mean ± 3 sd, then sum."""
    w = (
        check_weights(weights, len(score_lists), "dbsf weights")
        if weights is not None
        else (1.0,) * len(score_lists)
    )
    return _weighted_sum([distribution_normalize(s) for s in score_lists], w)


def m3(scores_by_rep: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]) -> Ranking:
    """BGE-M3 ``compute_score`` fusion: ``sum(w_r * s_r) / sum(w_r)`` over the representations given.

    Every id must have a score in every representation (exact re-scoring guarantees it); a gap means the
    caller mixed candidate sets, which would silently bias the result, so it is rejected.
    """
    reps = list(scores_by_rep)
    if set(weights) != set(reps):
        raise InvalidArgument(
            f"m3 fusion needs one weight per representation: scores for {sorted(reps)}, "
            f"weights for {sorted(weights)}"
        )
    w = check_weights([weights[r] for r in reps], len(reps), "m3 weights")
    total = math.fsum(w)
    ids: set[str] = set()
    for rep in reps:
        _check_scores(scores_by_rep[rep], f"m3 {rep}")
        ids.update(scores_by_rep[rep])
    fused: dict[str, float] = {}
    for doc_id in ids:
        acc = 0.0
        for rep, weight in zip(reps, w, strict=True):
            s = scores_by_rep[rep].get(doc_id)
            if s is None:
                raise InvalidArgument(f"m3 fusion: {doc_id!r} has no {rep} score; re-score every candidate")
            acc += weight * s
        fused[doc_id] = acc / total
    return order(fused)


__all__ = [
    "NORMS",
    "Ranking",
    "check_weights",
    "dbsf",
    "distribution_normalize",
    "m3",
    "normalize",
    "order",
    "rank_ids",
    "rrf",
    "top",
    "weighted",
]
