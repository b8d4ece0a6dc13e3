"""Store fixtures: one Milvus Lite server per session (startup costs seconds), a fresh collection per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

_names = itertools.count()


@pytest.fixture(scope="session")
def lite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A MilvusStore on a session-wide Milvus Lite file. Use unique collection names per test."""
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.store import MilvusStore

    root = tmp_path_factory.mktemp("store-lite")
    settings = load_settings(env={}, overrides={"milvus_uri": str(root / "sub" / "milvus.db")})
    store = MilvusStore.connect(settings)
    yield store
    store.close()


@pytest.fixture
def collection_name(request: pytest.FixtureRequest) -> str:
    """A collection name unique within the session, readable in failures."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"t{next(_names)}_{base}"


def fake_output(n: int, dim: int = 32, *, seed: int = 0, tokens: Sequence[int] | None = None,
                truncate_dims: Sequence[int] = ()) -> Any:
    """An M3Output of random unit vectors (for codec/consistency tests that need no model)."""
    from milvus_embed_ext.encoder.output import M3Output

    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = [{int(k): float(rng.uniform(0.05, 1.0)) for k in rng.choice(1000, size=5, replace=False)}
              for _ in range(n)]
    lens = list(tokens) if tokens is not None else [int(t) for t in rng.integers(3, 20, size=n)]
    colbert = []
    for t in lens:
        m = rng.standard_normal((t, dim)).astype(np.float32)
        colbert.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    truncated = {}
    for d in truncate_dims:
        p = dense[:, :d]
        truncated[d] = (p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float32)
    return M3Output(dense=dense, sparse=sparse, colbert=colbert, truncated=truncated,
                    token_counts=np.asarray([t + 1 for t in lens], dtype=np.int64))
