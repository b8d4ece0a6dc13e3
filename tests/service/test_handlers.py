"""Handler units with fake contexts and stores (no server, no Milvus)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.errors import DeadlineExceeded, InvalidArgument
from milvus_embed_ext.service.handlers import DocumentsHandlers, Runtime, SearchHandlers, in_store_thread
from milvus_embed_ext.store.layout import CollectionLayout
from milvus_embed_ext.wire._generated import documents_pb2, search_pb2


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


class _NoTextDocs:
    """A DocumentStore stand-in that, like the real one, refuses fields the collection does not store."""

    layout = CollectionLayout(name="notext", dense_dim=64, store_text=False)
    name = "notext"

    def get(self, ids, output_fields=None, **_kw):
        bad = [f for f in output_fields or () if f not in self.layout.scalar_fields]
        if bad:
            raise InvalidArgument(f"unknown output fields {bad}")
        return [{"id": i, "metadata": {"n": 1}} for i in ids]


def test_default_get_on_a_collection_without_text():
    rt = _runtime()
    rt.store = object()
    rt.doc_stores["notext"] = _NoTextDocs()
    handlers = DocumentsHandlers(rt)

    async def main():
        resp = await handlers.get(documents_pb2.GetRequest(collection="notext", ids=["a"]), FakeContext(None))
        assert [(d.id, d.text, d.metadata_json) for d in resp.documents] == [("a", "", '{"n":1}')]
        with pytest.raises(InvalidArgument, match="text"):
            await handlers.get(documents_pb2.GetRequest(collection="notext", ids=["a"], output_fields=["text"]),
                               FakeContext(None))

    try:
        asyncio.run(main())
    finally:
        rt.store_executor.shutdown(wait=True)


class _Output:
    token_counts = np.array([2])


class _FakeBatcher:
    async def encode(self, texts, **_kw):
        return SimpleNamespace(output=_Output(), queue_ms=0.0, inference_ms=0.0)


class _WritableDocs:
    layout = CollectionLayout(name="docs", dense_dim=64, colbert="none")
    name = "docs"

    def validate(self, docs, first_index=0) -> list:
        return list(docs)

    def encode_kwargs(self) -> dict:
        return {}

    def write_checked(self, checked, output) -> None:
        pass


def test_stream_errors_name_the_message_index_not_the_document_count():
    rt = _runtime()
    rt.store, rt.encoder, rt.batcher = object(), object(), _FakeBatcher()
    rt.doc_stores["docs"] = _WritableDocs()
    handlers = DocumentsHandlers(rt)

    async def messages():
        docs = [documents_pb2.Document(id=f"d{i}", text="t") for i in range(3)]
        yield documents_pb2.UpsertRequest(collection="docs", documents=docs)
        yield documents_pb2.UpsertRequest(collection="other", documents=docs[:1])

    async def main():
        with pytest.raises(InvalidArgument, match=r"message 1 names collection 'other'"):
            await handlers.upsert_stream(messages(), FakeContext(None))

    try:
        asyncio.run(main())
    finally:
        rt.store_executor.shutdown(wait=True)


class _CheckingDocs(_WritableDocs):
    """Records each validate call and which batch each write received."""

    def __init__(self) -> None:
        self.validated: list[tuple[list[str], int]] = []
        self.written: list[object] = []
        self.checked: list[object] = []

    def validate(self, docs, first_index=0) -> list:
        self.validated.append(([d.id for d in docs], first_index))
        self.checked.append(list(docs))
        return self.checked[-1]

    def write_checked(self, checked, output) -> None:
        self.written.append(checked)


def test_upsert_stream_validates_each_chunk_once_and_writes_the_checked_batch():
    rt = _runtime()
    rt.store, rt.encoder, rt.batcher = object(), object(), _FakeBatcher()
    docs = _CheckingDocs()
    rt.doc_stores["docs"] = docs
    handlers = DocumentsHandlers(rt)

    async def messages():
        yield documents_pb2.UpsertRequest(collection="docs", documents=[
            documents_pb2.Document(id=f"d{i}", text="t") for i in range(3)])
        yield documents_pb2.UpsertRequest(documents=[documents_pb2.Document(id="d3", text="t")])

    async def main():
        resp = await handlers.upsert_stream(messages(), FakeContext(None))
        assert resp.upserted == 4

    try:
        asyncio.run(main())
    finally:
        rt.store_executor.shutdown(wait=True)
    assert docs.validated == [(["d0", "d1", "d2"], 0), (["d3"], 3)]
    assert len(docs.written) == 2 and all(w is c for w, c in zip(docs.written, docs.checked, strict=True))


class _RecordingBatcher(_FakeBatcher):
    def __init__(self) -> None:
        self.calls = 0

    async def encode(self, texts, **kw):
        self.calls += 1
        return await super().encode(texts, **kw)


def test_search_paging_past_max_top_k_is_refused_before_encoding():
    rt = _runtime(max_top_k=1000)
    batcher = _RecordingBatcher()
    rt.store, rt.encoder, rt.batcher = object(), object(), batcher
    rt.doc_stores["docs"] = _WritableDocs()
    handlers = SearchHandlers(rt)

    async def main():
        req = search_pb2.HybridSearchRequest(collection="docs", query="q", top_k=10, offset=995)
        with pytest.raises(InvalidArgument, match=r"offset \+ top_k = 1005 exceeds .* 1000"):
            await handlers.hybrid_search(req, FakeContext(None))

    try:
        asyncio.run(main())
    finally:
        rt.store_executor.shutdown(wait=True)
    assert batcher.calls == 0
