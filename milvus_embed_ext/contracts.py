"""What the service, the search planner and the migrations need from the encoder, the reranker and the store,
as Protocols.

The real classes (:class:`~milvus_embed_ext.encoder.M3Encoder`, :class:`~milvus_embed_ext.encoder.Reranker`,
:class:`~milvus_embed_ext.store.DocumentStore`, :class:`~milvus_embed_ext.store.MilvusStore`) satisfy them, which
mypy checks where the service and the migrations hold them; test fakes implement the same few members
instead of being met by ``getattr`` branches. Only typing imports here: every layer may depend on this module.
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


class TokenEncoding(Protocol):
    """One text as a ``tokenizers`` Encoding: what the HTTP face reads for TEI's ``/tokenize`` and length rules."""

    @property
    def ids(self) -> list[int]: ...

    @property
    def tokens(self) -> list[str]: ...

    @property
    def offsets(self) -> list[tuple[int, int]]: ...

    @property
    def special_tokens_mask(self) -> list[int]: ...


class PlainTokenizer(Protocol):
    """The model's tokenizer without truncation or padding (a ``tokenizers.Tokenizer``, which ships no types)."""

    def encode_batch(self, input: list[str], add_special_tokens: bool = True) -> list[TokenEncoding]: ...


class ServedEncoder(TextEncoder, Protocol):
    """The encoder the service runs: what it reports about the model besides encoding, and its tokenizer."""

    model_id: str
    fingerprint: str
    hidden_size: int
    device: str
    dtype: str
    max_length: int

    def plain_tokenizer(self) -> PlainTokenizer: ...


class PairScorer(Protocol):
    """(query, passage) pairs -> raw cross-encoder logits and each pair's token count (the rerank batcher's need)."""

    def compute_score_detailed(self, pairs: Sequence[tuple[str, str]], normalize: bool = False, *,
                               max_length: int | None = None) -> tuple[list[float], list[int]]: ...


class ServedReranker(PairScorer, Protocol):
    """The cross-encoder the service runs: what the Rerank RPC reports about the model besides scoring."""

    model_id: str
    fingerprint: str


class MilvusBackend(Protocol):
    """One Milvus connection (what the migrations engine and the admin layer call through)."""

    client: Any
    capabilities: Capabilities
    target: str

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    def has_collection(self, name: str) -> bool: ...

    def close(self) -> None: ...


class WatchedBackend(MilvusBackend, Protocol):
    """The Milvus connection the server holds and watches: call latency reporting, the health probe, and the
    recovery steps of an outage (reconnect, restart a dead embedded Lite server, load the collections again)."""

    observer: Callable[[str, float, BaseException | None], None] | None
    needs_reload: bool
    lite_restarts: int

    def lite_server_alive(self) -> bool | None:
        """Whether the embedded Lite server process still runs (None: not embedded, or unknown)."""

    def ping(self, timeout: float) -> None:
        """One cheap round trip; raises Unavailable (or DeadlineExceeded) saying why it failed."""

    def reconnect(self, timeout: float) -> None:
        """A fresh connection (restarting a dead embedded Lite server), then the collections loaded again."""

    def reload_collections(self, timeout: float) -> list[str]:
        """Load every collection again (a restarted Milvus has them released); returns the names loaded."""


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


__all__ = ["DocumentsBackend", "MilvusBackend", "PairScorer", "PlainTokenizer", "SearchBackend", "ServedEncoder",
           "ServedReranker", "TextEncoder", "TokenEncoding", "WatchedBackend"]
