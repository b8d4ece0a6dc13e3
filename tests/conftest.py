"""Shared fixtures. Area-specific fixtures live in each test folder's own conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("MEE_TEST_CACHE", REPO_ROOT / ".cache"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with `make test-slow` (pytest --run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny BGE-M3-layout checkpoint, built once per machine and reused (keyed by builder version)."""
    from milvus_embed_ext.encoder.testmodel import ensure_test_model

    return ensure_test_model(CACHE_DIR / "test-model-tiny", size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir: Path):
    from milvus_embed_ext.encoder import M3Encoder

    return M3Encoder.from_pretrained(str(tiny_model_dir), device="cpu", dtype="fp32", max_length=512)


@pytest.fixture(scope="session")
def tiny_reranker_dir() -> Path:
    """The tiny bge-reranker-v2-m3-layout checkpoint (one-logit sequence classification, same tokenizer)."""
    from milvus_embed_ext.encoder.testmodel import ensure_test_model

    return ensure_test_model(CACHE_DIR / "test-reranker-tiny", size="tiny", seed=0, kind="reranker")


@pytest.fixture(scope="session")
def tiny_reranker(tiny_reranker_dir: Path):
    from milvus_embed_ext.encoder import Reranker

    return Reranker.from_pretrained(str(tiny_reranker_dir), device="cpu", dtype="fp32")
