"""The offline test-checkpoint builder: BGE-M3's layout and shapes, caching, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from milvus_embed_ext.encoder import build_test_model, ensure_test_model
from milvus_embed_ext.encoder import testmodel as tm
from milvus_embed_ext.encoder.hub import fingerprint
from milvus_embed_ext.errors import InvalidArgument

BGE_M3_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "colbert_linear.pt", "sparse_linear.pt"}


def test_tiny_layout_matches_bge_m3(tiny_model_dir: Path):
    assert {p.name for p in tiny_model_dir.iterdir()} >= BGE_M3_FILES
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "xlm-roberta"
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (1, 0, 2)
    assert config["max_position_embeddings"] == 8194
    tok = json.loads((tiny_model_dir / "tokenizer.json").read_text())
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    assert [specials[s] for s in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]


def test_full_size_has_bge_m3_shapes():
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = tm._xlmr_config(tm.SIZES["full"], 250002)
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["intermediate_size"], config["vocab_size"], config["max_position_embeddings"]) == (
        24, 1024, 16, 4096, 250002, 8194)
    with torch.device("meta"):
        model = XLMRobertaModel(XLMRobertaConfig(**config))
    params = sum(p.numel() for p in model.parameters())
    assert 565e6 < params < 570e6  # BGE-M3: 568M parameters


def test_ensure_reuses_and_rebuilds_stale(tmp_path: Path, monkeypatch):
    out = tmp_path / "model"
    ensure_test_model(out, "tiny", seed=1)
    stamp = (out / tm.STAMP_FILE).read_text()
    first = fingerprint(out)
    calls = []
    real_build = tm.build_test_model
    monkeypatch.setattr(tm, "build_test_model", lambda *a, **k: calls.append(a) or real_build(*a, **k))
    assert ensure_test_model(out, "tiny", seed=1) == out
    assert calls == [] and (out / tm.STAMP_FILE).read_text() == stamp
    # a different builder version (or seed) means a rebuild in place
    monkeypatch.setattr(tm, "BUILDER_VERSION", tm.BUILDER_VERSION + 100)
    ensure_test_model(out, "tiny", seed=1)
    assert len(calls) == 1 and json.loads((out / tm.STAMP_FILE).read_text())["builder_version"] == tm.BUILDER_VERSION
    assert fingerprint(out) == first  # same seed, same weights
    assert not [p for p in tmp_path.iterdir() if p.name != "model"]  # no temporary leftovers


def test_seed_changes_weights(tmp_path: Path, tiny_model_dir: Path):
    other = build_test_model(tmp_path / "s1", "tiny", seed=1)
    assert fingerprint(other) != fingerprint(tiny_model_dir)


def test_build_argument_errors(tmp_path: Path):
    with pytest.raises(InvalidArgument, match="size must be one of tiny, full"):
        build_test_model(tmp_path / "x", size="huge")
    with pytest.raises(InvalidArgument, match="seed"):
        build_test_model(tmp_path / "x", seed=-1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="not empty"):
        build_test_model(tmp_path / "busy")


def test_training_text_covers_scripts():
    text = "".join(tm._corpus_lines())
    for name, lo, hi in [("Latin", 0x41, 0x7A), ("Cyrillic", 0x400, 0x4FF), ("Arabic", 0x600, 0x6FF),
                         ("CJK", 0x4E00, 0x9FFF), ("emoji", 0x1F300, 0x1FAFF)]:
        assert sum(lo <= ord(c) <= hi for c in text) > 20, f"training text lacks {name}"
