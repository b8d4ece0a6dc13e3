"""A deterministic multilingual corpus and query set for recall and fidelity measurements.

Recall figures need thousands of documents with structure (languages, topics, shared words) rather than
noise, and they must be reproducible bit for bit. Documents are drawn from the words of the shipped sample
corpus (``data/corpus/sample.jsonl``, 12 languages, 9 topics): each document mixes words of its own
(language, topic) with words of its language, in a Zipf-like distribution, so lexical, dense and ColBERT
scores all have something to find. Queries are a few words of a chosen document plus words of its
language. The same ``seed`` always gives the same texts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_CJK_LANGS = {"zh", "ja"}


@dataclass(frozen=True)
class SyntheticDoc:
    id: str
    text: str
    metadata: dict[str, Any]


def _sample_rows() -> list[dict[str, Any]]:
    text = resources.files("milvus_embed_ext").joinpath("data/corpus/sample.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _words(text: str, lang: str) -> list[str]:
    if lang in _CJK_LANGS:
        # no spaces: two-character chunks stand in for words
        chars = [c for c in text if c.strip() and (_WORD.match(c) is not None)]
        return ["".join(chars[i : i + 2]) for i in range(0, len(chars) - 1, 2)]
    return [w.lower() for w in _WORD.findall(text) if not w.isdigit()]


def _vocabularies() -> tuple[dict[str, list[str]], dict[tuple[str, str], list[str]]]:
    by_lang: dict[str, list[str]] = {}
    by_topic: dict[tuple[str, str], list[str]] = {}
    for row in _sample_rows():
        lang, topic = row["metadata"]["lang"], row["metadata"]["topic"]
        words = _words(row["text"], lang)
        by_lang.setdefault(lang, []).extend(words)
        by_topic.setdefault((lang, topic), []).extend(words)
    dedup = {k: sorted(set(v)) for k, v in by_lang.items()}
    dedup_topic = {k: sorted(set(v)) for k, v in by_topic.items()}
    return dedup, dedup_topic


def _zipf_pick(rng: np.random.Generator, words: list[str], n: int) -> list[str]:
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    # a per-call permutation keeps one word from dominating every document
    perm = rng.permutation(len(words))
    return [words[perm[i]] for i in rng.choice(len(words), size=n, p=p)]


def _join(words: list[str], lang: str) -> str:
    return ("" if lang in _CJK_LANGS else " ").join(words)


def generate_corpus(n_docs: int, seed: int = 0, min_words: int = 8, max_words: int = 40) -> list[SyntheticDoc]:
    """``n_docs`` documents of ``min_words``-``max_words`` words, ids ``syn-00000``…; metadata: lang, topic, n."""
    if not 0 < min_words <= max_words:
        raise ValueError("need 0 < min_words <= max_words")
    by_lang, by_topic = _vocabularies()
    rng = np.random.default_rng(seed)
    pairs = sorted(by_topic)
    docs = []
    for i in range(n_docs):
        lang, topic = pairs[int(rng.integers(len(pairs)))]
        length = int(rng.integers(min_words, max_words + 1))
        n_topic = int(round(length * 0.6))
        words = _zipf_pick(rng, by_topic[(lang, topic)], n_topic) + _zipf_pick(rng, by_lang[lang], length - n_topic)
        rng.shuffle(words)
        docs.append(SyntheticDoc(f"syn-{i:05d}", _join(words, lang), {"lang": lang, "topic": topic, "n": i}))
    return docs


def generate_queries(docs: list[SyntheticDoc], n_queries: int, seed: int = 1) -> list[str]:
    """Queries of 3-8 words: most from one document (chosen by the seed), the rest from its language."""
    by_lang, _ = _vocabularies()
    rng = np.random.default_rng(seed)
    queries = []
    for _ in range(n_queries):
        doc = docs[int(rng.integers(len(docs)))]
        lang = doc.metadata["lang"]
        own = _words(doc.text, lang) or by_lang[lang]
        n = int(rng.integers(3, 9))
        n_own = max(1, n - int(rng.integers(0, 3)))
        words = [own[int(j)] for j in rng.integers(len(own), size=n_own)]
        words += [by_lang[lang][int(j)] for j in rng.integers(len(by_lang[lang]), size=n - n_own)]
        queries.append(_join(words, lang))
    return queries


__all__ = ["SyntheticDoc", "generate_corpus", "generate_queries"]
