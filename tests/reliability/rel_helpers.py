"""Helpers of the reliability suite: constants, a corpus, tenant collections created before a sidecar starts, and
in-process checks of what is stored (run while no sidecar holds the Lite DB)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEYS = ("rel-key-alpha-7c1e0b9a2f", "rel-key-beta-55d3a8e6c4")
MILVUS_TOKEN = "root:milvus-secret-e41f9a"  # Lite ignores it; the sidecar must still never print it
MAX_TEXTS = 16
MAX_MESSAGE = 256 * 1024
TENANT_A, TENANT_B = "tenant_a", "tenant_b"
DENSE_DIM = 64  # the tiny checkpoint's hidden size


def corpus(prefix: str, n: int, *, start: int = 0, **metadata: Any) -> list[dict[str, Any]]:
    words = ["river", "mountain", "harbor", "violin", "quantum", "pepper", "lantern", "orbit", "meadow", "cobalt"]
    return [{"id": f"{prefix}-{i:05d}",
             "text": f"{words[i % 10]} {words[(i * 7 + 3) % 10]} {words[(i // 10) % 10]} {prefix} note {i}",
             "metadata": {"n": i, "tenant": prefix, **metadata}}
            for i in range(start, start + n)]


def settings_for(work: Path, model_dir: Path, **overrides: Any) -> Any:
    from milvus_embed_ext.config import load_settings

    return load_settings(env={}, overrides={"milvus_uri": str(work / "milvus.db"), "model": str(model_dir),
                                            "device": "cpu", "dtype": "fp32", **overrides})


def seed_tenants(work: Path, model_dir: Path, encoder: Any, n: int = 24) -> None:
    """Create tenant_a and tenant_b (before any sidecar holds the DB), each with ``n`` documents."""
    from milvus_embed_ext.store import DocumentStore, MilvusStore
    from milvus_embed_ext.store.layout import CollectionLayout

    settings = settings_for(work, model_dir)
    store = MilvusStore.connect(settings)
    try:
        for name, meta in ((TENANT_A, {"secret": "none"}), (TENANT_B, {"secret": "tenant-b-only"})):
            ds = DocumentStore.create(store, CollectionLayout.from_settings(settings, name, dense_dim=DENSE_DIM, truncated=()))
            ds.upsert(corpus(name[-1], n, **meta), encoder)
    finally:
        store.close()


@dataclass
class StoreReport:
    """What a collection holds, read directly (no sidecar)."""

    main: dict[str, dict[str, Any]]      # id -> main row (colbert_version, colbert_rows, dense, sparse, ...)
    complete: set[str]                   # ids whose every representation is readable
    orphans: int                         # companion rows whose version no main row names
    orphan_ids: set[str]


def inspect_collection(work: Path, model_dir: Path, name: str = "documents") -> StoreReport:
    """Every main row, which documents have all representations, and the orphaned ColBERT rows."""
    from milvus_embed_ext.store import DocumentStore, MilvusStore

    store = MilvusStore.connect(settings_for(work, model_dir))
    try:
        ds = DocumentStore.open(store, name)
        main: dict[str, dict[str, Any]] = {}
        for batch in ds.iter_documents(batch_size=500, output_fields=["id", "colbert_version", "colbert_rows"]):
            for row in batch:
                main[str(row["id"])] = row
        vectors = ds.fetch_vectors(list(main)) if main else {}
        trunc = {t.dim for t in ds.layout.truncated}
        complete = {i for i, v in vectors.items()
                    if v.dense is not None and v.dense.size and v.sparse and v.colbert is not None and len(v.colbert)
                    and set(v.truncated) >= trunc}
        committed = {str(r.get("colbert_version") or "") for r in main.values()}
        orphans, orphan_ids = 0, set()
        it = store.client.query_iterator(ds.layout.companion_name, batch_size=1000, filter="",
                                         output_fields=["doc_id", "version"])
        while True:
            rows = it.next()
            if not rows:
                it.close()
                break
            for r in rows:
                if r["version"] not in committed:
                    orphans += 1
                    orphan_ids.add(str(r["doc_id"]))
        return StoreReport(main, complete, orphans, orphan_ids)
    finally:
        store.close()


def record(name: str, **figures: Any) -> None:
    """Append measured figures to $MEE_RELIABILITY_REPORT (JSON lines) when set; docs/reliability.md quotes them."""
    path = os.environ.get("MEE_RELIABILITY_REPORT")
    print(f"[reliability] {name}: {json.dumps(figures, sort_keys=True)}")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"test": name, **figures}, sort_keys=True) + "\n")


def ids_of(docs: Sequence[dict[str, Any]]) -> list[str]:
    return [d["id"] for d in docs]
