"""Collection administration: the Milvus calls the migrations engine (and the store's lifecycle) share.

Existence, description, the layout a collection stores in its description, loading, strong counts, the
sorted list of ids, rows by id, indexes, aliases and drops: each written once here, every call through
:meth:`MilvusStore.call` so failures arrive as the store's typed domain errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..contracts import MilvusBackend
from ..errors import FailedPrecondition, NotFound
from ..limits import IDS_PER_QUERY
from .client import quiet_pymilvus
from .layout import CollectionLayout


def in_expr(field_name: str, values: Sequence[str]) -> str:
    """``field in ["a","b"]`` with each value a Milvus string literal."""
    return f"{field_name} in [{','.join(literal(v) for v in values)}]"


def literal(value: str) -> str:
    """A Milvus expression string literal (ids are validated to contain no control characters)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def chunks(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class CollectionAdmin:
    """Administrative calls on the collections of one :class:`MilvusStore` (reads are Strong)."""

    def __init__(self, store: MilvusBackend) -> None:
        self.store = store

    @property
    def client(self) -> Any:
        return self.store.client

    def has(self, name: str) -> bool:
        return self.store.has_collection(name)

    def describe(self, name: str) -> dict[str, Any]:
        return dict(self.store.call(f"describe collection {name}", self.client.describe_collection, name))

    def stored_layout(self, name: str, described: dict[str, Any] | None = None) -> CollectionLayout | None:
        """The layout a milvus-embed collection keeps in its description (None for any other collection)."""
        described = self.describe(name) if described is None else described
        return CollectionLayout.from_description(described.get("description", ""))

    def layout(self, name: str) -> CollectionLayout:
        """The stored layout of an existing milvus-embed collection, or NotFound / FailedPrecondition."""
        if not self.has(name):
            raise NotFound(f"collection {name} does not exist; `milvus-embed migrate current` shows the revision")
        layout = self.stored_layout(name)
        if layout is None:
            raise FailedPrecondition(
                f"collection {name} was not created by milvus-embed (no layout in its description); "
                "migrations manage only milvus-embed collections")
        return layout

    def load(self, name: str) -> None:
        self.store.call(f"load collection {name}", self.client.load_collection, name)

    def count(self, name: str) -> int:
        """Rows in the collection, read with Strong consistency (loads it first)."""
        self.load(name)
        res = self.store.call(f"count rows of {name}", self.client.query, name, filter="",
                              output_fields=["count(*)"], consistency_level="Strong")
        return int(res[0]["count(*)"]) if res else 0

    def ids(self, name: str, batch: int = 4096) -> list[str]:
        """Every primary key, sorted (ids only: ~50 bytes each in memory)."""
        self.load(name)
        it = self.store.call(f"list ids of {name}", self.client.query_iterator, name, batch_size=batch, filter="",
                             output_fields=["id"], consistency_level="Strong")
        ids: list[str] = []
        try:
            while True:
                page = self.store.call(f"list ids of {name}", it.next)
                if not page:
                    break
                ids.extend(str(r["id"]) for r in page)
        finally:
            it.close()
        ids.sort()
        return ids

    def rows(self, name: str, ids: Sequence[str], output_fields: Sequence[str] = ("*",)) -> list[dict[str, Any]]:
        """The rows of ``ids`` (in chunks of :data:`~milvus_embed_ext.limits.IDS_PER_QUERY` ids per query)."""
        rows: list[dict[str, Any]] = []
        for part in chunks(list(ids), IDS_PER_QUERY):
            rows.extend(dict(r) for r in self.store.call(
                f"read rows of {name}", self.client.query, name, filter=in_expr("id", part),
                output_fields=list(output_fields), consistency_level="Strong"))
        return rows

    def drop(self, name: str) -> None:
        if self.has(name):
            self.store.call(f"drop collection {name}", self.client.drop_collection, name)

    def alias_target(self, name: str) -> str | None:
        """The collection behind alias ``name``, or None when ``name`` is not an alias (or aliases are absent)."""
        if not self.store.capabilities.aliases:
            return None
        try:
            with quiet_pymilvus():  # pymilvus logs "alias not found" at ERROR: a normal answer here
                info = self.client.describe_alias(name)
        except Exception:  # noqa: BLE001 - "alias not found" comes back as an exception
            return None
        return str(info.get("collection_name") or "") or None

    def index_on(self, name: str, field_name: str) -> dict[str, Any] | None:
        """The description of the index on ``field_name`` of collection ``name``, or None."""
        for idx in self.store.call(f"list indexes of {name}", self.client.list_indexes, name, field_name=field_name):
            info = self.store.call(f"describe index {idx}", self.client.describe_index, name, idx)
            if info and info.get("field_name") == field_name:
                return dict(info)
        return None


__all__ = ["CollectionAdmin", "chunks", "in_expr", "literal"]
