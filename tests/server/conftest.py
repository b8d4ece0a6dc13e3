"""The server tier: tests against a Milvus server process (milvus-lite 3.2.2, tests/_milvus_server.py).

One server per session for the store, migration and end-to-end tests (each test uses its own collection
names); the fault tests start their own, since they kill it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._milvus_server import ENV_VAR, MilvusServer, missing_reason, server_binary
from tests.store.store_helpers import unique_collection_name

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything in this folder carries the ``server`` marker (``-m "not server"`` leaves the tier out)."""
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def milvus_bin() -> Path:
    binary = server_binary()
    if binary is None:
        if os.environ.get(ENV_VAR):  # the Makefile asked for the tier: a missing binary is a failure, not a skip
            pytest.fail(f"{ENV_VAR}={os.environ[ENV_VAR]} is not an executable; run `make milvus-server`")
        pytest.skip(missing_reason())
    return binary


@pytest.fixture(scope="session")
def milvus_server(milvus_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    srv = MilvusServer(milvus_bin, tmp_path_factory.mktemp("milvus-server") / "data").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def server_settings(milvus_server: MilvusServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Settings pointing at the session's server, with a model dir whose config says hidden 320 (wide enough
    that the built-in 0002 revision adds dense_256 through a rebuild)."""
    from milvus_embed_ext.config import load_settings

    model = tmp_path_factory.mktemp("server-model")
    (model / "config.json").write_text(json.dumps({"hidden_size": 320}))
    return load_settings(env={}, overrides={"milvus_uri": milvus_server.uri, "model": str(model)})


@pytest.fixture(scope="session")
def server_store(server_settings: Any) -> Iterator[Any]:
    from milvus_embed_ext.store import MilvusStore

    with MilvusStore.connect(server_settings) as store:
        yield store


@pytest.fixture
def coll(request: pytest.FixtureRequest) -> str:
    """A collection name unique within the session."""
    return unique_collection_name(request, "s", 30)
