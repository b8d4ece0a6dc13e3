"""Helpers for the migrations tests (imported as ``tests.migrations.mig_helpers``)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

DENSE_DIM = 64


def write_scripts(directory: Path, scripts: dict[str, str]) -> Path:
    """{filename: source} into directory (dedented)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in scripts.items():
        (directory / name).write_text(textwrap.dedent(source).lstrip())
    return directory


def insert_docs(store: Any, name: str, n: int, *, start: int = 0, dim: int = DENSE_DIM, seed: int = 0,
                id_prefix: str = "doc") -> None:
    """Rows as the store writes them (companion ColBERT mode on Lite), straight through the client."""
    rng = np.random.default_rng(seed + start)
    rows = []
    for i in range(start, start + n):
        d = rng.normal(size=dim).astype(np.float32)
        d /= np.linalg.norm(d)
        keys = rng.choice(3000, 4, replace=False)
        rows.append({"id": f"{id_prefix}{i:05d}", "text": f"text {i}", "metadata": {"i": i}, "dense": d.tolist(),
                     "sparse": {int(k): float(v) for k, v in zip(keys, rng.random(4) + 0.1, strict=True)},
                     "colbert_version": f"v{i}", "colbert_rows": 1})
    store.client.insert(name, rows)


def snapshot(store: Any, name: str) -> dict[str, Any]:
    """Schema (field names, types, dims) and every row, comparable with ==."""
    d = store.client.describe_collection(name)
    fields = [(f["name"], getattr(f["type"], "name", str(f["type"])), f.get("params", {}).get("dim")) for f in d["fields"]]
    store.client.load_collection(name)
    rows = store.client.query(name, filter='id != ""', output_fields=["*"], limit=16384, consistency_level="Strong")
    out = {}
    for r in rows:
        out[r["id"]] = {k: (np.round(np.asarray(v, dtype=np.float64), 5).tolist() if isinstance(v, list) else
                            {int(kk): round(float(vv), 5) for kk, vv in v.items()} if k == "sparse" else v)
                        for k, v in r.items()}
    return {"fields": fields, "description": d.get("description"), "rows": out}


def count(store: Any, name: str) -> int:
    store.client.load_collection(name)
    return int(store.client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")[0]["count(*)"])
