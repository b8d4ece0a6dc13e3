"""RPC handlers: validate, resolve, call the library, build the reply. Errors are domain errors only;
the server's guard maps them to status codes (service/errors.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from ..config import Settings
from ..contracts import DocumentsBackend, MilvusBackend, ServedEncoder, ServedReranker
from ..errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from ..limits import DEFAULT_TOP_K
from ..wire import codec
from ..wire._generated import common_pb2, documents_pb2, embedder_pb2, search_pb2
from .batcher import Batcher, EncodeResult, RerankBatcher, RerankBatchResult
from .validation import (
    check_enum,
    check_enum_value,
    check_filter,
    check_ids,
    check_output_fields,
    check_rerank_input,
    check_texts,
    parse_metadata,
)

if TYPE_CHECKING:
    from .metrics import ServiceMetrics

T = TypeVar("T")

RERANKER_OFF = (
    "this sidecar has no cross-encoder reranker; start it with MEE_RERANKER_MODEL=BAAI/bge-reranker-v2-m3 (a hub "
    "id or a local checkpoint directory; `milvus-embed make-test-model DIR --kind reranker` builds an offline "
    "test one) to enable the Rerank RPC and search stage 3 (cross_encoder)"
)
OUTPUT_NAMES = {v.number: v.name for v in embedder_pb2.DESCRIPTOR.enum_types_by_name["Output"].values if v.number}
DTYPE_NAMES = {v.number: v.name for v in common_pb2.DESCRIPTOR.enum_types_by_name["DType"].values}


def _add_stage_time(stages: dict[str, float], stage: str, started: float, _done: Any = None) -> None:
    """Add the time since ``started`` to ``stages[stage]`` (a done-callback of an overlapped write)."""
    stages[stage] = stages.get(stage, 0.0) + _ms(time.perf_counter() - started)


@dataclass
class Runtime:
    """What the handlers share; the server fills it in as the model and Milvus come up."""

    settings: Settings
    store_executor: ThreadPoolExecutor
    encoder: ServedEncoder | None = None   # the M3Encoder once loaded
    batcher: Batcher | None = None
    store: MilvusBackend | None = None     # the MilvusStore once Milvus answers
    doc_stores: dict[str, DocumentsBackend] = field(default_factory=dict)
    metrics: ServiceMetrics | None = None  # search stage latency
    reranker: ServedReranker | None = None  # the Reranker once loaded; stays None unless MEE_RERANKER_MODEL is set
    rerank_batcher: RerankBatcher | None = None
    store_down: str = ""         # set by the server's Milvus watcher while Milvus is unreachable: why
    store_lost: asyncio.Event = field(default_factory=asyncio.Event)  # set with store_down: ends waits at once

    def require_reranker(self) -> RerankBatcher:
        """The reranker's batcher; FailedPrecondition (how to enable it) when none is configured."""
        if self.rerank_batcher is None:
            if not self.settings.reranker_model:
                raise FailedPrecondition(RERANKER_OFF)
            raise Unavailable("the reranker is still loading; wait until grpc health reports SERVING and retry")
        return self.rerank_batcher

    async def rerank_detailed(self, query: str, passages: list[str], normalize: bool = False, *,
                              timeout: float | None = None) -> RerankBatchResult:
        """Scores (and token counts, timings) of ``passages`` against ``query`` through the reranker's batcher."""
        check_rerank_input(query, passages, self.settings.reranker_max_pairs, self.settings.reranker_max_text_chars)
        result = await self.require_reranker().score(query, passages, timeout=timeout)
        if normalize:
            from ..encoder.reranker import sigmoid

            result = dataclasses.replace(result, scores=[sigmoid(v) for v in result.scores])
        return result

    async def rerank(self, query: str, passages: list[str], normalize: bool = False, *,
                     timeout: float | None = None) -> list[float]:
        """THE core rerank call (gRPC Rerank, HTTP /rerank): one score per passage, checked and batched."""
        return (await self.rerank_detailed(query, passages, normalize, timeout=timeout)).scores

    def require_encoder(self) -> tuple[ServedEncoder, Batcher]:
        if self.encoder is None or self.batcher is None:
            raise Unavailable("the model is still loading; wait until grpc health reports SERVING and retry")
        return self.encoder, self.batcher

    def require_store(self) -> MilvusBackend:
        if self.store_down:  # fail fast: no call that would wait for a Milvus known to be gone
            raise Unavailable(self.store_down)
        if self.store is None:
            raise Unavailable("Milvus is not connected yet (or unreachable); wait for health SERVING and retry")
        return self.store


def remaining(context: grpc.aio.ServicerContext) -> float | None:
    """Seconds left before the caller's deadline (None: no deadline); raises if it already passed."""
    left = context.time_remaining()
    if left is None:
        return None
    if left <= 0:
        raise DeadlineExceeded("the request's deadline passed before work started; raise the client timeout")
    return left


async def in_store_thread(rt: Runtime, context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking Milvus call off the event loop, bounded by the caller's deadline.

    When the Milvus watcher declares Milvus lost while the call waits (a hung Milvus, a cut network), the
    caller gets UNAVAILABLE at once instead of waiting for its deadline; the thread finishes on its own
    (writes are idempotent by id, so the client's retry converges either way)."""
    timeout = remaining(context)  # first: a call past its deadline must not start a write
    if rt.store_lost.is_set():  # Milvus went away since this request began: start nothing
        raise Unavailable(rt.store_down or "Milvus is unreachable; retry with backoff")
    fut = asyncio.get_running_loop().run_in_executor(rt.store_executor, fn, *args)
    fut.add_done_callback(_consume)  # if abandoned (lost, deadline, cancelled), its error must not warn
    lost = asyncio.ensure_future(rt.store_lost.wait())
    try:
        waiting: set[asyncio.Future[Any]] = {fut, lost}
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
    if fut in done:
        try:
            return fut.result()
        except NotFound:
            rt.doc_stores.clear()  # a collection vanished (dropped, renamed by a migration): re-open on next use
            raise
    if lost in done:
        raise Unavailable(rt.store_down or "Milvus became unreachable during the call; retry with backoff")
    raise DeadlineExceeded("deadline passed while waiting for Milvus; raise the client timeout")


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


# ---------------------------------------------------------------- Embedder


class EmbedderHandlers:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def embed(self, req: embedder_pb2.EmbedRequest, context: grpc.aio.ServicerContext) -> embedder_pb2.EmbedResponse:
        started = time.perf_counter()
        s = self.rt.settings
        check_texts(req.texts, s.max_texts_per_request)
        check_enum(req.outputs, OUTPUT_NAMES, "outputs")
        check_enum_value(req.dtype, DTYPE_NAMES, "dtype")
        encoder, batcher = self.rt.require_encoder()
        outputs = set(req.outputs) or {embedder_pb2.OUTPUT_DENSE, embedder_pb2.OUTPUT_SPARSE}
        dims = list(req.truncate_dims)
        for i, d in enumerate(dims):
            if not 0 < d <= encoder.hidden_size:
                raise InvalidArgument(f"truncate_dims[{i}]={d} must be in 1..{encoder.hidden_size} (the model's hidden size)")
        if len(set(dims)) != len(dims):
            raise InvalidArgument(f"truncate_dims has duplicates {dims}; list each dimension once")
        if req.max_length > s.max_length:
            raise InvalidArgument(f"max_length={req.max_length} exceeds the server's max_length={s.max_length}; send "
                                  "0 for the server default or a smaller value")
        result = await batcher.encode(
            list(req.texts),
            dense=embedder_pb2.OUTPUT_DENSE in outputs,
            sparse=embedder_pb2.OUTPUT_SPARSE in outputs,
            colbert=embedder_pb2.OUTPUT_COLBERT in outputs,
            truncate_dims=dims,
            max_length=req.max_length or None,
            timeout=remaining(context),
        )
        out = result.output
        resp = embedder_pb2.EmbedResponse(
            token_counts=[int(c) for c in out.token_counts],
            model=str(encoder.model_id),
            model_fingerprint=str(encoder.fingerprint),
        )
        dtype = req.dtype or common_pb2.DTYPE_FLOAT32
        if embedder_pb2.OUTPUT_DENSE in outputs:
            resp.dense.CopyFrom(codec.pack_matrix(out.dense, dtype))
        if embedder_pb2.OUTPUT_SPARSE in outputs:
            resp.sparse.extend(codec.pack_sparse(w) for w in out.sparse)
        if embedder_pb2.OUTPUT_COLBERT in outputs:
            resp.colbert.extend(codec.pack_matrix(m, dtype) for m in out.colbert)
        for d in dims:
            resp.truncated.add(dim=d, vectors=codec.pack_matrix(out.truncated[d], dtype))
        resp.timings.queue_ms = _ms(result.queue_ms / 1000.0)
        resp.timings.inference_ms = _ms(result.inference_ms / 1000.0)
        resp.timings.total_ms = _ms(time.perf_counter() - started)
        resp.timings.stages_ms["encode"] = resp.timings.queue_ms + resp.timings.inference_ms
        return resp


    async def rerank(self, req: embedder_pb2.RerankRequest,
                     context: grpc.aio.ServicerContext) -> embedder_pb2.RerankResponse:
        started = time.perf_counter()
        result = await self.rt.rerank_detailed(req.query, list(req.passages), req.normalize,
                                               timeout=remaining(context))
        reranker = self.rt.reranker  # set with the batcher rerank_detailed required: never None here
        resp = embedder_pb2.RerankResponse(
            scores=result.scores, token_counts=result.token_counts,
            model=reranker.model_id if reranker is not None else "",
            model_fingerprint=reranker.fingerprint if reranker is not None else "",
        )
        resp.timings.queue_ms = _ms(result.queue_ms / 1000.0)
        resp.timings.inference_ms = _ms(result.inference_ms / 1000.0)
        resp.timings.total_ms = _ms(time.perf_counter() - started)
        resp.timings.stages_ms["rerank"] = resp.timings.queue_ms + resp.timings.inference_ms
        return resp


# ---------------------------------------------------------------- Documents


async def _enumerate(items: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    i = 0
    async for item in items:
        yield i, item
        i += 1


class DocumentsHandlers:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def doc_store(self, name: str, context: grpc.aio.ServicerContext) -> DocumentsBackend:
        """The DocumentStore of ``name`` (default collection when empty); NotFound when absent."""
        from ..store import DocumentStore

        store = self.rt.require_store()
        name = name or self.rt.settings.collection
        cached = self.rt.doc_stores.get(name)
        if cached is not None:
            return cached
        opened = await in_store_thread(self.rt, context, DocumentStore.open, store, name)
        self.rt.doc_stores[name] = opened
        return opened

    def _documents(self, req: documents_pb2.UpsertRequest, offset: int = 0) -> list[Any]:
        """The request's documents; ids and texts are checked by DocumentStore.validate (once per chunk)."""
        from ..store import Document

        s = self.rt.settings
        if not req.documents:
            raise InvalidArgument(f"documents is empty; send 1..{s.max_texts_per_request} documents")
        if len(req.documents) > s.max_texts_per_request:
            raise InvalidArgument(
                f"documents has {len(req.documents)} entries, more than max_texts_per_request="
                f"{s.max_texts_per_request}; split it or use UpsertStream with smaller chunks"
            )
        docs = []
        for i, d in enumerate(req.documents):
            where = f"documents[{offset + i}]"
            docs.append(Document(id=d.id, text=d.text, metadata=parse_metadata(d.metadata_json, f"{where}.metadata_json")))
        return docs

    async def _write_chunk(self, doc_store: DocumentsBackend, docs: list[Any], context: grpc.aio.ServicerContext,
                           timings: dict[str, float], offset: int = 0) -> tuple[Callable[[], None], int, EncodeResult]:
        """Validate and encode one chunk; returns the (deferred) write, the token count and the encode result."""
        _, batcher = self.rt.require_encoder()
        t = time.perf_counter()
        checked = await in_store_thread(self.rt, context,
                                        functools.partial(doc_store.validate, docs, first_index=offset))
        timings["validate"] = timings.get("validate", 0.0) + _ms(time.perf_counter() - t)
        t = time.perf_counter()
        enc = await batcher.encode([d.text for d in checked], **doc_store.encode_kwargs(), timeout=remaining(context))
        timings["encode"] = timings.get("encode", 0.0) + _ms(time.perf_counter() - t)
        return (lambda: doc_store.write_checked(checked, enc.output)), int(enc.output.token_counts.sum()), enc

    async def upsert(self, req: documents_pb2.UpsertRequest, context: grpc.aio.ServicerContext) -> documents_pb2.UpsertResponse:
        started = time.perf_counter()
        docs = self._documents(req)
        self.rt.require_encoder()
        doc_store = await self.doc_store(req.collection, context)
        stages: dict[str, float] = {}
        write, tokens, enc = await self._write_chunk(doc_store, docs, context, stages)
        t = time.perf_counter()
        await in_store_thread(self.rt, context, write)
        stages["write"] = _ms(time.perf_counter() - t)
        resp = documents_pb2.UpsertResponse(upserted=len(docs), tokens=tokens)
        resp.timings.queue_ms = _ms(enc.queue_ms / 1000.0)
        resp.timings.inference_ms = _ms(enc.inference_ms / 1000.0)
        resp.timings.total_ms = _ms(time.perf_counter() - started)
        resp.timings.stages_ms.update(stages)
        return resp

    async def upsert_stream(self, requests: AsyncIterator[documents_pb2.UpsertRequest],
                            context: grpc.aio.ServicerContext) -> documents_pb2.UpsertResponse:
        """Chunks are encoded while the previous chunk is being written (encoder and Milvus overlap)."""
        started = time.perf_counter()
        stages: dict[str, float] = {}
        queue_ms = inference_ms = 0.0
        collection: str | None = None
        doc_store: DocumentsBackend  # opened with the first message
        pending: asyncio.Future[Any] | None = None
        upserted = tokens = offset = 0
        try:
            async for message, req in _enumerate(requests):
                if collection is None:
                    collection = req.collection
                    self.rt.require_encoder()
                    doc_store = await self.doc_store(collection, context)
                elif req.collection and req.collection != collection:
                    raise InvalidArgument(
                        f"UpsertStream message {message} names collection {req.collection!r} but the stream "
                        f"started with {collection or self.rt.settings.collection!r}; use one stream per collection"
                    )
                docs = self._documents(req, offset)
                write, n_tokens, enc = await self._write_chunk(doc_store, docs, context, stages, offset)
                queue_ms += enc.queue_ms
                inference_ms += enc.inference_ms
                if pending is not None:
                    await pending  # the previous chunk's write, overlapped with this chunk's encoding
                t = time.perf_counter()
                pending = asyncio.ensure_future(in_store_thread(self.rt, context, write))
                pending.add_done_callback(functools.partial(_add_stage_time, stages, "write", t))
                upserted += len(docs)
                tokens += n_tokens
                offset += len(docs)
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
        if collection is None:
            raise InvalidArgument("UpsertStream received no messages; send at least one UpsertRequest with documents")
        resp = documents_pb2.UpsertResponse(upserted=upserted, tokens=tokens)
        resp.timings.queue_ms = _ms(queue_ms / 1000.0)
        resp.timings.inference_ms = _ms(inference_ms / 1000.0)
        resp.timings.total_ms = _ms(time.perf_counter() - started)
        resp.timings.stages_ms.update(stages)
        return resp

    async def delete(self, req: documents_pb2.DeleteRequest, context: grpc.aio.ServicerContext) -> documents_pb2.DeleteResponse:
        check_ids(req.ids, self.rt.settings.max_texts_per_request)
        doc_store = await self.doc_store(req.collection, context)
        deleted = await in_store_thread(self.rt, context, doc_store.delete, list(dict.fromkeys(req.ids)))
        return documents_pb2.DeleteResponse(deleted=int(deleted))

    async def get(self, req: documents_pb2.GetRequest, context: grpc.aio.ServicerContext) -> documents_pb2.GetResponse:
        check_ids(req.ids, self.rt.settings.max_texts_per_request)
        fields = check_output_fields(req.output_fields)
        check_enum_value(req.dtype, DTYPE_NAMES, "dtype")
        doc_store = await self.doc_store(req.collection, context)
        # default: whatever the collection stores (no text when it was created with store_text=False)
        fields = fields or tuple(f for f in doc_store.layout.scalar_fields if f != "id")
        ids = list(dict.fromkeys(req.ids))
        rows = await in_store_thread(self.rt, context, functools.partial(
            doc_store.get, ids, output_fields=list(fields), with_vectors=req.with_vectors, with_colbert=False))
        by_id = {str(r["id"]): r for r in rows}
        missing = [i for i in ids if i not in by_id]
        if missing and not req.allow_missing:
            shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise NotFound(
                f"{len(missing)} of {len(ids)} id(s) not found in collection "
                f"{req.collection or self.rt.settings.collection!r}: {shown}; set allow_missing to get the others"
            )
        resp = documents_pb2.GetResponse(missing_ids=missing)
        for doc_id in ids:
            row = by_id.get(doc_id)
            if row is None:
                continue
            out = resp.documents.add(id=doc_id)
            if "text" in fields and row.get("text") is not None:
                out.text = str(row["text"])
            if "metadata" in fields and row.get("metadata") is not None:
                out.metadata_json = json.dumps(row["metadata"], ensure_ascii=False, separators=(",", ":"))
            if req.with_vectors:
                if row.get("dense") is not None:
                    out.dense.CopyFrom(codec.pack_matrix(np.asarray(row["dense"], dtype=np.float32),
                                                         req.dtype or common_pb2.DTYPE_FLOAT32))
                if row.get("sparse") is not None:
                    out.sparse.CopyFrom(codec.pack_sparse({int(k): float(v) for k, v in dict(row["sparse"]).items()}))
        return resp


# ---------------------------------------------------------------- Search

REP_NAMES = {v.number: v.name for v in search_pb2.DESCRIPTOR.enum_types_by_name["Representation"].values if v.number}
FUSION_NAMES = {v.number: v.name for v in search_pb2.DESCRIPTOR.enum_types_by_name["FusionMethod"].values}
NORM_NAMES = {v.number: v.name for v in search_pb2.DESCRIPTOR.enum_types_by_name["Normalization"].values}
_ROUTE_OF = {search_pb2.REPRESENTATION_DENSE: "dense", search_pb2.REPRESENTATION_SPARSE: "sparse",
             search_pb2.REPRESENTATION_DENSE_TRUNCATED: "dense_truncated"}
_RESCORE_OF = {search_pb2.REPRESENTATION_DENSE: "dense", search_pb2.REPRESENTATION_SPARSE: "sparse",
               search_pb2.REPRESENTATION_COLBERT: "colbert"}
_FUSION_OF = codec.FUSION_NAME
_NORM_OF = codec.NORMALIZATION_NAME


def _representations(values: Any, allowed: Mapping[Any, str], field: str, why: str) -> tuple[str, ...]:
    """The planner's names for wire representations, each once; InvalidArgument for one ``field`` cannot use."""
    bad = [REP_NAMES[c] for c in values if c not in allowed]
    if bad:
        raise InvalidArgument(f"{field} cannot use {bad}: {why}")
    return tuple(dict.fromkeys(allowed[c] for c in values))


def plan_overrides(req: search_pb2.HybridSearchRequest) -> dict[str, Any]:
    """The request's plan and fusion options as SearchPlan overrides (unset fields keep the default)."""
    out: dict[str, Any] = {}
    if req.HasField("plan"):
        p = req.plan
        check_enum(p.candidates, REP_NAMES, "plan.candidates")
        check_enum(p.rescore, REP_NAMES, "plan.rescore")
        check_enum(p.rerank, REP_NAMES, "plan.rerank")
        if p.rerank and p.rescore and list(p.rerank) != list(p.rescore):
            raise InvalidArgument("plan.rescore and its deprecated alias plan.rerank disagree; send plan.rescore only")
        rescore = p.rescore or p.rerank  # plan.rerank: the old name, accepted for one release
        if p.candidates:
            out["routes"] = _representations(p.candidates, _ROUTE_OF, "plan.candidates",
                                             "ColBERT only re-scores; use DENSE, SPARSE or DENSE_TRUNCATED")
        if rescore:
            out["representations"] = _representations(rescore, _RESCORE_OF, "plan.rescore",
                                                      "a truncated field only finds candidates; use DENSE, SPARSE "
                                                      "or COLBERT")
        if p.candidate_k:
            out["depth"] = int(p.candidate_k)
        if p.truncate_dim:
            out["truncate_dim"] = int(p.truncate_dim)
        if p.allow_partial:
            out["allow_partial"] = True
    if req.HasField("fusion"):
        f = req.fusion
        check_enum_value(f.method, FUSION_NAMES, "fusion.method")
        check_enum_value(f.normalization, NORM_NAMES, "fusion.normalization")
        if f.method:
            out["fusion"] = _FUSION_OF[f.method]
        if f.normalization:
            out["normalization"] = _NORM_OF[f.normalization]
        if f.rrf_k:
            out["rrf_k"] = float(f.rrf_k)
        if f.HasField("weights"):
            weights = {name: getattr(f.weights, name) for name in ("dense", "sparse", "colbert")
                       if f.weights.HasField(name)}
            if weights:
                out["weights"] = weights
    return out


_CE_ORDER_OF = {search_pb2.CROSS_ENCODER_ORDER_RERANKER: "reranker", search_pb2.CROSS_ENCODER_ORDER_FUSED: "fused"}
CE_ORDER_NAMES = {v.number: v.name for v in search_pb2.DESCRIPTOR.enum_types_by_name["CrossEncoderOrder"].values}


def cross_encoder_stage(req: search_pb2.HybridSearchRequest, settings: Settings) -> Any:
    """The request's stage-3 options with the server's defaults, or None when it does not ask for stage 3."""
    if not (req.HasField("cross_encoder") and req.cross_encoder.enabled):
        return None
    from ..search.crossencoder import stage_from_options

    ce = req.cross_encoder
    check_enum_value(ce.order, CE_ORDER_NAMES, "cross_encoder.order")
    return stage_from_options(top_n=ce.top_n or None, order=_CE_ORDER_OF.get(ce.order),
                              weight=ce.weight if ce.HasField("weight") else None,
                              default_order=settings.cross_encoder_order, default_weight=settings.cross_encoder_weight,
                              top_n_factor=settings.cross_encoder_top_n_factor, max_top_n=settings.reranker_max_pairs)


class _BatchedScorer:
    """Stage 3's scorer inside the service: the planner's thread hands its pairs to the reranker's batcher."""

    def __init__(self, rt: Runtime, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self.batcher = rt.require_reranker()
        self.loop = loop
        self.timeout = timeout

    def compute_score(self, pairs: Any, normalize: bool = False) -> list[float]:
        queries = {q for q, _ in pairs}
        if len(queries) != 1:
            raise InvalidArgument("stage 3 scores passages against one query")
        fut = asyncio.run_coroutine_threadsafe(
            self.batcher.score(queries.pop(), [p for _, p in pairs], timeout=self.timeout), self.loop)
        scores = fut.result()
        if normalize:
            from ..encoder.reranker import sigmoid

            return [sigmoid(v) for v in scores.scores]
        return scores.scores


class SearchHandlers:
    def __init__(self, rt: Runtime, documents: DocumentsHandlers | None = None) -> None:
        self.rt = rt
        self.documents = documents or DocumentsHandlers(rt)
        self._searchers: dict[str, tuple[DocumentsBackend, Any]] = {}  # collection -> (its store, HybridSearcher)

    def _searcher(self, doc_store: DocumentsBackend) -> Any:
        """One HybridSearcher per open collection (rebuilt when the collection is re-opened).

        Returned as Any: its ``PreparedSearch.encode_kwargs`` is a plain ``Mapping[str, bool]``, which mypy
        will not spread into :meth:`Batcher.encode` (whose other keywords are not bools)."""
        from ..search.planner import HybridSearcher

        cached = self._searchers.get(doc_store.name)
        if cached is not None and cached[0] is doc_store:
            return cached[1]
        if cached is not None:
            cached[1].close()
        searcher = HybridSearcher(doc_store, settings=self.rt.settings)
        self._searchers[doc_store.name] = (doc_store, searcher)
        return searcher

    async def hybrid_search(self, req: search_pb2.HybridSearchRequest,
                            context: grpc.aio.ServicerContext) -> search_pb2.HybridSearchResponse:
        from ..search.planner import SearchRequest

        started = time.perf_counter()
        check_filter(req.filter)
        overrides = plan_overrides(req)
        stage = cross_encoder_stage(req, self.rt.settings)
        if stage is not None:
            self.rt.require_reranker()  # FailedPrecondition (how to enable it) before any work
        _, batcher = self.rt.require_encoder()
        doc_store = await self.documents.doc_store(req.collection, context)
        searcher = self._searcher(doc_store)
        # the planner checks the request once (query, limits, plan, output fields) and says what to encode
        prepared = searcher.prepare(SearchRequest(
            query=req.query, top_k=req.top_k or DEFAULT_TOP_K, offset=req.offset, filter=req.filter,
            output_fields=tuple(req.output_fields), plan=overrides or None, timeout_s=remaining(context),
            cross_encoder=stage))
        t = time.perf_counter()
        enc = await batcher.encode([req.query], **prepared.encode_kwargs, timeout=remaining(context))
        encode_ms = _ms(time.perf_counter() - t)
        left = remaining(context)
        scorer = _BatchedScorer(self.rt, asyncio.get_running_loop(), left) if stage is not None else None
        result = await in_store_thread(self.rt, context, functools.partial(
            searcher.execute, prepared, enc.output, timeout_s=left, scorer=scorer))
        fields = prepared.output_fields
        resp = search_pb2.HybridSearchResponse(
            query_tokens=int(enc.output.token_counts.sum()),
            candidates=int(result.candidates),
            degraded=list(result.degraded),
            colbert_read=int(result.colbert_read),
        )
        for hit in result.hits:
            out = resp.hits.add(id=str(hit.id), score=float(hit.score))
            out.scores.update({k: float(v) for k, v in hit.scores.items()})
            if "text" in fields and hit.fields.get("text") is not None:
                out.text = str(hit.fields["text"])
            if "metadata" in fields and hit.fields.get("metadata") is not None:
                out.metadata_json = json.dumps(hit.fields["metadata"], ensure_ascii=False, separators=(",", ":"))
        resp.timings.stages_ms.update({k: float(v) for k, v in result.timings_ms.items()})
        resp.timings.stages_ms["encode"] = encode_ms
        resp.timings.queue_ms = _ms(enc.queue_ms / 1000.0)
        resp.timings.inference_ms = _ms(enc.inference_ms / 1000.0)
        resp.timings.total_ms = _ms(time.perf_counter() - started)
        if self.rt.metrics is not None:
            self.rt.metrics.observe_search_stages(resp.timings.stages_ms)
        return resp
