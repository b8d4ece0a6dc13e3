"""DocumentStore on Milvus Lite with the tiny test checkpoint: round trips, overwrites, batches, ids,
metadata filters, bad input (nothing written), projections and collection lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pymilvus import DataType

from milvus_embed_ext.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from milvus_embed_ext.store import CollectionLayout, Document, DocumentStore, MilvusStore, TruncatedField
from tests.store.store_helpers import assert_no_orphans


def make(store: MilvusStore, name: str, encoder: Any, **kwargs: Any) -> DocumentStore:
    kwargs.setdefault("truncated", (TruncatedField(16),))
    return DocumentStore.create(store, CollectionLayout(name, encoder.hidden_size, **kwargs))


CORPUS = [
    Document("apple", "Apples are red or green fruit that grow on trees.", {"lang": "en", "year": 2001,
                                                                            "tags": ["fruit", "tree"]}),
    Document("rust", "Rust is a systems programming language with ownership.", {"lang": "en", "year": 2015,
                                                                               "tags": ["code"]}),
    Document("käse", "Käse wird aus Milch hergestellt und reift im Keller.", {"lang": "de", "year": 1999,
                                                                            "tags": ["food"]}),
    Document("文档-1", "向量数据库存储嵌入向量。", {"lang": "zh", "year": 2020, "nested": {"a": [1, None, True]}}),
]


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "int6", "bits"])
def test_round_trip_of_every_field(lite_store: MilvusStore, collection_name: str, tiny_encoder: Any,
                                   codec: str) -> None:
    ds = make(lite_store, collection_name, tiny_encoder, colbert_codec=codec)
    ds.upsert(CORPUS, tiny_encoder)
    ids = [d.id for d in CORPUS]
    enc = tiny_encoder.encode([d.text for d in CORPUS], truncate_dims=(16,))
    got = ds.get(reversed(ids), with_vectors=True)
    assert [g["id"] for g in got] == ids[::-1]
    for g in got:
        i = ids.index(g["id"])
        assert g["text"] == CORPUS[i].text and g["metadata"] == CORPUS[i].metadata
        np.testing.assert_allclose(g["dense"], enc.dense[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g["dense_16"], enc.truncated[16][i], rtol=1e-5, atol=1e-6)
        assert set(g["sparse"]) == set(enc.sparse[i]) and g["sparse"]
        np.testing.assert_allclose([g["sparse"][k] for k in sorted(g["sparse"])],
                                   [enc.sparse[i][k] for k in sorted(enc.sparse[i])], rtol=1e-6)
        cb, ref = g["colbert"], enc.colbert[i]
        assert cb.shape == ref.shape
        if codec == "fp32":
            np.testing.assert_array_equal(cb, ref)
        elif codec == "fp16":
            np.testing.assert_allclose(cb, ref, atol=1e-3)
        elif codec == "int8":
            assert np.abs(cb - ref).max() <= np.abs(ref).max() / 127
        elif codec == "int6":  # within a grid step, and never longer than stored (the planner's bound)
            assert np.abs(cb - ref).max() <= np.abs(ref).max() / 31
            assert np.all(np.linalg.norm(cb, axis=1) <= np.linalg.norm(ref, axis=1) * (1 + 1e-5))
        else:
            assert np.array_equal(np.sign(cb), np.where(ref >= 0, 1.0, -1.0))
    assert ds.get(["missing"]) == []
    assert ds.get(["apple"], output_fields=["metadata"]) == [{"id": "apple", "metadata": CORPUS[0].metadata}]


def test_search_dense_truncated_and_sparse(lite_store: MilvusStore, collection_name: str, tiny_encoder: Any) -> None:
    ds = make(lite_store, collection_name, tiny_encoder, index_type="IVF_FLAT")
    ds.upsert(CORPUS, tiny_encoder)
    q = tiny_encoder.encode([CORPUS[1].text], truncate_dims=(16,))
    hits = ds.search_dense("dense", q.dense[0], 4)
    assert hits[0][0] == "rust" and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    full_q = ds.search_dense("dense_16", q.dense[0], 4)  # projected inside
    pre = ds.search_dense("dense_16", q.truncated[16][0], 4)
    assert [h for h, _ in full_q] == [h for h, _ in pre]
    np.testing.assert_allclose([s for _, s in full_q], [s for _, s in pre], atol=1e-5)
    assert full_q[0][0] == "rust"
    sparse_hits = ds.search_sparse(q.sparse[0], 4)
    assert sparse_hits[0][0] == "rust"
    expected = sum(w * q.sparse[0][k] for k, w in q.sparse[0].items())
    assert sparse_hits[0][1] == pytest.approx(expected, rel=1e-4)
    assert ds.search_sparse({}, 4) == []
    with pytest.raises(InvalidArgument, match="no dense field"):
        ds.search_dense("dense_99", q.dense[0], 4)
    with pytest.raises(InvalidArgument, match="limit"):
        ds.search_dense("dense", q.dense[0], 0)
    with pytest.raises(InvalidArgument, match="expected 16"):
        ds.search_dense("dense_16", q.dense[0][:10], 4)


def test_metadata_filters(lite_store: MilvusStore, collection_name: str, tiny_encoder: Any) -> None:
    ds = make(lite_store, collection_name, tiny_encoder)
    ds.upsert(CORPUS, tiny_encoder)
    q = tiny_encoder.encode(["anything at all"]).dense[0]

    def ids(expr: str) -> set[str]:
        return {h for h, _ in ds.search_dense("dense", q, 10, expr)}

    assert ids('metadata["lang"] == "en"') == {"apple", "rust"}
    assert ids('metadata["year"] > 2000 and metadata["lang"] != "zh"') == {"apple", "rust"}
    assert ids('json_contains(metadata["tags"], "food")') == {"käse"}
    assert ids('metadata["nested"]["a"][0] == 1') == {"文档-1"}
    assert {h for h, _ in ds.search_sparse(tiny_encoder.encode([CORPUS[2].text]).sparse[0], 10,
                                           'metadata["lang"] == "de"')} == {"käse"}
    with pytest.raises(InvalidArgument, match="invalid filter"):
        ds.search_dense("dense", q, 10, 'metadata["lang"] ==')


def test_overwrite_replaces_every_representation(lite_store: MilvusStore, collection_name: str,
                                                 tiny_encoder: Any) -> None:
    ds = make(lite_store, collection_name, tiny_encoder, colbert_codec="fp16")  # the 1e-3 ColBERT check is fp16's
    ds.upsert([Document("d", "the first version talks about cats and dogs", {"v": 1})], tiny_encoder)
    second = "a completely different second text on quantum chromodynamics"
    ds.upsert([Document("d", second)], tiny_encoder)
    enc = tiny_encoder.encode([second], truncate_dims=(16,))
    (got,) = ds.get(["d"], with_vectors=True)
    assert got["text"] == second and got["metadata"] == {}
    np.testing.assert_allclose(got["dense"], enc.dense[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["dense_16"], enc.truncated[16][0], rtol=1e-5, atol=1e-6)
    assert set(got["sparse"]) == set(enc.sparse[0])
    assert got["colbert"].shape == enc.colbert[0].shape
    np.testing.assert_allclose(got["colbert"], enc.colbert[0], atol=1e-3)
    assert ds.count() == 1
    assert_no_orphans(ds, ["d"])


def test_batch_of_1000_documents(lite_store: MilvusStore, collection_name: str, tiny_encoder: Any) -> None:
    ds = make(lite_store, collection_name, tiny_encoder, colbert_codec="int8")
    batch = [Document(f"doc-{i:04d}", f"note {i} topic {i % 13}", {"i": i, "even": i % 2 == 0}) for i in range(1000)]
    ds.upsert(batch, tiny_encoder)
    assert ds.count() == 1000
    sample = [f"doc-{i:04d}" for i in (0, 499, 999)]
    got = ds.get(sample, with_vectors=True)
    assert [g["metadata"]["i"] for g in got] == [0, 499, 999]
    assert all(g["colbert"] is not None and g["colbert"].shape[0] > 0 for g in got)
    q = got[1]["dense"]
    top = ds.search_dense("dense", q, 5, 'metadata["i"] >= 400 and metadata["i"] < 600')
    assert top[0][1] == pytest.approx(1.0, abs=1e-4) and "doc-0499" in {h for h, s in top if s > 0.9999}
    assert sum(len(b) for b in ds.iter_documents(batch_size=300)) == 1000
    assert_no_orphans(ds, sample)
    assert ds.delete([d.id for d in batch]) == 1000
    assert ds.count() == 0
    assert ds.client.query(ds.layout.companion_name, filter="", output_fields=["count(*)"])[0]["count(*)"] == 0


UNICODE_IDS = ["文档/一", "ünïcödé—ß", "emoji-😀", 'dq"uote', "back\\slash", "with space, comma", "a" * 64]


def test_unicode_and_punctuated_ids(lite_store: MilvusStore, collection_name: str, tiny_encoder: Any) -> None:
    ds = make(lite_store, collection_name, tiny_encoder, max_id_length=256)
    ds.upsert([Document(i, f"text for {i}") for i in UNICODE_IDS], tiny_encoder)
    assert [g["id"] for g in ds.get(UNICODE_IDS)] == UNICODE_IDS
    vecs = ds.fetch_vectors(UNICODE_IDS)
    assert set(vecs) == set(UNICODE_IDS) and all(v.colbert is not None for v in vecs.values())
    hits = ds.search_dense("dense", vecs['dq"uote'].dense, 1)
    assert hits[0][0] == 'dq"uote'
    assert ds.delete(UNICODE_IDS[:3]) == 3
    assert [g["id"] for g in ds.get(UNICODE_IDS)] == UNICODE_IDS[3:]
    assert_no_orphans(ds, UNICODE_IDS)


GOOD = Document("good", "a valid document")


@pytest.fixture(scope="module")
def strict_store(lite_store: MilvusStore, tiny_encoder: Any) -> DocumentStore:
    """One collection (ids of at most 32 bytes) shared by the bad-input cases: none of them may write."""
    return make(lite_store, "bad_input_cases", tiny_encoder, max_id_length=32)


@pytest.mark.parametrize(("bad", "match"), [
    ([GOOD, Document("good", "same id twice")], "more than once"),
    ([GOOD, Document("e", "")], "text is empty"),
    ([GOOD, Document("w", "  \n\t ")], "text is empty"),
    ([GOOD, Document("x" * 33, "id too long")], "at most 32 bytes"),
    ([GOOD, Document("é" * 17, "34 utf-8 bytes")], "at most 32 bytes"),
    ([GOOD, Document("", "empty id")], "id is empty"),
    ([GOOD, Document(7, "int id")], "id must be a string"),  # type: ignore[arg-type]
    ([GOOD, Document("c\x00", "control char")], "control characters"),
    ([GOOD, Document("o'brien", "quote on Lite")], "single quote"),
    ([GOOD, Document("m", "set metadata", {"s": {1, 2}})], "not JSON-serialisable"),
    ([GOOD, Document("m", "nan metadata", {"x": float("nan")})], "not JSON-serialisable"),
    ([GOOD, Document("m", "list metadata", [1, 2])], "must be a JSON object"),  # type: ignore[arg-type]
    ([GOOD, Document("big", "x" * 70000)], "split the document"),
    ([GOOD, {"id": "d", "text": "t", "vector": [1]}], "unknown keys"),
])
def test_bad_input_writes_nothing(strict_store: DocumentStore, tiny_encoder: Any, bad: list, match: str) -> None:
    ds = strict_store
    with pytest.raises(InvalidArgument, match=match):
        ds.upsert(bad, tiny_encoder)
    assert ds.count() == 0


def test_upsert_validates_once_and_encodes_what_the_layout_stores(
        strict_store: DocumentStore, tiny_encoder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = strict_store
    calls: list[int] = []
    validate = ds.validate
    monkeypatch.setattr(ds, "validate", lambda docs, **kw: calls.append(len(docs)) or validate(docs, **kw))
    seen: dict[str, Any] = {}

    class Spy:
        def encode(self, texts: list[str], **kw: Any) -> Any:
            seen.update(kw)
            return tiny_encoder.encode(texts, **kw)

    ds.upsert([GOOD, Document("other", "another valid document")], Spy())
    try:
        assert calls == [2]
        assert seen == ds.encode_kwargs() == {"dense": True, "sparse": True, "colbert": True, "truncate_dims": (16,)}
        assert [d["id"] for d in ds.get(["good", "other"])] == ["good", "other"]
        with pytest.raises(InvalidArgument, match="document 5: id is empty"):
            ds.validate([Document("", "empty id")], first_index=5)
        enc = tiny_encoder.encode(["t"], **ds.encode_kwargs())
        with pytest.raises(TypeError, match="validate"):
            ds.write_checked([Document("raw", "t")], enc)  # type: ignore[arg-type]
        other = DocumentStore(ds.store, CollectionLayout("elsewhere", ds.layout.dense_dim, colbert="none"))
        with pytest.raises(TypeError, match="validate"):
            ds.write_checked(other.validate([Document("raw", "t")]), enc)
    finally:
        ds.delete(["good", "other"])  # the shared collection stays empty for the bad-input cases


def test_colbert_rows_longer_than_unit_are_refused(lite_store: MilvusStore, collection_name: str,
                                                   tiny_encoder: Any) -> None:
    """Search bounds MaxSim by the stored rows' norm to skip reads, so a write must not break that bound."""
    ds = make(lite_store, collection_name, tiny_encoder)
    enc = tiny_encoder.encode([GOOD.text], truncate_dims=(16,))
    enc.colbert[0] = enc.colbert[0] * 1.5
    with pytest.raises(InvalidArgument, match="L2-normalised"):
        ds.write([GOOD], enc)
    assert ds.count() == 0
    enc.colbert[0] = enc.colbert[0] / 1.5 * 0.5  # shorter rows are fine: the bound still holds
    ds.write([GOOD], enc)
    assert ds.count() == 1


def test_dense_dim_mismatch_writes_nothing(lite_store: MilvusStore, collection_name: str, tiny_encoder: Any) -> None:
    ds = DocumentStore.create(lite_store, CollectionLayout(collection_name, tiny_encoder.hidden_size * 2))
    with pytest.raises(FailedPrecondition, match=f"produces {tiny_encoder.hidden_size}-d"):
        ds.upsert([GOOD], tiny_encoder)
    assert ds.count() == 0


def test_pca_projection_is_fitted_stored_and_applied(lite_store: MilvusStore, collection_name: str,
                                                     tiny_encoder: Any) -> None:
    layout = CollectionLayout(collection_name, tiny_encoder.hidden_size, (TruncatedField(16, "pca"),
                                                                          TruncatedField(8)))
    ds = DocumentStore.create(lite_store, layout)
    with pytest.raises(FailedPrecondition, match="fit_projection"):
        ds.upsert(CORPUS, tiny_encoder)
    assert ds.count() == 0
    sample = tiny_encoder.encode([f"sample passage {i} about {w}" for i, w in
                                  enumerate(["cats", "code", "milk", "trees", "stars"] * 8)], sparse=False,
                                 colbert=False).dense
    pca = ds.fit_projection(16, sample)
    with pytest.raises(FailedPrecondition, match="already has"):
        ds.fit_projection(16, sample)
    with pytest.raises(InvalidArgument, match="prefix"):
        ds.fit_projection(8, sample)
    ds.upsert(CORPUS, tiny_encoder)
    dense = ds.fetch_vectors(["rust"])["rust"]
    np.testing.assert_allclose(dense.truncated[16], pca.project(dense.dense), atol=1e-5)
    reopened = DocumentStore.open(lite_store, collection_name)
    np.testing.assert_array_equal(reopened.project(dense.dense, 16), ds.project(dense.dense, 16))
    assert reopened.projection(16).fingerprint() == pca.fingerprint()
    q = tiny_encoder.encode([CORPUS[1].text], sparse=False, colbert=False).dense[0]
    assert reopened.search_dense("dense_16", q, 1)[0][0] == "rust"
    assert ds.sample_dense(3).shape == (3, tiny_encoder.hidden_size)


def test_lifecycle_open_create_check_drop(lite_store: MilvusStore, collection_name: str, tiny_encoder: Any) -> None:
    with pytest.raises(NotFound):
        DocumentStore.open(lite_store, collection_name)
    layout = CollectionLayout(collection_name, tiny_encoder.hidden_size, store_text=False, colbert="none",
                              extra={"model": tiny_encoder.fingerprint})
    ds = DocumentStore.create(lite_store, layout)
    assert ds.layout.colbert == "none" and ds.layout.index_type == "FLAT"
    with pytest.raises(AlreadyExists):
        DocumentStore.create(lite_store, layout)
    assert DocumentStore.create(lite_store, layout, exist_ok=True).layout == ds.layout
    with pytest.raises(FailedPrecondition, match="different layout"):
        DocumentStore.create(lite_store, CollectionLayout(collection_name, tiny_encoder.hidden_size), exist_ok=True)
    opened = DocumentStore.open(lite_store, collection_name)
    assert opened.layout == ds.layout and opened.layout.extra == {"model": tiny_encoder.fingerprint}
    assert opened.check() == []
    ds.upsert([GOOD], tiny_encoder)
    assert ds.get(["good"]) == [{"id": "good", "metadata": {}}]
    with pytest.raises(InvalidArgument, match="unknown output fields"):
        ds.get(["good"], output_fields=["text"])
    vec = ds.fetch_vectors(["good"])["good"]
    assert vec.colbert is None and vec.dense.shape == (tiny_encoder.hidden_size,)
    ds.drop()
    assert not ds.exists() and ds.check() == [f"collection {collection_name} does not exist"]


def test_foreign_collections_are_refused(lite_store: MilvusStore, collection_name: str) -> None:
    schema = lite_store.client.create_schema()
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    params = lite_store.client.prepare_index_params()
    params.add_index("v", index_type="FLAT", metric_type="L2")
    lite_store.client.create_collection(collection_name, schema=schema, index_params=params)
    with pytest.raises(FailedPrecondition, match="not created by milvus-embed"):
        DocumentStore.open(lite_store, collection_name)


def test_connect_created_the_lite_directory(lite_store: MilvusStore) -> None:
    assert Path(lite_store.target).parent.name == "sub" and Path(lite_store.target).exists()
    assert lite_store.capabilities.lite and not lite_store.capabilities.native_multivector


def test_candidates_carry_the_stored_vectors_and_fields(lite_store: MilvusStore, collection_name: str,
                                                        tiny_encoder: Any) -> None:
    """Stage 1 reads vectors column-wise from the search reply; they must equal what a plain read returns."""
    ds = make(lite_store, collection_name, tiny_encoder)
    ds.upsert(CORPUS, tiny_encoder)
    q = tiny_encoder.encode([CORPUS[0].text])
    stored = ds.fetch_vectors([d.id for d in CORPUS], colbert=False)
    rows = {r["id"]: r for r in ds.get([d.id for d in CORPUS])}
    for field_name, query in (("dense", q.dense[0]), ("dense_16", q.dense[0]), ("sparse", q.sparse[0])):
        hits = ds.candidates(field_name, query, 4, "", output_fields=("text", "metadata"))
        plain = (ds.search_sparse(query, 4) if field_name == "sparse" else ds.search_dense(field_name, query, 4))
        assert [(h.id, h.score) for h in hits] == plain
        for h in hits:
            np.testing.assert_array_equal(h.dense, stored[h.id].dense)
            assert h.sparse == pytest.approx(stored[h.id].sparse, rel=1e-6) and set(h.sparse) == set(stored[h.id].sparse)
            assert h.fields == {"text": rows[h.id]["text"], "metadata": rows[h.id]["metadata"]}
            assert h.colbert is not None and h.colbert.rows >= 1
    with pytest.raises(InvalidArgument, match="unknown output fields"):
        ds.candidates("dense", q.dense[0], 4, "", output_fields=("dense",))
    # with the pinned pymilvus the column-wise read is the one taken (not the per-hit fallback)
    from milvus_embed_ext.store.documents import _vector_columns

    raw = ds._search("dense", q.dense[0], 4, "", ["id", "dense", "sparse", "metadata"])
    assert _vector_columns(raw, ds.layout.dense_dim) is not None


@pytest.mark.parametrize("name", ["O|\u00aec{x\x00", "has space", "", "1starts_with_digit", "x" * 300])
def test_open_refuses_malformed_names_before_calling_milvus(name: str) -> None:
    """Some malformed names make pymilvus retry until the caller's deadline; they never reach Milvus."""

    class NoMilvus:
        def has_collection(self, name: str) -> bool:
            raise AssertionError("Milvus was called")

    with pytest.raises(InvalidArgument, match="collection name"):
        DocumentStore.open(NoMilvus(), name)  # type: ignore[arg-type]
