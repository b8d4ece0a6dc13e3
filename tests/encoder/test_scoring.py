"""Scoring helpers against hand-computed values and their argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from milvus_embed_ext.encoder import M3Output, colbert_score, dense_score, lexical_score, m3_score, m3_scores
from milvus_embed_ext.errors import InvalidArgument


def _row(dense, sparse, colbert) -> M3Output:
    return M3Output(dense=np.asarray([dense], np.float32), sparse=[sparse],
                    colbert=[np.asarray(colbert, np.float32)], token_counts=np.array([len(colbert) + 1]))


def test_dense_score():
    assert dense_score(np.array([1.0, 0.0]), np.array([0.6, 0.8])) == pytest.approx(0.6)
    m = dense_score(np.eye(2), np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]]))
    np.testing.assert_allclose(m, [[0.6, 1.0, 0.0], [0.8, 0.0, 1.0]])
    with pytest.raises(InvalidArgument, match="dimensions differ"):
        dense_score(np.ones(3), np.ones(4))


def test_lexical_score():
    assert lexical_score({1: 0.5, 2: 0.25}, {2: 2.0, 3: 9.0}) == pytest.approx(0.5)
    assert lexical_score({}, {1: 1.0}) == 0.0
    assert lexical_score({1: 1.0, 2: 1.0, 3: 1.0}, {3: 0.5}) == lexical_score({3: 0.5}, {1: 1.0, 2: 1.0, 3: 1.0})


def test_colbert_score_is_mean_of_maxsim():
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = np.array([[0.6, 0.8], [1.0, 0.0], [-1.0, 0.0]])
    # row 0: max(0.6, 1.0, -1.0) = 1.0; row 1: max(0.8, 0, 0) = 0.8
    assert colbert_score(q, p) == pytest.approx(0.9)
    # negative best matches stay negative (no padding floor)
    assert colbert_score(np.array([[1.0, 0.0]]), np.array([[-0.5, 0.5]])) == pytest.approx(-0.5)
    assert colbert_score(np.zeros((0, 2)), p) == 0.0
    with pytest.raises(InvalidArgument, match="2-d"):
        colbert_score(np.ones(2), p)
    with pytest.raises(InvalidArgument, match="dimensions differ"):
        colbert_score(np.ones((1, 3)), p)


def test_m3_scores_weighting():
    q = _row([1.0, 0.0], {7: 1.0}, [[1.0, 0.0]])
    p = _row([0.6, 0.8], {7: 0.5, 8: 1.0}, [[0.0, 1.0], [0.8, 0.6]])
    s = m3_scores(q, p, (0.4, 0.2, 0.4))
    assert s["dense"] == pytest.approx(0.6)
    assert s["sparse"] == pytest.approx(0.5)
    assert s["colbert"] == pytest.approx(0.8)
    assert s["sparse+dense"] == pytest.approx((0.5 * 0.2 + 0.6 * 0.4) / 0.6)
    assert s["colbert+sparse+dense"] == pytest.approx(0.4 * 0.6 + 0.2 * 0.5 + 0.4 * 0.8)
    assert m3_score(q, p, (1, 1, 1)) == pytest.approx((0.6 + 0.5 + 0.8) / 3)
    assert m3_score(q, p) == pytest.approx(s["colbert+sparse+dense"])


def test_m3_score_argument_errors():
    q = _row([1.0, 0.0], {7: 1.0}, [[1.0, 0.0]])
    with pytest.raises(InvalidArgument, match="three numbers"):
        m3_score(q, q, (1.0, 1.0))
    with pytest.raises(InvalidArgument, match="sum to zero"):
        m3_score(q, q, (0, 0, 0))
    two = M3Output.concat([q, q])
    with pytest.raises(InvalidArgument, match="one-row M3Output"):
        m3_score(two, q)
    no_colbert = M3Output(dense=q.dense, sparse=q.sparse, token_counts=q.token_counts)
    with pytest.raises(InvalidArgument, match="dense, sparse and colbert"):
        m3_score(q, no_colbert)
