"""Request checks shared by the handlers. Each failure says which field is wrong and how to fix it."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidArgument


def check_texts(texts: Sequence[str], max_texts: int, field: str = "texts") -> None:
    if not texts:
        raise InvalidArgument(f"{field} is empty; send 1..{max_texts} texts")
    if len(texts) > max_texts:
        raise InvalidArgument(
            f"{field} has {len(texts)} entries, more than max_texts_per_request={max_texts}; "
            "split the request (or use Documents.UpsertStream for bulk loads)"
        )


def check_rerank_input(query: Any, passages: Sequence[str], max_pairs: int, max_chars: int) -> None:
    """A Rerank call: a non-empty query, 1..max_pairs passages, every text within max_chars characters."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidArgument("query is empty; send the text to score the passages against")
    if isinstance(passages, (str, bytes)):
        raise InvalidArgument("passages must be a list of strings, got a single string; wrap it: [passage]")
    if not passages:
        raise InvalidArgument(f"passages is empty; send 1..{max_pairs} passages")
    if len(passages) > max_pairs:
        raise InvalidArgument(f"passages has {len(passages)} entries, more than reranker_max_pairs={max_pairs}; "
                              "split the request or raise MEE_RERANKER_MAX_PAIRS")
    if len(query) > max_chars:
        raise InvalidArgument(f"query has {len(query)} characters, more than reranker_max_text_chars={max_chars}; "
                              "shorten it (the reranker reads at most reranker_max_length tokens anyway)")
    for i, p in enumerate(passages):
        if not isinstance(p, str):
            raise InvalidArgument(f"passages[{i}] must be a string, got {type(p).__name__}")
        if len(p) > max_chars:
            raise InvalidArgument(f"passages[{i}] has {len(p)} characters, more than reranker_max_text_chars="
                                  f"{max_chars}; shorten it (the reranker reads at most reranker_max_length tokens)")


def check_enum(values: Sequence[int], allowed: dict[int, str], field: str) -> None:
    for i, value in enumerate(values):
        if value not in allowed:
            names = ", ".join(f"{name} ({num})" for num, name in allowed.items())
            raise InvalidArgument(f"{field}[{i}]={value} is not a known value; use one of {names}")


def check_enum_value(value: int, allowed: dict[int, str], field: str) -> None:
    if value not in allowed:
        names = ", ".join(f"{name} ({num})" for num, name in allowed.items())
        raise InvalidArgument(f"{field}={value} is not a known value; use one of {names}")


def parse_json_object(raw: str, where: str, *, fix: str = "send a JSON object",
                      example: str = '{"lang": "en"}') -> dict[str, Any]:
    """``raw`` as a JSON object, or InvalidArgument naming ``where``, the parser's complaint and the fix."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"{where} is not valid JSON ({exc.msg} at position {exc.pos}); {fix}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a JSON object like {example}, got {type(value).__name__}")
    return value


def parse_metadata(raw: str, field: str) -> dict[str, Any] | None:
    """A JSON object (or None for an empty string)."""
    return parse_json_object(raw, field) if raw else None


def check_ids(ids: Sequence[str], max_ids: int, field: str = "ids") -> None:
    if not ids:
        raise InvalidArgument(f"{field} is empty; send 1..{max_ids} document ids")
    if len(ids) > max_ids:
        raise InvalidArgument(f"{field} has {len(ids)} entries, more than max_texts_per_request={max_ids}; split it")
    for i, doc_id in enumerate(ids):
        if not doc_id:
            raise InvalidArgument(f"{field}[{i}] is empty; every document needs a non-empty id")


OUTPUT_FIELDS = ("text", "metadata")


def check_output_fields(fields: Sequence[str], field: str = "output_fields") -> tuple[str, ...]:
    for name in fields:
        if name not in OUTPUT_FIELDS:
            raise InvalidArgument(f"{field} has unknown field {name!r}; use a subset of {list(OUTPUT_FIELDS)}")
    return tuple(dict.fromkeys(fields))


# A search filter may reference only the document fields the API exposes; everything else in a collection
# (vectors, ColBERT bookkeeping) is internal. Milvus parses the expression itself; this check only finds the
# identifiers outside string literals, so that no filter reads an internal field, and refuses `{...}` (Milvus
# expression templates, which this API does not pass parameters for: Milvus Lite answers them with an
# unexpected error that the driver retries until the deadline).
FILTER_FIELDS = ("id", "text", "metadata")
FILTER_WORDS = frozenset({"and", "or", "not", "in", "like", "true", "false", "exists", "is", "null"})
FILTER_FUNCTIONS = frozenset({
    "json_contains", "json_contains_all", "json_contains_any", "array_contains", "array_contains_all",
    "array_contains_any", "array_length", "text_match", "phrase_match",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?|\'(?:[^\'\\]|\\.)*\'?', re.DOTALL)
_IDENT = re.compile(r"(?<![\w.$])([A-Za-z_$][\w$]*)(\s*\()?")


def check_filter(expr: str, field: str = "filter") -> None:
    """Refuse filters that name anything but id, text and metadata (or use templates); Milvus checks the rest."""
    if not expr.strip():
        return
    code = _STRING.sub(lambda m: " " * len(m.group(0)), expr)
    if "{" in code or "}" in code:
        raise InvalidArgument(f"{field} uses '{{' or '}}' outside a string literal; expression templates are not "
                              'supported, write the value itself (e.g. metadata["lang"] == "en")')
    fields = 0
    for m in _IDENT.finditer(code):
        name, call = m.group(1), m.group(2)
        if name in FILTER_FIELDS and not call:
            fields += 1
            continue
        if name.lower() in FILTER_WORDS or (call and name.lower() in FILTER_FUNCTIONS):
            continue
        if m.start() > 0 and code[m.start() - 1].isdigit():  # exponent of a number such as 1e9
            continue
        raise InvalidArgument(f"{field} references {name!r}{' as a function' if call else ''}; a filter may use only "
                              f"the fields {', '.join(FILTER_FIELDS)} (e.g. metadata[\"lang\"] == \"en\") and the "
                              "Milvus operators and JSON/array functions")
    if not fields:  # constant expressions ("1 == 1") make Milvus fail inside its executor, not in the parser
        raise InvalidArgument(f"{field} {expr[:80]!r} compares no field; filter on id, text or metadata "
                              '(e.g. metadata["lang"] == "en"), or send an empty filter for no filtering')
