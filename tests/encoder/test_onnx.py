"""ONNX Runtime backends: fp32 parity with torch, int8 fidelity, the export cache, errors.

Tiny checkpoint only (exports take a few seconds); the full-size figures are in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.encoder import M3Encoder
from milvus_embed_ext.encoder import onnx_backend as ob
from milvus_embed_ext.encoder.fidelity import max_abs_diff, score_fidelity, spearman
from milvus_embed_ext.errors import InvalidArgument, ModelLoadError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

PARITY_TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_encoder(tiny_model_dir: Path, onnx_cache: Path) -> M3Encoder:
    return M3Encoder.from_pretrained(str(tiny_model_dir), device="cpu", max_length=512, backend="onnx",
                                     onnx_cache_dir=str(onnx_cache))


@pytest.fixture(scope="module")
def int8_encoder(tiny_model_dir: Path, onnx_cache: Path) -> M3Encoder:
    return M3Encoder.from_pretrained(str(tiny_model_dir), max_length=512, backend="onnx-int8",
                                     onnx_cache_dir=str(onnx_cache))


@pytest.fixture(scope="module")
def queries_passages(varied_texts: list[str]) -> tuple[list[str], list[str]]:
    """Short queries (first words of lines, other scripts, edge cases) and mixed-length passages."""
    lines = [t for t in varied_texts if len(t) > 40]
    queries = [" ".join(t.split()[:k]) for t, k in zip(lines[:12], [2, 3, 4, 6] * 3, strict=False)]
    queries += ["Привет мир", "東京", "the the the", "Mixed 中文 and English"]
    passages = lines[6:30] + [t for t in varied_texts if 0 < len(t) <= 40][:6]
    return queries, passages


def test_fp32_output_matches_torch(tiny_encoder: M3Encoder, onnx_encoder: M3Encoder, varied_texts: list[str]):
    ref = tiny_encoder.encode(varied_texts, truncate_dims=[16, 32])
    got = onnx_encoder.encode(varied_texts, truncate_dims=[16, 32])
    np.testing.assert_array_equal(got.token_counts, ref.token_counts)
    diffs = max_abs_diff(ref, got)
    assert set(diffs) == {"dense", "sparse", "colbert", "truncated_16", "truncated_32"}
    assert max(diffs.values()) <= PARITY_TOL, diffs
    assert [c.shape for c in got.colbert] == [c.shape for c in ref.colbert]


@pytest.mark.parametrize("kwargs", [dict(dense=True, sparse=False, colbert=False), dict(dense=False, sparse=True, colbert=False),
                                    dict(dense=False, sparse=False, colbert=True, max_length=8)])
def test_fp32_partial_requests_match_torch(tiny_encoder, onnx_encoder, varied_texts, kwargs):
    ref, got = tiny_encoder.encode(varied_texts, **kwargs), onnx_encoder.encode(varied_texts, **kwargs)
    for name in ("dense", "sparse", "colbert"):
        assert (getattr(got, name) is None) == (getattr(ref, name) is None)
    assert max(max_abs_diff(ref, got).values()) <= PARITY_TOL


def test_fp32_batching_does_not_change_results(tiny_model_dir, onnx_cache, onnx_encoder, varied_texts):
    """Token-budget batches of one row and of many rows (different padding) give the same vectors."""
    one_by_one = M3Encoder.from_pretrained(str(tiny_model_dir), max_length=512, backend="onnx", max_batch=1,
                                           onnx_cache_dir=str(onnx_cache))
    diffs = max_abs_diff(onnx_encoder.encode(varied_texts), one_by_one.encode(varied_texts))
    assert max(diffs.values()) <= PARITY_TOL, diffs


def test_int8_fidelity(tiny_encoder, int8_encoder, queries_passages):
    queries, passages = queries_passages
    ref_q, ref_p = tiny_encoder.encode(queries), tiny_encoder.encode(passages)
    got_q, got_p = int8_encoder.encode(queries), int8_encoder.encode(passages)
    fid = score_fidelity(ref_q, ref_p, got_q, got_p)
    assert fid["dense_cos_min"] >= 0.99, fid
    assert fid["lexical_spearman"] >= 0.98, fid
    assert fid["colbert_spearman"] >= 0.98, fid
    # int8 really is a different computation (guards against silently loading the fp32 graph)
    assert max(max_abs_diff(ref_p, got_p).values()) > PARITY_TOL


def test_int8_graph_is_quantised_and_recorded(int8_encoder, onnx_encoder):
    import onnx

    fp32_file, int8_file = onnx_encoder._body.model_file, int8_encoder._body.model_file
    assert fp32_file.parent != int8_file.parent
    ops = lambda f: [n.op_type for n in onnx.load(str(f), load_external_data=False).graph.node]  # noqa: E731
    fp32_ops, int8_ops = ops(fp32_file), ops(int8_file)
    layers = int(json.loads((int8_encoder.path / "config.json").read_text())["num_hidden_layers"])
    assert fp32_ops.count("Attention") == layers  # the optimizer fused every layer's attention
    assert int8_ops.count("MatMulNBits") == fp32_ops.count("MatMul") >= 3 * layers  # every MatMul quantised
    assert "MatMul" not in int8_ops
    manifest = json.loads((int8_file.parent / ob.MANIFEST).read_text())
    assert manifest["variant"] == "onnx-int8" and manifest["fingerprint"] == int8_encoder.fingerprint


def test_int8_keeps_the_last_layers_fp32_on_deep_models():
    names = [f"/inner/encoder/layer.{k}/{part}/MatMul" for k in range(24)
             for part in ("attention/output/dense", "intermediate/dense", "output/dense")]
    kept = ob.fp32_tail_nodes(names + ["/some/other/MatMul"])
    assert kept == [n for n in names if "/layer.22/" in n or "/layer.23/" in n]
    assert ob.fp32_tail_nodes([n for n in names if "/layer.0/" in n or "/layer.1/" in n]) == []  # 2-layer model


def test_concurrent_encode_is_consistent(onnx_encoder, varied_texts):
    expected = onnx_encoder.encode(varied_texts).dense
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(onnx_encoder.encode(varied_texts).dense)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-6)


def test_export_is_cached_by_fingerprint(tiny_model_dir, onnx_cache, onnx_encoder, monkeypatch):
    entry = ob.export_dir(onnx_cache, onnx_encoder.fingerprint, "onnx")
    assert onnx_encoder._body.model_file == entry / ob.MODEL_FILE
    assert {f.name for f in entry.iterdir()} == {ob.MODEL_FILE, ob.DATA_FILE, ob.MANIFEST}

    def no_export(*args, **kwargs):
        raise AssertionError("re-exported although the cache holds this checkpoint")

    monkeypatch.setattr(ob, "_export_fp32", no_export)
    again = M3Encoder.from_pretrained(str(tiny_model_dir), max_length=512, backend="onnx", onnx_cache_dir=str(onnx_cache))
    assert again._body.model_file == onnx_encoder._body.model_file


def test_other_checkpoint_gets_its_own_export(tiny_model_dir, tmp_path, monkeypatch):
    """A changed checkpoint (different fingerprint) never reuses a stale export; a half-written entry is redone."""
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir, copy)
    calls: list[Path] = []
    real = ob._export_fp32
    monkeypatch.setattr(ob, "_export_fp32", lambda ckpt, out: (calls.append(ckpt), real(ckpt, out))[1])
    cache = tmp_path / "cache"
    first = M3Encoder.from_pretrained(str(copy), max_length=64, backend="onnx", onnx_cache_dir=str(cache))
    config = json.loads((copy / "config.json").read_text())
    config["layer_norm_eps"] = 1e-6  # a different model: same shapes, another fingerprint
    (copy / "config.json").write_text(json.dumps(config))
    stale = ob.export_dir(cache, M3Encoder.from_pretrained(str(copy), max_length=64).fingerprint, "onnx")
    stale.mkdir()
    (stale / ob.MODEL_FILE).write_bytes(b"half-written")  # no manifest: an interrupted export
    second = M3Encoder.from_pretrained(str(copy), max_length=64, backend="onnx", onnx_cache_dir=str(cache))
    assert first.fingerprint != second.fingerprint
    assert len(calls) == 2
    assert second._body.model_file.parent == stale and (stale / ob.MANIFEST).is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".") and p.is_dir()], "temporary export left behind"


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(backend="tensorrt"), "backend must be one of torch, onnx, onnx-int8"),
    (dict(backend="onnx", device="cuda"), "runs on the CPU"),
    (dict(backend="onnx-int8", dtype="fp16"), "computes in fp32"),
])
def test_bad_backend_arguments(tiny_model_dir, kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        M3Encoder.from_pretrained(str(tiny_model_dir), **kwargs)


def test_missing_onnxruntime_is_a_load_error(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelLoadError, match=r"milvus-embed-ext\[onnx\]"):
        M3Encoder.from_pretrained(str(tiny_model_dir), backend="onnx", onnx_cache_dir=str(tmp_path))


def test_missing_quantiser_dependency_is_a_load_error(tiny_model_dir, onnx_encoder, onnx_cache, tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "cache"  # the fp32 export is there, the int8 one must be built
    shutil.copytree(onnx_encoder._body.model_file.parent, ob.export_dir(cache, onnx_encoder.fingerprint, "onnx"))
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization.matmul_nbits_quantizer", None)
    with pytest.raises(ModelLoadError, match=r"needs the .* package; install it with"):
        M3Encoder.from_pretrained(str(tiny_model_dir), backend="onnx-int8", onnx_cache_dir=str(cache))
    assert not ob.export_dir(cache, onnx_encoder.fingerprint, "onnx-int8").exists()


def test_unwritable_cache_is_a_load_error(tiny_model_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ModelLoadError, match="onnx_cache_dir"):
        M3Encoder.from_pretrained(str(tiny_model_dir), backend="onnx", onnx_cache_dir=str(blocker / "cache"))


def test_corrupt_cache_entry_says_how_to_recover(tiny_model_dir, onnx_cache, onnx_encoder, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    entry = ob.export_dir(cache, onnx_encoder.fingerprint, "onnx")
    shutil.copytree(onnx_encoder._body.model_file.parent, entry)
    (entry / ob.DATA_FILE).write_bytes(b"\0" * 10)
    with pytest.raises(ModelLoadError, match="delete .* to re-export"):
        M3Encoder.from_pretrained(str(tiny_model_dir), backend="onnx", onnx_cache_dir=str(cache))


def test_settings_accept_only_known_backends():
    assert load_settings(env={"MEE_BACKEND": "onnx-int8"}).backend == "onnx-int8"
    with pytest.raises(InvalidArgument, match="backend must be torch, onnx or onnx-int8"):
        load_settings(env={"MEE_BACKEND": "onnx_int8"})


def test_spearman_matches_definition():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties averaged: ranks [1.5, 1.5, 3, 4] vs [1, 2, 3, 4]
    assert spearman([5, 5, 6, 7], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)
