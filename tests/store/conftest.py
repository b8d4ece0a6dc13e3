"""Store fixtures: one Milvus Lite server per session (startup costs seconds), a fresh collection per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.store.store_helpers import unique_collection_name


@pytest.fixture(scope="session")
def lite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A MilvusStore on a session-wide Milvus Lite file. Use unique collection names per test."""
    from milvus_embed_ext.config import load_settings
    from milvus_embed_ext.store import MilvusStore

    root = tmp_path_factory.mktemp("store-lite")
    settings = load_settings(env={}, overrides={"milvus_uri": str(root / "sub" / "milvus.db")})
    with MilvusStore.connect(settings) as store:
        yield store


@pytest.fixture
def collection_name(request: pytest.FixtureRequest) -> str:
    """A collection name unique within the session, readable in failures."""
    return unique_collection_name(request, "t", 40)
