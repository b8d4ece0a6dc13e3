"""What the service, the search planner and the migrations need from the encoder and the store, as Protocols.

The real classes (:class:`~milvus_embed_ext.encoder.M3Encoder`, :class:`~milvus_embed_ext.store.DocumentStore`,
:class:`~milvus_embed_ext.store.MilvusStore`) satisfy them, which mypy checks where the service and the
migrations hold them; test fakes implement the same few members instead of being met by ``getattr``
branches. Only typing imports here: every layer may depend on this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    import numpy as np

    from .encoder.output import M3Output
    from .store.capabilities import Capabilities
    from .store.documents import CheckedDocuments, Document, StoredVectors
    from .store.layout import CollectionLayout

T = TypeVar("T")


class TextEncoder(Protocol):
    """Texts -> every requested BGE-M3 representation (the batcher's and the planner's need)."""

    def encode(self, texts: Sequence[str], *, dense: bool = True, sparse: bool = True, colbert: bool = True,
               truncate_dims: Sequence[int] = (), max_length: int | None = None) -> M3Output: ...


class ServedEncoder(TextEncoder, Protocol):
    """The encoder the service runs: what it reports about the model besides encoding."""

    model_id: str
    fingerprint: str
    hidden_size: int
    device: str


class MilvusBackend(Protocol):
    """One Milvus connection (what the migrations engine and the admin layer call through)."""

    client: Any
    capabilities: Capabilities
    target: str

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def has_collection(self, name: str) -> bool: ...

    def close(self) -> None: ...


class DocumentsBackend(Protocol):
    """One collection, as the Upsert/Delete/Get handlers use it."""

    @property
    def name(self) -> str: ...

    layout: CollectionLayout

    def validate(self, docs: Sequence[Document | Mapping[str, Any]], *,
                 first_index: int = 0) -> CheckedDocuments: ...

    def encode_kwargs(self) -> dict[str, Any]: ...

    def write_checked(self, checked: CheckedDocuments, encoded: M3Output) -> None: ...

    def delete(self, ids: Iterable[str]) -> int: ...

    def get(self, ids: Iterable[str], output_fields: Sequence[str] | None = None, with_vectors: bool = False,
            with_colbert: bool = True) -> list[dict[str, Any]]: ...


class SearchBackend(Protocol):
    """One collection, as the search planner uses it: stage-1 candidates and the stored vectors to re-score."""

    layout: CollectionLayout

    def search_dense(self, field: str, query: np.ndarray, limit: int, filter: str = "") -> list[tuple[str, float]]: ...

    def search_sparse(self, query: Mapping[int, float], limit: int, filter: str = "") -> list[tuple[str, float]]: ...

    def fetch_vectors(self, ids: Iterable[str], colbert: bool = True) -> dict[str, StoredVectors]: ...

    def get(self, ids: Iterable[str], output_fields: Sequence[str] | None = None, with_vectors: bool = False,
            with_colbert: bool = True) -> list[dict[str, Any]]: ...


__all__ = ["DocumentsBackend", "MilvusBackend", "SearchBackend", "ServedEncoder", "TextEncoder"]
