"""Request checks shared by the handlers. Each failure says which field is wrong and how to fix it."""

from __future__ import annotations

import json
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


def check_enum(values: Sequence[int], allowed: dict[int, str], field: str) -> None:
    for i, value in enumerate(values):
        if value not in allowed:
            names = ", ".join(f"{name} ({num})" for num, name in allowed.items())
            raise InvalidArgument(f"{field}[{i}]={value} is not a known value; use one of {names}")


def check_enum_value(value: int, allowed: dict[int, str], field: str) -> None:
    if value not in allowed:
        names = ", ".join(f"{name} ({num})" for num, name in allowed.items())
        raise InvalidArgument(f"{field}={value} is not a known value; use one of {names}")


def parse_metadata(raw: str, field: str) -> dict[str, Any] | None:
    """A JSON object (or None for an empty string)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidArgument(f"{field} is not valid JSON ({exc.msg} at position {exc.pos}); send a JSON object") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be a JSON object like {{\"lang\": \"en\"}}, got {type(value).__name__}")
    return value


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
