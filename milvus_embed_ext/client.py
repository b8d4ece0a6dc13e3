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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from .errors import InvalidArgument, MilvusEmbedError
from .service import codec
from .service._generated import (
    common_pb2,
    documents_pb2,
    documents_pb2_grpc,
    embedder_pb2,
    embedder_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from .service.auth import channel_credentials
from .service.errors import from_rpc_error

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


# ---------------------------------------------------------------------------- request building (shared)

_OUTPUTS = {"dense": embedder_pb2.OUTPUT_DENSE, "sparse": embedder_pb2.OUTPUT_SPARSE,
            "colbert": embedder_pb2.OUTPUT_COLBERT}
_REPS = {"dense": search_pb2.REPRESENTATION_DENSE, "sparse": search_pb2.REPRESENTATION_SPARSE,
         "colbert": search_pb2.REPRESENTATION_COLBERT, "dense_truncated": search_pb2.REPRESENTATION_DENSE_TRUNCATED}
_FUSIONS = {"m3": search_pb2.FUSION_METHOD_M3, "rrf": search_pb2.FUSION_METHOD_RRF,
            "weighted": search_pb2.FUSION_METHOD_WEIGHTED, "dbsf": search_pb2.FUSION_METHOD_DBSF}
_NORMS = {"minmax": search_pb2.NORMALIZATION_MINMAX, "arctan": search_pb2.NORMALIZATION_ARCTAN,
          "arctan_pos": search_pb2.NORMALIZATION_ARCTAN_POS}


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


def _lookup(table: Mapping[str, int], value: str, what: str) -> int:
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


def build_search_request(query: str, *, collection: str, top_k: int, offset: int, filter: str,
                         output_fields: Sequence[str], candidates: Sequence[str] | None, rerank: Sequence[str] | None,
                         candidate_k: int | None, truncate_dim: int | None, allow_partial: bool, fusion: str | None,
                         weights: Mapping[str, float] | None, rrf_k: int | None,
                         normalization: str | None) -> search_pb2.HybridSearchRequest:
    req = search_pb2.HybridSearchRequest(
        query=_check_text(query, "query"), collection=collection, top_k=int(top_k), offset=int(offset),
        filter=filter, output_fields=list(output_fields),
    )
    if candidates or rerank or candidate_k or truncate_dim or allow_partial:
        req.plan.candidates.extend(_lookup(_REPS, c, "candidate source") for c in candidates or ())
        req.plan.rerank.extend(_lookup(_REPS, r, "representation") for r in rerank or ())
        req.plan.candidate_k = int(candidate_k or 0)
        req.plan.truncate_dim = int(truncate_dim or 0)
        req.plan.allow_partial = bool(allow_partial)
    if fusion or weights or rrf_k or normalization:
        req.fusion.method = _lookup(_FUSIONS, fusion, "fusion") if fusion else 0
        req.fusion.rrf_k = int(rrf_k or 0)
        req.fusion.normalization = _lookup(_NORMS, normalization, "normalization") if normalization else 0
        for name, value in (weights or {}).items():
            if name not in ("dense", "sparse", "colbert"):
                raise InvalidArgument(f"unknown weight {name!r}; use dense, sparse, colbert")
            setattr(req.fusion.weights, name, float(value))
    return req


def parse_search_response(resp: search_pb2.HybridSearchResponse) -> SearchResult:
    hits = [Hit(id=h.id, score=h.score, scores=dict(h.scores), text=h.text or None,
                metadata=json.loads(h.metadata_json) if h.metadata_json else None) for h in resp.hits]
    return SearchResult(hits=hits, query_tokens=resp.query_tokens, candidates=resp.candidates,
                        degraded=list(resp.degraded), timings=Timings.from_pb(resp.timings))


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


# ---------------------------------------------------------------------------- blocking client


class _ClientBase:
    """Channel, credentials and stubs shared by the blocking and the asyncio client."""

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


class SidecarClient(_ClientBase):
    """Blocking client. ``timeout`` (seconds) is the default deadline of every call."""

    def __repr__(self) -> str:  # never shows the key
        return f"SidecarClient({self.address!r}, auth={'yes' if self._metadata else 'no'})"

    def __enter__(self) -> SidecarClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

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

    def embed(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = True, colbert: bool = False,
              truncate_dims: Sequence[int] = (), fp16: bool = False, max_length: int | None = None,
              timeout: float | None = None) -> EmbedResult:
        req = build_embed_request(texts, dense=dense, sparse=sparse, colbert=colbert,
                                  truncate_dims=truncate_dims, fp16=fp16, max_length=max_length)
        return parse_embed_response(self._call(self._embedder.Embed, req, timeout), dense, sparse, colbert)

    def upsert(self, documents: Iterable[Any], *, collection: str = "", chunk_size: int = DEFAULT_CHUNK,
               timeout: float | None = None) -> UpsertResult:
        """Insert or replace documents. More than ``chunk_size`` go through the streaming RPC.

        A sequence is validated whole before anything is sent; an iterator is validated as it streams, so a bad
        document fails the call (with its own error) after the chunks before it may have been written.
        """
        requests = _upsert_requests(documents, collection, chunk_size)
        if isinstance(requests, list) and len(requests) == 1:
            resp = self._call(self._documents.Upsert, requests[0], timeout)
        else:
            try:
                resp = self._call(self._documents.UpsertStream, iter(requests), timeout)
            except MilvusEmbedError:
                if isinstance(requests, _RequestStream) and requests.error is not None:
                    raise requests.error from None
                raise
        return UpsertResult(resp.upserted, resp.tokens, Timings.from_pb(resp.timings))

    def delete(self, ids: Sequence[str], *, collection: str = "", timeout: float | None = None) -> int:
        req = documents_pb2.DeleteRequest(collection=collection, ids=list(ids))
        return int(self._call(self._documents.Delete, req, timeout).deleted)

    def get(self, ids: Sequence[str], *, collection: str = "", output_fields: Sequence[str] = (),
            allow_missing: bool = False, with_vectors: bool = False, timeout: float | None = None) -> list[dict[str, Any]]:
        req = documents_pb2.GetRequest(collection=collection, ids=list(ids), output_fields=list(output_fields),
                                       allow_missing=allow_missing, with_vectors=with_vectors)
        return parse_get_response(self._call(self._documents.Get, req, timeout))

    def hybrid_search(self, query: str, *, collection: str = "", top_k: int = 10, offset: int = 0, filter: str = "",
                      output_fields: Sequence[str] = (), candidates: Sequence[str] | None = None,
                      rerank: Sequence[str] | None = None, candidate_k: int | None = None,
                      truncate_dim: int | None = None, allow_partial: bool = False, fusion: str | None = None,
                      weights: Mapping[str, float] | None = None, rrf_k: int | None = None,
                      normalization: str | None = None, timeout: float | None = None) -> SearchResult:
        req = build_search_request(query, collection=collection, top_k=top_k, offset=offset, filter=filter,
                                   output_fields=output_fields, candidates=candidates, rerank=rerank,
                                   candidate_k=candidate_k, truncate_dim=truncate_dim, allow_partial=allow_partial,
                                   fusion=fusion, weights=weights, rrf_k=rrf_k, normalization=normalization)
        return parse_search_response(self._call(self._search.HybridSearch, req, timeout))


# ---------------------------------------------------------------------------- asyncio client


class AsyncSidecarClient(_ClientBase):
    """The same API as :class:`SidecarClient`, awaitable (``grpc.aio`` channel)."""

    _grpc = grpc.aio

    def __repr__(self) -> str:
        return f"AsyncSidecarClient({self.address!r}, auth={'yes' if self._metadata else 'no'})"

    async def __aenter__(self) -> AsyncSidecarClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, method: Any, request: Any, timeout: float | None) -> Any:
        try:
            return await method(request, timeout=timeout if timeout is not None else self.timeout,
                                metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    async def embed(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = True, colbert: bool = False,
                    truncate_dims: Sequence[int] = (), fp16: bool = False, max_length: int | None = None,
                    timeout: float | None = None) -> EmbedResult:
        req = build_embed_request(texts, dense=dense, sparse=sparse, colbert=colbert,
                                  truncate_dims=truncate_dims, fp16=fp16, max_length=max_length)
        return parse_embed_response(await self._call(self._embedder.Embed, req, timeout), dense, sparse, colbert)

    async def upsert(self, documents: Iterable[Any], *, collection: str = "", chunk_size: int = DEFAULT_CHUNK,
                     timeout: float | None = None) -> UpsertResult:
        """See :meth:`SidecarClient.upsert`."""
        requests = _upsert_requests(documents, collection, chunk_size)
        if isinstance(requests, list) and len(requests) == 1:
            resp = await self._call(self._documents.Upsert, requests[0], timeout)
        else:
            try:
                resp = await self._call(self._documents.UpsertStream, iter(requests), timeout)
            except (asyncio.CancelledError, MilvusEmbedError):  # grpc cancels the call when the iterator fails
                if isinstance(requests, _RequestStream) and requests.error is not None:
                    raise requests.error from None
                raise
        return UpsertResult(resp.upserted, resp.tokens, Timings.from_pb(resp.timings))

    async def delete(self, ids: Sequence[str], *, collection: str = "", timeout: float | None = None) -> int:
        req = documents_pb2.DeleteRequest(collection=collection, ids=list(ids))
        return int((await self._call(self._documents.Delete, req, timeout)).deleted)

    async def get(self, ids: Sequence[str], *, collection: str = "", output_fields: Sequence[str] = (),
                  allow_missing: bool = False, with_vectors: bool = False,
                  timeout: float | None = None) -> list[dict[str, Any]]:
        req = documents_pb2.GetRequest(collection=collection, ids=list(ids), output_fields=list(output_fields),
                                       allow_missing=allow_missing, with_vectors=with_vectors)
        return parse_get_response(await self._call(self._documents.Get, req, timeout))

    async def hybrid_search(self, query: str, *, collection: str = "", top_k: int = 10, offset: int = 0,
                            filter: str = "", output_fields: Sequence[str] = (),
                            candidates: Sequence[str] | None = None, rerank: Sequence[str] | None = None,
                            candidate_k: int | None = None, truncate_dim: int | None = None,
                            allow_partial: bool = False, fusion: str | None = None,
                            weights: Mapping[str, float] | None = None, rrf_k: int | None = None,
                            normalization: str | None = None, timeout: float | None = None) -> SearchResult:
        req = build_search_request(query, collection=collection, top_k=top_k, offset=offset, filter=filter,
                                   output_fields=output_fields, candidates=candidates, rerank=rerank,
                                   candidate_k=candidate_k, truncate_dim=truncate_dim, allow_partial=allow_partial,
                                   fusion=fusion, weights=weights, rrf_k=rrf_k, normalization=normalization)
        return parse_search_response(await self._call(self._search.HybridSearch, req, timeout))


__all__ = ["SidecarClient", "AsyncSidecarClient", "TLSConfig", "EmbedResult", "UpsertResult", "SearchResult",
           "Hit", "Timings"]
