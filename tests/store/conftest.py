"""Store fixtures: one Milvus Lite server per session (startup costs seconds), a fresh collection per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

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
