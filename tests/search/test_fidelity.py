"""Fidelity of the hybrid search pipeline on Milvus Lite with the tiny checkpoint.

A deterministic multilingual corpus is encoded once and written to two collections: one with prefix
truncated fields and ColBERT vectors (stored fp32, so stage 2 sees exactly what the encoder produced), one
with PCA truncated fields fitted on a corpus sample. Against brute force over the whole corpus (the
encoder's scoring helpers, FlagEmbedding ``compute_score`` semantics):

(a) whenever the true top-10 lies inside the candidate union, the m3 top-10 equals the brute-force top-10,
    order included (cross-checked once against FlagEmbedding's own ``compute_score``);
(b) pipeline recall@10 never falls as candidate depth grows, at every truncated dim;
(c) truncated-field prefetch recall against full dense never falls with depth, prefix and PCA alike.

Figures for (b) and (c) are measured by bench/measure_recall.py; the tests assert invariants only.
"""

from __future__ import annotations

import numpy as np
import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.devtools.synthetic import generate_corpus, generate_queries
from milvus_embed_ext.errors import InvalidArgument, NotFound
from milvus_embed_ext.search import HybridSearcher, SearchRequest
from milvus_embed_ext.search.evaluation import (
    brute_force_m3,
    brute_force_scores,
    pipeline_recall,
    prefetch_recall,
)

N_DOCS = 2000
N_QUERIES = 16
DIMS = (16, 32)
K = 10
TIE_TOL = 1e-6  # scores closer than this may swap places (float32 rounding in different code paths)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def corpus():
    docs = generate_corpus(N_DOCS, seed=7, min_words=6, max_words=24)
    return docs, generate_queries(docs, N_QUERIES, seed=8)


@pytest.fixture(scope="module")
def encoded(tiny_encoder, corpus):
    docs, queries = corpus
    return (tiny_encoder.encode([d.text for d in docs], truncate_dims=DIMS),
            tiny_encoder.encode(queries))


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    from milvus_embed_ext.store import MilvusStore

    settings = load_settings(env={}, overrides={"milvus_uri": str(tmp_path_factory.mktemp("fidelity") / "m.db")})
    store = MilvusStore.connect(settings)
    yield store
    store.close()


def _documents(docs):
    from milvus_embed_ext.store import Document

    return [Document(d.id, d.text, d.metadata) for d in docs]


@pytest.fixture(scope="module")
def prefix_store(milvus, corpus, encoded):
    from milvus_embed_ext.store import CollectionLayout, DocumentStore, TruncatedField

    layout = CollectionLayout(name="fidelity_prefix", dense_dim=encoded[0].dense.shape[1],
                              truncated=tuple(TruncatedField(d) for d in DIMS), colbert_codec="fp32")
    ds = DocumentStore.create(milvus, layout)
    ds.write(_documents(corpus[0]), encoded[0])
    return ds


@pytest.fixture(scope="module")
def pca_store(milvus, corpus, encoded):
    """PCA fields fitted on a quarter of the corpus; no ColBERT (prefetch recall only needs dense)."""
    from milvus_embed_ext.store import CollectionLayout, DocumentStore, TruncatedField

    layout = CollectionLayout(name="fidelity_pca", dense_dim=encoded[0].dense.shape[1],
                              truncated=tuple(TruncatedField(d, "pca") for d in DIMS), colbert="none")
    ds = DocumentStore.create(milvus, layout)
    sample = encoded[0].dense[np.random.default_rng(0).choice(N_DOCS, N_DOCS // 4, replace=False)]
    for d in DIMS:
        ds.fit_projection(d, sample)
    ds.write(_documents(corpus[0]), encoded[0])
    return ds


@pytest.fixture(scope="module")
def searcher(prefix_store, tiny_encoder):
    with HybridSearcher(prefix_store, tiny_encoder.encode) as s:
        yield s


@pytest.fixture(scope="module")
def truth(corpus, encoded):
    """Brute-force m3 over the whole corpus, per query: (top-K ranking, every document's exact score)."""
    docs, _ = corpus
    ids = [d.id for d in docs]
    doc_enc, q_enc = encoded
    out = []
    for i in range(N_QUERIES):
        q = q_enc.row(i)
        scores = brute_force_scores(q, doc_enc)
        fused = (0.4 * scores["dense"] + 0.2 * scores["sparse"] + 0.4 * scores["colbert"]) / 1.0
        out.append((brute_force_m3(q, doc_enc, ids, K), dict(zip(ids, fused.tolist(), strict=True))))
    return out


def assert_same_ranking(got: list[tuple[str, float]], expected: list[tuple[str, float]],
                        exact: dict[str, float]) -> None:
    """Same ids in the same order; a swap is accepted only between scores within TIE_TOL."""
    assert len(got) == len(expected)
    for (gid, gscore), (eid, escore) in zip(got, expected, strict=True):
        assert gscore == pytest.approx(exact[gid], abs=1e-5), f"{gid}: pipeline {gscore} vs exact {exact[gid]}"
        if gid != eid:
            assert abs(exact[gid] - escore) <= TIE_TOL, f"rank differs: got {gid} ({exact[gid]}), want {eid} ({escore})"


# ---------------------------------------------------------------- (a) exactness


def test_m3_top10_equals_brute_force_when_truth_in_candidates(searcher, corpus, encoded, truth) -> None:
    _, queries = corpus
    covered = 0
    for i, text in enumerate(queries):
        res = searcher.search(SearchRequest(text, top_k=K, plan={"depth": 50}), query_encoding=encoded[1].row(i))
        assert res.complete
        expected, exact = truth[i]
        if {e for e, _ in expected} <= set(res.candidate_ids):
            covered += 1
            assert_same_ranking([(h.id, h.score) for h in res.hits], expected, exact)
    assert covered >= N_QUERIES // 4, f"only {covered} of {N_QUERIES} queries had their true top-{K} in the candidates"


def test_m3_equals_brute_force_when_candidates_are_the_whole_corpus(searcher, corpus, truth) -> None:
    """Full dense route as deep as the corpus: every query is covered, so every top-10 must match.

    Goes through encode_fn (the searcher's encoder) rather than a precomputed encoding.
    """
    _, queries = corpus
    for i in range(2):
        res = searcher.search(SearchRequest(queries[i], top_k=K, plan={"routes": ["dense"], "depth": N_DOCS}))
        assert res.candidates == N_DOCS
        assert "encode" in res.timings_ms
        assert_same_ranking([(h.id, h.score) for h in res.hits], *truth[i])


def test_offset_pages_match_brute_force(searcher, corpus, encoded, truth) -> None:
    _, queries = corpus
    res = searcher.search(SearchRequest(queries[0], top_k=4, offset=3, plan={"depth": 200}),
                          query_encoding=encoded[1].row(0))
    expected, exact = truth[0]
    assert_same_ranking([(h.id, h.score) for h in res.hits], expected[3:7], exact)


def test_scores_match_flagembedding_compute_score(searcher, corpus, encoded, tiny_model_dir) -> None:
    flag = pytest.importorskip("FlagEmbedding")
    model = flag.BGEM3FlagModel(str(tiny_model_dir), use_fp16=False, devices="cpu")
    docs, queries = corpus
    text_of = {d.id: d.text for d in docs}
    checked = 0
    for i in range(3):
        res = searcher.search(SearchRequest(queries[i], top_k=3, plan={"depth": 50}), query_encoding=encoded[1].row(i))
        for hit in res.hits:
            # one pair per call: batching pads the passages, which changes FlagEmbedding's ColBERT max
            ref = model.compute_score([(queries[i], text_of[hit.id])], weights_for_different_modes=[0.4, 0.2, 0.4])
            assert hit.score == pytest.approx(ref["colbert+sparse+dense"][0], abs=1e-4)
            for rep in ("dense", "sparse", "colbert"):
                assert hit.scores[rep] == pytest.approx(ref[rep][0], abs=1e-4), rep
            checked += 1
    assert checked == 9


# ---------------------------------------------------------------- (b) and (c) recall invariants


def test_pipeline_recall_never_falls_with_depth(searcher, corpus, encoded, truth) -> None:
    _, queries = corpus
    truths = [[i for i, _ in t] for t, _ in truth]
    depths = (10, 30, 100)
    rows = pipeline_recall(searcher, queries, encoded[1], truths, DIMS, depths, k=K)
    for dim in DIMS:
        by_depth = [r for r in rows if r.dim == dim]
        assert [r.depth for r in by_depth] == list(depths)
        for shallow, deep in zip(by_depth, by_depth[1:], strict=False):
            # deeper routes return a superset of candidates, and exact re-scoring keeps every true hit found
            assert all(d >= s for s, d in zip(shallow.recalls, deep.recalls, strict=True)), (dim, shallow, deep)
            assert all(dc >= sc for sc, dc in zip(shallow.candidates, deep.candidates, strict=True))
        assert all(0.0 <= r.mean <= 1.0 for r in by_depth)
        assert by_depth[-1].mean > 0.0


@pytest.mark.parametrize("projection", ["prefix", "pca"])
def test_prefetch_recall_never_falls_with_depth(projection, prefix_store, pca_store, corpus, encoded) -> None:
    store = prefix_store if projection == "prefix" else pca_store
    ids = [d.id for d in corpus[0]]
    depths = (10, 50, 200, N_DOCS)
    rows = prefetch_recall(store, encoded[1].dense, encoded[0].dense, ids, DIMS, depths, k=K, projection=projection)
    for dim in DIMS:
        by_depth = [r for r in rows if r.dim == dim]
        for shallow, deep in zip(by_depth, by_depth[1:], strict=False):
            assert all(d >= s for s, d in zip(shallow.recalls, deep.recalls, strict=True))
        assert by_depth[-1].mean == 1.0  # the whole corpus always contains the true top-k
        assert 0.0 < by_depth[0].mean <= 1.0


def test_pca_projection_is_applied_to_queries_and_documents(pca_store, encoded) -> None:
    """A document searched with its own text comes first in its PCA field: both sides share the rotation."""
    doc_enc = encoded[0]
    for row in (0, 5, 17):
        for dim in DIMS:
            q = pca_store.project(doc_enc.dense[row][None, :], dim).reshape(-1)
            hits = pca_store.search_dense(f"dense_{dim}", q, 1, "")
            assert hits[0][0] == f"syn-{row:05d}"
            assert hits[0][1] == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------- Milvus behaviour through the planner


def test_filter_applies_to_every_route(searcher, corpus) -> None:
    _, queries = corpus
    res = searcher.search(SearchRequest(queries[0], top_k=20, filter='metadata["lang"] == "de"',
                                        output_fields=("metadata",),
                                        plan={"routes": ["dense_truncated", "sparse", "dense"]}))
    assert res.hits and all(h.fields["metadata"]["lang"] == "de" for h in res.hits)
    assert set(res.route_hits) == {"dense_truncated", "sparse", "dense"}


def test_invalid_filter_is_invalid_argument_with_milvus_message(searcher, corpus) -> None:
    with pytest.raises(InvalidArgument, match=r"invalid filter expression 'metadata\[\"lang\" == '; Milvus says: "
                                              r"Invalid expr"):
        searcher.search(SearchRequest(corpus[1][0], filter='metadata["lang" == '))


def test_unknown_collection_and_output_field(milvus, tiny_encoder, searcher, corpus) -> None:
    with pytest.raises(NotFound, match="no_such_collection"):
        HybridSearcher.open(milvus, "no_such_collection", tiny_encoder.encode)
    with pytest.raises(InvalidArgument, match="unknown output field 'dense'"):
        searcher.search(SearchRequest(corpus[1][0], output_fields=("dense",)))
