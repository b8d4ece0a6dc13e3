"""Search stage 3: a cross-encoder re-orders the fused top N.

Pure functions over the fused hits, their passage texts and a :class:`Scorer` (the sidecar's
:class:`~milvus_embed_ext.encoder.Reranker`, or anything with its ``compute_score``); no Milvus here, so the
planner (whatever its shape) only has to take its top N, read their stored text and call :func:`apply`.

The reranker sees each (query, passage) pair together, which bi-encoder scores (dense, lexical, ColBERT)
cannot: "Probiotics are good for the stomach" and "Probiotics harm the stomach" score alike on every
representation of BGE-M3 but not under a cross-encoder. All N pairs go to the scorer in ONE call, so the
stage costs one batched forward pass (split by the reranker's token budget), not one pass per hit.

Orders (``CrossEncoderStage.order``):

- ``reranker``: the cross-encoder's raw logit alone;
- ``fused``: ``weight * sigmoid(logit) + (1 - weight) * minmax(stage-2 fused score over the N)``.

Each re-scored hit keeps its per-representation scores and gains ``"fused"`` (the stage-2 fused score it
came in with) and ``"cross_encoder"`` (the raw logit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import FailedPrecondition, InvalidArgument

ORDERS = ("reranker", "fused")
DEFAULT_TOP_N_FACTOR = 3
DEFAULT_WEIGHT = 0.7
SCORE_KEY = "cross_encoder"
FUSED_KEY = "fused"


class Scorer(Protocol):
    """What stage 3 needs from a reranker: FlagReranker's / :class:`Reranker`'s ``compute_score``."""

    def compute_score(self, pairs: Sequence[tuple[str, str]], normalize: bool = False) -> list[float]: ...


@dataclass(frozen=True)
class CrossEncoderStage:
    """Stage-3 options of one search. ``top_n=None``: ``top_n_factor`` x (offset + top_k), at most ``max_top_n``."""

    top_n: int | None = None
    order: str = "reranker"
    weight: float = DEFAULT_WEIGHT
    """The cross-encoder's share with ``order="fused"``, 0..1."""
    top_n_factor: int = DEFAULT_TOP_N_FACTOR
    max_top_n: int = 256

    def validate(self) -> None:
        if self.order not in ORDERS:
            raise InvalidArgument(f"cross-encoder order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not (
                math.isfinite(self.weight) and 0.0 <= self.weight <= 1.0):
            raise InvalidArgument(f"cross-encoder weight must be a number in 0..1, got {self.weight!r}")
        if self.top_n is not None and (isinstance(self.top_n, bool) or not isinstance(self.top_n, int)
                                       or not 0 < self.top_n <= self.max_top_n):
            raise InvalidArgument(f"cross-encoder top_n must be an integer in 1..{self.max_top_n} "
                                  f"(reranker_max_pairs), got {self.top_n!r}")

    def depth(self, page_end: int) -> int:
        """How many fused hits to re-score for a page ending at ``page_end``: never fewer than the page."""
        self.validate()
        if page_end > self.max_top_n:
            raise InvalidArgument(f"offset + top_k = {page_end} exceeds what the cross-encoder may re-score "
                                  f"({self.max_top_n}, reranker_max_pairs); page less deep or raise "
                                  "MEE_RERANKER_MAX_PAIRS")
        wanted = self.top_n if self.top_n is not None else self.top_n_factor * page_end
        return max(page_end, min(wanted, self.max_top_n))


@dataclass(frozen=True)
class FusedHit:
    """A hit as stage 2 leaves it."""

    id: str
    score: float
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RescoredHit:
    id: str
    score: float
    """The final score: the logit (order ``reranker``) or the weighted fusion (order ``fused``)."""
    scores: dict[str, float]
    """The stage-2 scores plus ``"fused"`` and ``"cross_encoder"``."""


@dataclass(frozen=True)
class StageResult:
    hits: list[RescoredHit]
    """The re-scored hits, best first (the input's top N that had a passage)."""
    missing: tuple[str, ...]
    """Ids without a passage text (deleted since stage 2): left out."""
    timing_ms: float
    pairs: int


def _minmax(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 0.0:
        return [1.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def apply(query: str, hits: Sequence[FusedHit], passages: Mapping[str, str | None], scorer: Scorer,
          stage: CrossEncoderStage) -> StageResult:
    """Re-score ``hits`` (already cut to the stage's depth, best first) with ``scorer``; return them re-ordered.

    ``passages`` maps id -> stored text; an id absent or None is left out and reported in ``missing``.
    Ties keep the stage-2 order (the sort is stable).
    """
    stage.validate()
    started = time.perf_counter()
    kept = [h for h in hits if passages.get(h.id) is not None]
    missing = tuple(h.id for h in hits if passages.get(h.id) is None)
    if not kept:
        return StageResult([], missing, (time.perf_counter() - started) * 1000.0, 0)
    logits = [float(v) for v in scorer.compute_score([(query, str(passages[h.id])) for h in kept], normalize=False)]
    if len(logits) != len(kept):
        raise FailedPrecondition(f"the reranker returned {len(logits)} scores for {len(kept)} passages")
    if stage.order == "reranker":
        final = logits
    else:
        fused = _minmax([h.score for h in kept])
        final = [stage.weight * _sigmoid(s) + (1.0 - stage.weight) * f for s, f in zip(logits, fused, strict=True)]
    out = [RescoredHit(h.id, f, {**h.scores, FUSED_KEY: float(h.score), SCORE_KEY: s})
           for h, s, f in zip(kept, logits, final, strict=True)]
    order = sorted(range(len(out)), key=lambda i: -out[i].score)
    return StageResult([out[i] for i in order], missing, (time.perf_counter() - started) * 1000.0, len(kept))


def stage_from_options(*, top_n: int | None = None, order: str | None = None, weight: float | None = None,
                       default_order: str = "reranker", default_weight: float = DEFAULT_WEIGHT,
                       top_n_factor: int = DEFAULT_TOP_N_FACTOR, max_top_n: int = 256) -> CrossEncoderStage:
    """A checked stage from a request's options (None: the server default)."""
    stage = CrossEncoderStage(top_n=top_n or None, order=order or default_order,
                              weight=default_weight if weight is None else weight,
                              top_n_factor=top_n_factor, max_top_n=max_top_n)
    stage.validate()
    return stage


__all__ = ["CrossEncoderStage", "FusedHit", "ORDERS", "RescoredHit", "Scorer", "StageResult", "apply",
           "stage_from_options"]
