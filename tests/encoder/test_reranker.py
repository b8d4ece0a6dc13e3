"""Reranker must reproduce FlagEmbedding's FlagReranker on the same checkpoint (fp32, within 1e-5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from milvus_embed_ext.encoder import Reranker
from milvus_embed_ext.encoder.reranker import check_pairs
from milvus_embed_ext.errors import InvalidArgument, ModelLoadError

TOL = 1e-5


@pytest.fixture(scope="module")
def pairs(varied_texts: list[str]) -> list[tuple[str, str]]:
    """Every query against several passages: short, long (truncated at 512), empty, unknown characters."""
    queries = ["what do probiotics do", "Привет", "", varied_texts[3], " ".join(varied_texts[:8])]  # the last: > 3/4 of 16
    passages = varied_texts[::3]
    return [(q, p) for q in queries for p in passages]


@pytest.mark.parametrize("max_length", [512, 16], ids=["max512", "truncated16"])
@pytest.mark.parametrize("normalize", [False, True], ids=["logits", "sigmoid"])
def test_scores_match_flagreranker(tiny_reranker: Reranker, flag_reranker, pairs, max_length, normalize):
    ours = tiny_reranker.compute_score(pairs, normalize=normalize, max_length=max_length)
    ref = flag_reranker.compute_score(pairs, normalize=normalize, max_length=max_length)
    assert len(ours) == len(ref) == len(pairs)
    assert all(isinstance(v, float) for v in ours)
    assert np.abs(np.asarray(ours) - np.asarray(ref)).max() <= TOL
    # not vacuous: the random checkpoint tells pairs apart
    assert np.std(ours) > (0.01 if normalize else 0.05)
    assert len({round(v, 5) for v in ours}) > 0.8 * len(ours)


def test_pairs_are_built_like_flagembedding(tiny_reranker: Reranker, flag_reranker, pairs):
    tok = flag_reranker.tokenizer
    for max_length in (512, 16):
        ours = tiny_reranker.build_pairs(pairs, max_length)
        for (q, p), ids in zip(pairs, ours, strict=True):
            qi = tok(q, add_special_tokens=False, max_length=max_length * 3 // 4, truncation=True)["input_ids"]
            pi = tok(p, add_special_tokens=False, max_length=max_length, truncation=True)["input_ids"]
            ref = tok.prepare_for_model(qi, pi, truncation="only_second", max_length=max_length)["input_ids"]
            assert ids == ref


def test_batching_does_not_change_scores(tiny_reranker_dir: Path, tiny_reranker: Reranker, pairs):
    small = Reranker.from_pretrained(str(tiny_reranker_dir), device="cpu", dtype="fp32", token_budget=64, max_batch=3)
    a = np.asarray(tiny_reranker.compute_score(pairs))
    b = np.asarray(small.compute_score(pairs))
    assert np.abs(a - b).max() <= TOL


def test_rerank_is_compute_score_of_one_query(tiny_reranker: Reranker):
    passages = ["Probiotics are good for the stomach", "Probiotics harm the stomach", "Tokyo is a city"]
    scores = tiny_reranker.rerank("are probiotics good", passages, normalize=True)
    assert scores == tiny_reranker.compute_score([("are probiotics good", p) for p in passages], normalize=True)
    assert all(0.0 < s < 1.0 for s in scores)
    assert tiny_reranker.compute_score([]) == []


def test_query_max_length_and_count_tokens(tiny_reranker_dir: Path):
    r = Reranker.from_pretrained(str(tiny_reranker_dir), device="cpu", dtype="fp32", max_length=32,
                                 query_max_length=4)
    q = "one two three four five six seven eight nine ten"
    ids = r.build_pairs([(q, "alpha beta gamma " * 20)])[0]
    assert len(ids) == 32 and ids[0] == r.cls_token_id and ids[-1] == r.sep_token_id
    assert ids[5:7] == [r.sep_token_id, r.sep_token_id]  # <s> + 4 query tokens, then </s></s>
    assert r.count_tokens([(q, "x")])[0] <= 32


@pytest.mark.parametrize("bad", [None, "text", [("q",)], [("q", 1)], [["q", "p", "x"]], 5])
def test_bad_pairs_say_what_to_send(bad):
    with pytest.raises(InvalidArgument, match="pair"):
        check_pairs(bad)


def test_one_bare_pair_is_accepted():
    assert check_pairs(("q", "p")) == [("q", "p")]


def test_bad_arguments(tiny_reranker: Reranker):
    with pytest.raises(InvalidArgument, match="max_length"):
        tiny_reranker.compute_score([("q", "p")], max_length=4)
    with pytest.raises(InvalidArgument, match="exceeds"):
        tiny_reranker.compute_score([("q", "p")], max_length=10**6)
    with pytest.raises(InvalidArgument, match="single string"):
        tiny_reranker.rerank("q", "passage")


def test_an_embedding_checkpoint_is_not_a_reranker(tiny_model_dir: Path):
    with pytest.raises(ModelLoadError, match="one-logit cross-encoder"):
        Reranker.from_pretrained(str(tiny_model_dir), device="cpu")


def test_incomplete_checkpoint_names_the_missing_files(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["XLMRobertaForSequenceClassification"]}))
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        Reranker.from_pretrained(str(tmp_path), device="cpu")


def test_reranker_checkpoint_layout(tiny_reranker_dir: Path):
    config = json.loads((tiny_reranker_dir / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert config["id2label"] == {"0": "LABEL_0"}
    assert not (tiny_reranker_dir / "colbert_linear.pt").exists()
    from safetensors import safe_open

    with safe_open(str(tiny_reranker_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {"classifier.dense.weight", "classifier.out_proj.weight", "classifier.out_proj.bias"} <= keys
    assert all(k.startswith(("roberta.", "classifier.")) for k in keys)


@pytest.mark.parametrize("backend, tol", [("onnx", 1e-4), ("onnx-int8", None)])
def test_onnx_backends_score_like_torch(tiny_reranker_dir: Path, tiny_reranker: Reranker, pairs, tmp_path_factory,
                                        backend, tol):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    cache = tmp_path_factory.getbasetemp() / "reranker-onnx-cache"
    r = Reranker.from_pretrained(str(tiny_reranker_dir), backend=backend, onnx_cache_dir=str(cache))
    assert r.backend == backend and r.device == "cpu" and r.dtype == "fp32"
    ref = np.asarray(tiny_reranker.compute_score(pairs))
    got = np.asarray(r.compute_score(pairs))
    if tol is not None:
        assert np.abs(ref - got).max() <= tol
    else:  # int8: the order is what matters to a reranker
        from milvus_embed_ext.encoder.fidelity import spearman

        assert spearman(ref, got) > 0.95
    with pytest.raises(InvalidArgument, match="runs on the CPU"):
        Reranker.from_pretrained(str(tiny_reranker_dir), backend=backend, device="cuda")


@pytest.mark.slow  # builds bge-reranker-v2-m3's full shape once (~2.3 GB, minutes), then a few forward passes
def test_full_size_scores_match_flagreranker():
    import os

    flag = pytest.importorskip("FlagEmbedding")
    from milvus_embed_ext.encoder.testmodel import ensure_test_model

    cache = Path(os.environ.get("MEE_TEST_CACHE", Path(__file__).resolve().parents[2] / ".cache"))
    path = ensure_test_model(cache / "test-reranker-full", size="full", seed=0, kind="reranker")
    pairs = [("are probiotics good for the stomach", p) for p in (
        "Probiotics are good for the stomach: live cultures help the gut flora.",
        "Probiotics harm the stomach: supplements cause bloating and cramps.",
        "Tokyo is the capital of Japan. " * 30,  # long: > 3/4 of 512 tokens with the query
        "")]
    ours = Reranker.from_pretrained(str(path), device="cpu", dtype="fp32")
    ref = flag.FlagReranker(str(path), use_fp16=False, devices="cpu")
    try:
        for normalize in (False, True):
            a = np.asarray(ours.compute_score(pairs, normalize=normalize))
            b = np.asarray(ref.compute_score(pairs, normalize=normalize))
            assert np.abs(a - b).max() <= TOL
        assert np.std(ours.compute_score(pairs)) > 0.05
    finally:
        ref.stop_self_pool()
