"""Client-side upsert validation against a recording Documents server: a bad document keeps its own error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from milvus_embed_ext.client import AsyncSidecarClient, SidecarClient
from milvus_embed_ext.errors import InvalidArgument
from tests.service.svc_helpers import RecordingDocuments, recording_documents_server


@pytest.fixture
def server() -> Iterator[tuple[str, RecordingDocuments]]:
    with recording_documents_server() as served:
        yield served


def _docs(n: int, bad: int | None = None) -> list[dict]:
    return [{"id": f"d{i}", "text": "t"} if i != bad else {"id": f"d{i}"} for i in range(n)]


def test_bad_document_in_a_sequence_fails_before_anything_is_sent(server):
    address, servicer = server
    with SidecarClient(address, timeout=10) as c, pytest.raises(InvalidArgument, match=r"documents\[70\] has no text"):
        c.upsert(_docs(100, bad=70), chunk_size=16)

    async def main():
        async with AsyncSidecarClient(address, timeout=10) as ac:
            with pytest.raises(InvalidArgument, match=r"documents\[70\] has no text"):
                await ac.upsert(_docs(100, bad=70), chunk_size=16)
            assert (await ac.upsert(_docs(40), chunk_size=16)).upserted == 40

    asyncio.run(main())
    assert servicer.messages == [16, 16, 8]


def test_bad_document_in_an_iterator_keeps_its_error(server):
    address, servicer = server
    with SidecarClient(address, timeout=10) as c:
        with pytest.raises(InvalidArgument, match=r"documents\[70\] has no text"):
            c.upsert(iter(_docs(100, bad=70)), chunk_size=16)
        assert c.upsert(iter(_docs(20)), chunk_size=16).upserted == 20

    async def main():
        async with AsyncSidecarClient(address, timeout=10) as ac:
            with pytest.raises(InvalidArgument, match=r"documents\[70\] has no text"):
                await ac.upsert(iter(_docs(100, bad=70)), chunk_size=16)
            assert (await ac.upsert(iter(_docs(20)), chunk_size=16)).upserted == 20

    asyncio.run(main())
