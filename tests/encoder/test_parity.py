"""M3Encoder must reproduce FlagEmbedding's BGEM3FlagModel on the same checkpoint.

Tolerances are 1e-5 (issue #2); on CPU fp32 the two agree far more tightly than that.
"""

from __future__ import annotations

import numpy as np
import pytest

from milvus_embed_ext.encoder import M3Encoder, m3_score, m3_scores

TOL = 1e-5


def _flag_encode(flag_model, texts: list[str], max_length: int) -> dict:
    return flag_model.encode(texts, max_length=max_length, return_dense=True, return_sparse=True,
                             return_colbert_vecs=True)


def _max_sparse_diff(ref: list[dict], ours: list[dict[int, float]]) -> float:
    worst = 0.0
    for i, (r, o) in enumerate(zip(ref, ours, strict=True)):
        ref_int = {int(k): float(v) for k, v in r.items()}
        assert set(ref_int) == set(o), f"text {i}: sparse keys differ"
        for k, v in o.items():
            worst = max(worst, abs(ref_int[k] - v))
    return worst


@pytest.fixture(scope="module", params=[512, 16], ids=["max512", "truncated16"])
def both(request, tiny_encoder: M3Encoder, flag_model, varied_texts):
    max_length = request.param
    ours = tiny_encoder.encode(varied_texts, max_length=max_length)
    ref = _flag_encode(flag_model, varied_texts, max_length)
    return max_length, ours, ref


def test_dense_matches_flagembedding(both):
    _, ours, ref = both
    assert ours.dense is not None and ours.dense.dtype == np.float32
    assert ours.dense.shape == ref["dense_vecs"].shape
    assert np.abs(ours.dense - ref["dense_vecs"]).max() <= TOL


def test_sparse_matches_flagembedding(both):
    _, ours, ref = both
    assert ours.sparse is not None
    assert _max_sparse_diff(ref["lexical_weights"], ours.sparse) <= TOL
    # the comparison must not be vacuous: most texts carry lexical weights
    assert sum(bool(s) for s in ours.sparse) > 0.8 * len(ours.sparse)


def test_colbert_matches_flagembedding(both):
    _, ours, ref = both
    assert ours.colbert is not None and len(ours.colbert) == len(ref["colbert_vecs"])
    for i, (o, r) in enumerate(zip(ours.colbert, ref["colbert_vecs"], strict=True)):
        assert o.dtype == np.float32
        assert o.shape == r.shape, f"text {i}: colbert shape {o.shape} != {r.shape}"
        assert np.abs(o - r).max() <= TOL


def test_truncation_respected(both, tiny_encoder: M3Encoder, varied_texts):
    max_length, ours, ref = both
    assert ours.token_counts.dtype == np.int64
    assert ours.token_counts.max() <= max_length
    assert list(ours.token_counts) == tiny_encoder.count_tokens(varied_texts, max_length=max_length)
    assert [len(c) + 1 for c in ours.colbert] == list(ours.token_counts)
    if max_length == 16:
        assert (ours.token_counts == 16).sum() > len(varied_texts) // 2  # most texts really were truncated


@pytest.mark.parametrize("weights", [(0.4, 0.2, 0.4), (1.0, 1.0, 1.0)], ids=["m3", "equal"])
def test_m3_score_matches_compute_score(tiny_encoder: M3Encoder, flag_model, varied_texts, weights):
    queries = varied_texts[-10:] + varied_texts[:6]
    passages = varied_texts[6:22]
    pairs = list(zip(queries, passages, strict=True))
    # batch_size=1: FlagEmbedding pads passages within a batch and its MaxSim then also sees the zero
    # vectors of the padding (a score floor of 0); one pair per batch is its unpadded, intended score.
    ref = flag_model.compute_score(pairs, batch_size=1, weights_for_different_modes=list(weights))
    q_out = tiny_encoder.encode(queries)
    p_out = tiny_encoder.encode(passages)
    for i in range(len(pairs)):
        ours = m3_scores(q_out.row(i), p_out.row(i), weights)
        for key, values in ref.items():
            assert abs(ours[key] - values[i]) <= TOL, f"pair {i} {key}: {ours[key]} vs {values[i]}"
        assert m3_score(q_out.row(i), p_out.row(i), weights) == ours["colbert+sparse+dense"]
    assert np.ptp(ref["colbert+sparse+dense"]) > 0.05  # scores really differ between pairs


def test_order_restored_under_tiny_budget(tiny_model_dir, tiny_encoder: M3Encoder, varied_texts):
    small = M3Encoder.from_pretrained(str(tiny_model_dir), device="cpu", dtype="fp32", max_length=512,
                                      token_budget=24, max_batch=3)
    shuffled = list(reversed(varied_texts))
    a = small.encode(shuffled, truncate_dims=[16, 32])
    b = tiny_encoder.encode(shuffled, truncate_dims=[16, 32])
    assert list(a.token_counts) == list(b.token_counts)
    np.testing.assert_allclose(a.dense, b.dense, atol=TOL)
    for d in (16, 32):
        np.testing.assert_allclose(a.truncated[d], b.truncated[d], atol=TOL)
    assert _max_sparse_diff([{str(k): v for k, v in s.items()} for s in b.sparse], a.sparse) <= TOL
    for x, y in zip(a.colbert, b.colbert, strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(x, y, atol=TOL)
    # each row is that text alone, encoded by itself
    for i in (0, len(shuffled) // 2, len(shuffled) - 1):
        single = tiny_encoder.encode([shuffled[i]])
        np.testing.assert_allclose(single.dense[0], a.dense[i], atol=TOL)
