"""Encoder test fixtures: the FlagEmbedding reference models and a varied text set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _corpus() -> list[str]:
    text = (REPO_ROOT / "milvus_embed_ext" / "data" / "tokenizer_corpus.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def varied_texts() -> list[str]:
    """Mixed lengths (1 to several hundred tokens) and scripts, plus the edge cases encoders get wrong."""
    lines = _corpus()
    long_texts = [" ".join(lines[i:i + k]) for i, k in ((0, 6), (13, 9), (24, 12), (35, 5))]
    edge = [
        "",
        " ",
        "a",
        "🚀",
        "the the the the the the the",  # repeated ids: sparse keeps the max per id
        "Привет мир",
        "مرحبا",
        "東京",
        "ƒ ǂ ʭ ᚠ ꙮ",  # characters outside the tokenizer's alphabet: <unk>
        "Mixed 中文 and English and русский 🎉",
    ]
    return lines[::2] + long_texts + edge


def _flag_oracle(class_name: str, model_dir: Path) -> Iterator[Any]:
    """FlagEmbedding's ``class_name`` on the same checkpoint: the reference oracle (single process, fp32)."""
    flag = pytest.importorskip("FlagEmbedding")
    model = getattr(flag, class_name)(str(model_dir), use_fp16=False, devices="cpu")
    # One target device means encode/compute_score run in-process: no multiprocessing pool.
    assert model.target_devices == ["cpu"]
    yield model
    model.stop_self_pool()


@pytest.fixture(scope="session")
def flag_model(tiny_model_dir: Path) -> Iterator[Any]:
    """BGEM3FlagModel: what the encoder must reproduce."""
    yield from _flag_oracle("BGEM3FlagModel", tiny_model_dir)


@pytest.fixture(scope="module")
def flag_reranker(tiny_reranker_dir: Path) -> Iterator[Any]:
    """FlagReranker: what the reranker must reproduce."""
    yield from _flag_oracle("FlagReranker", tiny_reranker_dir)
