"""The native multi-vector path (Milvus 2.6.4+) without a server: what is sent and how answers are read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from milvus_embed_ext.errors import FailedPrecondition, InvalidArgument
from milvus_embed_ext.store import CollectionLayout, Document, DocumentStore, MilvusStore, capabilities_for
from tests.store.store_helpers import fake_output

DIM = 16


class RecordingClient:
    """Stands in for MilvusClient: records calls, answers query/search from canned rows."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any, dict[str, Any]]] = []
        self.rows: dict[str, dict[str, Any]] = {}

    def upsert(self, collection_name: str, data: list[dict[str, Any]], **kw: Any) -> dict[str, int]:
        self.calls.append(("upsert", collection_name, data, kw))
        for r in data:
            self.rows[r["id"]] = r
        return {"upsert_count": len(data)}

    def query(self, collection_name: str, filter: str = "", output_fields: Any = None, **kw: Any) -> list:
        self.calls.append(("query", collection_name, filter, {"output_fields": output_fields, **kw}))
        return [{k: r[k] for k in output_fields if k in r} for r in self.rows.values() if f'"{r["id"]}"' in filter]

    def search(self, collection_name: str, **kw: Any) -> list:
        self.calls.append(("search", collection_name, None, kw))
        return [[{"id": "a", "distance": 3.0}]]


@pytest.fixture
def native() -> tuple[DocumentStore, RecordingClient]:
    client = RecordingClient()
    store = MilvusStore.from_client(client, capabilities_for("v2.6.4", lite=False))
    return DocumentStore(store, CollectionLayout("kb", DIM)), client


def test_native_layout_writes_one_row_with_token_structs(native: tuple[DocumentStore, RecordingClient]) -> None:
    ds, client = native
    assert ds.layout.colbert == "native" and ds.layout.index_type == "HNSW"
    enc = fake_output(2, DIM, tokens=[3, 5])
    ds.write([Document("a", "x"), Document("b", "y", {"k": 1})], enc)
    (call,) = client.calls  # one request, main collection only: a single row is atomic
    _, name, rows, _ = call
    assert name == "kb" and [r["id"] for r in rows] == ["a", "b"]
    assert "colbert_version" not in rows[0]
    assert len(rows[1]["colbert"]) == 5 and len(rows[1]["colbert"][0]["vector"]) == DIM
    np.testing.assert_allclose(np.asarray([v["vector"] for v in rows[0]["colbert"]]), enc.colbert[0], rtol=1e-6)
    got = ds.fetch_vectors(["b", "a"])
    np.testing.assert_allclose(got["b"].colbert, enc.colbert[1], rtol=1e-6)
    np.testing.assert_allclose(got["a"].dense, enc.dense[0], rtol=1e-6)


def test_native_colbert_search_request(native: tuple[DocumentStore, RecordingClient]) -> None:
    ds, client = native
    q = fake_output(1, DIM, tokens=[4]).colbert[0]
    assert ds.search_colbert(q, 5, 'metadata["k"] == 1') == [("a", 0.75)]  # MAX_SIM sum / 4 query vectors
    kw = client.calls[-1][3]
    assert kw["anns_field"] == "colbert[vector]" and kw["search_params"]["metric_type"] == "MAX_SIM_IP"
    assert len(kw["data"][0]) == 4
    with pytest.raises(InvalidArgument, match="ColBERT query"):
        ds.search_colbert(q[:, :8], 5)


def test_native_refuses_too_many_tokens(native: tuple[DocumentStore, RecordingClient]) -> None:
    ds, client = native
    with pytest.raises(InvalidArgument, match="at most 4096"):
        ds.write([Document("a", "x")], fake_output(1, DIM, tokens=[4097]))
    assert client.calls == []


def test_search_colbert_needs_the_native_field() -> None:
    store = MilvusStore.from_client(RecordingClient(), capabilities_for("v2.5.4", lite=False))
    ds = DocumentStore(store, CollectionLayout("kb", DIM))
    assert ds.layout.colbert == "companion"
    with pytest.raises(FailedPrecondition, match="fetch_vectors"):
        ds.search_colbert(np.ones((2, DIM), dtype=np.float32), 5)
