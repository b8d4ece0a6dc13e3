"""Helpers for the service and client tests (imported as ``tests.service.svc_helpers``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.service.server import Sidecar
from milvus_embed_ext.wire._generated import documents_pb2, documents_pb2_grpc
from tests._fakes import NullStore


class Gated:
    """A model behind a gate (open by default), so a test can hold the thread that calls it: ``gate.clear()``
    stops the next call until ``gate.set()``; ``started`` says a call reached the gate."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _pass_gate(self) -> None:
        self.started.set()
        self.gate.wait(20)


class GatedEncoder(Gated):
    """The encoder behind a gate; ``texts_seen`` lists every text it encoded."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.texts_seen: list[str] = []

    def encode(self, texts: Any, **kw: Any) -> Any:
        self._pass_gate()
        self.texts_seen.extend(texts)
        return self.inner.encode(texts, **kw)


class GatedReranker(Gated):
    """The reranker behind a gate; ``calls`` lists the number of pairs of each call."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.calls: list[int] = []

    def compute_score_detailed(self, pairs: Any, normalize: bool = False, **kw: Any) -> Any:
        self._pass_gate()
        self.calls.append(len(pairs))
        return self.inner.compute_score_detailed(pairs, normalize, **kw)


async def start_in_process(encoder: Any, reranker: Any = None, *, store: Any = None, lite: bool = False,
                           **overrides: Any) -> Sidecar:
    """A sidecar in this event loop, gRPC on a free loopback port, HTTP off unless ``http_listen`` is given.
    The store is ``store``; without one, ``lite`` opens the one the settings name (an embedded Milvus Lite at
    ``milvus_uri``), else there is none."""
    settings = load_settings(env={}, overrides={"listen": "127.0.0.1:0", "http_listen": "", "max_length": 512,
                                                **overrides})
    if store is None and not lite:
        store = NullStore()
    sidecar = Sidecar(settings, encoder=encoder, reranker=reranker, store=store)
    await sidecar.start()
    await asyncio.wait_for(sidecar.ready.wait(), 60)
    return sidecar


class RecordingDocuments(documents_pb2_grpc.DocumentsServicer):
    """A Documents server that stores nothing and records how many documents each message carried."""

    def __init__(self) -> None:
        self.messages: list[int] = []  # documents per received message

    @property
    def received(self) -> int:
        return sum(self.messages)

    def Upsert(self, request, context):  # noqa: N802, ANN001, ANN201
        self.messages.append(len(request.documents))
        return documents_pb2.UpsertResponse(upserted=len(request.documents))

    def UpsertStream(self, request_iterator, context):  # noqa: N802, ANN001, ANN201
        n = 0
        for request in request_iterator:
            self.messages.append(len(request.documents))
            n += len(request.documents)
        return documents_pb2.UpsertResponse(upserted=n)


@contextlib.contextmanager
def recording_documents_server() -> Iterator[tuple[str, RecordingDocuments]]:
    """A :class:`RecordingDocuments` on a free local port: (address, servicer)."""
    servicer = RecordingDocuments()
    srv = grpc.server(ThreadPoolExecutor(max_workers=2))
    documents_pb2_grpc.add_DocumentsServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        srv.stop(0)
