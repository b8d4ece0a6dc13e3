"""The Milvus health watcher in-process (tiny encoder, a scripted store): NOT_SERVING with the reason in the
metrics while Milvus is away, fail-fast UNAVAILABLE that says to retry, recovery by itself, bounded restarts,
and bounded start-up retries. The same behaviour against a real Milvus process: tests/server/test_server_faults.py.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.errors import DeadlineExceeded, Unavailable
from milvus_embed_ext.service.server import DOCUMENTS, EMBEDDER, Sidecar
from milvus_embed_ext.wire._generated import (
    documents_pb2,
    documents_pb2_grpc,
    embedder_pb2,
    embedder_pb2_grpc,
)
from tests._fakes import NullStore
from tests.service.svc_helpers import start_in_process

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class ScriptedStore(NullStore):
    """A store whose ping and reconnect fail while ``down`` is set; counts what the watcher did."""

    def __init__(self, *, lite: bool = False, reconnect_fails: bool = False) -> None:
        super().__init__()
        self.down = threading.Event()
        self.slow = 0  # the next probes that time out (a busy or hung Milvus: connections stay open)
        self.lite = lite
        self.reconnect_fails = reconnect_fails
        self.pings = self.reconnects = self.reloads = 0

    def lite_server_alive(self) -> bool | None:
        return (not self.down.is_set()) if self.lite else None

    def ping(self, timeout: float) -> None:
        self.pings += 1
        if self.slow:
            self.slow -= 1
            raise DeadlineExceeded("health probe: Milvus at http://db:19530 did not answer in time")
        if self.down.is_set():
            raise Unavailable("health probe failed on Milvus at http://db:19530: connection refused")

    def reconnect(self, timeout: float) -> None:
        self.reconnects += 1
        if self.lite:
            self.lite_restarts += 1
        if self.down.is_set() or self.reconnect_fails:
            raise Unavailable("reconnect to Milvus at http://db:19530 failed: connection refused")
        super().reconnect(timeout)  # loads the collections again, as MilvusStore.reconnect does

    def reload_collections(self, timeout: float) -> list[str]:
        self.reloads += 1
        return super().reload_collections(timeout)


async def _start(encoder: Any, store: Any, **overrides: Any) -> Sidecar:
    return await start_in_process(encoder, store=store, milvus_health_interval_s=0.05, **overrides)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def _metrics(sidecar: Sidecar) -> str:
    return generate_latest(sidecar.metrics.registry).decode()


def test_outage_not_serving_fail_fast_and_recovery(tiny_encoder: Any) -> None:
    store = ScriptedStore()

    async def main() -> None:
        sc = await _start(tiny_encoder, store)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
                health = health_pb2_grpc.HealthStub(ch)
                docs = documents_pb2_grpc.DocumentsStub(ch)
                embed = embedder_pb2_grpc.EmbedderStub(ch)

                async def status(name: str = "") -> int:
                    return (await health.Check(health_pb2.HealthCheckRequest(service=name))).status

                assert await status() == SERVING and "mee_milvus_up 1.0" in _metrics(sc)
                store.down.set()
                await _until(lambda: sc.milvus_down_since is not None)
                assert await status() == NOT_SERVING and await status(DOCUMENTS) == NOT_SERVING
                assert await status(EMBEDDER) == SERVING  # Embed needs no Milvus
                text = _metrics(sc)
                assert "mee_milvus_up 0.0" in text and "connection refused" in text  # why, in the metrics
                assert "mee_milvus_outages_total 1.0" in text
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await docs.Get(documents_pb2.GetRequest(ids=["a"]), timeout=30)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "retry" in err.value.details() and "unreachable" in err.value.details()
                reply = await embed.Embed(embedder_pb2.EmbedRequest(texts=["still embeds"]), timeout=30)
                assert list(reply.token_counts)
                store.down.clear()
                await _until(lambda: sc.milvus_down_since is None)
                assert await status() == SERVING and await status(DOCUMENTS) == SERVING
                assert "mee_milvus_up 1.0" in _metrics(sc) and sc.rt.store_down == ""
                assert store.reloads >= 1  # collections loaded again after the outage
        finally:
            await sc.stop(0)

    asyncio.run(main())


def test_released_collections_are_reloaded_without_an_outage(tiny_encoder: Any) -> None:
    store = ScriptedStore()

    async def main() -> None:
        sc = await _start(tiny_encoder, store)
        try:
            store.needs_reload = True  # what the store sets when Milvus says "collection released"
            await _until(lambda: store.reloads >= 1)
            assert sc.milvus_down_since is None
        finally:
            await sc.stop(0)

    asyncio.run(main())


def test_embedded_lite_restarts_are_bounded(tiny_encoder: Any) -> None:
    store = ScriptedStore(lite=True, reconnect_fails=True)

    async def main() -> None:
        sc = await _start(tiny_encoder, store, milvus_lite_restarts=2)
        try:
            store.down.set()
            await _until(lambda: "restarts in a row" in sc.rt.store_down, 20)
            attempts = store.reconnects
            await asyncio.sleep(0.5)
            assert store.reconnects == attempts == 2  # bounded: no more restarts after giving up
            assert "Restart the sidecar" in sc.rt.store_down
            assert "restarts in a row failed" in _metrics(sc)
        finally:
            await sc.stop(0)

    asyncio.run(main())


def test_startup_retries_are_bounded(tiny_encoder: Any, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    import milvus_embed_ext.service.server as server

    calls: list[int] = []

    def unreachable(settings: Any) -> Any:
        calls.append(1)
        raise Unavailable("connect to Milvus at http://db:19530 failed: connection refused")

    monkeypatch.setattr(server, "connect_store", unreachable)

    async def main() -> None:
        settings = load_settings(env={}, overrides={"listen": "127.0.0.1:0", "max_length": 512,
                                                    "milvus_startup_timeout_s": 1.5,
                                                    "milvus_uri": "http://db:19530"})
        sc = Sidecar(settings, encoder=tiny_encoder)
        await sc.start()
        await asyncio.wait_for(sc.failed.wait(), 30)
        await sc.stop(0)
        assert isinstance(sc.startup_error, Unavailable)
        assert "stayed unreachable" in str(sc.startup_error) and "milvus_startup_timeout_s" in str(sc.startup_error)

    asyncio.run(main())
    assert 2 <= len(calls) <= 20
    assert any("attempt 1" in r.getMessage() for r in caplog.records)


class HangingDocStore:
    """A collection whose reads hang (a Milvus that stopped answering without closing connections)."""

    layout = type("L", (), {"scalar_fields": ("id", "text", "metadata")})()

    def __init__(self) -> None:
        self.release = threading.Event()

    def get(self, ids: Any, **kw: Any) -> list[dict[str, Any]]:
        self.release.wait(30)
        return []


def test_calls_waiting_on_a_hung_milvus_fail_fast_when_it_is_declared_lost(tiny_encoder: Any) -> None:
    store = ScriptedStore()
    hanging = HangingDocStore()

    async def main() -> None:
        sc = await _start(tiny_encoder, store)
        sc.rt.doc_stores["documents"] = hanging
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.port}") as ch:
                docs = documents_pb2_grpc.DocumentsStub(ch)
                call = asyncio.ensure_future(docs.Get(documents_pb2.GetRequest(ids=["a"], allow_missing=True),
                                                      timeout=60))
                await asyncio.sleep(0.3)
                assert not call.done()  # waiting on the hung Milvus
                store.down.set()  # the watcher's probe fails too: Milvus is declared lost
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await asyncio.wait_for(call, 20)  # long before the 60 s deadline
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "retry" in err.value.details()
        finally:
            hanging.release.set()
            await sc.stop(0)

    asyncio.run(main())


def test_a_slow_probe_is_not_an_outage_but_a_run_of_them_is(tiny_encoder: Any) -> None:
    """A busy Milvus (a large collection loading, a loaded 2-core host) may miss a probe: serving goes on. Only
    HUNG_AFTER_SLOW_PROBES timeouts in a row count as lost, and a success in between starts the count again."""
    from milvus_embed_ext.service.server import HUNG_AFTER_SLOW_PROBES

    store = ScriptedStore()

    async def main() -> None:
        sc = await _start(tiny_encoder, store)
        try:
            for _ in range(3):
                store.slow = HUNG_AFTER_SLOW_PROBES - 1
                target = store.pings + HUNG_AFTER_SLOW_PROBES  # the slow ones, then one that answers
                await _until(lambda target=target: store.slow == 0 and store.pings > target)
                assert sc.milvus_down_since is None and store.reconnects == 0
            assert "mee_milvus_outages_total 0.0" in _metrics(sc)
            store.slow = HUNG_AFTER_SLOW_PROBES
            await _until(lambda: store.reconnects == 1)  # counted as lost (hung): reconnected
            await _until(lambda: sc.milvus_down_since is None)  # and back, by itself
            assert "mee_milvus_outages_total 1.0" in _metrics(sc)
        finally:
            await sc.stop(0)

    asyncio.run(main())
