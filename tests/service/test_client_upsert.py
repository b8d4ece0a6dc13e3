"""Client-side upsert validation against a recording Documents server: a bad document keeps its own error."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from milvus_embed_ext.client import AsyncSidecarClient, SidecarClient
from milvus_embed_ext.errors import InvalidArgument
from milvus_embed_ext.wire._generated import documents_pb2, documents_pb2_grpc


class Recording(documents_pb2_grpc.DocumentsServicer):
    def __init__(self) -> None:
        self.messages: list[int] = []  # documents per received message

    def Upsert(self, request, context):  # noqa: N802, ANN001, ANN201
        self.messages.append(len(request.documents))
        return documents_pb2.UpsertResponse(upserted=len(request.documents))

    def UpsertStream(self, request_iterator, context):  # noqa: N802, ANN001, ANN201
        n = 0
        for request in request_iterator:
            self.messages.append(len(request.documents))
            n += len(request.documents)
        return documents_pb2.UpsertResponse(upserted=n)


@pytest.fixture
def server():
    servicer = Recording()
    srv = grpc.server(ThreadPoolExecutor(max_workers=2))
    documents_pb2_grpc.add_DocumentsServicer_to_server(servicer, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield f"127.0.0.1:{port}", servicer
    srv.stop(0)


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
