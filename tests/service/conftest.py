"""A sidecar in a background thread's event loop (tiny encoder, no Milvus), for tests that drive it with
blocking clients (HTTP clients, the sync gRPC client)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.service.server import Sidecar
from tests._fakes import NullStore
from tests.service.svc_helpers import GatedEncoder


class ThreadedSidecar:
    def __init__(self, encoder: Any, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-sidecar", daemon=True)
        self.thread.start()
        settings = load_settings(env={}, overrides={"listen": "127.0.0.1:0", "http_listen": "127.0.0.1:0",
                                                    "max_length": 512, **overrides})

        async def start() -> Sidecar:
            sc = Sidecar(settings, encoder=encoder, store=NullStore())
            await sc.start()
            await asyncio.wait_for(sc.ready.wait(), 30)
            return sc

        self.sc: Sidecar = self.call(start())
        self.base = f"http://127.0.0.1:{self.sc.http_port}"
        self.grpc = f"127.0.0.1:{self.sc.port}"

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.call(self.sc.stop(1))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def gate_encoder(tiny_encoder) -> GatedEncoder:
    return GatedEncoder(tiny_encoder)


@pytest.fixture(scope="module")
def http_sidecar(gate_encoder) -> Iterator[ThreadedSidecar]:
    """One keyed sidecar for a test module: HTTP and gRPC on free loopback ports, key ``k-http-test``."""
    side = ThreadedSidecar(gate_encoder, api_keys=("k-http-test",), max_texts_per_request=40, max_message_bytes=1 << 20)
    try:
        yield side
    finally:
        side.close()
