"""M3Encoder behaviour: output contract, non-degeneracy of the tiny model, argument and load errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from milvus_embed_ext.encoder import M3Encoder, M3Output, resolve_dtype, resolve_model_path
from milvus_embed_ext.errors import InvalidArgument, ModelLoadError

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Milvus stores vectors and answers similarity searches.",
    "Interest rates rose for the third consecutive quarter.",
    "Whisk the eggs with sugar and bake for twenty minutes.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Кошка спит на диване, а собака играет во дворе.",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "أحب القراءة والسفر.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "人工智能正在改变世界。",
    "ベクトルデータベースは埋め込みを保存します。",
    "Great job team 🎉🚀 the release shipped on time!",
    "SELECT id FROM documents WHERE score > 0.75;",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
]


def test_output_shapes_and_normalisation(tiny_encoder: M3Encoder):
    out = tiny_encoder.encode(SENTENCES, truncate_dims=[8, 32])
    n, h = len(SENTENCES), tiny_encoder.hidden_size
    assert len(out) == n
    assert out.dense.shape == (n, h) and out.dense.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    for d in (8, 32):
        t = out.truncated[d]
        assert t.shape == (n, d) and t.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
        # a prefix of the CLS vector, renormalised: same direction as the dense prefix
        expected = out.dense[:, :d] / np.linalg.norm(out.dense[:, :d], axis=1, keepdims=True)
        np.testing.assert_allclose(t, expected, atol=1e-5)
    for i, c in enumerate(out.colbert):
        assert c.shape == (out.token_counts[i] - 1, h) and c.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    for s in out.sparse:
        assert all(isinstance(k, int) and isinstance(v, float) and v > 0 for k, v in s.items())
        assert not set(s) & tiny_encoder.special_token_ids


def test_tiny_model_is_not_degenerate(tiny_encoder: M3Encoder):
    out = tiny_encoder.encode(SENTENCES)
    sims = out.dense @ out.dense.T
    pairwise = sims[np.triu_indices(len(SENTENCES), 1)]
    assert pairwise.mean() < 0.9, f"mean pairwise cosine {pairwise.mean():.3f}: the test model is degenerate"
    assert all(out.sparse), "every ordinary sentence must get lexical weights"
    assert len({round(float(x), 4) for x in out.dense[:, 0]}) > len(SENTENCES) // 2


def test_tokenizer_covers_scripts(tiny_encoder: M3Encoder):
    unk = tiny_encoder._hf_tokenizer.unk_token_id
    for text in ("hello world", "москва", "مرحبا", "北京", "東京", "🚀🎉", "ελληνικά", "हिन्दी"):
        ids = tiny_encoder.tokenize([text])[0]
        assert unk not in ids, f"{text!r} tokenises to <unk>"


def test_representations_are_optional(tiny_encoder: M3Encoder):
    only_sparse = tiny_encoder.encode(SENTENCES[:3], dense=False, colbert=False)
    assert only_sparse.dense is None and only_sparse.colbert is None and only_sparse.sparse
    only_trunc = tiny_encoder.encode(SENTENCES[:3], dense=False, sparse=False, colbert=False, truncate_dims=[16])
    assert only_trunc.dense is None and only_trunc.truncated[16].shape == (3, 16)
    full = tiny_encoder.encode(SENTENCES[:3], truncate_dims=[16])
    np.testing.assert_allclose(only_trunc.truncated[16], full.truncated[16], atol=1e-6)
    for a, b in zip(only_sparse.sparse, full.sparse, strict=True):
        assert a == pytest.approx(b)
    nothing = tiny_encoder.encode(SENTENCES[:3], dense=False, sparse=False, colbert=False)
    assert list(nothing.token_counts) == tiny_encoder.count_tokens(SENTENCES[:3])


def test_empty_input_gives_empty_output(tiny_encoder: M3Encoder):
    out = tiny_encoder.encode([], truncate_dims=[16])
    assert len(out) == 0
    assert out.dense.shape == (0, tiny_encoder.hidden_size) and out.dense.dtype == np.float32
    assert out.sparse == [] and out.colbert == [] and out.truncated[16].shape == (0, 16)
    assert out.token_counts.shape == (0,) and out.token_counts.dtype == np.int64
    assert tiny_encoder.count_tokens([]) == []


def test_accepts_any_sequence_and_repeats(tiny_encoder: M3Encoder):
    a = tiny_encoder.encode(("same text", "same text", "other"))
    np.testing.assert_allclose(a.dense[0], a.dense[1], atol=1e-6)
    assert a.sparse[0] == pytest.approx(a.sparse[1])
    assert a.sparse[0] != a.sparse[2]


def test_sparse_keeps_max_weight_per_token(tiny_encoder: M3Encoder):
    text = "the river the valley the sea the river"
    out = tiny_encoder.encode([text], dense=False, colbert=False)
    ids = tiny_encoder.tokenize([text])[0]
    assert len(out.sparse[0]) <= len(set(ids) - tiny_encoder.special_token_ids)
    assert len(set(ids)) < len(ids)  # the text really repeats tokens


@pytest.mark.parametrize(
    ("texts", "match"),
    [
        (None, "got None"),
        ("a bare string", "single string"),
        (["ok", 3], r"texts\[1\] must be a string, got int"),
        (["ok", None], r"texts\[1\] must be a string, got NoneType"),
        ([b"bytes"], r"texts\[0\] must be a string, got bytes"),
        (42, "got int"),
    ],
)
def test_bad_texts_are_rejected(tiny_encoder: M3Encoder, texts, match):
    with pytest.raises(InvalidArgument, match=match):
        tiny_encoder.encode(texts)


@pytest.mark.parametrize("max_length", [0, -5, 1, 2.5, True, 10**6])
def test_bad_max_length_per_call(tiny_encoder: M3Encoder, max_length):
    with pytest.raises(InvalidArgument, match="max_length"):
        tiny_encoder.encode(["x"], max_length=max_length)


@pytest.mark.parametrize("dims", [[0], [-1], [10**5], ["8"], "8", [2.5]])
def test_bad_truncate_dims(tiny_encoder: M3Encoder, dims):
    with pytest.raises(InvalidArgument, match="truncate_dims"):
        tiny_encoder.encode(["x"], truncate_dims=dims)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"device": "cuda:x"}, "device must be"),
        ({"dtype": "int8"}, "dtype must be one of auto, fp32, fp16, bf16"),
        ({"max_length": 0}, "max_length must be an integer >= 2"),
        ({"max_length": -1}, "max_length"),
        ({"max_length": 8193}, "exceeds what the model supports"),
        ({"token_budget": 0}, "token_budget"),
        ({"max_batch": 0}, "max_batch"),
    ],
)
def test_bad_load_arguments(tiny_model_dir: Path, kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        M3Encoder.from_pretrained(str(tiny_model_dir), **kwargs)


def test_cuda_requested_without_gpu(tiny_model_dir: Path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        M3Encoder.from_pretrained(str(tiny_model_dir), device="cuda")


def test_auto_dtype_and_device(monkeypatch: pytest.MonkeyPatch):
    from milvus_embed_ext.encoder import loading

    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == "fp32"
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", "cpu") == "bf16"
    assert resolve_dtype("auto", "cuda:0") == "fp16"
    assert resolve_dtype("BF16", "cpu") == "bf16"
    assert resolve_dtype("fp32", "cpu") == "fp32"


@pytest.mark.parametrize(("flags", "native"), [
    ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu avx2 amx_bf16 amx_tile amx_int8", True),
    ("fpu sse avx2 fma avx512f avx512_vnni", False),  # VNNI speeds int8, not bf16
    ("", False),
])
def test_native_bf16_from_cpu_flags(flags: str, native: bool):
    from milvus_embed_ext.encoder.loading import cpu_has_native_bf16

    cpuinfo = f"processor\t: 0\nmodel name\t: x\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16("no flags line at all") is False


def _copy_without(src: Path, dst: Path, *missing: str) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in missing:
            os.symlink(f, dst / f.name)
    return dst


@pytest.mark.parametrize("missing", [("colbert_linear.pt",), ("sparse_linear.pt",),
                                     ("colbert_linear.pt", "sparse_linear.pt")])
def test_missing_heads_fail_loudly(tiny_model_dir: Path, tmp_path: Path, missing):
    model_dir = _copy_without(tiny_model_dir, tmp_path / "m", *missing)
    with pytest.raises(ModelLoadError, match="missing " + ", ".join(missing)):
        M3Encoder.from_pretrained(str(model_dir), device="cpu")


def test_missing_weights_and_tokenizer(tiny_model_dir: Path, tmp_path: Path):
    model_dir = _copy_without(tiny_model_dir, tmp_path / "m", "model.safetensors", "tokenizer.json")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors.*tokenizer\.json"):
        M3Encoder.from_pretrained(str(model_dir), device="cpu")


def test_head_with_wrong_shape(tiny_model_dir: Path, tmp_path: Path):
    import torch

    model_dir = _copy_without(tiny_model_dir, tmp_path / "m", "sparse_linear.pt")
    torch.save({"weight": torch.zeros(1, 7), "bias": torch.zeros(1)}, model_dir / "sparse_linear.pt")
    with pytest.raises(ModelLoadError, match=r"sparse_linear\.pt has weight shape \(1, 7\)"):
        M3Encoder.from_pretrained(str(model_dir), device="cpu")


def test_corrupt_head(tiny_model_dir: Path, tmp_path: Path):
    model_dir = _copy_without(tiny_model_dir, tmp_path / "m", "colbert_linear.pt")
    (model_dir / "colbert_linear.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=r"cannot read .*colbert_linear\.pt"):
        M3Encoder.from_pretrained(str(model_dir), device="cpu")


def test_model_path_errors(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_path(str(tmp_path / "file"))
    with pytest.raises(ModelLoadError, match="checkpoint directory or a hub id"):
        resolve_model_path("")
    assert resolve_model_path(str(tmp_path)) == tmp_path


def test_uncached_hub_id_without_download(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        resolve_model_path("BAAI/bge-m3", allow_download=False, cache_dir=str(tmp_path / "hf"))


def test_cached_hub_snapshot_is_used(tiny_model_dir: Path, tmp_path: Path):
    """A hub id resolves to its snapshot in the Hugging Face cache layout without any network access."""
    cache = tmp_path / "hf"
    repo = cache / "models--BAAI--bge-m3"
    commit = "0" * 40
    snapshot = repo / "snapshots" / commit
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert resolve_model_path("BAAI/bge-m3", allow_download=False, cache_dir=str(cache)) == snapshot
    enc = M3Encoder.from_pretrained("BAAI/bge-m3", device="cpu", allow_download=False, cache_dir=str(cache))
    assert enc.model_id == "BAAI/bge-m3"
    assert enc.encode(["hello"]).dense.shape == (1, enc.hidden_size)


def test_fingerprint_is_content_based(tiny_encoder: M3Encoder, tiny_model_dir: Path, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    again = M3Encoder.from_pretrained(str(copy), device="cpu")
    assert again.fingerprint == tiny_encoder.fingerprint
    with open(copy / "sparse_linear.pt", "ab") as fh:
        fh.write(b"\0")
    from milvus_embed_ext.encoder.hub import fingerprint

    assert fingerprint(copy) != tiny_encoder.fingerprint


def test_encoder_metadata(tiny_encoder: M3Encoder, tiny_model_dir: Path):
    assert tiny_encoder.device == "cpu" and tiny_encoder.dtype == "fp32"
    assert tiny_encoder.max_length == 512
    assert tiny_encoder.model_id == str(tiny_model_dir)
    assert tiny_encoder.special_token_ids == frozenset({0, 1, 2, 3})
    assert tiny_encoder.vocab_size > 1000
    assert len(tiny_encoder.fingerprint) == 32
    assert isinstance(tiny_encoder.encode(["x"]), M3Output)
