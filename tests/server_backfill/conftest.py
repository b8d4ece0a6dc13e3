"""A Milvus server process for the sharded-backfill tests (tests/_milvus_server.py: milvus-lite 3.2.x on
127.0.0.1, from the venv the Makefile creates).

Several worker processes must write to one Milvus at once, which a Lite file (one process) cannot give.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests._milvus_server import MilvusServer, missing_reason, server_binary


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    binary = server_binary()
    if binary is None:
        pytest.skip(missing_reason())
    server = MilvusServer(binary, tmp_path_factory.mktemp("milvus-server") / "data").start()
    try:
        yield server
    finally:
        server.stop()
