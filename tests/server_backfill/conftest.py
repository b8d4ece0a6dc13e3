"""A Milvus server process for the sharded-backfill tests: milvus-lite 3.2.x serving gRPC on 127.0.0.1.

Several worker processes must write to one Milvus at once, which a Lite file (one process) cannot give.
The binary comes from MEE_TEST_MILVUS_SERVER_BIN, else ``.venv-lite3/bin/milvus-lite`` in the repository
root (``pip install milvus-lite==3.2.2 pymilvus==2.6.17`` into that venv); without it the tests skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def server_binary() -> Path | None:
    env = os.environ.get("MEE_TEST_MILVUS_SERVER_BIN")
    path = Path(env) if env else REPO_ROOT / ".venv-lite3" / "bin" / "milvus-lite"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MilvusServer:
    uri: str
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    binary = server_binary()
    if binary is None:
        pytest.skip("needs a milvus-lite 3.2.x server binary: set MEE_TEST_MILVUS_SERVER_BIN or create "
                    ".venv-lite3 (pip install milvus-lite==3.2.2 pymilvus==2.6.17)")
    root = tmp_path_factory.mktemp("milvus-server")
    port = _free_port()
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "server", "--data-dir", str(root / "data"), "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the Milvus server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the Milvus server did not listen on {port} within 90 s")
                time.sleep(0.3)
        yield MilvusServer(uri, proc, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
