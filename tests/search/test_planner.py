"""Planner unit tests against an in-memory store: plan resolution, bad input, stage failures, paging.

Milvus itself is exercised in test_fidelity.py; here a fake with the DocumentStore read API keeps the
error paths fast and deterministic.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from milvus_embed_ext.encoder import M3Output, colbert_score, dense_score, lexical_score
from milvus_embed_ext.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
)
from milvus_embed_ext.search import fusion
from milvus_embed_ext.search.planner import HybridSearcher, SearchPlan, SearchRequest, colbert_bound
from milvus_embed_ext.search.rescore import colbert_scores, dense_scores, lexical_scores
from milvus_embed_ext.store import MilvusStore, capabilities_for
from milvus_embed_ext.store.documents import Candidate, ColbertRef, StoredVectors
from milvus_embed_ext.store.layout import CollectionLayout, TruncatedField

HIDDEN = 16


def FakeLayout(**changes: Any) -> CollectionLayout:  # noqa: N802 - reads like the class it stands for
    """The layout the fake store serves: a real CollectionLayout (fp32 ColBERT, so bounds are the exact ones)."""
    values: dict[str, Any] = {"name": "docs", "dense_dim": HIDDEN, "truncated": (TruncatedField(8),),
                              "colbert": "companion", "colbert_codec": "fp32", **changes}
    return CollectionLayout(**values)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class FakeStore:
    """Brute-force search over random vectors; ``fail`` maps a field to an exception to raise."""

    def __init__(self, n: int = 60, seed: int = 0, layout: CollectionLayout | None = None) -> None:
        rng = np.random.default_rng(seed)
        self.layout = layout or FakeLayout()
        self.ids = [f"d{i:03d}" for i in range(n)]
        self.dense = _unit(rng.normal(size=(n, HIDDEN)))
        self.sparse = [{int(t): float(rng.uniform(0.05, 1)) for t in rng.choice(40, 5, replace=False)}
                       for _ in range(n)]
        self.colbert = [_unit(rng.normal(size=(int(rng.integers(1, 6)), HIDDEN))) for _ in range(n)]
        self.text = {i: f"text of {i}" for i in self.ids}
        self.fail: dict[str, Exception] = {}
        self.calls: list[tuple[str, int, str]] = []
        self.deleted: set[str] = set()
        self.colbert_reads: list[list[str]] = []
        self.block = threading.Event()
        self.block.set()

    def project(self, dense: np.ndarray, dim: int) -> np.ndarray:
        return _unit(np.asarray(dense)[..., :dim])

    def _live(self) -> list[int]:
        return [k for k, i in enumerate(self.ids) if i not in self.deleted]

    def search_dense(self, field_name: str, query: np.ndarray, limit: int, filter: str) -> list[tuple[str, float]]:
        self.calls.append((field_name, limit, filter))
        self.block.wait(5)
        if field_name in self.fail:
            raise self.fail[field_name]
        docs = self.dense if field_name == "dense" else self.project(self.dense, int(field_name.split("_")[1]))
        scores = docs @ np.asarray(query, dtype=np.float32)
        order = sorted(self._live(), key=lambda k: -scores[k])[:limit]
        return [(self.ids[k], float(scores[k])) for k in order]

    def search_sparse(self, query: dict[int, float], limit: int, filter: str) -> list[tuple[str, float]]:
        self.calls.append(("sparse", limit, filter))
        if "sparse" in self.fail:
            raise self.fail["sparse"]
        scores = [lexical_score(query, s) for s in self.sparse]
        order = [k for k in sorted(self._live(), key=lambda k: -scores[k]) if scores[k] > 0][:limit]
        return [(self.ids[k], scores[k]) for k in order]

    def candidates(self, field_name: str, query: Any, limit: int, filter: str,
                   output_fields: tuple[str, ...] = ()) -> list[Candidate]:
        hits = (self.search_sparse(query, limit, filter) if field_name == "sparse"
                else self.search_dense(field_name, query, limit, filter))
        out = []
        for i, score in hits:
            k = self.ids.index(i)
            row = {"text": self.text[i], "metadata": {"k": i}}
            out.append(Candidate(i, score, self.dense[k], self.sparse[k], ColbertRef(i, len(self.colbert[k])),
                                 {f: row[f] for f in output_fields}))
        return out

    def fetch_colbert(self, refs: dict[str, ColbertRef]) -> tuple[dict[str, np.ndarray], dict[str, StoredVectors]]:
        self.colbert_reads.append(sorted(refs))
        matrices = {i: self.colbert[self.ids.index(i)] for i in refs if i not in self.deleted}
        return matrices, {}

    def fetch_vectors(self, ids: list[str], colbert: bool = True) -> dict[str, StoredVectors]:
        out = {}
        for i in ids:
            if i in self.deleted:
                continue
            k = self.ids.index(i)
            out[i] = StoredVectors(i, self.dense[k], self.sparse[k], self.colbert[k] if colbert else None)
        return out

    def get(self, ids: list[str], output_fields: list[str] | None = None, with_vectors: bool = False) -> list[dict]:
        return [{"id": i, "text": self.text[i], "metadata": {"k": i}} for i in ids if i in self.text]


def encode(texts, *, dense=True, sparse=True, colbert=True, **_: Any) -> M3Output:  # noqa: ANN001
    """A deterministic query encoder: vectors from a hash of the text."""
    rng = np.random.default_rng(abs(hash(texts[0])) % 2**32)
    return M3Output(
        dense=_unit(rng.normal(size=(1, HIDDEN))) if dense else None,
        sparse=[{int(t): float(rng.uniform(0.1, 1)) for t in rng.choice(40, 6, replace=False)}] if sparse else None,
        colbert=[_unit(rng.normal(size=(3, HIDDEN)))] if colbert else None,
        token_counts=np.array([5]),
    )


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def searcher(store: FakeStore):
    with HybridSearcher(store, encode, max_top_k=50) as s:
        yield s


def brute_force_m3(store: FakeStore, q: M3Output, weights=(0.4, 0.2, 0.4)) -> list[tuple[str, float]]:
    scores = {}
    for k, i in enumerate(store.ids):
        d = dense_score(q.dense[0], store.dense[k])
        s = lexical_score(q.sparse[0], store.sparse[k])
        c = colbert_score(q.colbert[0], store.colbert[k])
        scores[i] = (weights[0] * d + weights[1] * s + weights[2] * c) / sum(weights)
    return fusion.order(scores)


# ---------------------------------------------------------------- vectorised re-score


def test_vectorised_rescore_matches_pair_helpers(store: FakeStore) -> None:
    q = encode(["query"])
    np.testing.assert_allclose(dense_scores(q.dense[0], store.dense),
                               [dense_score(q.dense[0], d) for d in store.dense], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lexical_scores(q.sparse[0], store.sparse),
                               [lexical_score(q.sparse[0], s) for s in store.sparse], rtol=1e-9)
    np.testing.assert_allclose(colbert_scores(q.colbert[0], store.colbert),
                               [colbert_score(q.colbert[0], c) for c in store.colbert], rtol=1e-6, atol=1e-6)


def test_colbert_rescore_chunks_and_empty_docs(monkeypatch: pytest.MonkeyPatch, store: FakeStore) -> None:
    from milvus_embed_ext.search import rescore

    q = encode(["query"]).colbert[0]
    docs = [store.colbert[0], np.zeros((0, HIDDEN), np.float32), *store.colbert[1:10]]
    expected = [colbert_score(q, d) for d in docs]
    monkeypatch.setattr(rescore, "_SIM_BUDGET", 3 * 4)  # forces one or two documents per chunk
    np.testing.assert_allclose(rescore.colbert_scores(q, docs), expected, rtol=1e-6, atol=1e-6)
    assert rescore.colbert_scores(q, []).shape == (0,)
    assert lexical_scores({}, store.sparse[:3]).tolist() == [0.0, 0.0, 0.0]
    assert lexical_scores({1: 1.0}, [{}, {}]).tolist() == [0.0, 0.0]


def test_blas_limit_is_restored_after_concurrent_searches(store: FakeStore) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from concurrent.futures import ThreadPoolExecutor

    from milvus_embed_ext.search import rescore

    before = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    q = encode(["query"]).colbert[0]
    expected = [colbert_score(q, c) for c in store.colbert]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: rescore.colbert_scores(q, store.colbert), range(16)))
    for got in results:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"] == before
    assert rescore._blas_users == 0


# ---------------------------------------------------------------- results


def test_m3_search_equals_brute_force_when_candidates_cover_corpus(store: FakeStore, searcher) -> None:
    res = searcher.search(SearchRequest("hello", top_k=10, plan={"depth": 60}))
    expected = brute_force_m3(store, encode(["hello"]))[:10]
    assert [h.id for h in res.hits] == [i for i, _ in expected]
    for h, (_, s) in zip(res.hits, expected, strict=True):
        assert h.score == pytest.approx(s, abs=1e-6)
        assert set(h.scores) == {"dense", "sparse", "colbert"}
    assert res.complete and res.candidates == 60
    assert {"encode", "candidates", "candidates.dense_8", "candidates.sparse", "fetch", "rescore", "fuse",
            "total"} <= set(res.timings_ms)
    assert res.query_tokens == 5


def test_offset_pages_the_same_ranking(searcher) -> None:
    full = searcher.search(SearchRequest("paging", top_k=12, plan={"depth": 60}))
    page = searcher.search(SearchRequest("paging", top_k=4, offset=8, plan={"depth": 60}))
    assert [h.id for h in page.hits] == [h.id for h in full.hits[8:12]]


def test_depth_is_raised_to_offset_plus_top_k(store: FakeStore, searcher) -> None:
    searcher.search(SearchRequest("q", top_k=10, offset=5, plan={"depth": 3}))
    assert {limit for _, limit, _ in store.calls} == {15}


def test_filter_reaches_every_stage_one_call(store: FakeStore, searcher) -> None:
    searcher.search(SearchRequest("q", filter='metadata["lang"] == "en"'))
    assert {f for _, _, f in store.calls} == {'metadata["lang"] == "en"'}
    assert {name for name, _, _ in store.calls} == {"dense_8", "sparse"}


@pytest.mark.parametrize("fusion_name", ["rrf", "weighted", "dbsf"])
def test_other_fusions_rank_from_exact_scores(store: FakeStore, searcher, fusion_name: str) -> None:
    res = searcher.search(SearchRequest("q", top_k=5, plan={"fusion": fusion_name, "depth": 60}))
    assert len(res.hits) == 5
    scores = [h.score for h in res.hits]
    assert scores == sorted(scores, reverse=True)
    by_rep = {r: {h.id: h.scores[r] for h in res.hits} for r in ("dense", "sparse", "colbert")}
    # the top hit under rrf is never last in every representation
    assert any(min(v, key=v.get) != res.hits[0].id for v in by_rep.values())


@pytest.mark.parametrize(
    "reps, routes",
    [(("dense",), {"dense_8"}), (("sparse",), {"sparse"}), (("dense", "sparse"), {"dense_8", "sparse"}),
     (("colbert",), {"dense_8"})],
)
def test_representation_subsets_pick_routes(store: FakeStore, searcher, reps, routes) -> None:
    res = searcher.search(SearchRequest("subset", top_k=3, plan={"representations": reps}))
    assert {name for name, _, _ in store.calls} == routes
    assert all(set(h.scores) == set(reps) for h in res.hits)


@pytest.mark.parametrize(
    "plan, expected",
    [(None, {"dense": True, "sparse": True, "colbert": True}),
     ({"representations": ["sparse"]}, {"dense": False, "sparse": True, "colbert": False}),
     ({"representations": ["sparse"], "routes": ["dense"]}, {"dense": True, "sparse": True, "colbert": False}),
     ({"representations": ["dense"], "routes": ["sparse"]}, {"dense": True, "sparse": True, "colbert": False})],
)
def test_prepare_says_what_search_encodes(store: FakeStore, plan, expected) -> None:
    seen: list[dict] = []

    def recording(texts, **kwargs):  # noqa: ANN001, ANN202
        seen.append(kwargs)
        return encode(texts, **kwargs)

    with HybridSearcher(store, recording, max_top_k=50) as s:
        req = SearchRequest("q", top_k=3, plan=plan)
        assert dict(s.prepare(req).encode_kwargs) == expected
        s.search(req)
        with pytest.raises(InvalidArgument, match="max_top_k"):
            s.prepare(SearchRequest("q", top_k=10, offset=45))
    assert seen == [expected]


def test_explicit_routes_and_depths(store: FakeStore, searcher) -> None:
    searcher.search(SearchRequest("q", top_k=2, plan={"routes": ["dense", "sparse", "dense_truncated"],
                                                      "route_depths": {"sparse": 7}, "depth": 20}))
    assert sorted((n, lim) for n, lim, _ in store.calls) == [("dense", 20), ("dense_8", 20), ("sparse", 7)]


def test_no_truncated_field_uses_full_dense() -> None:
    store = FakeStore(layout=FakeLayout(truncated=()))
    with HybridSearcher(store, encode) as s:
        s.search(SearchRequest("q"))
        assert {n for n, _, _ in store.calls} == {"dense", "sparse"}
        with pytest.raises(InvalidArgument, match="no truncated dense field"):
            s.search(SearchRequest("q", plan={"routes": ["dense_truncated"]}))


def test_collection_defaults_from_layout_extra() -> None:
    store = FakeStore(layout=FakeLayout(extra={"search": {"fusion": "rrf", "depth": 30}}))
    with HybridSearcher(store, encode) as s:
        assert s.default_plan.fusion == "rrf" and s.default_plan.depth == 30
        assert s.prepare(SearchRequest("q", plan={"fusion": "m3"})).plan.depth == 30


def test_output_fields_and_deleted_between_stages(store: FakeStore, searcher) -> None:
    res = searcher.search(SearchRequest("q", top_k=3, output_fields=("text", "metadata")))
    assert all(h.fields == {"text": f"text of {h.id}", "metadata": {"k": h.id}} for h in res.hits)
    assert "fields" not in res.timings_ms  # read with the stage-1 hits: no extra round trip
    # a document deleted after stage 1 is dropped and counted, never returned half-scored
    first = res.hits[0].id
    original = store.fetch_colbert

    def fetch_then_delete(refs):
        store.deleted.add(first)
        return original(refs)

    store.fetch_colbert = fetch_then_delete  # type: ignore[method-assign]
    res2 = searcher.search(SearchRequest("q", top_k=3))
    assert first not in [h.id for h in res2.hits] and res2.dropped == 1


def test_candidate_without_colbert_rows_is_left_out_and_flagged(store: FakeStore, searcher) -> None:
    full = searcher.search(SearchRequest("q", top_k=3, plan={"depth": 60}))
    first = full.hits[0].id
    original = store.fetch_colbert

    def fetch_missing_colbert(refs):
        # the rows the main row named are gone and a re-read finds none either
        matrices, _ = original(refs)
        matrices.pop(first, None)
        reread = {i: StoredVectors(i, v.dense, v.sparse, None) for i, v in store.fetch_vectors([first]).items()
                  if i in refs}
        return matrices, reread

    store.fetch_colbert = fetch_missing_colbert  # type: ignore[method-assign]
    res = searcher.search(SearchRequest("q", top_k=3, plan={"depth": 60}))
    assert first not in [h.id for h in res.hits]
    assert not res.complete and "lack stored vectors" in res.degraded[0]
    # without ColBERT in the plan the same candidate is complete
    res2 = searcher.search(SearchRequest("q", top_k=3, plan={"depth": 60, "representations": ["dense", "sparse"]}))
    assert res2.complete


def test_precomputed_query_encoding_skips_encode(searcher) -> None:
    res = searcher.search(SearchRequest("q", top_k=2), query_encoding=encode(["q"]))
    assert "encode" not in res.timings_ms
    with pytest.raises(FailedPrecondition, match="lacks colbert"):
        searcher.search(SearchRequest("q"), query_encoding=encode(["q"], colbert=False))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "request_kwargs, error, message",
    [
        ({"query": ""}, InvalidArgument, "query text is empty"),
        ({"query": "   "}, InvalidArgument, "query text is empty"),
        ({"top_k": 0}, InvalidArgument, "top_k must be > 0"),
        ({"top_k": -3}, InvalidArgument, "top_k must be > 0"),
        ({"top_k": 51}, InvalidArgument, "configured maximum 50"),
        ({"top_k": 10, "offset": 41}, InvalidArgument, r"offset \+ top_k = 51 exceeds the configured maximum 50"),
        ({"offset": -1}, InvalidArgument, "offset"),
        ({"output_fields": ("text", "colour")}, InvalidArgument, "unknown output field 'colour'"),
        ({"plan": {"weights": [0.0, 0.0, 0.0]}}, InvalidArgument, "all zero"),
        ({"plan": {"weights": {"sparse": -1}}}, InvalidArgument, ">= 0"),
        ({"plan": {"weights": {"dense": 0, "colbert": 0}, "representations": ["dense", "colbert"]}},
         InvalidArgument, "all zero"),
        ({"plan": {"fusion": "borda"}}, InvalidArgument, "unknown fusion"),
        ({"plan": {"representations": ["dense", "bm25"]}}, InvalidArgument, "unknown representation"),
        ({"plan": {"representations": []}}, InvalidArgument, "at least one"),
        ({"plan": {"depth": 0}}, InvalidArgument, "depth"),
        ({"plan": {"truncate_dim": 64}}, InvalidArgument, "no truncated field dense_64"),
        ({"plan": {"rrf_k": 0}}, InvalidArgument, "rrf_k"),
        ({"plan": {"colour": 1}}, InvalidArgument, "unknown search plan option"),
    ],
)
def test_bad_requests_fail_clearly(searcher, store: FakeStore, request_kwargs, error, message) -> None:
    req = SearchRequest(**{"query": "q", **request_kwargs})
    with pytest.raises(error, match=message):
        searcher.search(req)
    assert store.calls == []  # rejected before touching Milvus


def test_colbert_on_collection_without_colbert() -> None:
    store = FakeStore(layout=FakeLayout(colbert="none"))
    with HybridSearcher(store, encode) as s:
        assert s.default_plan.representations == ("dense", "sparse")
        with pytest.raises(InvalidArgument, match="stores no ColBERT"):
            s.search(SearchRequest("q", plan={"representations": ["colbert"]}))


class MilvusLikeError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def store_error(exc: Exception) -> Exception:
    """What the real store raises for a Milvus error: it classifies once (a refused filter: InvalidFilter)."""
    return MilvusStore(None, capabilities_for("2.5.1", lite=True), target="t").map_error("search", exc)


def test_invalid_filter_is_labelled_invalid_argument(store: FakeStore, searcher) -> None:
    store.fail["dense_8"] = store_error(MilvusLikeError(1100, "Invalid expr: cannot parse expression: lang =="))
    with pytest.raises(InvalidArgument, match=r"invalid filter expression 'lang =='; Milvus says: Invalid expr"):
        searcher.search(SearchRequest("q", filter="lang =="))


def test_failed_stage_fails_request_unless_partial_allowed(store: FakeStore, searcher) -> None:
    store.fail["sparse"] = MilvusLikeError(2, "connection reset")
    with pytest.raises(Unavailable, match="candidate search on field sparse failed: connection reset"):
        searcher.search(SearchRequest("q"))
    res = searcher.search(SearchRequest("q", plan={"allow_partial": True}))
    assert not res.complete
    assert res.degraded == ("candidates.sparse: candidate search on field sparse failed: connection reset",)
    assert res.hits and "candidates.dense_8" in res.timings_ms
    # all routes failing is an error even when partial results are allowed
    store.fail["dense_8"] = MilvusLikeError(2, "down")
    with pytest.raises(Unavailable):
        searcher.search(SearchRequest("q", plan={"allow_partial": True}))


def test_bad_filter_never_tolerated_as_partial(store: FakeStore, searcher) -> None:
    store.fail["sparse"] = store_error(MilvusLikeError(1100, "Invalid expr: x"))
    with pytest.raises(InvalidArgument, match="invalid filter"):
        searcher.search(SearchRequest("q", filter="x", plan={"allow_partial": True}))


def test_deadline(store: FakeStore, searcher) -> None:
    store.block.clear()
    try:
        with pytest.raises(DeadlineExceeded, match="time budget"):
            searcher.search(SearchRequest("q", timeout_s=0.05))
    finally:
        store.block.set()


def test_plan_replace_keeps_unset_values() -> None:
    plan = SearchPlan().replace(weights={"sparse": 1.0}, depth=None)
    assert plan.weights == (0.4, 1.0, 0.4) and plan.depth == 100
    with pytest.raises(InvalidArgument, match="unknown representation"):
        SearchPlan().replace(weights={"bm25": 1.0})
    with pytest.raises(InvalidArgument, match="must be a list"):
        SearchPlan().replace(representations="dense")


# ---------------------------------------------------------------- bounded ColBERT reads (m3)


def _spread_store(seed: int, n: int = 80, ties: bool = False) -> FakeStore:
    """A store whose lexical scores spread widely (as BGE-M3's do), so the ColBERT bound can skip reads."""
    store = FakeStore(n=n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    store.sparse = [{int(t): float(rng.uniform(0.05, 3)) for t in rng.choice(40, 8, replace=False)} for _ in range(n)]
    if ties:  # exact duplicates: equal fused scores, ordered by id
        for k in range(0, n - 1, 7):
            store.dense[k + 1], store.sparse[k + 1], store.colbert[k + 1] = (
                store.dense[k], dict(store.sparse[k]), store.colbert[k].copy())
    return store


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("top_k, offset", [(1, 0), (5, 0), (10, 0), (4, 6)])
def test_m3_page_equals_brute_force_with_bounded_colbert_reads(seed: int, top_k: int, offset: int) -> None:
    store = _spread_store(seed, ties=seed % 3 == 0)
    with HybridSearcher(store, encode, max_top_k=80) as s:
        query = f"query {seed}"
        res = s.search(SearchRequest(query, top_k=top_k, offset=offset, plan={"depth": 80}))
    expected = brute_force_m3(store, encode([query]))[offset:offset + top_k]
    assert [h.id for h in res.hits] == [i for i, _ in expected]
    for h, (_, score) in zip(res.hits, expected, strict=True):
        assert h.score == pytest.approx(score, abs=1e-6)
    read = [i for batch in store.colbert_reads for i in batch]
    assert len(read) == len(set(read)) == res.colbert_read  # no candidate read twice
    assert {h.id for h in res.hits} <= set(read)


def test_bounded_reads_skip_candidates_that_cannot_reach_the_page() -> None:
    store = _spread_store(3)
    with HybridSearcher(store, encode, max_top_k=80) as s:
        res = s.search(SearchRequest("skip", top_k=5, plan={"depth": 80}))
        assert res.candidates == 80 and res.colbert_read < res.candidates
        # fusions that normalise over all candidates need every candidate's ColBERT score
        store.colbert_reads.clear()
        rrf = s.search(SearchRequest("skip", top_k=5, plan={"depth": 80, "fusion": "rrf"}))
        assert rrf.colbert_read == rrf.candidates == 80


def test_deleted_candidates_do_not_shorten_the_page() -> None:
    store = _spread_store(5)
    with HybridSearcher(store, encode, max_top_k=80) as s:
        full = s.search(SearchRequest("gone", top_k=5, plan={"depth": 80}))
        store.deleted.update(h.id for h in full.hits[:3])  # deleted after stage 1: their ColBERT rows vanish
        store._live = lambda: list(range(len(store.ids)))  # type: ignore[method-assign]  # stage 1 still sees them
        res = s.search(SearchRequest("gone", top_k=5, plan={"depth": 80}))
    assert res.dropped == 3 and len(res.hits) == 5
    assert [h.id for h in res.hits] == [h.id for h in full.hits[3:]] + [
        i for i, _ in brute_force_m3(store, encode(["gone"])) if i not in {h.id for h in full.hits}][:3]


def test_reread_documents_score_with_their_new_vectors(store: FakeStore) -> None:
    """A newer write between stage 1 and the ColBERT read: the document is scored as one newer version."""
    searcher = HybridSearcher(store, encode, max_top_k=60)
    first = searcher.search(SearchRequest("q", top_k=3, plan={"depth": 60})).hits[0].id
    k = store.ids.index(first)
    original = store.fetch_colbert

    def newer_version(refs):
        store.sparse[k] = {}  # the new version has no lexical weights, other ColBERT rows and another text
        store.colbert[k] = -store.colbert[k]
        store.text[first] = "the newer text"
        matrices, _ = original(refs)
        if first in matrices:
            matrices.pop(first)
            return matrices, store.fetch_vectors([first])
        return matrices, {}

    store.fetch_colbert = newer_version  # type: ignore[method-assign]
    res = searcher.search(SearchRequest("q", top_k=60, plan={"depth": 60}, output_fields=("text",)))
    hit = next(h for h in res.hits if h.id == first)
    assert hit.fields == {"text": "the newer text"} and "fields" in res.timings_ms  # read again, with the vectors
    q = encode(["q"])
    assert hit.scores["sparse"] == 0.0
    assert hit.scores["colbert"] == pytest.approx(colbert_score(q.colbert[0], store.colbert[k]), abs=1e-6)


@pytest.mark.parametrize("codec", ["fp32", "fp16", "int8", "int6", "bits"])
def test_colbert_bound_holds_for_decoded_vectors(codec: str) -> None:
    from milvus_embed_ext.store import codecs

    rng = np.random.default_rng(7)
    for dim in (16, 1024):
        q = _unit(rng.normal(size=(12, dim)))
        docs = [codecs.decode(codecs.encode(_unit(rng.normal(size=(20, dim))), codec), codec, dim)
                for _ in range(30)]
        docs.append(codecs.decode(codecs.encode(np.tile(q[:1], (3, 1)), codec), codec, dim))  # MaxSim near 1
        bound = colbert_bound(q, codec)
        assert max(colbert_scores(q, docs)) <= bound
        assert bound < (1.13 if codec == "int8" else 1.01)
