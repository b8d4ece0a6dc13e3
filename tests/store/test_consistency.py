"""Failures injected between the writes of one upsert/delete: readers never see a half-written
document, the call reports the failure, and retrying converges with no orphan ColBERT rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pymilvus.exceptions import MilvusException

from milvus_embed_ext.encoder import lexical_score
from milvus_embed_ext.errors import ConsistencyError, Unavailable
from milvus_embed_ext.store import CollectionLayout, Document, DocumentStore, MilvusStore
from tests.store.store_helpers import assert_no_orphans, companion_rows, fake_output

DIM = 32


class FlakyClient:
    """Forwards to a real MilvusClient; fails or runs a hook on chosen (method, collection) calls."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.fail: dict[tuple[str, str], int] = {}  # -> calls that still succeed before failing (once)
        self.before: dict[tuple[str, str], Callable[[], None]] = {}
        self.calls: list[tuple[str, str]] = []  # every forwarded (method, collection), in order

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._client, name)
        if name not in {"upsert", "delete", "insert", "query", "search"}:
            return target

        def call(collection_name: str, *args: Any, **kwargs: Any) -> Any:
            key = (name, collection_name)
            self.calls.append(key)
            hook = self.before.pop(key, None)
            if hook is not None:
                hook()
            if key in self.fail:
                if self.fail[key] == 0:
                    del self.fail[key]
                    raise MilvusException(code=2, message="injected failure: server unavailable")
                self.fail[key] -= 1
            return target(collection_name, *args, **kwargs)

        return call


@pytest.fixture
def flaky(lite_store: MilvusStore, collection_name: str) -> tuple[DocumentStore, FlakyClient]:
    client = FlakyClient(lite_store.client)
    store = MilvusStore.from_client(client, lite_store.capabilities, target=f"flaky-{collection_name}")
    # fp32 so that stored ColBERT vectors can be compared exactly; 32-d records -> 383 tokens per row
    layout = CollectionLayout(collection_name, DIM, colbert="companion", colbert_codec="fp32")
    return DocumentStore.create(store, layout), client


def docs(*ids: str, tag: str = "v1") -> list[Document]:
    return [Document(i, f"text of {i} {tag}", {"tag": tag}) for i in ids]


def assert_stored(ds: DocumentStore, ids: list[str], enc: Any, tag: str) -> None:
    got = ds.fetch_vectors(ids)
    meta = {d["id"]: d["metadata"]["tag"] for d in ds.get(ids)}
    for i, doc_id in enumerate(ids):
        assert meta[doc_id] == tag
        np.testing.assert_allclose(got[doc_id].dense, enc.dense[i], rtol=1e-6)
        assert got[doc_id].colbert is not None
        np.testing.assert_array_equal(got[doc_id].colbert, enc.colbert[i])


def test_colbert_write_failure_keeps_the_old_document(flaky: tuple[DocumentStore, FlakyClient],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from milvus_embed_ext.store import documents

    ds, client = flaky
    ids = ["a", "b"]
    old = fake_output(2, DIM, seed=1, tokens=[5, 900])
    ds.write(docs(*ids), old)
    new = fake_output(2, DIM, seed=2, tokens=[800, 900])  # 3 + 3 ColBERT rows
    monkeypatch.setattr(documents, "MAX_ROWS_PER_REQUEST", 2)  # -> three requests
    client.fail[("upsert", ds.layout.companion_name)] = 1  # the second one fails
    with pytest.raises(Unavailable, match="injected"):
        ds.write(docs(*ids, tag="v2"), new)
    assert_stored(ds, ids, old, "v1")
    assert_no_orphans(ds, ids)  # the partial new version was discarded


def test_main_write_failure_is_a_consistency_error_and_retry_converges(
        flaky: tuple[DocumentStore, FlakyClient]) -> None:
    ds, client = flaky
    ids = ["a", "b", "c"]
    old = fake_output(3, DIM, seed=3, tokens=[4, 500, 7])
    ds.write(docs(*ids), old)
    new = fake_output(3, DIM, seed=4, tokens=[900, 2, 6])
    seen: dict[str, Any] = {}

    def read_between_the_writes() -> None:  # ColBERT rows of the new version exist, main rows are old
        seen.update(ds.fetch_vectors(ids))
        seen["hits"] = ds.search_dense("dense", new.dense[0], 3, "")

    client.before[("upsert", ds.name)] = read_between_the_writes
    client.fail[("upsert", ds.name)] = 0
    with pytest.raises(ConsistencyError, match="Retry the same upsert"):
        ds.write(docs(*ids, tag="v2"), new)
    for i, doc_id in enumerate(ids):  # readers in the middle saw the old document, whole
        np.testing.assert_array_equal(seen[doc_id].colbert, old.colbert[i])
        np.testing.assert_allclose(seen[doc_id].dense, old.dense[i], rtol=1e-6)
    assert {h for h, _ in seen["hits"]} == set(ids)
    assert_stored(ds, ids, old, "v1")
    assert len(companion_rows(ds, ids)) > 3  # uncommitted rows are left for the retry to sweep
    ds.write(docs(*ids, tag="v2"), new)  # retry
    assert_stored(ds, ids, new, "v2")
    assert_no_orphans(ds, ids)


def test_new_documents_are_invisible_until_committed(flaky: tuple[DocumentStore, FlakyClient]) -> None:
    ds, client = flaky
    enc = fake_output(2, DIM, seed=5)
    client.fail[("upsert", ds.name)] = 0
    with pytest.raises(ConsistencyError):
        ds.write(docs("n1", "n2"), enc)
    assert ds.get(["n1", "n2"]) == [] and ds.fetch_vectors(["n1", "n2"]) == {}
    assert ds.search_dense("dense", enc.dense[0], 5, "") == []
    ds.write(docs("n1", "n2"), enc)
    assert_stored(ds, ["n1", "n2"], enc, "v1")
    assert_no_orphans(ds, ["n1", "n2"])


def test_sweep_failure_reports_and_retry_removes_old_versions(flaky: tuple[DocumentStore, FlakyClient]) -> None:
    ds, client = flaky
    ids = ["x", "y"]
    ds.write(docs(*ids), fake_output(2, DIM, seed=6, tokens=[900, 3]))
    new = fake_output(2, DIM, seed=7, tokens=[2, 3])
    client.fail[("delete", ds.layout.companion_name)] = 0
    with pytest.raises(ConsistencyError, match="previous ColBERT rows"):
        ds.write(docs(*ids, tag="v2"), new)
    assert_stored(ds, ids, new, "v2")  # committed: readers see the new version only
    with pytest.raises(AssertionError):
        assert_no_orphans(ds, ids)
    ds.write(docs(*ids, tag="v2"), new)
    assert_stored(ds, ids, new, "v2")
    assert_no_orphans(ds, ids)


def test_shrinking_a_document_leaves_no_rows_behind(flaky: tuple[DocumentStore, FlakyClient]) -> None:
    ds, _ = flaky
    ds.write(docs("long"), fake_output(1, DIM, seed=8, tokens=[1200]))  # 4 companion rows
    assert len(companion_rows(ds, ["long"])) == 4
    short = fake_output(1, DIM, seed=9, tokens=[3])
    ds.write(docs("long", tag="v2"), short)
    assert len(companion_rows(ds, ["long"])) == 1
    assert_stored(ds, ["long"], short, "v2")


def test_delete_failure_after_the_main_row_and_retry(flaky: tuple[DocumentStore, FlakyClient]) -> None:
    ds, client = flaky
    enc = fake_output(3, DIM, seed=10, tokens=[900, 4, 5])
    ds.write(docs("d1", "d2", "keep"), enc)
    client.fail[("delete", ds.layout.companion_name)] = 0
    with pytest.raises(ConsistencyError, match="retry the same delete"):
        ds.delete(["d1", "d2"])
    assert ds.get(["d1", "d2"]) == []
    assert {h for h, _ in ds.search_dense("dense", enc.dense[0], 10, "")} == {"keep"}
    assert ds.delete(["d1", "d2"]) == 0  # retry: nothing left to delete in the main collection...
    assert companion_rows(ds, ["d1", "d2"]) == []  # ...and the ColBERT rows are gone
    assert_stored(ds, ["keep"], fake_output(3, DIM, seed=10, tokens=[900, 4, 5]).select([2]), "v1")
    assert_no_orphans(ds, ["keep"])


def test_reader_racing_a_writer_gets_one_whole_version(flaky: tuple[DocumentStore, FlakyClient]) -> None:
    ds, client = flaky
    ids = ["r1", "r2"]
    old = fake_output(2, DIM, seed=11, tokens=[6, 7])
    new = fake_output(2, DIM, seed=12, tokens=[8, 900])
    ds.write(docs(*ids), old)
    # The writer commits and sweeps after the reader read the main rows, before it reads the ColBERT rows.
    client.before[("query", ds.layout.companion_name)] = lambda: ds.write(docs(*ids, tag="v2"), new)
    got = ds.fetch_vectors(ids)
    for i, doc_id in enumerate(ids):
        np.testing.assert_allclose(got[doc_id].dense, new.dense[i], rtol=1e-6)
        np.testing.assert_array_equal(got[doc_id].colbert, new.colbert[i])
    assert_no_orphans(ds, ids)


def test_reads_that_leave_colbert_out_never_touch_the_companion(
        flaky: tuple[DocumentStore, FlakyClient]) -> None:
    from milvus_embed_ext.search import HybridSearcher, SearchRequest

    ds, client = flaky
    ids = [f"s{i}" for i in range(12)]
    written = fake_output(12, DIM, seed=13)
    ds.write(docs(*ids), written)
    query = fake_output(1, DIM, seed=14)
    searcher = HybridSearcher(ds, lambda *a, **k: query)
    request = SearchRequest("q", top_k=5, plan={"representations": ["dense", "sparse"]})
    companion = ("query", ds.layout.companion_name)

    client.calls.clear()
    lean = searcher.search(request, query_encoding=query)
    # stage 1 returns the dense and sparse vectors with its hits: no second read of any collection
    assert companion not in client.calls and ("search", ds.name) in client.calls
    assert ("query", ds.name) not in client.calls
    got = ds.get(ids[:3], with_vectors=True, with_colbert=False)
    assert companion not in client.calls
    assert [d["id"] for d in got] == ids[:3] and all("colbert" not in d and "dense" in d for d in got)

    # the same ranking as exact scores over every stored document's vectors, read back whole
    stored = ds.fetch_vectors(ids)
    assert companion in client.calls
    exact = {i: (0.4 * float(np.dot(query.dense[0], v.dense)) + 0.2 * lexical_score(query.sparse[0], v.sparse)) / 0.6
             for i, v in stored.items()}
    expected = sorted(exact.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [h.id for h in lean.hits] == [i for i, _ in expected]
    np.testing.assert_allclose([h.score for h in lean.hits], [s for _, s in expected], rtol=1e-5, atol=1e-6)
    assert len(lean.hits) == 5
    np.testing.assert_array_equal(ds.get(ids[:1], with_vectors=True)[0]["colbert"], written.colbert[0])
