"""Handler units with fake contexts and stores (no server, no Milvus)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.errors import DeadlineExceeded
from milvus_embed_ext.service.handlers import Runtime, in_store_thread


class FakeContext:
    def __init__(self, left: float | None) -> None:
        self.left = left

    def time_remaining(self) -> float | None:
        return self.left


def _runtime(**overrides) -> Runtime:
    return Runtime(settings=load_settings(env={}, overrides=overrides),
                   store_executor=ThreadPoolExecutor(max_workers=1))


def test_store_call_past_its_deadline_never_runs():
    rt = _runtime()
    ran: list[int] = []

    async def main():
        with pytest.raises(DeadlineExceeded):
            await in_store_thread(rt, FakeContext(0.0), ran.append, 1)
        await asyncio.sleep(0.05)  # a call submitted before the check would have run by now
        assert await in_store_thread(rt, FakeContext(5.0), len, [1, 2]) == 2

    try:
        asyncio.run(main())
    finally:
        rt.store_executor.shutdown(wait=True)
    assert ran == []
