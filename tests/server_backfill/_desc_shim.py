"""Test-only workaround: milvus-lite 3.2.2 drops collection descriptions, where the store keeps the layout.

The server keeps collection properties, so this shim (imported only when the server under test drops
descriptions) also writes the description into a property at create time and puts it back when a
description comes back empty. Remove it once the store itself handles such servers.
"""

from __future__ import annotations

from typing import Any

from pymilvus import MilvusClient

PROPERTY = "mee.test.description"
_create = MilvusClient.create_collection
_describe = MilvusClient.describe_collection


def _create_collection(self: Any, collection_name: str, *args: Any, **kwargs: Any) -> Any:
    schema = kwargs.get("schema")
    description = getattr(schema, "description", "") or kwargs.get("description", "")
    if description:
        kwargs["properties"] = {**(kwargs.get("properties") or {}), PROPERTY: description}
    return _create(self, collection_name, *args, **kwargs)


def _describe_collection(self: Any, collection_name: str, *args: Any, **kwargs: Any) -> Any:
    out = _describe(self, collection_name, *args, **kwargs)
    if isinstance(out, dict) and not out.get("description"):
        kept = (out.get("properties") or {}).get(PROPERTY)
        if kept:
            out["description"] = kept
    return out


def install() -> None:
    MilvusClient.create_collection = _create_collection  # type: ignore[method-assign]
    MilvusClient.describe_collection = _describe_collection  # type: ignore[method-assign]


def uninstall() -> None:
    MilvusClient.create_collection = _create  # type: ignore[method-assign]
    MilvusClient.describe_collection = _describe  # type: ignore[method-assign]
