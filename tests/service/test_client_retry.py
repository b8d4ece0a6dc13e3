"""The client's channel retries UNAVAILABLE on idempotent calls (gRPC service config), and only those."""

from __future__ import annotations

import json
import threading
from concurrent import futures
from typing import Any

import grpc
import pytest

from milvus_embed_ext.client import RETRIED_METHODS, SERVICE_CONFIG, SidecarClient
from milvus_embed_ext.errors import Unavailable
from milvus_embed_ext.wire._generated import documents_pb2


class Flaky:
    """A Documents service whose Get and UpsertStream answer UNAVAILABLE ``fail`` times, then OK."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls: dict[str, int] = {}
        self.lock = threading.Lock()

    def _attempt(self, method: str, context: Any) -> bool:
        with self.lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            n = self.calls[method]
        if n <= self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "Milvus is unreachable; retry with backoff")
        return True

    def get(self, request: documents_pb2.GetRequest, context: Any) -> documents_pb2.GetResponse:
        self._attempt("Get", context)
        return documents_pb2.GetResponse()

    def upsert_stream(self, requests: Any, context: Any) -> documents_pb2.UpsertResponse:
        for _ in requests:
            pass
        self._attempt("UpsertStream", context)
        return documents_pb2.UpsertResponse()


@pytest.fixture
def flaky_server() -> Any:
    servers = []

    def start(fail: int) -> tuple[str, Flaky]:
        impl = Flaky(fail)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Get": grpc.unary_unary_rpc_method_handler(
                impl.get, request_deserializer=documents_pb2.GetRequest.FromString,
                response_serializer=documents_pb2.GetResponse.SerializeToString),
            "UpsertStream": grpc.stream_unary_rpc_method_handler(
                impl.upsert_stream, request_deserializer=documents_pb2.UpsertRequest.FromString,
                response_serializer=documents_pb2.UpsertResponse.SerializeToString),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("milvus_embed_ext.v1.Documents",
                                                                              handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", impl

    yield start
    for s in servers:
        s.stop(0)


def test_service_config_names_real_methods() -> None:
    from milvus_embed_ext.service.server import DOCUMENTS, EMBEDDER, SEARCH

    config = json.loads(SERVICE_CONFIG)
    (method_config,) = config["methodConfig"]
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert {(n["service"], n["method"]) for n in method_config["name"]} == set(RETRIED_METHODS)
    assert {svc for svc, _ in RETRIED_METHODS} == {EMBEDDER, DOCUMENTS, SEARCH}
    assert ("milvus_embed_ext.v1.Documents", "UpsertStream") not in RETRIED_METHODS


def test_idempotent_call_is_retried_on_unavailable(flaky_server: Any) -> None:
    address, impl = flaky_server(fail=2)
    with SidecarClient(address, timeout=20) as client:
        assert client.get(["a"], allow_missing=True) == []
    assert impl.calls["Get"] == 3  # two UNAVAILABLE answers retried by the channel, then OK


def test_retries_are_bounded(flaky_server: Any) -> None:
    address, impl = flaky_server(fail=100)
    with SidecarClient(address, timeout=30) as client, pytest.raises(Unavailable, match="retry with backoff"):
        client.get(["a"], allow_missing=True)
    assert impl.calls["Get"] == 5  # maxAttempts


def test_stream_is_not_retried(flaky_server: Any) -> None:
    address, impl = flaky_server(fail=1)
    with SidecarClient(address, timeout=20) as client, pytest.raises(Unavailable):
        client.upsert(iter([{"id": "a", "text": "x"}]))  # an iterator goes through UpsertStream
    assert impl.calls["UpsertStream"] == 1
