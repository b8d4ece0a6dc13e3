"""Python clients for the milvus-embed sidecar: :class:`SidecarClient` (blocking) and
:class:`AsyncSidecarClient` (asyncio). Results are plain dataclasses holding numpy arrays; failures are
the domain errors of :mod:`milvus_embed_ext.errors` (``InvalidArgument``, ``NotFound``, ``Unavailable``...).

    with SidecarClient("127.0.0.1:50051") as c:
        c.upsert([{"id": "a", "text": "hello", "metadata": {"lang": "en"}}])
        hits = c.hybrid_search("hi", top_k=5, output_fields=["text"]).hits
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from .errors import InvalidArgument, MilvusEmbedError
from .limits import REPRESENTATIONS
from .wire import codec
from .wire._generated import (
    common_pb2,
    documents_pb2,
    documents_pb2_grpc,
    embedder_pb2,
    embedder_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from .wire.status import from_rpc_error
from .wire.tls import channel_credentials

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
DEFAULT_CHUNK = 64


# ---------------------------------------------------------------------------- result types


@dataclass(frozen=True)
class TLSConfig:
    """Client TLS: ``ca`` verifies the server (system roots when None); ``cert``+``key`` for mutual TLS."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    """Override the name checked against the server certificate (e.g. when dialling an IP)."""


@dataclass
class Timings:
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    total_ms: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_pb(cls, t: common_pb2.Timings) -> Timings:
        return cls(t.queue_ms, t.inference_ms, t.total_ms, dict(t.stages_ms))


@dataclass
class EmbedResult:
    dense: np.ndarray | None
    """float32 ``[n, hidden]``."""
    sparse: list[dict[int, float]] | None
    colbert: list[np.ndarray] | None
    truncated: dict[int, np.ndarray]
    token_counts: np.ndarray
    timings: Timings
    model: str = ""
    model_fingerprint: str = ""

    def __len__(self) -> int:
        return int(self.token_counts.shape[0])


@dataclass
class UpsertResult:
    upserted: int
    tokens: int
    timings: Timings


@dataclass
class Hit:
    id: str
    score: float
    scores: dict[str, float]
    text: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    query_tokens: int
    candidates: int
    degraded: list[str]
    timings: Timings
    colbert_read: int = 0
    """Candidates whose ColBERT vectors the sidecar read (m3: only those that could still reach the page)."""


@dataclass
class RerankResult:
    scores: list[float]
    """One per passage, in request order: raw logits, or sigmoid-normalised (0..1) with ``normalize=True``."""
    token_counts: list[int]
    timings: Timings
    model: str = ""
    model_fingerprint: str = ""

    def order(self) -> list[int]:
        """Passage indices, best first."""
        return sorted(range(len(self.scores)), key=lambda i: -self.scores[i])


# ---------------------------------------------------------------------------- request building (shared)

_OUTPUTS = codec.OUTPUT_ENUM
_REPS = codec.REPRESENTATION_ENUM
_FUSIONS = codec.FUSION_ENUM
_NORMS = codec.NORMALIZATION_ENUM
_CE_ORDERS = {"reranker": search_pb2.CROSS_ENCODER_ORDER_RERANKER, "fused": search_pb2.CROSS_ENCODER_ORDER_FUSED}


def _check_text(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise InvalidArgument(f"{where} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(
            f"{where} is not valid Unicode (lone surrogate {text[exc.start]!r} at position {exc.start}); "
            "decode your input with errors='replace' or fix its encoding"
        ) from None
    return text


def _check_count(value: Any, name: str, minimum: int) -> int:
    """A whole number >= ``minimum``: the wire's uint32 would otherwise fail with protobuf's bare "Value out
    of range", and a top_k of 0 would silently mean the server's default."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"{name} must be an int, got {type(value).__name__}")
    if not minimum <= int(value) <= 2**32 - 1:
        raise InvalidArgument(f"{name} must be at least {minimum}, got {int(value)}" if value < minimum
                              else f"{name} {int(value)} is too large")
    return int(value)


def _lookup(table: Mapping[str, Any], value: str, what: str) -> Any:
    try:
        return table[value]
    except KeyError:
        raise InvalidArgument(f"unknown {what} {value!r}; use one of {sorted(table)}") from None


def build_embed_request(texts: Sequence[str], *, dense: bool, sparse: bool, colbert: bool,
                        truncate_dims: Sequence[int], fp16: bool, max_length: int | None) -> embedder_pb2.EmbedRequest:
    if isinstance(texts, str):
        raise InvalidArgument("texts must be a list of strings, not a single string")
    outputs = [_OUTPUTS[n] for n, on in (("dense", dense), ("sparse", sparse), ("colbert", colbert)) if on]
    if not outputs and not truncate_dims:
        raise InvalidArgument("ask for at least one output: dense, sparse, colbert or truncate_dims")
    if not outputs:  # truncated fields come from the dense vector
        outputs = [embedder_pb2.OUTPUT_DENSE]
    return embedder_pb2.EmbedRequest(
        texts=[_check_text(t, f"texts[{i}]") for i, t in enumerate(texts)],
        outputs=outputs,
        truncate_dims=[int(d) for d in truncate_dims],
        dtype=common_pb2.DTYPE_FLOAT16 if fp16 else common_pb2.DTYPE_FLOAT32,
        max_length=int(max_length or 0),
    )


def parse_embed_response(resp: embedder_pb2.EmbedResponse, dense: bool, sparse: bool, colbert: bool) -> EmbedResult:
    return EmbedResult(
        dense=codec.unpack_matrix(resp.dense) if dense and resp.HasField("dense") else None,
        sparse=[codec.unpack_sparse(v) for v in resp.sparse] if sparse else None,
        colbert=[codec.unpack_matrix(m) for m in resp.colbert] if colbert else None,
        truncated={int(t.dim): codec.unpack_matrix(t.vectors) for t in resp.truncated},
        token_counts=np.asarray(resp.token_counts, dtype=np.int64),
        timings=Timings.from_pb(resp.timings),
        model=resp.model,
        model_fingerprint=resp.model_fingerprint,
    )


def to_document_pb(doc: Any, where: str) -> documents_pb2.Document:
    """A Document from a mapping {"id", "text", "metadata"} or an object with those attributes."""
    if isinstance(doc, Mapping):
        doc_id, text, metadata = doc.get("id"), doc.get("text"), doc.get("metadata")
        unknown = sorted(set(doc) - {"id", "text", "metadata"})
        if unknown:
            raise InvalidArgument(f"{where} has unknown key(s) {unknown}; a document is {{'id', 'text', 'metadata'}}")
    else:
        doc_id, text, metadata = getattr(doc, "id", None), getattr(doc, "text", None), getattr(doc, "metadata", None)
    if doc_id is None or doc_id == "":
        raise InvalidArgument(f"{where} has no id; every document needs a non-empty 'id'")
    if text is None:
        raise InvalidArgument(f"{where} has no text; send the text to embed under 'text'")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidArgument(f"{where}.metadata must be a JSON object (dict), got {type(metadata).__name__}")
    try:
        metadata_json = json.dumps(metadata, ensure_ascii=False) if metadata else ""
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{where}.metadata is not JSON-serialisable: {exc}") from None
    return documents_pb2.Document(id=_check_text(str(doc_id), f"{where}.id"), text=_check_text(text, f"{where}.text"),
                                  metadata_json=metadata_json)


def _chunks(docs: Iterable[Any], collection: str, size: int) -> Iterator[documents_pb2.UpsertRequest]:
    chunk: list[documents_pb2.Document] = []
    for i, doc in enumerate(docs):
        chunk.append(to_document_pb(doc, f"documents[{i}]"))
        if len(chunk) >= size:
            yield documents_pb2.UpsertRequest(collection=collection, documents=chunk)
            chunk = []
    if chunk:
        yield documents_pb2.UpsertRequest(collection=collection, documents=chunk)


class _RequestStream:
    """The request iterator grpc consumes, keeping the exception it raises.

    grpc reports a failing request iterator only as UNKNOWN "Exception iterating requests!" (blocking client)
    or a cancellation (asyncio), which loses the domain error that says which document is bad.
    """

    def __init__(self, requests: Iterator[documents_pb2.UpsertRequest]) -> None:
        self._requests = requests
        self.error: Exception | None = None

    def __iter__(self) -> _RequestStream:
        return self

    def __next__(self) -> documents_pb2.UpsertRequest:
        try:
            return next(self._requests)
        except StopIteration:
            raise
        except Exception as exc:
            self.error = exc
            raise


def _upsert_requests(documents: Iterable[Any], collection: str, size: int) -> list[documents_pb2.UpsertRequest] | _RequestStream:
    """All requests, validated before anything is sent, when ``documents`` is a sequence; else a lazy stream."""
    if isinstance(documents, Sequence):
        chunks = list(_chunks(documents, collection, size))
        if not chunks:
            raise InvalidArgument("no documents to upsert")
        return chunks
    return _RequestStream(_chunks(documents, collection, size))


def parse_get_response(resp: documents_pb2.GetResponse) -> list[dict[str, Any]]:
    out = []
    for d in resp.documents:
        row: dict[str, Any] = {"id": d.id, "text": d.text, "metadata": json.loads(d.metadata_json) if d.metadata_json else None}
        if d.HasField("dense"):
            row["dense"] = codec.unpack_matrix(d.dense)
        if d.HasField("sparse"):
            row["sparse"] = codec.unpack_sparse(d.sparse)
        out.append(row)
    return out


def build_rerank_request(query: str, passages: Sequence[str], normalize: bool) -> embedder_pb2.RerankRequest:
    if isinstance(passages, str):
        raise InvalidArgument("passages must be a list of strings, not a single string; wrap it: [passage]")
    return embedder_pb2.RerankRequest(query=_check_text(query, "query"), normalize=bool(normalize),
                                      passages=[_check_text(p, f"passages[{i}]") for i, p in enumerate(passages)])


def parse_rerank_response(resp: embedder_pb2.RerankResponse) -> RerankResult:
    return RerankResult(scores=list(resp.scores), token_counts=list(resp.token_counts),
                        timings=Timings.from_pb(resp.timings), model=resp.model,
                        model_fingerprint=resp.model_fingerprint)


def _rescore_arg(rescore: Sequence[str] | None, rerank: Sequence[str] | None) -> Sequence[str] | None:
    """``rescore``, or the deprecated ``rerank`` (its old name, accepted for one release) with a warning."""
    if rerank is None:
        return rescore
    warnings.warn("hybrid_search(rerank=...) is deprecated: the stage-2 representations are now `rescore`; "
                  "`cross_encoder=True` runs the cross-encoder reranker", DeprecationWarning, stacklevel=3)
    if rescore is not None and list(rescore) != list(rerank):
        raise InvalidArgument("rescore and its deprecated alias rerank disagree; send rescore only")
    return rerank


def build_search_request(query: str, *, collection: str, top_k: int, offset: int, filter: str,
                         output_fields: Sequence[str], candidates: Sequence[str] | None, rescore: Sequence[str] | None,
                         candidate_k: int | None, truncate_dim: int | None, allow_partial: bool, fusion: str | None,
                         weights: Mapping[str, float] | None, rrf_k: int | None,
                         normalization: str | None, cross_encoder: bool = False,
                         cross_encoder_top_n: int | None = None, cross_encoder_order: str | None = None,
                         cross_encoder_weight: float | None = None) -> search_pb2.HybridSearchRequest:
    req = search_pb2.HybridSearchRequest(
        query=_check_text(query, "query"), collection=collection, top_k=_check_count(top_k, "top_k", 1),
        offset=_check_count(offset, "offset", 0),
        filter=filter, output_fields=list(output_fields),
    )
    if cross_encoder or cross_encoder_top_n or cross_encoder_order or cross_encoder_weight is not None:
        if not cross_encoder:
            raise InvalidArgument("cross_encoder_top_n/order/weight need cross_encoder=True")
        req.cross_encoder.enabled = True
        req.cross_encoder.top_n = int(cross_encoder_top_n or 0)
        if cross_encoder_order:
            req.cross_encoder.order = _lookup(_CE_ORDERS, cross_encoder_order, "cross_encoder_order")
        if cross_encoder_weight is not None:
            req.cross_encoder.weight = float(cross_encoder_weight)
    if candidates or rescore or candidate_k or truncate_dim or allow_partial:
        req.plan.candidates.extend(_lookup(_REPS, c, "candidate source") for c in candidates or ())
        req.plan.rescore.extend(_lookup(_REPS, r, "representation") for r in rescore or ())
        req.plan.candidate_k = int(candidate_k or 0)
        req.plan.truncate_dim = int(truncate_dim or 0)
        req.plan.allow_partial = bool(allow_partial)
    if fusion or weights or rrf_k or normalization:
        req.fusion.method = _lookup(_FUSIONS, fusion, "fusion") if fusion else search_pb2.FUSION_METHOD_UNSPECIFIED
        req.fusion.rrf_k = int(rrf_k or 0)
        req.fusion.normalization = (_lookup(_NORMS, normalization, "normalization") if normalization
                                    else search_pb2.NORMALIZATION_UNSPECIFIED)
        for name, value in (weights or {}).items():
            if name not in REPRESENTATIONS:
                raise InvalidArgument(f"unknown weight {name!r}; use dense, sparse, colbert")
            setattr(req.fusion.weights, name, float(value))
    return req


def parse_search_response(resp: search_pb2.HybridSearchResponse) -> SearchResult:
    hits = [Hit(id=h.id, score=h.score, scores=dict(h.scores), text=h.text or None,
                metadata=json.loads(h.metadata_json) if h.metadata_json else None) for h in resp.hits]
    return SearchResult(hits=hits, query_tokens=resp.query_tokens, candidates=resp.candidates,
                        degraded=list(resp.degraded), timings=Timings.from_pb(resp.timings),
                        colbert_read=resp.colbert_read)


# Calls that are safe to repeat: Embed, HybridSearch and Get read; Upsert and Delete are idempotent by id
# (the sidecar's documented contract: retrying the same upsert converges). UpsertStream is left out: a
# replayed stream would have to be buffered whole. Only UNAVAILABLE is retried (the sidecar answers it
# while Milvus is away, and gRPC while the sidecar restarts); the sidecar's other codes are final.
RETRIED_METHODS = (("milvus_embed_ext.v1.Embedder", "Embed"), ("milvus_embed_ext.v1.Search", "HybridSearch"),
                   ("milvus_embed_ext.v1.Documents", "Get"), ("milvus_embed_ext.v1.Documents", "Upsert"),
                   ("milvus_embed_ext.v1.Documents", "Delete"))
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "3s", "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"]}
SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": svc, "method": m} for svc, m in RETRIED_METHODS],
    "retryPolicy": RETRY_POLICY,
}]})


def _channel_args(max_message_bytes: int, tls: TLSConfig | None) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", max_message_bytes),
                                   ("grpc.max_send_message_length", max_message_bytes),
                                   ("grpc.enable_retries", 1),
                                   ("grpc.service_config", SERVICE_CONFIG)]
    if tls is not None and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return opts


def _tls(tls: bool | TLSConfig | None) -> TLSConfig | None:
    if tls is True:
        return TLSConfig()
    if not tls:
        return None
    return tls


# ---------------------------------------------------------------------------- the clients


def _upsert_result(resp: Any) -> UpsertResult:
    return UpsertResult(resp.upserted, resp.tokens, Timings.from_pb(resp.timings))


def _failure(err: grpc.RpcError, stream: _RequestStream | None) -> Exception:
    """The error a failed call raises: the request iterator's own error when it failed, else the domain error."""
    if stream is not None and stream.error is not None:
        return stream.error
    return from_rpc_error(err)


class _ClientBase:
    """Everything both clients do: channel, credentials, stubs, and every RPC method, written once.

    A method builds its request and hands it to :meth:`_call` with the parser of the response. The blocking
    client's ``_call`` returns the parsed result; the asyncio client's returns a coroutine of it. So the
    methods below return ``T`` on :class:`SidecarClient` and ``Awaitable[T]`` on :class:`AsyncSidecarClient`.
    """

    _grpc: Any = grpc  # the module whose channels this client opens: grpc or grpc.aio

    def __init__(self, address: str = DEFAULT_ADDRESS, api_key: str | None = None,
                 tls: bool | TLSConfig | None = None, *, timeout: float | None = 60.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.address = address
        self.timeout = timeout
        tls_cfg = _tls(tls)
        options = _channel_args(max_message_bytes, tls_cfg)
        if tls_cfg is None:
            self._channel = self._grpc.insecure_channel(address, options=options)
        else:
            creds = channel_credentials(tls_cfg.ca, tls_cfg.cert, tls_cfg.key)
            self._channel = self._grpc.secure_channel(address, creds, options=options)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._embedder = embedder_pb2_grpc.EmbedderStub(self._channel)
        self._documents = documents_pb2_grpc.DocumentsStub(self._channel)
        self._search = search_pb2_grpc.SearchStub(self._channel)

    def __repr__(self) -> str:  # never shows the key
        return f"{type(self).__name__}({self.address!r}, auth={'yes' if self._metadata else 'no'})"

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.timeout

    def _call(self, method: Any, request: Any, timeout: float | None, parse: Callable[[Any], Any],
              stream: _RequestStream | None = None) -> Any:
        raise NotImplementedError

    def embed(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = True, colbert: bool = False,
              truncate_dims: Sequence[int] = (), fp16: bool = False, max_length: int | None = None,
              timeout: float | None = None) -> Any:
        """Vectors of ``texts`` (an :class:`EmbedResult`)."""
        req = build_embed_request(texts, dense=dense, sparse=sparse, colbert=colbert,
                                  truncate_dims=truncate_dims, fp16=fp16, max_length=max_length)
        return self._call(self._embedder.Embed, req, timeout,
                          lambda resp: parse_embed_response(resp, dense, sparse, colbert))

    def upsert(self, documents: Iterable[Any], *, collection: str = "", chunk_size: int = DEFAULT_CHUNK,
               timeout: float | None = None) -> Any:
        """Insert or replace documents (an :class:`UpsertResult`). More than ``chunk_size`` go through the
        streaming RPC.

        A sequence is validated whole before anything is sent; an iterator is validated as it streams, so a bad
        document fails the call (with its own error) after the chunks before it may have been written.
        """
        requests = _upsert_requests(documents, collection, chunk_size)
        if isinstance(requests, list) and len(requests) == 1:
            return self._call(self._documents.Upsert, requests[0], timeout, _upsert_result)
        stream = requests if isinstance(requests, _RequestStream) else None
        return self._call(self._documents.UpsertStream, iter(requests), timeout, _upsert_result, stream)

    def delete(self, ids: Sequence[str], *, collection: str = "", timeout: float | None = None) -> Any:
        """Delete documents by id; gives the number deleted."""
        req = documents_pb2.DeleteRequest(collection=collection, ids=list(ids))
        return self._call(self._documents.Delete, req, timeout, lambda resp: int(resp.deleted))

    def get(self, ids: Sequence[str], *, collection: str = "", output_fields: Sequence[str] = (),
            allow_missing: bool = False, with_vectors: bool = False, timeout: float | None = None) -> Any:
        """Stored documents by id (a list of dicts)."""
        req = documents_pb2.GetRequest(collection=collection, ids=list(ids), output_fields=list(output_fields),
                                       allow_missing=allow_missing, with_vectors=with_vectors)
        return self._call(self._documents.Get, req, timeout, parse_get_response)

    def rerank(self, query: str, passages: Sequence[str], *, normalize: bool = False,
               timeout: float | None = None) -> Any:
        """Cross-encoder scores of ``passages`` against ``query`` (a :class:`RerankResult`; FailedPrecondition
        when the sidecar has no reranker configured)."""
        req = build_rerank_request(query, passages, normalize)
        return self._call(self._embedder.Rerank, req, timeout, parse_rerank_response)

    def hybrid_search(self, query: str, *, collection: str = "", top_k: int = 10, offset: int = 0, filter: str = "",
                      output_fields: Sequence[str] = (), candidates: Sequence[str] | None = None,
                      rescore: Sequence[str] | None = None, candidate_k: int | None = None,
                      truncate_dim: int | None = None, allow_partial: bool = False, fusion: str | None = None,
                      weights: Mapping[str, float] | None = None, rrf_k: int | None = None,
                      normalization: str | None = None, cross_encoder: bool = False,
                      cross_encoder_top_n: int | None = None, cross_encoder_order: str | None = None,
                      cross_encoder_weight: float | None = None, timeout: float | None = None,
                      rerank: Sequence[str] | None = None) -> Any:
        """Hybrid search (a :class:`SearchResult`). ``rescore``: the stage-2 representations (``rerank`` is its
        deprecated old name); ``cross_encoder=True`` re-orders the fused top ``cross_encoder_top_n`` with the
        server's reranker."""
        req = build_search_request(query, collection=collection, top_k=top_k, offset=offset, filter=filter,
                                   output_fields=output_fields, candidates=candidates,
                                   rescore=_rescore_arg(rescore, rerank),
                                   candidate_k=candidate_k, truncate_dim=truncate_dim, allow_partial=allow_partial,
                                   fusion=fusion, weights=weights, rrf_k=rrf_k, normalization=normalization,
                                   cross_encoder=cross_encoder, cross_encoder_top_n=cross_encoder_top_n,
                                   cross_encoder_order=cross_encoder_order, cross_encoder_weight=cross_encoder_weight)
        return self._call(self._search.HybridSearch, req, timeout, parse_search_response)


class SidecarClient(_ClientBase):
    """Blocking client. ``timeout`` (seconds) is the default deadline of every call."""

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None, parse: Callable[[Any], Any],
              stream: _RequestStream | None = None) -> Any:
        try:
            resp = method(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            raise _failure(err, stream) from None
        return parse(resp)

    def wait_ready(self, timeout: float = 60.0, service: str = "") -> None:
        """Block until grpc health reports SERVING for ``service`` ("" = the whole sidecar)."""
        import time

        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as err:
                last = err.code().name
            time.sleep(0.2)
        raise MilvusEmbedError(f"sidecar at {self.address} not SERVING after {timeout:.0f}s (last: {last})")


class AsyncSidecarClient(_ClientBase):
    """The same API as :class:`SidecarClient`, awaitable (``grpc.aio`` channel)."""

    _grpc = grpc.aio

    async def __aenter__(self) -> AsyncSidecarClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None, parse: Callable[[Any], Any],
              stream: _RequestStream | None = None) -> Any:
        return self._await(method, request, timeout, parse, stream)

    async def _await(self, method: Any, request: Any, timeout: float | None, parse: Callable[[Any], Any],
                     stream: _RequestStream | None) -> Any:
        try:
            resp = await method(request, timeout=self._timeout(timeout), metadata=self._metadata)
        except grpc.RpcError as err:
            raise _failure(err, stream) from None
        except asyncio.CancelledError:  # grpc cancels the call when the request iterator fails
            if stream is not None and stream.error is not None:
                raise stream.error from None
            raise
        return parse(resp)


__all__ = ["SidecarClient", "AsyncSidecarClient", "TLSConfig", "EmbedResult", "UpsertResult", "SearchResult",
           "RerankResult", "Hit", "Timings"]
