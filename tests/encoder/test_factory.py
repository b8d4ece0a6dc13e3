"""encoder_from_settings: every entry point (service, migration backfills, CLI) builds the encoder the same way."""

from __future__ import annotations

from typing import Any

import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.encoder.factory import encoder_from_settings
from milvus_embed_ext.encoder.model import M3Encoder


@pytest.fixture
def torch_threads():
    import torch

    before = torch.get_num_threads()
    yield torch
    torch.set_num_threads(before)


def test_settings_reach_the_encoder_and_threads_are_bounded(tiny_model_dir, torch_threads) -> None:
    settings = load_settings(env={}, overrides={"model": str(tiny_model_dir), "device": "cpu", "max_length": 64,
                                                "encoder_threads": 1})
    enc = encoder_from_settings(settings, max_length=32)
    assert torch_threads.get_num_threads() == 1
    assert enc.max_length == 32  # overrides win over the settings
    assert encoder_from_settings(settings).max_length == 64


def test_migration_backfills_use_the_factory(monkeypatch: pytest.MonkeyPatch, torch_threads) -> None:
    from milvus_embed_ext.migrations.executor import OpContext

    calls: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(M3Encoder, "from_pretrained",
                        classmethod(lambda cls, path, **kw: calls.append((path, kw)) or object()))
    settings = load_settings(env={}, overrides={"model": "some/model", "encoder_threads": 1, "max_batch": 7})
    ctx = OpContext(store=None, settings=settings, table=None, scope="c", revision="r",  # type: ignore[arg-type]
                    direction="up", op_index=0)
    first = ctx.encoder()
    assert ctx.encoder() is first and len(calls) == 1  # loaded once per run
    assert calls[0][0] == "some/model" and calls[0][1]["max_batch"] == 7
    assert torch_threads.get_num_threads() == 1


@pytest.mark.parametrize(
    "overrides, cores, expected",
    [({}, 2, 1), ({}, 8, 7), ({}, 1, 1),  # embedded Lite (the default URI) keeps a core for itself
     ({"milvus_uri": "http://127.0.0.1:19530"}, 8, 0),  # a server elsewhere: torch's default, every core
     ({"device": "cuda"}, 8, 0),
     ({"encoder_threads": 3}, 2, 3)],  # an explicit setting always wins
)
def test_encoder_threads_default_leaves_a_core_to_embedded_lite(overrides, cores, expected) -> None:
    from milvus_embed_ext.encoder.factory import encoder_threads

    assert encoder_threads(load_settings(env={}, overrides=overrides), cores=cores) == expected
