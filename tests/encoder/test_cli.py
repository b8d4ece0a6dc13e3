"""The encoder's CLI subcommands, through the real `milvus-embed` entry point."""

from __future__ import annotations

import json
from pathlib import Path

from milvus_embed_ext.cli import main


def test_make_test_model(tmp_path: Path, capsys):
    out = tmp_path / "m"
    assert main(["make-test-model", str(out), "--size", "tiny", "--seed", "3"]) == 0
    assert "built tiny test model" in capsys.readouterr().out
    assert (out / "colbert_linear.pt").is_file() and (out / "sparse_linear.pt").is_file()
    # refuses to overwrite: exit code of InvalidArgument, message on stderr
    assert main(["make-test-model", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_encode_summary_and_json(tiny_model_dir: Path, capsys):
    assert main(["encode", "hello world", "Привет мир", "--model", str(tiny_model_dir), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "tokens=" in text and "top sparse:" in text and "2 texts" in text
    assert main(["encode", "hello world", "--json", "--model", str(tiny_model_dir), "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["text"] == "hello world" and len(row["dense"]) == 64 and row["sparse"]
    assert len(row["colbert"]) == row["tokens"] - 1


def test_encode_missing_model(tmp_path: Path, capsys):
    assert main(["encode", "x", "--model", str(tmp_path / "nope"), "--device", "cpu"]) == 9
    assert "does not exist" in capsys.readouterr().err


def test_make_test_model_reranker(tmp_path: Path, capsys):
    out = tmp_path / "r"
    assert main(["make-test-model", str(out), "--kind", "reranker"]) == 0
    assert "built tiny reranker test model" in capsys.readouterr().out
    from milvus_embed_ext.encoder import Reranker

    r = Reranker.from_pretrained(str(out), device="cpu")
    assert len(set(r.compute_score([("q", "alpha"), ("q", "beta gamma")]))) == 2
