"""Unit tests for the pure fusion functions: formulas, tie-breaks and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from milvus_embed_ext.errors import InvalidArgument
from milvus_embed_ext.search import fusion

ids = st.text(alphabet="abcdefghij", min_size=1, max_size=3)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
score_maps = st.dictionaries(ids, finite, max_size=12)


# ---------------------------------------------------------------- ordering and paging


def test_order_breaks_ties_by_id() -> None:
    assert fusion.order({"b": 1.0, "a": 1.0, "c": 2.0}) == [("c", 2.0), ("a", 1.0), ("b", 1.0)]


def test_top_pages_and_rejects_bad_k() -> None:
    fused = [("a", 3.0), ("b", 2.0), ("c", 1.0)]
    assert fusion.top(fused, 2) == [("a", 3.0), ("b", 2.0)]
    assert fusion.top(fused, 2, offset=2) == [("c", 1.0)]
    assert fusion.top(fused, 5, offset=3) == []
    assert fusion.top(fused, np.int64(1)) == [("a", 3.0)]
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(InvalidArgument, match="top_k"):
            fusion.top(fused, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="offset"):
        fusion.top(fused, 1, offset=-1)


# ---------------------------------------------------------------- rrf


def test_rrf_formula_ranks_from_one() -> None:
    out = dict(fusion.rrf([["a", "b"], ["b", "c"]], k=60))
    assert out["a"] == pytest.approx(1 / 61)
    assert out["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert out["c"] == pytest.approx(1 / 62)
    assert [i for i, _ in fusion.rrf([["a", "b"], ["b", "c"]], k=60)] == ["b", "a", "c"]


def test_rrf_ties_are_deterministic() -> None:
    # "x" and "y" each rank first in one route: equal fused scores, id order decides.
    assert [i for i, _ in fusion.rrf([["y"], ["x"]])] == ["x", "y"]
    assert [i for i, _ in fusion.rrf([["x"], ["y"]])] == ["x", "y"]


def test_rrf_empty_and_one_route_empty() -> None:
    assert fusion.rrf([]) == []
    assert fusion.rrf([[], []]) == []
    assert [i for i, _ in fusion.rrf([["a", "b"], []])] == ["a", "b"]


def test_rrf_duplicate_counts_once_at_best_rank() -> None:
    assert dict(fusion.rrf([["a", "b", "a"]], k=1)) == {"a": pytest.approx(1 / 2), "b": pytest.approx(1 / 3)}


def test_rrf_weights() -> None:
    out = dict(fusion.rrf([["a"], ["b"]], k=10, weights=[2.0, 1.0]))
    assert out == {"a": pytest.approx(2 / 11), "b": pytest.approx(1 / 11)}


@pytest.mark.parametrize("k", [0, -1, float("nan"), float("inf"), True])
def test_rrf_rejects_bad_k(k: float) -> None:
    with pytest.raises(InvalidArgument, match="rrf k"):
        fusion.rrf([["a"]], k=k)


def test_rank_ids_rejects_nan() -> None:
    with pytest.raises(InvalidArgument, match="finite"):
        fusion.rank_ids({"a": float("nan")})
    assert fusion.rank_ids({"b": 0.0, "a": 0.0, "c": 1.0}) == ["c", "a", "b"]


# ---------------------------------------------------------------- normalisation


def test_minmax_normalisation() -> None:
    assert fusion.normalize({"a": 2.0, "b": 4.0, "c": 3.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}


@pytest.mark.parametrize("norm", ["minmax"])
def test_degenerate_lists_map_to_half(norm: str) -> None:
    assert fusion.normalize({"a": 0.0, "b": 0.0}, norm) == {"a": 0.5, "b": 0.5}
    assert fusion.normalize({"a": 7.0}, norm) == {"a": 0.5}
    assert fusion.normalize({}, norm) == {}
    assert fusion.distribution_normalize({"a": 0.0, "b": 0.0}) == {"a": 0.5, "b": 0.5}
    assert fusion.distribution_normalize({"a": 3.0}) == {"a": 0.5}


def test_arctan_forms_match_milvus() -> None:
    # Milvus WeightedRanker: IP -> 0.5 + atan(x)/pi ; BM25 -> 2*atan(x)/pi
    ip = fusion.normalize({"a": 0.0, "b": 1.0, "c": -1.0}, "arctan")
    assert ip == {"a": 0.5, "b": pytest.approx(0.75), "c": pytest.approx(0.25)}
    pos = fusion.normalize({"a": 0.0, "b": 1.0}, "arctan_pos")
    assert pos == {"a": 0.0, "b": pytest.approx(0.5)}


def test_unknown_norm() -> None:
    with pytest.raises(InvalidArgument, match="unknown normalisation"):
        fusion.weighted([{"a": 1.0}], [1.0], norm="zscore")


def test_dbsf_uses_sample_sd_without_clamping() -> None:
    scores = {"a": 1.0, "b": 2.0, "c": 3.0}
    sd = 1.0  # sample sd of 1,2,3
    got = fusion.distribution_normalize(scores)
    for key, value in scores.items():
        assert got[key] == pytest.approx((value - (2.0 - 3 * sd)) / (6 * sd))


# ---------------------------------------------------------------- weighted / dbsf


def test_weighted_sum_after_minmax() -> None:
    out = dict(fusion.weighted([{"a": 1.0, "b": 3.0}, {"a": 10.0, "b": 0.0}], [0.25, 0.75]))
    assert out == {"a": pytest.approx(0.75), "b": pytest.approx(0.25)}


def test_weighted_missing_from_route_contributes_zero() -> None:
    out = dict(fusion.weighted([{"a": 1.0, "b": 0.0}, {"b": 5.0, "c": 1.0}], [1.0, 1.0]))
    assert out == {"a": 1.0, "b": 1.0, "c": 0.0}


def test_weighted_one_route_empty_and_all_empty() -> None:
    assert fusion.weighted([{}, {}], [1, 1]) == []
    assert [i for i, _ in fusion.weighted([{"a": 0.1, "b": 0.9}, {}], [1, 1])] == ["b", "a"]
    assert [i for i, _ in fusion.dbsf([{}, {"a": 0.1, "b": 0.9}])] == ["b", "a"]


def test_all_zero_scores_keep_deterministic_order() -> None:
    zeros = {"c": 0.0, "a": 0.0, "b": 0.0}
    for fused in (
        fusion.weighted([zeros, zeros], [0.5, 0.5]),
        fusion.dbsf([zeros]),
        fusion.m3({"dense": zeros, "sparse": zeros}, {"dense": 1, "sparse": 1}),
        fusion.rrf([fusion.rank_ids(zeros)]),
    ):
        assert [i for i, _ in fusion.order(dict(fused))] == ["a", "b", "c"]
        assert all(math.isfinite(s) for _, s in fused)


@pytest.mark.parametrize(
    "weights, message",
    [([-0.1, 1.0], ">= 0"), ([0.0, 0.0], "all be zero"), ([1.0], "expected 2"), ([float("nan"), 1], "finite"),
     (["x", 1], "numbers")],
)
def test_bad_weights_rejected(weights: list, message: str) -> None:
    lists = [{"a": 1.0}, {"a": 2.0}]
    for fn in (lambda: fusion.weighted(lists, weights), lambda: fusion.dbsf(lists, weights),
               lambda: fusion.rrf([["a"], ["a"]], weights=weights)):
        with pytest.raises(InvalidArgument, match=message):
            fn()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), None, "1.0"])
def test_non_finite_scores_rejected(bad: object) -> None:
    lists = [{"a": 1.0, "b": bad}]
    with pytest.raises(InvalidArgument, match="finite"):
        fusion.weighted(lists, [1.0])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match="finite"):
        fusion.dbsf(lists)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="finite"):
        fusion.m3({"dense": lists[0]}, {"dense": 1.0})  # type: ignore[dict-item]


def test_numpy_scores_accepted() -> None:
    out = fusion.weighted([{"a": np.float32(0.5), "b": np.float32(0.25)}], [1.0], norm="none")
    assert [i for i, _ in out] == ["a", "b"]


# ---------------------------------------------------------------- m3


def test_m3_matches_flagembedding_formula() -> None:
    scores = {
        "dense": {"a": 0.8, "b": 0.6},
        "sparse": {"a": 0.1, "b": 0.3},
        "colbert": {"a": 0.7, "b": 0.9},
    }
    w = {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}
    out = dict(fusion.m3(scores, w))
    assert out["a"] == pytest.approx((0.4 * 0.8 + 0.2 * 0.1 + 0.4 * 0.7) / 1.0)
    assert out["b"] == pytest.approx((0.4 * 0.6 + 0.2 * 0.3 + 0.4 * 0.9) / 1.0)
    # weights are divided by their sum: scaling them changes nothing
    assert dict(fusion.m3(scores, {k: 10 * v for k, v in w.items()})) == pytest.approx(out)
    # a subset (FlagEmbedding's "sparse+dense")
    sd = dict(fusion.m3({k: scores[k] for k in ("dense", "sparse")}, {"dense": 0.4, "sparse": 0.2}))
    assert sd["a"] == pytest.approx((0.4 * 0.8 + 0.2 * 0.1) / 0.6)


def test_m3_rejects_gaps_and_mismatched_weights() -> None:
    with pytest.raises(InvalidArgument, match="no sparse score"):
        fusion.m3({"dense": {"a": 1.0, "b": 0.5}, "sparse": {"a": 1.0}}, {"dense": 1, "sparse": 1})
    with pytest.raises(InvalidArgument, match="one weight per representation"):
        fusion.m3({"dense": {"a": 1.0}}, {"dense": 1, "sparse": 1})
    with pytest.raises(InvalidArgument, match="all be zero"):
        fusion.m3({"dense": {"a": 1.0}}, {"dense": 0})
    assert fusion.m3({"dense": {}}, {"dense": 1}) == []


def test_m3_zero_weight_representation_ignored() -> None:
    out = fusion.m3({"dense": {"a": 0.1, "b": 0.2}, "sparse": {"a": 9.0, "b": 0.0}}, {"dense": 1, "sparse": 0})
    assert [i for i, _ in out] == ["b", "a"]


# ---------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(st.lists(score_maps, min_size=1, max_size=4), st.sampled_from(fusion.NORMS))
def test_fused_output_is_sorted_unique_and_covers_union(lists: list[dict[str, float]], norm: str) -> None:
    union = set().union(*lists)
    for fused in (
        fusion.weighted(lists, [1.0] * len(lists), norm=norm),
        fusion.dbsf(lists),
        fusion.rrf([fusion.rank_ids(s) for s in lists]),
    ):
        got = [i for i, _ in fused]
        assert len(got) == len(set(got)) and set(got) == union
        keys = [(-s, i) for i, s in fused]
        assert keys == sorted(keys)
        assert all(math.isfinite(s) for _, s in fused)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(ids, st.integers(-1000, 1000).map(float), max_size=12))
def test_single_route_preserves_order(scores: dict[str, float]) -> None:
    """One route, monotone normalisation: the fused order is that route's order (ties by id).

    Integer-valued scores keep distinct inputs distinct after arctan in float64.
    """
    expected = [s for _, s in fusion.order(scores)]
    for norm in fusion.NORMS:
        got = [scores[i] for i, _ in fusion.weighted([scores], [1.0], norm=norm)]
        assert got == expected
    assert [scores[i] for i, _ in fusion.rrf([fusion.rank_ids(scores)])] == expected


@pytest.mark.parametrize(("dim", "tokens"), [(16, 7), (1024, 120)])  # stacked path, one product per document
def test_colbert_scores_equal_flagembeddings_maxsim_on_both_paths(dim: int, tokens: int) -> None:
    from milvus_embed_ext.encoder.scoring import colbert_score
    from milvus_embed_ext.search.rescore import colbert_scores

    rng = np.random.default_rng(dim)
    q = rng.standard_normal((9, dim)).astype(np.float32)
    docs = [rng.standard_normal((int(n), dim)).astype(np.float32) for n in rng.integers(1, 2 * tokens, 25)]
    docs.insert(3, np.zeros((0, dim), dtype=np.float32))  # no token vectors: scores 0
    got = colbert_scores(q, docs)
    want = [colbert_score(q, d) if len(d) else 0.0 for d in docs]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidArgument, match="colbert re-score"):
        colbert_scores(q, [*docs[:2], rng.standard_normal((tokens, dim + 1)).astype(np.float32)])
