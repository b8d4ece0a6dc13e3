"""`milvus-embed demo`: loads the sample corpus idempotently and prints hybrid hits with every score."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from milvus_embed_ext.config import load_settings
from milvus_embed_ext.demo import (
    DEFAULT_QUERIES,
    DemoQuery,
    demo_warning,
    load_corpus,
    load_demo_encoder,
    run_demo,
)
from milvus_embed_ext.progress import ProgressBoard


@pytest.fixture()
def lite_settings(tmp_path: Path, tiny_model_dir: Path):
    return load_settings(env={}, overrides={
        "model": str(tiny_model_dir), "device": "cpu", "dtype": "fp32", "max_length": 512,
        "milvus_uri": str(tmp_path / "milvus.db"), "collection": "demo_corpus",
    })


def test_demo_loads_once_and_reports_every_representation(lite_settings, tiny_encoder) -> None:
    out, progress_log = io.StringIO(), io.StringIO()
    with ProgressBoard(unit="docs", stream=progress_log) as board:  # what `milvus-embed demo` passes
        first = run_demo(lite_settings, encoder=tiny_encoder, out=out, top_k=4, progress=board)
    n = len(load_corpus())
    assert first["documents"] == n and first["written"] == n
    progress = [json.loads(line) for line in progress_log.getvalue().splitlines()]
    assert (progress[0]["task"], progress[0]["done"], progress[0]["total"]) == ("load corpus", 0, n)
    assert (progress[-1]["state"], progress[-1]["done"]) == ("finished", n)
    text = out.getvalue()
    assert "fused" in text and "dense" in text and "sparse" in text and "colbert" in text
    assert "timings ms: encode" in text and "total" in text
    assert f"collection holds {n}" in text
    assert len(first["results"]) == len(DEFAULT_QUERIES)
    for result in first["results"]:
        assert 0 < len(result.hits) <= 4
        for hit in result.hits:
            assert set(hit.scores) == {"dense", "sparse", "colbert"}
            assert hit.fields["text"]
        assert {"encode", "total"} <= set(result.timings_ms)
    # The filtered default query only returns passages in the languages it names.
    filtered = first["results"][3]
    assert {h.fields["metadata"]["lang"] for h in filtered.hits} <= {"en", "ja"}

    # Second run: nothing re-encoded, nothing duplicated.
    out2 = io.StringIO()
    second = run_demo(lite_settings, encoder=tiny_encoder, out=out2, top_k=2,
                      queries=(DemoQuery("coffee", filter='metadata["topic"] == "health"'),))
    assert second["written"] == 0
    assert f"{n} already stored unchanged; collection holds {n}" in out2.getvalue()
    assert all(h.fields["metadata"]["topic"] == "health" for h in second["results"][0].hits)


def test_demo_refuses_a_collection_built_by_another_model(lite_settings, tiny_encoder, tmp_path: Path) -> None:
    """A demo collection of another width (another model) is reported, and --reset rebuilds it."""
    from milvus_embed_ext.errors import FailedPrecondition
    from milvus_embed_ext.store import CollectionLayout, DocumentStore, MilvusStore

    store = MilvusStore.connect(lite_settings)
    try:
        DocumentStore.create(store, CollectionLayout(name="demo_corpus", dense_dim=tiny_encoder.hidden_size + 8))
    finally:
        store.close()
    small = tmp_path / "two.jsonl"
    small.write_text('{"id": "a", "text": "probiotics help", "metadata": {"lang": "en", "topic": "health"}}\n'
                     '{"id": "b", "text": "probiotics harm", "metadata": {"lang": "en", "topic": "health"}}\n',
                     encoding="utf-8")
    with pytest.raises(FailedPrecondition, match="--reset"):
        run_demo(lite_settings, encoder=tiny_encoder, corpus=small, out=io.StringIO(),
                 queries=(DemoQuery("probiotics"),))
    out = io.StringIO()
    res = run_demo(lite_settings, encoder=tiny_encoder, corpus=small, out=out, reset=True,
                   queries=(DemoQuery("probiotics"),))
    assert res["written"] == 2 and {h.id for h in res["results"][0].hits} == {"a", "b"}
    assert "dropped demo_corpus (--reset)" in out.getvalue()


def test_fallback_to_the_demo_checkpoint_is_loud(monkeypatch, tiny_model_dir: Path, capsys, tmp_path: Path) -> None:
    """Hub unreachable + hub id: the demo checkpoint is used, flagged, and the banner names MEE_MODEL."""
    import milvus_embed_ext.encoder.factory as factory

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(factory, "demo_model_dir", lambda: tiny_model_dir)
    settings = load_settings(env={}, overrides={"model": "BAAI/bge-m3", "device": "cpu", "dtype": "fp32",
                                                "max_length": 128})
    encoder, is_demo = load_demo_encoder(settings)
    assert is_demo is True
    assert Path(encoder.model_id).resolve() == tiny_model_dir.resolve()
    err = capsys.readouterr().err
    assert "DEMO MODEL" in err and "MEE_MODEL" in err
    assert "MEE_MODEL" in demo_warning("BAAI/bge-m3") and "NO meaning" in demo_warning("BAAI/bge-m3")


def test_real_model_is_not_flagged(tiny_model_dir: Path) -> None:
    settings = load_settings(env={}, overrides={"model": str(tiny_model_dir), "device": "cpu", "dtype": "fp32",
                                                "max_length": 128})
    _encoder, is_demo = load_demo_encoder(settings)
    assert is_demo is False


def test_cli_demo_arguments_are_checked(capsys) -> None:
    from milvus_embed_ext.cli import main

    assert main(["demo", "--top-k", "0"]) == 2
    assert "--top-k" in capsys.readouterr().err
    assert main(["demo", "--filter", 'metadata["lang"] == "de"']) == 2
    assert "--query" in capsys.readouterr().err


def test_demo_cross_encoder_stage_and_its_warning(lite_settings, tiny_encoder, tiny_reranker) -> None:
    out = io.StringIO()
    res = run_demo(lite_settings, encoder=tiny_encoder, reranker=tiny_reranker, cross_encoder=True, out=out, top_k=3,
                   queries=(DemoQuery("Are probiotics good for the stomach?"),))
    text = out.getvalue()
    assert "cross-encoder:" in text and "re-scores the fused top 9" in text
    assert "cross" in text and "RANDOM test checkpoint" in text and "carry NO meaning" in text
    hits = res["results"][0].hits
    assert len(hits) == 3 and all({"fused", "cross_encoder"} <= set(h.scores) for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_demo_cross_encoder_without_a_reranker_says_how(lite_settings, tiny_encoder) -> None:
    from milvus_embed_ext.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="MEE_RERANKER_MODEL"):
        run_demo(lite_settings, encoder=tiny_encoder, cross_encoder=True, out=io.StringIO(), load=False)
