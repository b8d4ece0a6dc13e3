"""The multi-stage hybrid search planner.

One request runs in two steps. :meth:`HybridSearcher.prepare` checks it once and resolves the plan, the
candidate routes and the output fields against the collection, and says what the query encoding must hold.
The caller encodes the query (the service through its micro-batcher), then :meth:`HybridSearcher.execute`:

1. stage 1, candidates: one Milvus search per route, concurrently on a thread pool (pymilvus is sync):
   a truncated dense field (``dense_<dim>``, prefix or PCA projection), the sparse inverted index (IP) and
   the full dense field, each with its own depth and the caller's filter expression. Each hit comes back
   with its stored dense and sparse vectors (and, for companion ColBERT, which rows hold its tokens);
2. stage 2, exact re-score inside the sidecar: full dense inner product and lexical score for every
   candidate from those vectors (no second read), then ColBERT MaxSim. With ``m3`` fusion ColBERT vectors
   are read only for candidates that can still reach the page: the fused score is linear in MaxSim, and
   MaxSim is bounded by the vectors' norms (:func:`colbert_bound`), so candidates are read best bound first
   until no unread bound reaches the page's last exact score. The page is exactly the one scoring every
   candidate would give, ties included. Other fusions normalise over all candidates and read them all;
3. fusion (:mod:`.fusion`): ``m3`` (BGE-M3 ``compute_score``), ``rrf``, ``weighted`` (normalised), ``dbsf``;
4. stage 3, optional (``SearchRequest.cross_encoder``): a cross-encoder re-orders the fused top N
   (:mod:`.crossencoder`). Their text was read with the stage-1 hits, and the bounded ColBERT reads keep the
   whole top N exact, not only the page.

Fusion works on exact stage-2 scores, so each representation ranks the same candidate set; stage-1 scores
only choose candidates. A failed stage fails the request, unless the plan sets ``allow_partial``: then failed
routes are listed in :attr:`SearchResult.degraded` and the result says it is incomplete.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    InvalidFilter,
    MilvusEmbedError,
    Unavailable,
)
from ..limits import DEFAULT_MAX_TOP_K, FUSIONS, MILVUS_MAX_TOPK, NORMALIZATIONS, REPRESENTATIONS, ROUTES
from ..store.documents import Candidate
from . import crossencoder, rescore
from . import fusion as fusion_fns

if TYPE_CHECKING:
    from ..config import Settings
    from ..encoder import M3Output
    from ..store.layout import CollectionLayout

DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)
DEFAULT_DEPTH = 100
OUTPUT_FIELDS = ("text", "metadata")
SEARCH_THREADS = 16
"""Threads for stage-1 Milvus calls, shared by concurrent searches (each route is one blocking call)."""
COLBERT_FIRST_READ = 16
"""Candidates in the first ColBERT read (at least the page); later reads double while bounds still reach the page."""


class EncodeFn(Protocol):
    """What the planner needs from an encoder: ``M3Encoder.encode``'s signature."""

    def __call__(
        self, texts: Sequence[str], *, dense: bool = ..., sparse: bool = ..., colbert: bool = ...
    ) -> M3Output: ...


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SearchPlan:
    """How to answer a search: candidate routes and depths, representations to score, fusion.

    A collection has a default plan (:meth:`for_layout`); a request overrides any field with
    :meth:`replace`. ``routes=None`` picks routes from the representations and the collection's layout:
    ``sparse`` when lexical scores are wanted, the smallest truncated dense field when dense or ColBERT
    scores are wanted (the full dense field when the collection has no truncated field).
    """

    representations: tuple[str, ...] = REPRESENTATIONS
    routes: tuple[str, ...] | None = None
    depth: int = DEFAULT_DEPTH
    """Candidates per route, unless ``route_depths`` names the route. Raised to ``offset + top_k``."""
    route_depths: Mapping[str, int] = field(default_factory=dict)
    truncate_dim: int | None = None
    """The ``dense_<dim>`` field for the ``dense_truncated`` route; None: the smallest the collection has."""
    fusion: str = "m3"
    weights: tuple[float, float, float] = DEFAULT_WEIGHTS
    """dense, sparse, colbert. Used by m3, weighted and dbsf; RRF is unweighted, as in Milvus."""
    rrf_k: float = 60.0
    normalization: str = "minmax"
    """weighted fusion: minmax | arctan (Milvus IP: 0.5 + atan(x)/pi) | arctan_pos (2/pi * atan(x))."""
    allow_partial: bool = False
    """When a candidate route fails, answer from the others and list the failure in ``degraded``."""

    @classmethod
    def for_layout(cls, layout: CollectionLayout, **overrides: Any) -> SearchPlan:
        """The default plan for a collection.

        No ColBERT scores when it stores none; then the collection's own defaults, kept with its layout
        as ``layout.extra["search"]`` (a mapping of plan options); then ``overrides``.
        """
        base = cls()
        if layout.colbert == "none":
            base = dataclasses.replace(base, representations=("dense", "sparse"))
        stored = (layout.extra or {}).get("search") or {}
        if not isinstance(stored, Mapping):
            raise FailedPrecondition(
                f"collection {layout.name!r}: layout extra['search'] must be a mapping of "
                f"search plan options, got {type(stored).__name__}"
            )
        return base.replace(**{**stored, **overrides})

    def replace(self, **changes: Any) -> SearchPlan:
        """A copy with ``changes`` applied; None values keep the current value.

        ``weights`` may be a mapping naming some of dense/sparse/colbert: the others keep their value.
        """
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InvalidArgument(f"unknown search plan option(s) {unknown}; known: {sorted(known)}")
        updates = {k: v for k, v in changes.items() if v is not None}
        weights = updates.get("weights")
        if isinstance(weights, Mapping):
            bad = sorted(set(weights) - set(REPRESENTATIONS))
            if bad:
                raise InvalidArgument(f"weights name unknown representation(s) {bad}; use dense, sparse, colbert")
            current = dict(zip(REPRESENTATIONS, self.weights, strict=True))
            current.update({k: v for k, v in weights.items() if v is not None})
            updates["weights"] = tuple(current[r] for r in REPRESENTATIONS)
        for name in ("representations", "routes", "weights"):
            if name in updates and not isinstance(updates[name], tuple):
                if isinstance(updates[name], str):
                    raise InvalidArgument(f"{name} must be a list, got the string {updates[name]!r}")
                updates[name] = tuple(updates[name])
        if "route_depths" in updates:
            updates["route_depths"] = dict(updates["route_depths"])
        plan = dataclasses.replace(self, **updates)
        plan.validate()
        return plan

    def weight(self, representation: str) -> float:
        return float(self.weights[REPRESENTATIONS.index(representation)])

    def validate(self) -> None:
        """Checks that need no collection; :meth:`HybridSearcher.resolve` does the rest."""
        reps = self.representations
        if not reps:
            raise InvalidArgument("representations must name at least one of dense, sparse, colbert")
        for r in reps:
            if r not in REPRESENTATIONS:
                raise InvalidArgument(f"unknown representation {r!r}; use dense, sparse or colbert")
        if len(set(reps)) != len(reps):
            raise InvalidArgument(f"representations repeat an entry: {list(reps)}")
        if self.routes is not None:
            if not self.routes:
                raise InvalidArgument("routes must name at least one candidate source (or be left unset)")
            for r in self.routes:
                if r not in ROUTES:
                    raise InvalidArgument(f"unknown candidate route {r!r}; use {', '.join(ROUTES)}")
        for name, depth in [("depth", self.depth), *((f"route_depths[{k!r}]", v) for k, v in self.route_depths.items())]:
            if isinstance(depth, bool) or not isinstance(depth, int) or not 0 < depth <= MILVUS_MAX_TOPK:
                raise InvalidArgument(f"{name} must be an integer in 1..{MILVUS_MAX_TOPK}, got {depth!r}")
        for r in self.route_depths:
            if r not in ROUTES:
                raise InvalidArgument(f"route_depths names unknown route {r!r}; use {', '.join(ROUTES)}")
        if self.truncate_dim is not None and (
            isinstance(self.truncate_dim, bool) or not isinstance(self.truncate_dim, int) or self.truncate_dim <= 0
        ):
            raise InvalidArgument(f"truncate_dim must be a positive integer, got {self.truncate_dim!r}")
        if self.fusion not in FUSIONS:
            raise InvalidArgument(f"unknown fusion {self.fusion!r}; use {', '.join(FUSIONS)}")
        if self.normalization not in NORMALIZATIONS:
            raise InvalidArgument(f"unknown normalization {self.normalization!r}; use {', '.join(NORMALIZATIONS)}")
        if len(self.weights) != 3:
            raise InvalidArgument(f"weights must be three numbers (dense, sparse, colbert), got {list(self.weights)}")
        for w in self.weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise InvalidArgument(f"weights must be finite numbers >= 0, got {list(self.weights)}")
        if self.fusion != "rrf" and not any(self.weight(r) > 0 for r in reps):
            raise InvalidArgument(
                f"the weights of {list(reps)} are all zero; give at least one a positive weight"
            )
        if not (isinstance(self.rrf_k, (int, float)) and not isinstance(self.rrf_k, bool)
                and math.isfinite(self.rrf_k) and self.rrf_k > 0):
            raise InvalidArgument(f"rrf_k must be a number > 0, got {self.rrf_k!r}")


@dataclass(frozen=True)
class Route:
    """One stage-1 Milvus search: which field, how deep."""

    name: str  # "dense_truncated" | "sparse" | "dense"
    field: str  # Milvus field: "dense_256", "sparse", "dense"
    depth: int

    @property
    def stage(self) -> str:
        return f"candidates.{self.field}"


@dataclass(frozen=True)
class SearchRequest:
    """One search. ``plan`` overrides the collection's default plan (a mapping of fields or a whole plan)."""

    query: str
    top_k: int = 10
    offset: int = 0
    filter: str = ""
    output_fields: tuple[str, ...] = ()
    plan: Mapping[str, Any] | SearchPlan | None = None
    timeout_s: float | None = None
    """Wall-clock budget for the Milvus calls; exceeded: DeadlineExceeded."""
    cross_encoder: crossencoder.CrossEncoderStage | None = None
    """Stage 3: re-order the fused top N with the scorer passed to :meth:`HybridSearcher.execute`; None: off."""


@dataclass
class Hit:
    id: str
    score: float
    """The fused score."""
    scores: dict[str, float]
    """Each representation's exact score: "dense", "sparse", "colbert"."""
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchResult:
    hits: list[Hit]
    timings_ms: dict[str, float]
    """"encode", "candidates" (stage 1 wall), "candidates.<field>" (each Milvus call, vectors included),
    "fetch" (reading ColBERT vectors), "rescore" (exact scoring), "fuse", "cross_encoder" (stage 3) and
    "cross_encoder.fetch" (texts of documents changed after stage 1), "fields" (likewise: stage 1 reads the
    output fields with the vectors), "total"."""
    plan: SearchPlan
    routes: tuple[Route, ...]
    candidates: int
    """Size of the union of stage-1 candidates that was re-scored."""
    route_hits: dict[str, int]
    query_tokens: int = 0
    degraded: tuple[str, ...] = ()
    """What is missing from this answer, one line each: routes that failed and were skipped (only with
    ``allow_partial``), candidates left out because their stored vectors are incomplete. Empty: complete."""
    dropped: int = 0
    """Candidates deleted between stage 1 and stage 2 (or before fields were read): not returned."""
    candidate_ids: tuple[str, ...] = field(default=(), repr=False)
    """The re-scored candidates (sorted): what stage 1 found, for diagnostics and recall checks."""
    colbert_read: int = 0
    """Candidates whose ColBERT vectors were read: with m3 fusion only those that could reach the page."""

    @property
    def complete(self) -> bool:
        return not self.degraded


# --------------------------------------------------------------------------- searcher


@dataclass(frozen=True)
class PreparedSearch:
    """A request checked once and resolved against the collection (:meth:`HybridSearcher.prepare`).

    It says what the query encoding must contain (:attr:`encode_kwargs`), so the caller can encode the query
    however it likes (the service through its micro-batcher) and hand the encoding to
    :meth:`HybridSearcher.execute`.
    """

    request: SearchRequest
    plan: SearchPlan
    routes: tuple[Route, ...]
    output_fields: tuple[str, ...]
    """The requested stored fields, deduplicated, without ``id`` (always returned)."""
    encode_kwargs: Mapping[str, bool]
    """``dense``, ``sparse``, ``colbert``: what ``M3Encoder.encode`` must produce for the query."""

    @property
    def page_end(self) -> int:
        return self.request.offset + self.request.top_k

    @property
    def fused_depth(self) -> int:
        """How much of the fused ranking must be exact: the page, or the top N stage 3 re-orders."""
        stage = self.request.cross_encoder
        return self.page_end if stage is None else max(self.page_end, stage.depth(self.page_end))

    @property
    def candidate_fields(self) -> tuple[str, ...]:
        """Stored fields read with the stage-1 hits: the output fields, and the text stage 3 scores."""
        extra = ("text",) if self.request.cross_encoder is not None else ()
        return tuple(dict.fromkeys((*self.output_fields, *extra)))


class HybridSearcher:
    """Answers :class:`SearchRequest` s over one collection (a ``DocumentStore``). Thread-safe.

    Two steps: :meth:`prepare` checks a request and says what to encode; :meth:`execute` runs the stages on a
    query encoding. :meth:`search` does both, encoding with ``encode_fn`` (library use).
    """

    def __init__(
        self,
        doc_store: Any,
        encode_fn: EncodeFn | Callable[..., M3Output] | None = None,
        *,
        plan: SearchPlan | None = None,
        settings: Settings | None = None,
        max_top_k: int | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.doc_store = doc_store
        self.layout: CollectionLayout = doc_store.layout
        self.encode_fn = encode_fn
        self.default_plan = plan if plan is not None else SearchPlan.for_layout(self.layout)
        self.default_plan.validate()
        if max_top_k is None:
            max_top_k = settings.max_top_k if settings is not None else DEFAULT_MAX_TOP_K
        self.max_top_k = int(max_top_k)
        self._executor = executor
        self._own_executor = executor is None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, store: Any, collection: str, encode_fn: EncodeFn | Callable[..., M3Output] | None = None,
             **kwargs: Any) -> HybridSearcher:
        """A searcher on an existing collection; NotFound when it does not exist."""
        from ..store import DocumentStore

        return cls(DocumentStore.open(store, collection), encode_fn, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._executor is not None and self._own_executor:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def __enter__(self) -> HybridSearcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                # stage-1 routes of concurrent searches: several Milvus calls each, all waiting on I/O
                self._executor = ThreadPoolExecutor(max_workers=SEARCH_THREADS, thread_name_prefix="mee-search")
            return self._executor

    # ------------------------------------------------------------------ prepare

    @property
    def truncated_dims(self) -> tuple[int, ...]:
        return tuple(sorted(t.dim for t in self.layout.truncated))

    def prepare(self, request: SearchRequest) -> PreparedSearch:
        """Check ``request`` once and resolve its plan, routes and output fields against the collection."""
        self._check_request(request)
        plan = self._plan_for(request)
        stage = request.cross_encoder
        page_end = request.offset + request.top_k
        routes = self._routes_for(plan, page_end if stage is None else max(page_end, stage.depth(page_end)))
        if stage is not None and not self.layout.store_text:
            raise FailedPrecondition(f"collection {self.layout.name!r} stores no text, which the "
                                     "cross-encoder reads; search it without cross_encoder")
        reps = plan.representations
        encode_kwargs = {
            "dense": "dense" in reps or any(r.name != "sparse" for r in routes),
            "sparse": "sparse" in reps or any(r.name == "sparse" for r in routes),
            "colbert": "colbert" in reps,
        }
        fields = tuple(f for f in dict.fromkeys(request.output_fields) if f != "id")
        return PreparedSearch(request, plan, routes, fields, encode_kwargs)

    def _plan_for(self, request: SearchRequest) -> SearchPlan:
        if request.plan is None:
            return self.default_plan
        if isinstance(request.plan, SearchPlan):
            request.plan.validate()
            return request.plan
        if isinstance(request.plan, Mapping):
            return self.default_plan.replace(**request.plan)
        raise InvalidArgument(f"plan must be a SearchPlan or a mapping of plan options, got {type(request.plan).__name__}")

    def _routes_for(self, plan: SearchPlan, page_end: int) -> tuple[Route, ...]:
        """Resolve the plan's routes against the collection's fields."""
        dims = self.truncated_dims
        name = self.layout.name
        if plan.truncate_dim is not None and plan.truncate_dim not in dims:
            raise InvalidArgument(
                f"collection {name!r} has no truncated field dense_{plan.truncate_dim}; "
                f"stored: {', '.join(f'dense_{d}' for d in dims) or 'none'}"
            )
        if "colbert" in plan.representations and self.layout.colbert == "none":
            raise InvalidArgument(f"collection {name!r} stores no ColBERT vectors; drop colbert from representations")
        if plan.routes is None:
            wanted: list[str] = []
            if {"dense", "colbert"} & set(plan.representations):
                wanted.append("dense_truncated" if dims else "dense")
            if "sparse" in plan.representations:
                wanted.append("sparse")
        else:
            wanted = list(dict.fromkeys(plan.routes))
            if "dense_truncated" in wanted and not dims:
                raise InvalidArgument(f"collection {name!r} has no truncated dense field; use routes dense or sparse")
        routes = []
        for r in wanted:
            field_name = {"dense": "dense", "sparse": "sparse"}.get(r) or f"dense_{plan.truncate_dim or dims[0]}"
            depth = max(plan.route_depths.get(r, plan.depth), page_end)
            routes.append(Route(r, field_name, depth))
        return tuple(routes)

    def _check_request(self, request: SearchRequest) -> None:
        if not isinstance(request.query, str) or not request.query.strip():
            raise InvalidArgument("query text is empty; send the text to search for")
        for name, value in (("top_k", request.top_k), ("offset", request.offset)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidArgument(f"{name} must be an integer, got {value!r}")
        if request.top_k <= 0:
            raise InvalidArgument(f"top_k must be > 0, got {request.top_k}")
        if request.top_k > self.max_top_k:
            raise InvalidArgument(f"top_k {request.top_k} exceeds the configured maximum {self.max_top_k} (max_top_k)")
        if request.offset < 0:
            raise InvalidArgument(f"offset must be >= 0, got {request.offset}")
        if request.offset + request.top_k > self.max_top_k:
            raise InvalidArgument(
                f"offset + top_k = {request.offset + request.top_k} exceeds the configured maximum {self.max_top_k} "
                "(max_top_k: every page searches that deep); narrow the query with a filter instead of paging this "
                "far, or raise MEE_MAX_TOP_K")
        if request.offset + request.top_k > MILVUS_MAX_TOPK:
            raise InvalidArgument(f"offset + top_k must be <= {MILVUS_MAX_TOPK} (Milvus's limit), got "
                                  f"{request.offset + request.top_k}")
        if not isinstance(request.filter, str):
            raise InvalidArgument("filter must be a string (a Milvus boolean expression, or empty)")
        if request.timeout_s is not None and not request.timeout_s > 0:
            raise DeadlineExceeded("the request's deadline passed before the search started")
        self._check_output_fields(request.output_fields)

    def _check_output_fields(self, output_fields: Iterable[str]) -> None:
        available = [f for f in self.layout.scalar_fields if f != "id"]
        if isinstance(output_fields, str):
            raise InvalidArgument("output_fields must be a list of field names, not a string")
        for f in output_fields:
            if f == "id":
                continue
            if f not in available:
                raise InvalidArgument(
                    f"unknown output field {f!r} for collection {self.layout.name!r}; "
                    f"available: {', '.join(available)}"
                )

    # ------------------------------------------------------------------ execute

    def search(self, request: SearchRequest, *, query_encoding: M3Output | None = None,
               scorer: crossencoder.Scorer | None = None) -> SearchResult:
        """:meth:`prepare`, encode the query with ``encode_fn`` (unless ``query_encoding`` is given), :meth:`execute`;
        ``scorer`` (a reranker) runs stage 3 when the request asks for it."""
        t_start = time.perf_counter()
        prepared = self.prepare(request)
        encode_ms = None
        if query_encoding is None:
            if self.encode_fn is None:
                raise FailedPrecondition("this searcher has no encoder: pass query_encoding, or build it with "
                                         "an encode_fn")
            t = time.perf_counter()
            query_encoding = self.encode_fn([request.query], **prepared.encode_kwargs)
            encode_ms = _ms(t)
        timeout = None if request.timeout_s is None else request.timeout_s - (time.perf_counter() - t_start)
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("the request's time budget ran out while encoding the query")
        result = self.execute(prepared, query_encoding, timeout_s=timeout, scorer=scorer)
        if encode_ms is not None:
            result.timings_ms["encode"] = encode_ms
            result.timings_ms["total"] = _ms(t_start)
        return result

    def execute(self, prepared: PreparedSearch, query_encoding: M3Output, *, timeout_s: float | None = None,
                scorer: crossencoder.Scorer | None = None) -> SearchResult:
        """Run stage 1 (candidates), stage 2 (exact re-score), fusion, stage 3 (with ``scorer``, when the request
        asks for it) and the output fields for one query.

        ``timeout_s`` bounds the Milvus calls (default: the request's ``timeout_s``).
        """
        t_start = time.perf_counter()
        request, plan, routes = prepared.request, prepared.plan, prepared.routes
        reps = plan.representations
        if timeout_s is None:
            timeout_s = request.timeout_s
        if timeout_s is not None and not timeout_s > 0:
            raise DeadlineExceeded("the request's deadline passed before the search started")
        deadline = None if timeout_s is None else t_start + timeout_s
        timings: dict[str, float] = {}
        need = prepared.encode_kwargs
        q = _QueryVectors.from_output(query_encoding, need["dense"], need["sparse"], need["colbert"])

        # stage 1: candidates with their dense and sparse vectors, one Milvus search per route, concurrently
        t = time.perf_counter()
        if request.cross_encoder is not None and scorer is None:
            raise FailedPrecondition("this search asks for the cross-encoder stage but no reranker is configured; "
                                     "set MEE_RERANKER_MODEL (e.g. BAAI/bge-reranker-v2-m3)")
        route_results, degraded = self._candidates(routes, q, request.filter, prepared.candidate_fields, plan,
                                                   timings, deadline)
        timings["candidates"] = _ms(t)
        found: dict[str, Candidate] = {}
        for route_hits in route_results.values():
            for c in route_hits:
                found.setdefault(c.id, c)
        pool = _CandidatePool(sorted(found), found, q, reps)

        # stage 2: exact dense and lexical scores from those vectors; ColBERT read only where it can matter
        t = time.perf_counter()
        pool.score_dense_sparse()
        fetch_ms = 0.0
        if "colbert" in reps:
            fetch_ms = self._score_colbert(pool, plan, prepared.fused_depth, degraded, deadline)
        timings["fetch"] = round(fetch_ms, 3)
        timings["rescore"] = round(_ms(t) - fetch_ms, 3)

        # fusion over the candidates that carry every score (the rest cannot reach the page)
        t = time.perf_counter()
        scores = pool.scores()
        ranking = self._fuse(plan, scores)
        page = fusion_fns.top(ranking, request.top_k, request.offset)
        timings["fuse"] = _ms(t)

        hits = [Hit(doc_id, float(score), {r: scores[r][doc_id] for r in reps}) for doc_id, score in page]
        if request.cross_encoder is not None:
            hits = self._cross_encode(prepared, ranking, scores, pool, scorer, timings, degraded)
        dropped = pool.dropped
        wanted = list(prepared.output_fields)
        if wanted:
            # stage 1 read the fields with the vectors; only documents re-read since then need them again
            for h in hits:
                h.fields = {f: pool.found[h.id].fields.get(f) for f in wanted}
            stale = [h.id for h in hits if h.id in pool.reread]
            if stale:
                t = time.perf_counter()
                rows = self._call(lambda: self.doc_store.get(stale, output_fields=wanted), "read output fields")
                by_id = {str(row["id"]): row for row in rows}
                kept = []
                for h in hits:
                    if h.id in pool.reread:
                        row = by_id.get(h.id)
                        if row is None:
                            dropped += 1
                            continue
                        h.fields = {f: row.get(f) for f in wanted}
                    kept.append(h)
                hits = kept
                timings["fields"] = _ms(t)
        timings["total"] = _ms(t_start)
        return SearchResult(
            hits=hits,
            timings_ms=timings,
            plan=plan,
            routes=routes,
            candidates=len(pool.ids),
            route_hits={r.name: len(route_results.get(r.name, ())) for r in routes},
            query_tokens=q.tokens,
            degraded=tuple(degraded),
            dropped=dropped,
            candidate_ids=tuple(pool.ids),
            colbert_read=pool.colbert_read,
        )

    def _cross_encode(self, prepared: PreparedSearch, ranking: fusion_fns.Ranking,
                      scores: Mapping[str, Mapping[str, float]], pool: _CandidatePool,
                      scorer: crossencoder.Scorer | None, timings: dict[str, float],
                      degraded: list[str]) -> list[Hit]:
        """Stage 3: the fused top N re-ordered by the cross-encoder over their stored text; then the page."""
        request, stage = prepared.request, prepared.request.cross_encoder
        assert stage is not None and scorer is not None
        top = fusion_fns.top(ranking, stage.depth(prepared.page_end))
        texts = {i: pool.found[i].fields.get("text") for i, _ in top if i not in pool.reread}
        stale = [i for i, _ in top if i in pool.reread]
        if stale:  # changed after stage 1: read the text of the version that was scored
            t = time.perf_counter()
            rows = self._call(lambda: self.doc_store.get(stale, output_fields=["text"]), "read passage texts")
            texts.update({str(row["id"]): row.get("text") for row in rows})
            timings["cross_encoder.fetch"] = _ms(t)
        reps = list(scores)
        fused = [crossencoder.FusedHit(i, float(sc), {r: scores[r][i] for r in reps}) for i, sc in top]
        result = crossencoder.apply(request.query, fused, texts, scorer, stage)
        timings["cross_encoder"] = result.timing_ms
        if result.missing:  # deleted between stage 1 and the text read: not re-scored, not returned
            degraded.append(f"cross_encoder: {len(result.missing)} hit(s) had no stored text and were left out "
                            f"(first: {result.missing[0]!r})")
        page = result.hits[request.offset:request.offset + request.top_k]
        return [Hit(h.id, h.score, h.scores) for h in page]

    def _score_colbert(self, pool: _CandidatePool, plan: SearchPlan, page_end: int, degraded: list[str],
                       deadline: float | None) -> float:
        """Read ColBERT vectors and score MaxSim, reading as few candidates as exactness allows; returns the ms
        spent reading.

        For ``m3`` fusion the fused score is linear in the ColBERT score, which cannot exceed the query rows'
        mean norm times the stored rows' norm bound (:func:`colbert_bound`). Candidates are read in order of
        their upper bound, and reading stops once the best unread bound is below the page's last exact
        score: no unread candidate can then enter the page or tie with it. Other fusions normalise over every
        candidate, so they read all of them.
        """
        order = list(pool.ids)
        if plan.fusion == "m3":
            weights = {r: plan.weight(r) for r in pool.reps}
            total = math.fsum(weights.values())
            bound = colbert_bound(q_rows=pool.q.colbert, codec=self.layout.colbert_codec)
            partial = pool.partial(weights)
            upper = {i: (partial[i] + weights["colbert"] * bound) / total for i in order}
            order.sort(key=lambda i: (-upper[i], i))
        else:
            upper = None
        fetch_ms = 0.0
        pos, batch = 0, max(page_end, COLBERT_FIRST_READ)
        while pos < len(order):
            if upper is not None and pool.scored >= page_end:
                threshold = pool.kth_fused(page_end, weights, total)
                if upper[order[pos]] < threshold:
                    break
                # the next read takes every candidate whose bound still reaches the threshold (up to `batch`)
                end = pos
                while end < len(order) and end - pos < batch and upper[order[end]] >= threshold:
                    end += 1
            else:
                end = len(order) if upper is None else min(len(order), pos + batch)
            if deadline is not None and time.perf_counter() > deadline:
                raise DeadlineExceeded("stage 2 (ColBERT re-score) did not finish within the request's time budget")
            part = order[pos:end]
            t = time.perf_counter()
            refs = {i: pool.found[i].colbert for i in part}
            matrices, reread = self._call(functools.partial(self.doc_store.fetch_colbert, refs),
                                          "fetch ColBERT vectors")
            fetch_ms += _ms(t)
            pool.add_colbert(part, matrices, reread)
            pos, batch = end, batch * 2
        if pool.lacking:
            degraded.append(f"rescore: {len(pool.lacking)} candidate(s) lack stored vectors for {list(pool.reps)} "
                            f"and were left out (first: {pool.lacking[0]!r})")
        return fetch_ms

    def _candidates(
        self,
        routes: Sequence[Route],
        q: _QueryVectors,
        filter_expr: str,
        output_fields: Sequence[str],
        plan: SearchPlan,
        timings: dict[str, float],
        deadline: float | None,
    ) -> tuple[dict[str, list[Candidate]], list[str]]:
        def run(route: Route) -> tuple[list[Candidate], float]:
            t = time.perf_counter()
            if route.name == "sparse":
                hits = (self.doc_store.candidates("sparse", q.sparse, route.depth, filter_expr, output_fields)
                        if q.sparse else [])
            elif route.name == "dense":
                hits = self.doc_store.candidates("dense", q.dense, route.depth, filter_expr, output_fields)
            else:
                dim = int(route.field.split("_", 1)[1])
                projected = np.asarray(self.doc_store.project(q.dense[None, :], dim), dtype=np.float32)
                hits = self.doc_store.candidates(route.field, projected.reshape(-1), route.depth, filter_expr,
                                                 output_fields)
            return hits, _ms(t)

        pool = self._pool()
        futures: list[tuple[Route, Future]] = [(r, pool.submit(run, r)) for r in routes]
        results: dict[str, list[Candidate]] = {}
        errors: list[tuple[Route, Exception]] = []
        for route, fut in futures:
            try:
                timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
                hits, elapsed = fut.result(timeout=timeout)
            except FutureTimeout:
                for _, other in futures:
                    other.cancel()
                raise DeadlineExceeded(
                    f"candidate search on {route.field} did not finish within the request's time budget"
                ) from None
            except Exception as exc:  # noqa: BLE001 - classified below
                errors.append((route, self._classify(exc, route, filter_expr)))
                continue
            results[route.name] = hits
            timings[route.stage] = elapsed
        if errors:
            # caller errors (bad filter) are never skipped; transient failures may be when the plan allows
            fatal = [e for _, e in errors if not isinstance(e, (Unavailable, DeadlineExceeded))]
            if fatal or not plan.allow_partial or not results:
                raise (fatal or [e for _, e in errors])[0]
        return results, [f"{r.stage}: {e}" for r, e in errors]

    @staticmethod
    def _classify(exc: Exception, route: Route, filter_expr: str) -> Exception:
        """A stage-1 failure as a domain error that says which stage failed and why. The store has already
        typed Milvus' answers (a refused filter is :class:`InvalidFilter`); anything untyped is this route's."""
        if isinstance(exc, InvalidFilter):
            return InvalidFilter(f"invalid filter expression {filter_expr!r}; Milvus says: {exc.reason}",
                                 reason=exc.reason)
        if isinstance(exc, MilvusEmbedError):
            return exc
        return Unavailable(f"candidate search on field {route.field} failed: {_milvus_message(exc)}")

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except MilvusEmbedError:
            raise
        except Exception as exc:  # noqa: BLE001 - pymilvus raises many types
            raise Unavailable(f"could not {what} from Milvus: {_milvus_message(exc)}") from exc

    @staticmethod
    def _fuse(plan: SearchPlan, scores: Mapping[str, Mapping[str, float]]) -> fusion_fns.Ranking:
        reps = list(scores)
        if plan.fusion == "m3":
            return fusion_fns.m3(scores, {r: plan.weight(r) for r in reps})
        if plan.fusion == "rrf":
            return fusion_fns.rrf([fusion_fns.rank_ids(scores[r]) for r in reps], k=plan.rrf_k)
        weights = [plan.weight(r) for r in reps]
        if plan.fusion == "weighted":
            return fusion_fns.weighted([scores[r] for r in reps], weights, norm=plan.normalization)
        return fusion_fns.dbsf([scores[r] for r in reps], weights)


def colbert_bound(q_rows: np.ndarray, codec: str) -> float:
    """An upper bound on any stored document's MaxSim score for these query rows.

    MaxSim is the mean over query rows of ``max_j q_i . d_j <= |q_i| |d_j|``; stored rows have norm at most
    ``MAX_COLBERT_NORM`` (checked at write) times the codec's :func:`~..store.codecs.norm_bound`.
    """
    from ..store import codecs
    from ..store.documents import MAX_COLBERT_NORM

    q = np.asarray(q_rows, dtype=np.float64)
    if q.size == 0:
        return 0.0
    q_norm = float(np.sqrt(np.einsum("ij,ij->i", q, q)).mean())
    return q_norm * MAX_COLBERT_NORM * codecs.norm_bound(codec, q.shape[1]) * (1.0 + 1e-6)


class _CandidatePool:
    """Stage 2's working set: every candidate's exact scores, filled in as vectors arrive."""

    def __init__(self, ids: list[str], found: dict[str, Candidate], q: _QueryVectors, reps: Sequence[str]) -> None:
        self.ids = ids
        self.found = found
        self.q = q
        self.reps = tuple(reps)
        self.values: dict[str, dict[str, float]] = {r: {} for r in self.reps}
        self.gone: set[str] = set()
        self.reread: set[str] = set()
        self.lacking: list[str] = []
        self.colbert_read = 0

    def score_dense_sparse(self, ids: Sequence[str] | None = None) -> None:
        ids = self.ids if ids is None else ids
        rows = [self.found[i] for i in ids]
        if "dense" in self.reps:
            dim = self.q.dense.size
            mat = np.stack([c.dense for c in rows]) if rows else np.zeros((0, dim), np.float32)
            self.values["dense"].update(zip(ids, rescore.dense_scores(self.q.dense, mat).tolist(), strict=True))
        if "sparse" in self.reps:
            values = rescore.lexical_scores(self.q.sparse, [c.sparse for c in rows])
            self.values["sparse"].update(zip(ids, values.tolist(), strict=True))

    def partial(self, weights: Mapping[str, float]) -> dict[str, float]:
        """Weighted dense + lexical score of every candidate (the m3 sum without ColBERT)."""
        out = dict.fromkeys(self.ids, 0.0)
        for rep in ("dense", "sparse"):
            if rep in self.reps:
                for i, v in self.values[rep].items():
                    out[i] += weights[rep] * v
        return out

    def add_colbert(self, part: Sequence[str], matrices: Mapping[str, np.ndarray],
                    reread: Mapping[str, Any]) -> None:
        """Take one read's ColBERT matrices; re-read documents replace their stage-1 vectors wholesale."""
        scored: list[str] = []
        mats: list[np.ndarray] = []
        for i in part:
            if i in matrices:
                scored.append(i)
                mats.append(matrices[i])
            elif i in reread:
                v = reread[i]
                if v.colbert is None or (v.dense is None and "dense" in self.reps):
                    self.lacking.append(i)
                    continue
                self.found[i] = Candidate(i, self.found[i].score, np.asarray(v.dense, np.float32), dict(v.sparse),
                                          self.found[i].colbert)
                self.reread.add(i)
                self.score_dense_sparse([i])
                scored.append(i)
                mats.append(v.colbert)
            else:
                self.gone.add(i)
        self.colbert_read += len(part)
        if scored:
            values = rescore.colbert_scores(self.q.colbert, mats)
            self.values["colbert"].update(zip(scored, values.tolist(), strict=True))

    @property
    def scored(self) -> int:
        return len(self.values["colbert"])

    def kth_fused(self, k: int, weights: Mapping[str, float], total: float) -> float:
        """The k-th best exact m3 score among the candidates with every score."""
        fused = sorted((math.fsum(weights[r] * self.values[r][i] for r in self.reps) / total
                        for i in self.values["colbert"]), reverse=True)
        return fused[k - 1] if len(fused) >= k else -math.inf

    def scores(self) -> dict[str, dict[str, float]]:
        """Each representation's scores over the candidates that have all of them."""
        if "colbert" not in self.reps:
            return {r: dict(self.values[r]) for r in self.reps}
        complete = [i for i in self.ids if i in self.values["colbert"]]
        return {r: {i: self.values[r][i] for i in complete} for r in self.reps}

    @property
    def dropped(self) -> int:
        return len(self.gone)


# --------------------------------------------------------------------------- helpers


@dataclass
class _QueryVectors:
    dense: np.ndarray
    sparse: dict[int, float]
    colbert: np.ndarray
    tokens: int

    @classmethod
    def from_output(cls, out: M3Output, dense: bool, sparse: bool, colbert: bool) -> _QueryVectors:
        if len(out) != 1:
            raise InvalidArgument(f"query encoding must have exactly one row, got {len(out)}")
        missing = [name for name, need, have in (("dense", dense, out.dense), ("sparse", sparse, out.sparse),
                                                 ("colbert", colbert, out.colbert)) if need and have is None]
        if missing:
            raise FailedPrecondition(f"query encoding lacks {', '.join(missing)} vectors that the plan needs")
        return cls(
            dense=np.asarray(out.dense[0], dtype=np.float32) if out.dense is not None else np.zeros(0, np.float32),
            sparse={int(k): float(v) for k, v in out.sparse[0].items()} if out.sparse is not None else {},
            colbert=np.asarray(out.colbert[0], dtype=np.float32) if out.colbert is not None else np.zeros((0, 0)),
            tokens=int(out.token_counts[0]) if len(out.token_counts) else 0,
        )


def _milvus_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


__all__ = [
    "DEFAULT_DEPTH",
    "PreparedSearch",
    "colbert_bound",
    "FUSIONS",
    "REPRESENTATIONS",
    "ROUTES",
    "Hit",
    "HybridSearcher",
    "Route",
    "SearchPlan",
    "SearchRequest",
    "SearchResult",
]
