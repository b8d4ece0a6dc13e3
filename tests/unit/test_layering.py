"""The packages keep their rooms: the client and the wire format import nothing of the service, and no
runtime entry point imports the dev-only tools."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(m for m in sys.modules if m.startswith('milvus_embed_ext')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["milvus_embed_ext.client", "milvus_embed_ext.wire.codec",
                                    "milvus_embed_ext.wire.status", "milvus_embed_ext.wire.tls"])
def test_client_side_imports_nothing_of_the_service(module: str) -> None:
    loaded = _loaded_after(module)
    assert module in loaded
    assert not {m for m in loaded if m.startswith("milvus_embed_ext.service")}, loaded


@pytest.mark.parametrize("module", ["milvus_embed_ext.cli", "milvus_embed_ext.service.server",
                                    "milvus_embed_ext.client"])
def test_runtime_does_not_import_the_dev_tools(module: str) -> None:
    loaded = _loaded_after(module)
    assert module in loaded
    assert not {m for m in loaded if m.startswith("milvus_embed_ext.devtools")}
