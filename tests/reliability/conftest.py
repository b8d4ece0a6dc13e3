"""Fixtures for the reliability suite: a real ``serve`` subprocess on Milvus Lite (tests/_sidecar.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._sidecar import Server, running_sidecar
from tests.reliability.rel_helpers import KEYS, MAX_MESSAGE, MAX_TEXTS, MILVUS_TOKEN, seed_tenants


@pytest.fixture(scope="session")
def sidecar(tiny_model_dir: Path, tiny_encoder: Any, tiny_reranker_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One sidecar for fuzzing, security and load: API keys, small limits, tenants A and B seeded, a reranker."""
    work = tmp_path_factory.mktemp("reliability")
    seed_tenants(work, tiny_model_dir, tiny_encoder)
    with running_sidecar(tiny_model_dir, work, keys=KEYS, max_texts_per_request=MAX_TEXTS,
                         max_message_bytes=MAX_MESSAGE, milvus_token=MILVUS_TOKEN, log_level="DEBUG",
                         shutdown_grace_s=5, reranker_model=str(tiny_reranker_dir), reranker_device="cpu",
                         reranker_max_pairs=MAX_TEXTS) as srv:
        yield srv
