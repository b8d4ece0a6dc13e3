"""Prefix and PCA projections."""

from __future__ import annotations

import numpy as np
import pytest

from milvus_embed_ext.errors import InvalidArgument
from milvus_embed_ext.store import PcaProjection, fit_pca, prefix_project


def test_prefix_is_renormalised_prefix() -> None:
    x = np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)
    p = prefix_project(x, 8)
    assert p.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p * np.linalg.norm(x[:, :8], axis=1, keepdims=True), x[:, :8], rtol=1e-5)
    with pytest.raises(InvalidArgument):
        prefix_project(x, 64)


def test_pca_puts_the_variance_first_and_beats_prefix_on_low_rank_data() -> None:
    rng = np.random.default_rng(1)
    # 64-d data whose variance lives in 6 directions mixed over all coordinates
    basis = np.linalg.qr(rng.standard_normal((64, 64)))[0][:, :6]
    x = (rng.standard_normal((400, 6)) * np.linspace(5, 1, 6)) @ basis.T + 0.01 * rng.standard_normal((400, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pca = fit_pca(x, 8)
    assert pca.components.shape == (8, 64)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(8), atol=1e-5)
    assert pca.explained_variance_ratio > 0.99
    full = x @ x.T
    err_pca = np.abs(pca.project(x) @ pca.project(x).T - full).mean()
    err_prefix = np.abs(prefix_project(x, 8) @ prefix_project(x, 8).T - full).mean()
    assert err_pca < err_prefix / 3


def test_pca_is_deterministic_and_round_trips_through_bytes() -> None:
    x = np.random.default_rng(2).standard_normal((100, 16))
    a, b = fit_pca(x, 4), fit_pca(x.copy(), 4)
    np.testing.assert_array_equal(a.components, b.components)
    back = PcaProjection.from_bytes(a.to_bytes())
    np.testing.assert_array_equal(back.components, a.components)
    np.testing.assert_array_equal(back.mean, a.mean)
    assert back.fingerprint() == a.fingerprint()
    np.testing.assert_allclose(back.project(x[:3]), a.project(x[:3]))


def test_pca_input_errors() -> None:
    x = np.zeros((10, 16))
    with pytest.raises(InvalidArgument, match="at least 12"):
        fit_pca(x, 12)
    with pytest.raises(InvalidArgument, match="between 1 and 16"):
        fit_pca(x, 17)
    with pytest.raises(InvalidArgument, match="NaN"):
        fit_pca(np.full((20, 4), np.nan), 2)
    with pytest.raises(InvalidArgument, match="expects 16-d"):
        fit_pca(np.random.default_rng(0).standard_normal((20, 16)), 2).project(np.zeros(8))
