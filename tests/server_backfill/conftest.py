"""A Milvus server process for the sharded-backfill tests: milvus-lite 3.2.x serving gRPC on 127.0.0.1.

Several worker processes must write to one Milvus at once, which a Lite file (one process) cannot give.
The binary comes from MEE_TEST_MILVUS_SERVER_BIN, else ``.venv-lite3/bin/milvus-lite`` in the repository
root (``pip install milvus-lite==3.2.2 pymilvus==2.6.17`` into that venv); without it the tests skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
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
    drops_descriptions: bool = False  # milvus-lite 3.2.2 does: see _desc_shim.py

    def python(self) -> list[str]:
        """argv prefix running ``milvus_embed_ext.cli`` in a child process (with the shim when needed)."""
        if not self.drops_descriptions:
            return [sys.executable, "-m", "milvus_embed_ext.cli"]
        here = str(Path(__file__).resolve().parent)
        code = (f"import sys; sys.path.insert(0, {here!r}); import _desc_shim; _desc_shim.install(); "
                "from milvus_embed_ext.cli import main; sys.exit(main())")
        return [sys.executable, "-c", code]


def _drops_descriptions(uri: str) -> bool:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=uri)
    try:
        schema = MilvusClient.create_schema(auto_id=False, description="probe")
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=8)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
        index = client.prepare_index_params()
        index.add_index("v", index_type="FLAT", metric_type="L2")
        client.create_collection("mee_probe_description", schema=schema, index_params=index)
        dropped = not client.describe_collection("mee_probe_description").get("description")
        client.drop_collection("mee_probe_description")
        return dropped
    finally:
        client.close()


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
        server = MilvusServer(uri, proc, log, drops_descriptions=_drops_descriptions(uri))
        import _desc_shim

        if server.drops_descriptions:
            _desc_shim.install()
        try:
            yield server
        finally:
            _desc_shim.uninstall()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
