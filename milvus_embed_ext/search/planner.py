"""The multi-stage hybrid search planner.

One request runs as:

1. encode the query (through ``encode_fn``, so the service can route it through its micro-batcher);
2. stage 1, candidates: one Milvus search per route, concurrently on a thread pool (pymilvus is sync):
   a truncated dense field (``dense_<dim>``, prefix or PCA projection), the sparse inverted index (IP) and
   the full dense field, each with its own depth and the caller's filter expression;
3. stage 2, exact re-score of the union of candidates inside the sidecar from the stored vectors: full
   dense inner product, lexical score and ColBERT MaxSim (vectorised, :mod:`.rescore`);
4. fusion (:mod:`.fusion`): ``m3`` (BGE-M3 ``compute_score``), ``rrf``, ``weighted`` (normalised), ``dbsf``.

Fusion always works on the exact stage-2 scores of every candidate, so each representation ranks the
same candidate set; stage-1 scores only choose candidates. A failed stage fails the request, unless the
plan sets ``allow_partial``: then failed routes are listed in :attr:`SearchResult.degraded` and the
result says it is incomplete.
"""

from __future__ import annotations

import dataclasses
import math
import re
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
    MilvusEmbedError,
    Unavailable,
)
from ..limits import DEFAULT_MAX_TOP_K, FUSIONS, MILVUS_MAX_TOPK, NORMALIZATIONS, REPRESENTATIONS, ROUTES
from . import fusion as fusion_fns
from . import rescore

if TYPE_CHECKING:
    from ..config import Settings
    from ..encoder import M3Output

DEFAULT_WEIGHTS = (0.4, 0.2, 0.4)
DEFAULT_DEPTH = 100
OUTPUT_FIELDS = ("text", "metadata")


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
    def for_layout(cls, layout: Any, **overrides: Any) -> SearchPlan:
        """The default plan for a collection.

        No ColBERT scores when it stores none; then the collection's own defaults, kept with its layout
        as ``layout.extra["search"]`` (a mapping of plan options); then ``overrides``.
        """
        base = cls()
        if getattr(layout, "colbert", "auto") == "none":
            base = dataclasses.replace(base, representations=("dense", "sparse"))
        stored = (getattr(layout, "extra", None) or {}).get("search") or {}
        if not isinstance(stored, Mapping):
            raise FailedPrecondition(
                f"collection {getattr(layout, 'name', '?')!r}: layout extra['search'] must be a mapping of "
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
    """"encode", "candidates" (stage 1 wall), "candidates.<field>" (each Milvus call), "fetch", "rescore",
    "fuse", "fields", "total"."""
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

    @property
    def complete(self) -> bool:
        return not self.degraded


# --------------------------------------------------------------------------- searcher


class HybridSearcher:
    """Answers :class:`SearchRequest` s over one collection (a ``DocumentStore``). Thread-safe."""

    def __init__(
        self,
        doc_store: Any,
        encode_fn: EncodeFn | Callable[..., M3Output],
        *,
        plan: SearchPlan | None = None,
        settings: Settings | None = None,
        max_top_k: int | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.doc_store = doc_store
        self.layout = doc_store.layout
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
    def open(cls, store: Any, collection: str, encode_fn: EncodeFn | Callable[..., M3Output],
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
                self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mee-search")
            return self._executor

    # ------------------------------------------------------------------ planning

    @property
    def truncated_dims(self) -> tuple[int, ...]:
        return tuple(sorted(t.dim for t in getattr(self.layout, "truncated", ())))

    def plan_for(self, request: SearchRequest) -> SearchPlan:
        if request.plan is None:
            return self.default_plan
        if isinstance(request.plan, SearchPlan):
            request.plan.validate()
            return request.plan
        if isinstance(request.plan, Mapping):
            return self.default_plan.replace(**request.plan)
        raise InvalidArgument(f"plan must be a SearchPlan or a mapping of plan options, got {type(request.plan).__name__}")

    def routes_for(self, plan: SearchPlan, page_end: int) -> tuple[Route, ...]:
        """Resolve the plan's routes against the collection's fields."""
        dims = self.truncated_dims
        name = getattr(self.layout, "name", "?")
        if plan.truncate_dim is not None and plan.truncate_dim not in dims:
            raise InvalidArgument(
                f"collection {name!r} has no truncated field dense_{plan.truncate_dim}; "
                f"stored: {', '.join(f'dense_{d}' for d in dims) or 'none'}"
            )
        if "colbert" in plan.representations and getattr(self.layout, "colbert", "auto") == "none":
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
        scalar = getattr(self.layout, "scalar_fields", None)
        if scalar is None:
            available = [f for f in OUTPUT_FIELDS if f != "text" or getattr(self.layout, "store_text", True)]
        else:
            available = [f for f in scalar if f != "id"]
        if isinstance(output_fields, str):
            raise InvalidArgument("output_fields must be a list of field names, not a string")
        for f in output_fields:
            if f == "id":
                continue
            if f not in available:
                raise InvalidArgument(
                    f"unknown output field {f!r} for collection {getattr(self.layout, 'name', '?')!r}; "
                    f"available: {', '.join(available)}"
                )

    def query_outputs(self, request: SearchRequest) -> dict[str, bool]:
        """The encode kwargs (dense, sparse, colbert) the query of ``request`` needs; checks the request.

        For callers that encode the query themselves (the service's micro-batcher) and pass it to :meth:`search`.
        """
        self._check_request(request)
        plan = self.plan_for(request)
        return self._query_outputs(plan, self.routes_for(plan, request.offset + request.top_k))

    @staticmethod
    def _query_outputs(plan: SearchPlan, routes: Sequence[Route]) -> dict[str, bool]:
        reps = plan.representations
        return {
            "dense": "dense" in reps or any(r.name != "sparse" for r in routes),
            "sparse": "sparse" in reps or any(r.name == "sparse" for r in routes),
            "colbert": "colbert" in reps,
        }

    # ------------------------------------------------------------------ search

    def search(self, request: SearchRequest, *, query_encoding: M3Output | None = None) -> SearchResult:
        """Run one request. ``query_encoding`` (one row) skips encoding when the caller already has it."""
        t_start = time.perf_counter()
        self._check_request(request)
        plan = self.plan_for(request)
        page_end = request.offset + request.top_k
        routes = self.routes_for(plan, page_end)
        reps = plan.representations
        deadline = None if request.timeout_s is None else t_start + request.timeout_s
        timings: dict[str, float] = {}

        outputs = self._query_outputs(plan, routes)
        need_dense, need_sparse, need_colbert = outputs["dense"], outputs["sparse"], outputs["colbert"]
        if query_encoding is None:
            t = time.perf_counter()
            query_encoding = self.encode_fn([request.query], **outputs)
            timings["encode"] = _ms(t)
        q = _QueryVectors.from_output(query_encoding, need_dense, need_sparse, need_colbert)

        # stage 1: candidates, concurrently
        t = time.perf_counter()
        route_results, degraded = self._candidates(routes, q, request.filter, plan, timings, deadline)
        timings["candidates"] = _ms(t)
        union = sorted({doc_id for hits in route_results.values() for doc_id, _ in hits})

        # stage 2: exact re-score of the union
        t = time.perf_counter()
        stored = self._call(lambda: self.doc_store.fetch_vectors(union, colbert=need_colbert),
                            "fetch stored vectors") if union else {}
        timings["fetch"] = _ms(t)
        ids = [i for i in union if i in stored]
        dropped = len(union) - len(ids)
        lacking = [i for i in ids if any(_stored_value(stored[i], r) is None for r in reps)]
        if lacking:
            # e.g. ColBERT rows missing for a committed version: never score such a candidate partly
            gone = set(lacking)
            ids = [i for i in ids if i not in gone]
            degraded.append(f"rescore: {len(lacking)} candidate(s) lack stored vectors for {list(reps)} and were "
                            f"left out (first: {lacking[0]!r})")
        t = time.perf_counter()
        scores = self._rescore(q, ids, stored, reps)
        timings["rescore"] = _ms(t)

        # fusion
        t = time.perf_counter()
        ranking = self._fuse(plan, scores)
        page = fusion_fns.top(ranking, request.top_k, request.offset)
        timings["fuse"] = _ms(t)

        hits = [Hit(doc_id, float(score), {r: scores[r][doc_id] for r in reps}) for doc_id, score in page]
        if request.output_fields and hits:
            t = time.perf_counter()
            wanted = [f for f in dict.fromkeys(request.output_fields) if f != "id"]
            if wanted:
                rows = self._call(lambda: self.doc_store.get([h.id for h in hits], output_fields=wanted),
                                  "read output fields")
                by_id = {str(row["id"]): row for row in rows}
                kept = []
                for h in hits:
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
            candidates=len(ids),
            route_hits={r.name: len(route_results.get(r.name, ())) for r in routes},
            query_tokens=q.tokens,
            degraded=tuple(degraded),
            dropped=dropped,
            candidate_ids=tuple(ids),
        )

    def _candidates(
        self,
        routes: Sequence[Route],
        q: _QueryVectors,
        filter_expr: str,
        plan: SearchPlan,
        timings: dict[str, float],
        deadline: float | None,
    ) -> tuple[dict[str, list[tuple[str, float]]], list[str]]:
        def run(route: Route) -> tuple[list[tuple[str, float]], float]:
            t = time.perf_counter()
            if route.name == "sparse":
                hits = self.doc_store.search_sparse(q.sparse, route.depth, filter_expr) if q.sparse else []
            elif route.name == "dense":
                hits = self.doc_store.search_dense("dense", q.dense, route.depth, filter_expr)
            else:
                dim = int(route.field.split("_", 1)[1])
                projected = np.asarray(self.doc_store.project(q.dense[None, :], dim), dtype=np.float32)
                hits = self.doc_store.search_dense(route.field, projected.reshape(-1), route.depth, filter_expr)
            return [(str(i), float(s)) for i, s in hits], _ms(t)

        pool = self._pool()
        futures: list[tuple[Route, Future]] = [(r, pool.submit(run, r)) for r in routes]
        results: dict[str, list[tuple[str, float]]] = {}
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
        """Turn a stage-1 failure into a domain error that says which stage failed and why."""
        message = _milvus_message(exc)
        code = getattr(exc, "code", None)
        looks_like_filter = bool(filter_expr) and (code == 1100 or "expr" in message.lower())
        if looks_like_filter:
            reason = re.sub(r"^invalid filter expression:\s*", "", message, flags=re.IGNORECASE)
            return InvalidArgument(f"invalid filter expression {filter_expr!r}; Milvus says: {reason}")
        if isinstance(exc, MilvusEmbedError):
            return exc
        return Unavailable(f"candidate search on field {route.field} failed: {message}")

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return fn()
        except MilvusEmbedError:
            raise
        except Exception as exc:  # noqa: BLE001 - pymilvus raises many types
            raise Unavailable(f"could not {what} from Milvus: {_milvus_message(exc)}") from exc

    def _rescore(
        self, q: _QueryVectors, ids: Sequence[str], stored: Mapping[str, Any], reps: Sequence[str]
    ) -> dict[str, dict[str, float]]:
        rows = [stored[i] for i in ids]
        out: dict[str, dict[str, float]] = {}
        for rep in reps:
            if rep == "dense":
                vecs = [_stored(row, "dense") for row in rows]
                values = rescore.dense_scores(q.dense, np.stack(vecs) if vecs else np.zeros((0, q.dense.size)))
            elif rep == "sparse":
                values = rescore.lexical_scores(q.sparse, [_stored(row, "sparse") for row in rows])
            else:
                values = rescore.colbert_scores(q.colbert, [_stored(row, "colbert") for row in rows])
            out[rep] = {i: float(v) for i, v in zip(ids, values.tolist(), strict=True)}
        return out

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


def _stored_value(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def _stored(row: Any, name: str) -> Any:
    value = _stored_value(row, name)
    if value is None:
        raise FailedPrecondition(f"stored vectors lack {name}; the collection cannot be re-scored with it")
    return value


def _milvus_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message)


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0


__all__ = [
    "DEFAULT_DEPTH",
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
