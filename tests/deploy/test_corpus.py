"""The shipped sample corpus: shape, languages, scripts and the planted near-contradictory pairs."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from milvus_embed_ext.demo import CORPUS_PATH, load_corpus

REQUIRED_LANGS = {"en", "de", "fr", "es", "zh", "ja", "ar", "ru"}
# Each language's passages must actually be written in its script (catches copy/paste slips).
SCRIPT_PATTERNS = {
    "zh": re.compile(r"[\u4e00-\u9fff]"),
    "ja": re.compile(r"[\u3040-\u30ff]"),  # kana: tells Japanese from Chinese
    "ar": re.compile(r"[\u0600-\u06ff]"),
    "ru": re.compile(r"[\u0400-\u04ff]"),
    "ko": re.compile(r"[\uac00-\ud7af]"),
    "hi": re.compile(r"[\u0900-\u097f]"),
}
PAIRS = [("00", "01"), ("02", "03"), ("04", "05"), ("06", "07"), ("13", "14"), ("15", "16"), ("21", "22"), ("25", "26")]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    lines = Path(CORPUS_PATH).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_every_line_has_the_documented_shape(rows: list[dict]) -> None:
    assert 200 <= len(rows) <= 1000, "a few hundred passages"
    for row in rows:
        assert set(row) == {"id", "text", "metadata"}, row
        assert set(row["metadata"]) == {"lang", "topic"}, row
        assert isinstance(row["text"], str) and 10 <= len(row["text"]) <= 400, row["id"]
        assert row["text"] == row["text"].strip() and "\n" not in row["text"], row["id"]
        assert unicodedata.is_normalized("NFC", row["text"]), row["id"]
        assert row["id"].startswith(row["metadata"]["lang"] + "-"), row["id"]


def test_ids_and_texts_are_unique(rows: list[dict]) -> None:
    ids = Counter(r["id"] for r in rows)
    assert [i for i, n in ids.items() if n > 1] == []
    texts = Counter(r["text"] for r in rows)
    assert [t for t, n in texts.items() if n > 1] == []


def test_languages_and_topics(rows: list[dict]) -> None:
    langs = Counter(r["metadata"]["lang"] for r in rows)
    assert set(langs) >= REQUIRED_LANGS, f"missing languages: {REQUIRED_LANGS - set(langs)}"
    assert all(langs[lang] >= 25 for lang in REQUIRED_LANGS), langs
    topics = {r["metadata"]["topic"] for r in rows}
    assert len(topics) >= 6, topics


def test_each_language_is_written_in_its_script(rows: list[dict]) -> None:
    for row in rows:
        pattern = SCRIPT_PATTERNS.get(row["metadata"]["lang"])
        if pattern is not None:
            assert pattern.search(row["text"]), row["id"]
        elif row["metadata"]["lang"] in {"en", "de", "fr", "es", "it", "pt"}:
            assert all(ord(ch) < 0x250 or ch in "’–—…«»" for ch in row["text"]), row["id"]


def test_near_contradictory_pairs_exist_in_every_core_language(rows: list[dict]) -> None:
    by_id = {r["id"]: r for r in rows}
    for lang in REQUIRED_LANGS:
        for a, b in PAIRS:
            left, right = by_id[f"{lang}-{a}"], by_id[f"{lang}-{b}"]
            assert left["metadata"]["topic"] == right["metadata"]["topic"], (lang, a, b)
    # The pair the issue names, in English.
    assert "probiotics are good for the stomach" in by_id["en-00"]["text"].lower()
    assert "probiotics harm the stomach" in by_id["en-01"]["text"].lower()


def test_load_corpus_returns_documents_in_file_order(rows: list[dict]) -> None:
    docs = load_corpus()
    assert [d.id for d in docs] == [r["id"] for r in rows]
    assert docs[0].metadata == rows[0]["metadata"]


def test_load_corpus_reports_a_bad_line(tmp_path: Path) -> None:
    from milvus_embed_ext.errors import InvalidArgument

    bad = tmp_path / "c.jsonl"
    bad.write_text('{"id": "a", "text": "fine", "metadata": {}}\n{"id": "b"}\n', encoding="utf-8")
    with pytest.raises(InvalidArgument, match=r"c\.jsonl:2"):
        load_corpus(bad)
