"""Helpers for the migrations tests (imported as ``tests.migrations.mig_helpers``)."""

from __future__ import annotations

import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

DENSE_DIM = 64
WIDE = 320  # a model wider than 256: the built-in 0002 revision backfills dense_256
REPO = Path(__file__).resolve().parents[2]
BUILTIN = REPO / "migrations"

# The built-in scripts as they were before they stated their parameters (byte for byte: their checksums are
# the ones their REPLACES_CHECKSUMS list). 0001 took codec, index type etc. from CollectionLayout's defaults.
EARLIER_BUILTIN_TEXTS = {
    "0001_initial_layout.py": '''"""Initial layout of the documents collection: id, text, metadata, dense, sparse, ColBERT.

Revision ID: 0001_initial
Revises: (base)
"""

revision = "0001_initial"
down_revision = None


def upgrade(op):
    # op.layout() is the default layout for Settings.collection with the model's dense width,
    # the configured ColBERT codec and index type; no truncated fields yet.
    op.create_collection(op.layout(truncated=()))


# No downgrade(): the engine reverses upgrade() (drop_collection).
''',
    "0002_truncated_256.py": '''"""Add the truncated 256-d dense field, backfilled from the stored full dense vectors.

Revision ID: 0002_dense_256
Revises: 0001_initial

The backfill re-derives each row's prefix from its stored dense vector (renormalised), so no text is
re-encoded. Models whose dense width is 256 or less have no room for a prefix: there the revision
records itself and changes nothing.
"""

revision = "0002_dense_256"
down_revision = "0001_initial"

DIM = 256


def upgrade(op):
    if op.dense_dim > DIM:
        op.add_truncated_dense(DIM, projection="prefix")


def downgrade(op):
    if op.dense_dim > DIM:
        op.drop_truncated_dense(DIM)
''',
}


class Crash(Exception):
    """Raised from a run's hook to stop it part-way, as a killed run would stop."""


def write_scripts(directory: Path, scripts: dict[str, str]) -> Path:
    """{filename: source} into directory (dedented)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, source in scripts.items():
        (directory / name).write_text(textwrap.dedent(source).lstrip())
    return directory


def copy_builtins(directory: Path) -> Path:
    """The built-in revision scripts copied into ``directory`` (to edit one without touching the repository)."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in BUILTIN.glob("[!_]*.py"):
        shutil.copy(path, directory / path.name)
    return directory


def unlist_earlier_texts(script: Path) -> None:
    """Remove a script's REPLACES_CHECKSUMS: a history of its earlier texts becomes drift again."""
    text = script.read_text()
    edited = re.sub(r"^REPLACES_CHECKSUMS = \([^)]*\)\n", "", text, count=1, flags=re.MULTILINE)
    assert edited != text, f"{script} lists no REPLACES_CHECKSUMS"
    script.write_text(edited)


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
