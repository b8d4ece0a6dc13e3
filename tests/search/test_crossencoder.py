"""Stage 3 (cross-encoder) as pure functions, and hooked into the planner over the in-memory store."""

from __future__ import annotations

import math

import pytest

from milvus_embed_ext.errors import FailedPrecondition, InvalidArgument
from milvus_embed_ext.search import crossencoder as ce
from milvus_embed_ext.search.planner import HybridSearcher, SearchRequest
from tests.search.test_planner import FakeLayout, FakeStore, encode


class KeywordScorer:
    """A deterministic 'cross-encoder': the logit is the passage's number, so the order is known in advance."""

    def __init__(self, scores: dict[str, float] | None = None) -> None:
        self.calls: list[list[tuple[str, str]]] = []
        self.scores = scores

    def compute_score(self, pairs, normalize=False):  # noqa: ANN001
        self.calls.append(list(pairs))
        out = [self.scores[p] if self.scores else float(int(p.rsplit("d", 1)[1])) for _, p in pairs]
        return [1 / (1 + math.exp(-v)) for v in out] if normalize else out


def _hits(n: int) -> list[ce.FusedHit]:
    return [ce.FusedHit(f"d{i:03d}", 1.0 - i / 10, {"dense": 0.5, "sparse": 0.1}) for i in range(n)]


def test_reranker_order_replaces_fused_order_in_one_call():
    hits = _hits(5)
    passages = {h.id: f"text of {h.id}" for h in hits}
    scorer = KeywordScorer()
    res = ce.apply("q", hits, passages, scorer, ce.CrossEncoderStage())
    assert [h.id for h in res.hits] == ["d004", "d003", "d002", "d001", "d000"]
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 5  # one batched call, not one per hit
    assert scorer.calls[0][0] == ("q", "text of d000")
    top = res.hits[0]
    assert top.score == 4.0 and top.scores["cross_encoder"] == 4.0
    assert top.scores["fused"] == pytest.approx(0.6) and top.scores["dense"] == 0.5
    assert res.pairs == 5 and res.timing_ms >= 0 and res.missing == ()


def test_fused_order_weights_sigmoid_and_minmax():
    hits = _hits(3)  # fused 1.0, 0.9, 0.8 -> minmax 1, 0.5, 0
    scores = {"text of d000": -2.0, "text of d001": 0.0, "text of d002": 2.0}
    passages = {h.id: f"text of {h.id}" for h in hits}
    stage = ce.CrossEncoderStage(order="fused", weight=0.5)
    res = ce.apply("q", hits, passages, KeywordScorer(scores), stage)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = {"d000": 0.5 * sig(-2) + 0.5, "d001": 0.5 * 0.5 + 0.25, "d002": 0.5 * sig(2)}
    assert {h.id: h.score for h in res.hits} == pytest.approx(expected)
    assert [h.id for h in res.hits] == sorted(expected, key=lambda k: -expected[k])
    # weight 0: stage-2 order survives; weight 1: the reranker's
    assert [h.id for h in ce.apply("q", hits, passages, KeywordScorer(scores),
                                   ce.CrossEncoderStage(order="fused", weight=0.0)).hits] == ["d000", "d001", "d002"]
    assert [h.id for h in ce.apply("q", hits, passages, KeywordScorer(scores),
                                   ce.CrossEncoderStage(order="fused", weight=1.0)).hits] == ["d002", "d001", "d000"]


def test_hits_without_text_are_left_out_and_reported():
    hits = _hits(3)
    res = ce.apply("q", hits, {"d000": "text of d000", "d002": None}, KeywordScorer(), ce.CrossEncoderStage())
    assert [h.id for h in res.hits] == ["d000"]
    assert res.missing == ("d001", "d002")
    assert ce.apply("q", hits, {}, KeywordScorer(), ce.CrossEncoderStage()).hits == []


def test_depth_defaults_to_a_few_times_the_page_and_never_below_it():
    assert ce.CrossEncoderStage().depth(10) == 30
    assert ce.CrossEncoderStage(top_n=5).depth(10) == 10
    assert ce.CrossEncoderStage(top_n=50).depth(10) == 50
    assert ce.CrossEncoderStage(max_top_n=20).depth(10) == 20
    with pytest.raises(InvalidArgument, match="reranker_max_pairs"):
        ce.CrossEncoderStage(max_top_n=20).depth(30)


@pytest.mark.parametrize("kwargs, message", [
    ({"order": "best"}, "order"), ({"weight": 1.5}, "weight"), ({"weight": float("nan")}, "weight"),
    ({"top_n": 0}, "top_n"), ({"top_n": 1000}, "top_n"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        ce.CrossEncoderStage(**kwargs).validate()
    if "top_n" not in kwargs:  # a request's options are checked the same way (top_n 0 means the default there)
        with pytest.raises(InvalidArgument, match=message):
            ce.stage_from_options(**kwargs)


def test_scorer_returning_the_wrong_count_is_refused():
    class Broken:
        def compute_score(self, pairs, normalize=False):  # noqa: ANN001
            return [0.0]

    with pytest.raises(FailedPrecondition, match="scores for 2"):
        ce.apply("q", _hits(2), {"d000": "a", "d001": "b"}, Broken(), ce.CrossEncoderStage())


# ---------------------------------------------------------------- through the planner


def test_planner_runs_stage_three_over_the_fused_top_n():
    store = FakeStore()
    searcher = HybridSearcher(store, encode)
    plain = searcher.search(SearchRequest(query="q", top_k=5))
    scorer = KeywordScorer()
    res = searcher.search(SearchRequest(query="q", top_k=5, output_fields=("text",),
                                        cross_encoder=ce.CrossEncoderStage(top_n=20)), scorer=scorer)
    assert len(scorer.calls) == 1 and len(scorer.calls[0]) == 20
    # the 20 passages are the fused top 20 of the plain search, read from the stored text
    full = searcher.search(SearchRequest(query="q", top_k=20))
    assert [p for _, p in scorer.calls[0]] == [f"text of {h.id}" for h in full.hits]
    expected = sorted(full.hits, key=lambda h: -int(h.id[1:]))[:5]
    assert [h.id for h in res.hits] == [h.id for h in expected]
    for hit in res.hits:
        assert set(hit.scores) == {"dense", "sparse", "colbert", "fused", "cross_encoder"}
        assert hit.fields["text"] == f"text of {hit.id}"
    # the texts came with the stage-1 hits: no read of its own
    assert "cross_encoder" in res.timings_ms and "cross_encoder.fetch" not in res.timings_ms
    assert [h.id for h in plain.hits] == [h.id for h in full.hits[:5]]


def test_planner_stage_three_pages_the_reranked_list():
    searcher = HybridSearcher(FakeStore(), encode)
    stage = ce.CrossEncoderStage(top_n=30)
    first = searcher.search(SearchRequest(query="q", top_k=10, cross_encoder=stage), scorer=KeywordScorer())
    second = searcher.search(SearchRequest(query="q", top_k=10, offset=10, cross_encoder=stage),
                             scorer=KeywordScorer())
    both = searcher.search(SearchRequest(query="q", top_k=20, cross_encoder=stage), scorer=KeywordScorer())
    assert [h.id for h in first.hits + second.hits] == [h.id for h in both.hits]


def test_planner_stage_three_needs_a_scorer_and_stored_text():
    searcher = HybridSearcher(FakeStore(), encode)
    with pytest.raises(FailedPrecondition, match="MEE_RERANKER_MODEL"):
        searcher.search(SearchRequest(query="q", cross_encoder=ce.CrossEncoderStage()))
    no_text = HybridSearcher(FakeStore(layout=FakeLayout(store_text=False)), encode)
    with pytest.raises(FailedPrecondition, match="stores no text"):
        no_text.search(SearchRequest(query="q", cross_encoder=ce.CrossEncoderStage()), scorer=KeywordScorer())


def test_planner_drops_hits_deleted_before_stage_three():
    store = FakeStore()
    searcher = HybridSearcher(store, encode)
    full = searcher.search(SearchRequest(query="q", top_k=10, plan={"depth": 60}))
    gone = full.hits[2].id
    original = store.fetch_colbert

    def delete_after_stage_one(refs):  # the document vanishes between stage 1 and its ColBERT read
        store.deleted.add(gone)
        return original(refs)

    store.fetch_colbert = delete_after_stage_one
    scorer = KeywordScorer()
    res = searcher.search(SearchRequest(query="q", top_k=5, plan={"depth": 60},
                                        cross_encoder=ce.CrossEncoderStage(top_n=10)), scorer=scorer)
    assert gone not in {h.id for h in res.hits} and res.dropped == 1
    assert all(f"text of {gone}" != p for _, p in scorer.calls[0])  # never sent to the cross-encoder


def test_planner_reports_rewritten_hits_whose_text_is_gone():
    """A newer write between stage 1 and the ColBERT read is re-read whole; if it is deleted before its text is
    read again, stage 3 leaves it out and says so."""
    store = FakeStore()
    searcher = HybridSearcher(store, encode)
    first = searcher.search(SearchRequest(query="q", top_k=10, plan={"depth": 60})).hits[0].id
    original = store.fetch_colbert

    def rewritten(refs):
        matrices, _ = original(refs)
        if first not in matrices:
            return matrices, {}
        matrices.pop(first)
        reread = store.fetch_vectors([first])
        del store.text[first]  # ... and deleted before stage 3 reads its text
        return matrices, reread

    store.fetch_colbert = rewritten
    res = searcher.search(SearchRequest(query="q", top_k=5, plan={"depth": 60},
                                        cross_encoder=ce.CrossEncoderStage(top_n=10)), scorer=KeywordScorer())
    assert first not in {h.id for h in res.hits}
    assert any("no stored text" in d and first in d for d in res.degraded)
    assert "cross_encoder.fetch" in res.timings_ms
