"""Helpers for the server tier (a uniquely named module: tests/ folders are not packages)."""

from __future__ import annotations

from typing import Any

import numpy as np


def fake_encoded(n: int, dim: int, *, seed: int = 0, truncate_dims: tuple[int, ...] = ()) -> Any:
    """An M3Output of random unit vectors, ColBERT included (no model needed)."""
    from milvus_embed_ext.encoder.output import M3Output

    rng = np.random.default_rng(seed)
    dense = rng.standard_normal((n, dim)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = [{int(k): float(rng.uniform(0.05, 1.0)) for k in rng.choice(1000, size=5, replace=False)}
              for _ in range(n)]
    lens = [int(t) for t in rng.integers(3, 12, size=n)]
    colbert = []
    for t in lens:
        m = rng.standard_normal((t, dim)).astype(np.float32)
        colbert.append(m / np.linalg.norm(m, axis=1, keepdims=True))
    truncated = {d: (dense[:, :d] / np.linalg.norm(dense[:, :d], axis=1, keepdims=True)).astype(np.float32)
                 for d in truncate_dims}
    return M3Output(dense=dense, sparse=sparse, colbert=colbert, truncated=truncated,
                    token_counts=np.asarray([t + 1 for t in lens], dtype=np.int64))


def write_docs(doc_store: Any, n: int, *, seed: int = 0, prefix: str = "d") -> Any:
    """Write ``n`` documents with every representation through the store's write path; returns the encodings."""
    from milvus_embed_ext.store import Document

    dims = tuple(t.dim for t in doc_store.layout.truncated)
    enc = fake_encoded(n, doc_store.layout.dense_dim, seed=seed, truncate_dims=dims)
    docs = [Document(f"{prefix}{i:04d}", f"text {i}", {"i": i, "even": i % 2 == 0}) for i in range(n)]
    doc_store.write(docs, enc)
    return enc
