"""Helpers for the store tests (imported as ``tests.store.store_helpers``, like every test helper)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from milvus_embed_ext.store import DocumentStore

_names = itertools.count()


def unique_collection_name(request: pytest.FixtureRequest, prefix: str, width: int) -> str:
    """A collection name unique within the session, readable in failures: ``<prefix><n>_<test name>``."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name)[:width]
    return f"{prefix}{next(_names)}_{base}"


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


def companion_rows(ds: DocumentStore, ids: list[str]) -> list[dict[str, Any]]:
    from milvus_embed_ext.store.documents import in_expr

    return ds.client.query(ds.layout.companion_name, filter=in_expr("doc_id", ids),
                           output_fields=["doc_id", "version", "chunk"])


def assert_no_orphans(ds: DocumentStore, ids: list[str]) -> None:
    """Every ColBERT row of these ids belongs to the version its main row commits to."""
    from milvus_embed_ext.store.documents import in_expr

    mains = ds.client.query(ds.name, filter=in_expr("id", ids), output_fields=["id", "colbert_version",
                                                                                "colbert_rows"])
    committed = {m["colbert_version"]: int(m["colbert_rows"]) for m in mains}
    rows = companion_rows(ds, ids)
    assert {r["version"] for r in rows} == set(committed)
    assert len(rows) == sum(committed.values())
