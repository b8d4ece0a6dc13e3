"""Documents in one collection: validated writes of every representation, reads for the planner.

Write protocol (portable "companion" ColBERT store), which keeps every reader consistent:

1. ColBERT rows are written to ``<name>__colbert`` under a fresh version per document. Versions are
   ``<20-digit ns clock><8 hex>.<6-digit index>``: unique, and ordered by write time.
2. The main row (dense, truncated, sparse, text, metadata) is upserted with ``colbert_version`` and
   ``colbert_rows``. This is the commit point: readers only use ColBERT rows whose version the main
   row names, so a half-written document is never seen.
3. ColBERT rows of the same ids with an older version are deleted (this also sweeps rows left by an
   earlier failed attempt).

A failure in step 1 leaves the old document intact and is reported as the mapped Milvus error. A
failure in step 2 or 3 raises :class:`ConsistencyError`: the same call, retried, converges, because
writes are idempotent by id and every successful write sweeps all older versions. Deletes remove the
main row first (the commit point) and then all older ColBERT rows.

Within one process writes to a collection are serialised; concurrent writers of the *same ids* from
several processes are not coordinated (last main-row write wins; its ColBERT rows can have been
swept by the other writer, which readers then report as missing ColBERT vectors).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contracts import MilvusBackend
from ..errors import (
    AlreadyExists,
    ConsistencyError,
    FailedPrecondition,
    InvalidArgument,
    MilvusEmbedError,
    NotFound,
    VectorsUnreadable,
)
from ..limits import IDS_PER_QUERY, MILVUS_MAX_TOPK
from . import codecs
from .admin import chunks as _chunks
from .admin import in_expr, literal
from .layout import (
    COLBERT,
    COLBERT_ROWS,
    COLBERT_SUBFIELD,
    COLBERT_VERSION,
    DENSE,
    ID,
    MAX_JSON_BYTES,
    MAX_VARCHAR,
    METADATA,
    NATIVE_MAX_TOKENS,
    PLACEHOLDER_DIM,
    SPARSE,
    TEXT,
    CollectionLayout,
    check_collection_name,
    companion_schema,
    main_index_params,
    main_schema,
    pca_schema,
    placeholder_index_params,
    schema_problems,
    search_params,
)
from .projection import PcaProjection, fit_pca, prefix_project

if TYPE_CHECKING:  # the encoder is imported lazily: the store works without torch
    from ..encoder import M3Encoder, M3Output

log = logging.getLogger(__name__)

MAX_TOP_K = MILVUS_MAX_TOPK
IDS_PER_EXPR = IDS_PER_QUERY
MAX_REQUEST_BYTES = 16 * 1024 * 1024  # rough cap on one insert/upsert request
MAX_ROWS_PER_REQUEST = 1000
MAX_COLBERT_NORM = 1.0 + 1e-3
"""Stored ColBERT token vectors are unit rows (checked at write, with float rounding room); with the codecs'
own bound (:func:`codecs.norm_bound`) this bounds any MaxSim score, which the planner uses to skip reads."""
_PLACEHOLDER = [0.0] * PLACEHOLDER_DIM

_write_locks: dict[tuple[str, str], threading.Lock] = {}
_write_locks_guard = threading.Lock()
_clock_guard = threading.Lock()
_last_ns = 0


@dataclass
class Document:
    id: str
    text: str
    metadata: dict[str, Any] | None = None


@dataclass
class StoredVectors:
    """What the planner re-scores with: stored vectors of one document, decoded to float32."""

    id: str
    dense: np.ndarray
    sparse: dict[int, float]
    colbert: np.ndarray | None  # [tokens, dim]; None when the collection has none, rows are missing or not read
    truncated: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class ColbertRef:
    """Which companion rows a main row commits to: read with the row, so ColBERT can be read by key later."""

    version: str
    rows: int


@dataclass
class Candidate:
    """One stage-1 hit plus the vectors Milvus returned with it (:meth:`DocumentStore.candidates`).

    ``dense`` and ``sparse`` come from the same row read as the hit, so exact dense and lexical scores
    need no second read; ``colbert`` says where that row's ColBERT vectors are (companion layouts).
    """

    id: str
    score: float
    dense: np.ndarray
    sparse: dict[int, float]
    colbert: ColbertRef | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    """The stored scalar fields asked for (text, metadata), read with the hit."""


class CheckedDocuments(list[Document]):
    """Documents that passed :meth:`DocumentStore.validate` for one layout.

    :meth:`DocumentStore.write_checked` takes only these, so a batch that was validated before encoding
    is not validated again when it is written.
    """

    def __init__(self, docs: Iterable[Document], layout: CollectionLayout) -> None:
        super().__init__(docs)
        self.layout = layout


def _now_ns() -> int:
    """Strictly increasing nanosecond clock within this process (versions must not collide)."""
    global _last_ns
    with _clock_guard:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        return _last_ns


def new_version_prefix() -> str:
    return f"{_now_ns():020d}{secrets.token_hex(4)}"


def _row_bytes(row: Mapping[str, Any]) -> int:
    total = 64
    for v in row.values():
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, np.ndarray)):
            total += 4 * len(v)
        elif isinstance(v, dict):
            total += 12 * len(v) + (len(json.dumps(v)) if v and not isinstance(next(iter(v)), int) else 0)
    return total


def _request_batches(rows: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        b = _row_bytes(row)
        if batch and (size + b > MAX_REQUEST_BYTES or len(batch) >= MAX_ROWS_PER_REQUEST):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += b
    if batch:
        yield batch


@contextlib.contextmanager
def _inconsistent_on_failure(message: Callable[[MilvusEmbedError], str]) -> Iterator[None]:
    """A Milvus failure after a write's commit point (or a delete's first part) is a ConsistencyError:
    data already changed, and ``message`` says what state it is in and that the same call, retried, converges."""
    try:
        yield
    except MilvusEmbedError as exc:
        raise ConsistencyError(message(exc)) from None


def verify_created(store: MilvusBackend, physical: str, layout: CollectionLayout) -> None:
    """Read a just-created collection back and refuse it when a field is missing or different.

    Some backends accept a schema and drop what they do not support (Milvus Lite 3.2.2 drops
    Array-of-Struct fields without an error); a collection missing a field would fail much later,
    on the first write. The collection is dropped again so a corrected retry can create it.
    """
    described = store.call(f"describe collection {physical}", store.client.describe_collection, physical)
    problems = [p for p in schema_problems(layout, described) if not p.startswith("unexpected field")]
    if problems:
        try:
            store.call(f"drop collection {physical}", store.client.drop_collection, physical)
        except MilvusEmbedError:
            log.warning("could not drop collection %s after its schema check failed", physical)
        raise FailedPrecondition(
            f"Milvus {store.capabilities.server_version} created collection {physical} without what was asked: "
            f"{'; '.join(problems)}. The server silently dropped an unsupported field; use a layout this "
            "server supports (e.g. colbert='companion') or a newer Milvus")


def _as_document(doc: Any) -> Document:
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, Mapping):
        unknown = set(doc) - {"id", "text", "metadata"}
        if unknown:
            raise InvalidArgument(f"document has unknown keys {sorted(unknown)}; use id, text, metadata")
        return Document(id=doc.get("id"), text=doc.get("text"), metadata=doc.get("metadata"))  # type: ignore[arg-type]
    raise InvalidArgument(f"documents must be Document objects or mappings, got {type(doc).__name__}")


class DocumentStore:
    """One collection described by a :class:`CollectionLayout`."""

    def __init__(self, store: MilvusBackend, layout: CollectionLayout) -> None:
        self.store = store
        self.layout = layout.resolved(store.capabilities) if "auto" in (layout.colbert, layout.index_type) else layout
        self._pca: dict[int, PcaProjection] = {}
        key = (store.target, self.layout.name)
        with _write_locks_guard:
            self._lock = _write_locks.setdefault(key, threading.Lock())

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def client(self) -> Any:
        return self.store.client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self.store.call(f"{what} ({self.name})", fn, *args, **kwargs)

    # ================================================================== lifecycle
    @classmethod
    def create(cls, store: MilvusBackend, layout: CollectionLayout, *, exist_ok: bool = False) -> DocumentStore:
        """Create the main collection (and its companion / projection collections) from a layout.

        The main collection is created last, so its existence means the whole layout exists.
        With ``exist_ok`` an existing collection is accepted when its stored layout matches.
        """
        resolved = layout.resolved(store.capabilities)
        if store.has_collection(resolved.name):
            if not exist_ok:
                raise AlreadyExists(f"collection {resolved.name} already exists; drop it or use a new name")
            existing = cls.open(store, resolved.name)
            if existing.layout != resolved:  # layouts compare without their free-form `extra`
                raise FailedPrecondition(
                    f"collection {resolved.name} exists with a different layout: "
                    f"{existing.layout.to_dict()} (wanted {resolved.to_dict()}); migrate it")
            return existing
        self = cls(store, resolved)
        client = store.client
        self.ensure_side_collections()
        try:
            self._call("create the collection", client.create_collection, resolved.name,
                       schema=main_schema(resolved), index_params=main_index_params(resolved, client),
                       consistency_level="Strong")
        except MilvusEmbedError:
            # pymilvus creates, then indexes: a failed index can leave a trimmed collection behind
            if store.has_collection(resolved.name):
                verify_created(store, resolved.name, resolved)
            raise
        verify_created(store, resolved.name, resolved)
        log.info("created collection %s (%s)", resolved.name, resolved.to_dict())
        return self

    def ensure_side_collections(self) -> None:
        """Create the ColBERT companion and the projection collections this layout needs, where missing."""
        layout, client = self.layout, self.client
        if layout.colbert == "companion" and not self.store.has_collection(layout.companion_name):
            self._call("create the ColBERT companion collection", client.create_collection,
                       layout.companion_name, schema=companion_schema(layout),
                       index_params=placeholder_index_params(client), consistency_level="Strong")
        if layout.has_pca and not self.store.has_collection(layout.pca_name):
            self._call("create the projection collection", client.create_collection, layout.pca_name,
                       schema=pca_schema(layout), index_params=placeholder_index_params(client),
                       consistency_level="Strong")

    @classmethod
    def open(cls, store: MilvusBackend, name: str) -> DocumentStore:
        """Bind to an existing collection, reading its layout back from the collection description."""
        check_collection_name(name)
        if not store.has_collection(name):
            raise NotFound(f"collection {name} does not exist; create it with `milvus-embed migrate upgrade` "
                           "or DocumentStore.create")
        described = store.call(f"describe collection {name}", store.client.describe_collection, name)
        layout = CollectionLayout.from_description(described.get("description", ""))
        if layout is None:
            raise FailedPrecondition(f"collection {name} was not created by milvus-embed (no layout in its "
                                     "description); use another collection name")
        self = cls(store, layout)
        # fields next to the layout's own were added by migrations (add_field; `migrate check` watches them)
        problems = [p for p in schema_problems(layout, described) if not p.startswith("unexpected field")]
        if problems:
            raise FailedPrecondition(f"collection {name} does not match its layout: {'; '.join(problems)}")
        if layout.colbert == "companion" and not store.has_collection(layout.companion_name):
            raise FailedPrecondition(f"collection {name} lacks its ColBERT companion collection "
                                     f"{layout.companion_name}; recreate the collection")
        return self

    def exists(self) -> bool:
        return self.store.has_collection(self.name)

    def check(self) -> list[str]:
        """Differences between the live collection and this layout (empty when they match)."""
        if not self.exists():
            return [f"collection {self.name} does not exist"]
        described = self._call("describe collection", self.client.describe_collection, self.name)
        problems = schema_problems(self.layout, described)
        stored = CollectionLayout.from_description(described.get("description", ""))
        if stored is None:
            problems.append("the collection description holds no milvus-embed layout")
        elif stored != self.layout:
            problems.append(f"stored layout {stored.to_dict()} differs from {self.layout.to_dict()}")
        if self.layout.colbert == "companion" and not self.store.has_collection(self.layout.companion_name):
            problems.append(f"companion collection {self.layout.companion_name} is missing")
        if self.layout.has_pca and not self.store.has_collection(self.layout.pca_name):
            problems.append(f"projection collection {self.layout.pca_name} is missing")
        return problems

    def drop(self) -> None:
        """Drop the collection and its companion and projection collections."""
        for name in (self.name, self.layout.companion_name, self.layout.pca_name):
            if self.store.has_collection(name):
                self._call(f"drop {name}", self.client.drop_collection, name)
        self._pca.clear()

    def count(self) -> int:
        res = self._call("count documents", self.client.query, self.name, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    # ================================================================== validation
    def validate(self, docs: Sequence[Document | Mapping[str, Any]], *, first_index: int = 0) -> CheckedDocuments:
        """Check a batch before anything is written; raise InvalidArgument naming the first bad document.

        Documents are numbered from ``first_index`` in messages (for batches that are part of a stream).
        """
        out = CheckedDocuments((_as_document(d) for d in docs), self.layout)
        seen: set[str] = set()
        lite = self.store.capabilities.lite
        for i, d in enumerate(out, start=first_index):
            where = f"document {i}"
            self._check_id(d.id, where, lite=lite)
            where = f"document {d.id!r}"
            if d.id in seen:
                raise InvalidArgument(f"{where} appears more than once in the batch; send each id once")
            seen.add(d.id)
            if not isinstance(d.text, str):
                raise InvalidArgument(f"{where}: text must be a string, got {type(d.text).__name__}")
            if not d.text.strip():
                raise InvalidArgument(f"{where}: text is empty; every document needs some text to embed")
            if self.layout.store_text and len(d.text.encode("utf-8")) > MAX_VARCHAR:
                raise InvalidArgument(
                    f"{where}: text is {len(d.text.encode('utf-8'))} bytes; the collection stores at most "
                    f"{MAX_VARCHAR} bytes of text: split the document")
            if d.metadata is not None:
                if not isinstance(d.metadata, Mapping):
                    raise InvalidArgument(f"{where}: metadata must be a JSON object (dict), got "
                                          f"{type(d.metadata).__name__}")
                try:
                    encoded = json.dumps(d.metadata, allow_nan=False, ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    raise InvalidArgument(f"{where}: metadata is not JSON-serialisable ({exc})") from None
                if len(encoded.encode("utf-8")) > MAX_JSON_BYTES:
                    raise InvalidArgument(f"{where}: metadata is larger than {MAX_JSON_BYTES} bytes as JSON")
        return out

    def _check_id(self, doc_id: Any, where: str, *, lite: bool) -> None:
        if not isinstance(doc_id, str):
            raise InvalidArgument(f"{where}: id must be a string, got {type(doc_id).__name__}")
        if not doc_id:
            raise InvalidArgument(f"{where}: id is empty; every document needs a non-empty id")
        n = len(doc_id.encode("utf-8"))
        if n > self.layout.max_id_length:
            raise InvalidArgument(f"{where}: id is {n} bytes; the collection allows at most "
                                  f"{self.layout.max_id_length} bytes (max_id_length)")
        if any(unicodedata.category(c) == "Cc" for c in doc_id):
            raise InvalidArgument(f"{where}: id {doc_id!r} contains control characters")
        if lite and "'" in doc_id:
            # Milvus Lite 2.5 builds an SQL statement from upserted keys and fails on a quote.
            raise InvalidArgument(f"{where}: id {doc_id!r} contains a single quote, which Milvus Lite cannot "
                                  "store; use another id or a Milvus server")

    def _ids(self, ids: Iterable[str]) -> list[str]:
        if isinstance(ids, str):
            ids = [ids]
        out: list[str] = []
        seen: set[str] = set()
        for i in ids:
            self._check_id(i, "id", lite=False)
            if i not in seen:
                seen.add(i)
                out.append(i)
        return out

    def _check_encoded(self, docs: Sequence[Document], enc: M3Output) -> None:
        n = len(docs)
        if enc.dense is None or enc.sparse is None:
            raise InvalidArgument("the encoder output must include dense and sparse vectors")
        dense = np.asarray(enc.dense)
        if dense.ndim != 2 or dense.shape[0] != n or len(enc.sparse) != n:
            raise InvalidArgument(f"encoder output holds {dense.shape[0] if dense.ndim else 0} rows for {n} documents")
        if dense.shape[1] != self.layout.dense_dim:
            raise FailedPrecondition(
                f"collection {self.name} stores {self.layout.dense_dim}-d dense vectors but the model produces "
                f"{dense.shape[1]}-d ones; use a collection created for this model (or migrate)")
        if not np.all(np.isfinite(dense)):
            raise InvalidArgument("the encoder produced NaN or infinite dense values")
        if self.layout.colbert != "none":
            if enc.colbert is None or len(enc.colbert) != n:
                raise InvalidArgument(f"collection {self.name} stores ColBERT vectors; encode with colbert=True")
            for d, m in zip(docs, enc.colbert, strict=True):
                m = np.asarray(m)
                if m.ndim != 2 or m.shape[1] != self.layout.dense_dim:
                    raise FailedPrecondition(
                        f"document {d.id!r}: ColBERT vectors have shape {m.shape}; the collection expects "
                        f"[tokens, {self.layout.dense_dim}]")
                if m.size and float(np.max(np.einsum("ij,ij->i", m, m, dtype=np.float64))) > MAX_COLBERT_NORM ** 2:
                    raise InvalidArgument(
                        f"document {d.id!r}: ColBERT vectors must be L2-normalised rows (norm <= 1), as BGE-M3 "
                        "produces them; exact re-scoring bounds MaxSim by the vectors' norm")
                if self.layout.colbert == "native" and m.shape[0] > NATIVE_MAX_TOKENS:
                    raise InvalidArgument(f"document {d.id!r} has {m.shape[0]} ColBERT vectors; native fields hold "
                                          f"at most {NATIVE_MAX_TOKENS}: lower max_length or split the document")
        for t in self.layout.truncated:
            if t.projection == "pca":
                self._projection(t.dim)  # FailedPrecondition when not fitted yet

    # ================================================================== writes
    def encode_kwargs(self) -> dict[str, Any]:
        """Arguments of ``M3Encoder.encode`` that produce every representation this collection stores."""
        return {
            "dense": True,
            "sparse": True,
            "colbert": self.layout.colbert != "none",
            "truncate_dims": tuple(t.dim for t in self.layout.truncated if t.projection == "prefix"),
        }

    def upsert(self, docs: Sequence[Document | Mapping[str, Any]], encoder: M3Encoder) -> None:
        """Validate, encode (one pass for every representation) and write."""
        checked = self.validate(docs)
        if not checked:
            return
        self.write_checked(checked, encoder.encode([d.text for d in checked], **self.encode_kwargs()))

    def write(self, docs: Sequence[Document | Mapping[str, Any]], encoded: M3Output) -> None:
        """Write every representation of already-encoded documents (row i of ``encoded`` is docs[i])."""
        self.write_checked(self.validate(docs), encoded)

    def write_checked(self, checked: CheckedDocuments, encoded: M3Output) -> None:
        """:meth:`write` for a batch this collection's :meth:`validate` returned (not validated again)."""
        if not isinstance(checked, CheckedDocuments) or checked.layout != self.layout:
            raise TypeError(f"write_checked takes the result of validate() of collection {self.name}; "
                            "use write() for other documents")
        if not checked:
            return
        self._check_encoded(checked, encoded)
        with self._lock:
            if self.layout.colbert == "companion":
                self._write_companion(checked, encoded)
            else:
                rows = self._main_rows(checked, encoded)
                if self.layout.colbert == "native":
                    for row, m in zip(rows, encoded.colbert or [], strict=True):
                        row[COLBERT] = [{COLBERT_SUBFIELD: v} for v in np.asarray(m, dtype=np.float32).tolist()]
                for batch in _request_batches(rows):
                    self._call("upsert documents", self.client.upsert, self.name, batch)

    def _main_rows(self, docs: Sequence[Document], enc: M3Output) -> list[dict[str, Any]]:
        dense = np.asarray(enc.dense, dtype=np.float32)
        truncated: dict[int, np.ndarray] = {}
        for t in self.layout.truncated:
            given = (enc.truncated or {}).get(t.dim) if t.projection == "prefix" else None
            truncated[t.dim] = (np.asarray(given, dtype=np.float32) if given is not None
                                else self.project(dense, t.dim))
        rows = []
        for i, d in enumerate(docs):
            row: dict[str, Any] = {ID: d.id, METADATA: dict(d.metadata or {}), DENSE: dense[i].tolist()}
            if self.layout.store_text:
                row[TEXT] = d.text
            for t in self.layout.truncated:
                row[t.name] = truncated[t.dim][i].tolist()
            row[SPARSE] = {int(k): float(v) for k, v in (enc.need_sparse()[i] or {}).items() if v > 0}
            rows.append(row)
        return rows

    def _write_companion(self, docs: Sequence[Document], enc: M3Output) -> None:
        rows = self._main_rows(docs, enc)
        prefix = new_version_prefix()
        codec = self.layout.colbert_codec
        companion: list[dict[str, Any]] = []
        for i, (row, m) in enumerate(zip(rows, enc.colbert or [], strict=True)):
            version = f"{prefix}.{i:06d}"
            chunks = codecs.to_chunks(np.asarray(m, dtype=np.float32), codec)
            row[COLBERT_VERSION] = version
            row[COLBERT_ROWS] = len(chunks)
            for c in chunks:
                companion.append({"key": f"{version}/{c.index}", "doc_id": row[ID], "version": version,
                                  "chunk": c.index, "codec": codec, "n_tokens": c.n_tokens, "data": c.payload,
                                  "placeholder": _PLACEHOLDER})
        ids = [r[ID] for r in rows]
        # 1. ColBERT rows under fresh versions: invisible until a main row points at them.
        try:
            for batch in _request_batches(companion):
                self._call("write ColBERT rows", self.client.upsert, self.layout.companion_name, batch)
        except MilvusEmbedError:
            self._discard_versions(ids, prefix)
            raise
        # 2. Commit point.
        with _inconsistent_on_failure(lambda exc: (
                f"writing {len(rows)} documents to {self.name} failed after their ColBERT vectors were stored "
                f"({exc}); some documents may keep their previous version. Retry the same upsert: it is "
                "idempotent by id and removes the leftovers")):
            for batch in _request_batches(rows):
                self._call("write documents", self.client.upsert, self.name, batch)
        # 3. Sweep every older version of these ids (including leftovers of failed attempts).
        with _inconsistent_on_failure(lambda exc: (
                f"{len(rows)} documents were written to {self.name}, but their previous ColBERT rows could not be "
                f"removed ({exc}). Searches are correct; retry the same upsert to reclaim the space")):
            self._delete_colbert(ids, before=prefix)

    def _discard_versions(self, ids: Sequence[str], prefix: str) -> None:
        """Best effort: remove ColBERT rows of a failed step 1 (main rows never pointed at them)."""
        try:
            for part in _chunks(ids, IDS_PER_EXPR):
                self._call("discard ColBERT rows", self.client.delete, self.layout.companion_name,
                           filter=f"{in_expr('doc_id', part)} && version >= {literal(prefix)}")
        except MilvusEmbedError:
            log.warning("could not discard ColBERT rows of a failed write to %s; the next write sweeps them",
                        self.name)

    def _delete_colbert(self, ids: Sequence[str], *, before: str) -> None:
        for part in _chunks(ids, IDS_PER_EXPR):
            self._call("remove old ColBERT rows", self.client.delete, self.layout.companion_name,
                       filter=f"{in_expr('doc_id', part)} && version < {literal(before)}")

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents and every trace of them; returns how many existed."""
        wanted = self._ids(ids)
        if not wanted:
            return 0
        with self._lock:
            before = new_version_prefix()  # rows of writes that start after this delete are kept
            existing = 0
            for n, part in enumerate(_chunks(wanted, IDS_PER_EXPR)):
                expr = in_expr(ID, part)
                try:
                    existing += len(self._call("look up documents", self.client.query, self.name, filter=expr,
                                               output_fields=[ID]))
                    self._call("delete documents", self.client.delete, self.name, filter=expr)
                except MilvusEmbedError as exc:
                    if n == 0:
                        raise
                    raise ConsistencyError(f"deleting {len(wanted)} documents from {self.name} failed part-way "
                                           f"({exc}); retry the same delete") from None
            if self.layout.colbert == "companion":
                with _inconsistent_on_failure(lambda exc: (
                        f"documents were deleted from {self.name} but their ColBERT rows could not be removed "
                        f"({exc}); retry the same delete")):
                    self._delete_colbert(wanted, before=before)
            return existing

    # ================================================================== reads
    def get(self, ids: Iterable[str], output_fields: Sequence[str] | None = None,
            with_vectors: bool = False, with_colbert: bool = True) -> list[dict[str, Any]]:
        """Stored documents in the order of ``ids`` (missing ids are skipped).

        Fields: id, text (when stored), metadata; with_vectors adds dense, dense_<d>, sparse and
        colbert (float32 numpy arrays / dict); ``with_colbert=False`` leaves colbert out (not read).
        """
        wanted = self._ids(ids)
        allowed = self.layout.scalar_fields
        fields = list(output_fields) if output_fields else list(allowed)
        bad = [f for f in fields if f not in allowed]
        if bad:
            raise InvalidArgument(f"unknown output fields {bad}; choose from {', '.join(allowed)}")
        if ID not in fields:
            fields.insert(0, ID)
        found: dict[str, dict[str, Any]] = {}
        for part in _chunks(wanted, IDS_PER_EXPR):
            for row in self._call("get documents", self.client.query, self.name, filter=in_expr(ID, part),
                                  output_fields=fields):
                found[row[ID]] = {f: row.get(f) for f in fields}
        if with_vectors and found:
            vectors = self.fetch_vectors(list(found), colbert=with_colbert)
            for doc_id, doc in found.items():
                v = vectors.get(doc_id)
                if v is None:
                    continue
                doc[DENSE] = v.dense
                for dim, arr in v.truncated.items():
                    doc[f"{DENSE}_{dim}"] = arr
                doc[SPARSE] = v.sparse
                if with_colbert and self.layout.colbert != "none":
                    doc["colbert"] = v.colbert
        return [found[i] for i in wanted if i in found]

    def iter_documents(self, batch_size: int = 256, output_fields: Sequence[str] | None = None,
                       filter: str = "") -> Iterator[list[dict[str, Any]]]:
        """All documents in batches (for backfills and exports), scalar fields only."""
        fields = list(output_fields or self.layout.scalar_fields)
        it = self._call("scan documents", self.client.query_iterator, self.name, batch_size=batch_size,
                        filter=filter, output_fields=fields)
        try:
            while True:
                batch = self._call("scan documents", it.next)
                if not batch:
                    return
                yield [dict(r) for r in batch]
        finally:
            it.close()

    def fetch_vectors(self, ids: Iterable[str], colbert: bool = True) -> dict[str, StoredVectors]:
        """Stored vectors of the given documents; only ColBERT rows the main row commits to are used.

        ``colbert=False`` skips the ColBERT vectors (their ``colbert`` is None): reading and decoding
        them is most of the cost, so callers that do not score with them leave them out.
        """
        wanted = self._ids(ids)
        mode = self.layout.colbert if colbert else "none"
        fields = [ID, DENSE, SPARSE, *(t.name for t in self.layout.truncated)]
        if mode == "companion":
            fields += [COLBERT_VERSION, COLBERT_ROWS]
        elif mode == "native":
            fields.append(COLBERT)
        rows: list[dict[str, Any]] = []
        for part in _chunks(wanted, IDS_PER_EXPR):
            rows += self._query_vectors("fetch vectors", filter=in_expr(ID, part), output_fields=fields)
        colbert_of: dict[str, np.ndarray | None] = {}
        if mode == "companion":
            colbert_of = self._fetch_colbert(rows)
            for _ in range(2):
                # A writer may have committed a newer version and swept ours between the two reads:
                # read those documents again, main row and ColBERT rows together.
                stale = [r[ID] for r in rows
                         if colbert_of.get(r[ID]) is None and int(r.get(COLBERT_ROWS) or 0) > 0]
                if not stale:
                    break
                fresh = self._query_vectors("fetch vectors", filter=in_expr(ID, stale), output_fields=fields)
                rows = [r for r in rows if r[ID] not in set(stale)] + fresh
                colbert_of.update(self._fetch_colbert(fresh))
        out: dict[str, StoredVectors] = {}
        for row in rows:
            doc_id = row[ID]
            cb: np.ndarray | None = None
            if mode == "companion":
                cb = colbert_of.get(doc_id)
                if cb is None:
                    log.warning("document %r in %s: the ColBERT rows its main row names are missing (a concurrent "
                                "writer of the same id in another process?); re-upsert it", doc_id, self.name)
            elif mode == "native":
                items = row.get(COLBERT) or []
                cb = np.asarray([it[COLBERT_SUBFIELD] for it in items], dtype=np.float32).reshape(
                    -1, self.layout.dense_dim)
            out[doc_id] = StoredVectors(
                id=doc_id,
                dense=np.asarray(row[DENSE], dtype=np.float32),
                sparse={int(k): float(v) for k, v in (row.get(SPARSE) or {}).items()},
                colbert=cb,
                truncated={t.dim: np.asarray(row[t.name], dtype=np.float32) for t in self.layout.truncated},
            )
        return out

    def _query_vectors(self, what: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Query with vector output fields. Milvus Lite 2.5 fails such queries on a collection that was
        never written to ("Growing segment loss raw data"); an empty collection has no vectors."""
        try:
            return list(self._call(what, self.client.query, self.name, **kwargs))
        except VectorsUnreadable:
            if self.count() == 0:
                return []
            raise

    def _fetch_colbert(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray | None]:
        keys: list[str] = []
        expected: dict[str, tuple[str, int]] = {}
        for row in rows:
            version, n = row.get(COLBERT_VERSION) or "", int(row.get(COLBERT_ROWS) or 0)
            expected[row[ID]] = (version, n)
            keys += [f"{version}/{c}" for c in range(n)]
        found: dict[str, dict[int, tuple[str, str]]] = {}  # version -> chunk -> (codec, data); repeats collapse
        for part in _chunks(keys, IDS_PER_EXPR):
            for r in self._call("fetch ColBERT rows", self.client.query, self.layout.companion_name,
                                filter=in_expr("key", part), output_fields=["version", "chunk", "codec", "data"]):
                found.setdefault(r["version"], {})[int(r["chunk"])] = (r["codec"], r["data"])
        out: dict[str, np.ndarray | None] = {}
        dim = self.layout.dense_dim
        complete: dict[str, list[tuple[str, str]]] = {}
        for doc_id, (version, n) in expected.items():
            parts = found.get(version, {})
            if sorted(parts) != list(range(n)):
                log.debug("document %r in %s: %d of %d ColBERT rows of its version are missing",
                          doc_id, self.name, n - len(parts), n)
                out[doc_id] = None
                continue
            complete[doc_id] = [parts[c] for c in range(n)]
        out.update(codecs.decode_documents(complete, dim))
        return out

    # ================================================================== search (planner's stage 1)
    def _check_search(self, limit: int, filter: str) -> None:
        if not isinstance(limit, int) or not 1 <= limit <= MAX_TOP_K:
            raise InvalidArgument(f"limit must be between 1 and {MAX_TOP_K}, got {limit!r}")
        if not isinstance(filter, str):
            raise InvalidArgument("filter must be a string (a Milvus boolean expression)")

    def _dense_query(self, field: str, query: np.ndarray) -> np.ndarray:
        dim = self.layout.field_dim(field)
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] == self.layout.dense_dim and dim != self.layout.dense_dim:
            q = self.project(q, dim)
        if q.shape[0] != dim:
            raise InvalidArgument(f"query for {field} has {q.shape[0]} dims, expected {dim}")
        return q

    def _search(self, field: str, query: Any, limit: int, filter: str, output_fields: list[str]) -> Any:
        """One Milvus search on a dense (``dense``/``dense_<d>``) or the sparse field; [] for an empty sparse query."""
        self._check_search(limit, filter)
        if field == SPARSE:
            data: Any = {int(k): float(v) for k, v in query.items() if v > 0}
            if not data:
                return []
            params: dict[str, Any] = {"metric_type": "IP", "params": {}}
        else:
            data = self._dense_query(field, query).tolist()
            params = {"metric_type": "IP", "params": search_params(self.layout.index_type, limit)}
        res = self._call(f"search {field}", self.client.search, self.name, data=[data], anns_field=field,
                         limit=limit, filter=filter, search_params=params, output_fields=output_fields)
        return res[0] if res else []

    def search_dense(self, field: str, query: np.ndarray, limit: int, filter: str = "") -> list[tuple[str, float]]:
        """ANN search on ``dense`` or ``dense_<d>``; a full-size query is projected for truncated fields."""
        return [(hit["id"], float(hit["distance"])) for hit in _raw_rows(self._search(field, query, limit, filter, [ID]))]

    def search_sparse(self, query: Mapping[int, float], limit: int, filter: str = "") -> list[tuple[str, float]]:
        """Inner-product search on the sparse lexical weights (empty query -> no hits)."""
        return [(hit["id"], float(hit["distance"])) for hit in _raw_rows(self._search(SPARSE, query, limit, filter, [ID]))]

    def candidates(self, field: str, query: Any, limit: int, filter: str = "",
                   output_fields: Sequence[str] = ()) -> list[Candidate]:
        """A stage-1 search that also returns each hit's dense and sparse vectors and its ColBERT reference.

        ``field`` is ``dense``, ``dense_<d>`` (a full-size query is projected) or ``sparse`` (a token -> weight
        mapping). Reading the vectors with the hit costs the search little and spares the planner a second
        read of every candidate's main row; ``output_fields`` (stored scalar fields) come along the same way.
        """
        extra = [f for f in dict.fromkeys(output_fields) if f != ID]
        bad = [f for f in extra if f not in self.layout.scalar_fields]
        if bad:
            raise InvalidArgument(f"unknown output fields {bad}; choose from {', '.join(self.layout.scalar_fields)}")
        fields = [ID, DENSE, SPARSE, *extra]
        if self.layout.colbert == "companion":
            fields += [COLBERT_VERSION, COLBERT_ROWS]
        companion = self.layout.colbert == "companion"
        hits = self._search(field, query, limit, filter, fields)
        columns = _vector_columns(hits, self.layout.dense_dim)
        out = []
        for i, hit in enumerate(_raw_rows(hits) if columns is not None else list(hits)):
            row = hit.get("entity") or hit
            if columns is not None:
                dense, sparse = columns[0][i], columns[1][i]
                row = {**row, **{name: values[i] for name, values in columns[2].items()}}
            else:
                dense = np.asarray(row[DENSE], dtype=np.float32)
                sparse = {int(k): float(v) for k, v in (row.get(SPARSE) or {}).items()}
            ref = ColbertRef(str(row.get(COLBERT_VERSION) or ""), int(row.get(COLBERT_ROWS) or 0)) if companion else None
            out.append(Candidate(id=str(hit["id"]), score=float(hit["distance"]), dense=dense, sparse=sparse,
                                 colbert=ref, fields={f: row.get(f) for f in extra}))
        return out

    def fetch_colbert(self, refs: Mapping[str, ColbertRef | None]
                      ) -> tuple[dict[str, np.ndarray], dict[str, StoredVectors]]:
        """ColBERT vectors of candidates whose main rows were read with :meth:`candidates`.

        Returns ``(matrices, reread)``. Companion rows are read by key, at the version each main row named,
        in one pass: ``matrices`` holds those. A document whose rows are gone (a newer write committed and
        swept them) is read again whole with :meth:`fetch_vectors` and lands in ``reread``, so its dense,
        sparse and ColBERT vectors stay one version; a document deleted meanwhile is in neither. Native
        layouts keep ColBERT in the main row, so every document is re-read there.
        """
        ids = self._ids(refs)
        if self.layout.colbert != "companion":
            return {}, self.fetch_vectors(ids, colbert=True)
        rows = [{ID: i, COLBERT_VERSION: ref.version, COLBERT_ROWS: ref.rows}
                for i in ids if (ref := refs[i]) is not None]
        matrices = {doc_id: m for doc_id, m in self._fetch_colbert(rows).items() if m is not None}
        stale = [i for i in ids if i not in matrices]
        return matrices, (self.fetch_vectors(stale, colbert=True) if stale else {})

    def search_colbert(self, query: np.ndarray, limit: int, filter: str = "") -> list[tuple[str, float]]:
        """Native MaxSim search over the ColBERT field (servers with multi-vector fields only).

        Milvus' MAX_SIM_IP sums over query vectors; the score is divided by their number to match
        ``colbert_score`` (the mean).
        """
        self._check_search(limit, filter)
        if self.layout.colbert != "native":
            raise FailedPrecondition(f"collection {self.name} has no native ColBERT field; re-score the "
                                     "candidates with fetch_vectors instead")
        from pymilvus.client.embedding_list import EmbeddingList

        q = np.asarray(query, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.layout.dense_dim or q.shape[0] == 0:
            raise InvalidArgument(f"ColBERT query must be a non-empty [tokens, {self.layout.dense_dim}] matrix, "
                                  f"got shape {q.shape}")
        emb = EmbeddingList(q, dim=self.layout.dense_dim)
        res = self._call("search colbert", self.client.search, self.name, data=[emb],
                         anns_field=f"{COLBERT}[{COLBERT_SUBFIELD}]", limit=limit, filter=filter,
                         search_params={"metric_type": "MAX_SIM_IP"}, output_fields=[ID])
        n = max(1, q.shape[0])
        return [(hit["id"], float(hit["distance"]) / n) for hit in res[0]] if res else []

    # ================================================================== projections
    def project(self, dense: np.ndarray, dim: int) -> np.ndarray:
        """Map full dense vectors ([hidden] or [n, hidden]) to the truncated field of ``dim``."""
        t = self.layout.truncated_field(dim)
        if t.projection == "prefix":
            return prefix_project(dense, dim)
        return self._projection(dim).project(dense)

    def projection(self, dim: int) -> PcaProjection | None:
        """The fitted PCA of a ``pca`` field, or None when not fitted yet."""
        if dim in self._pca:
            return self._pca[dim]
        if self.layout.truncated_field(dim).projection != "pca":
            return None
        rows = self._call("read the PCA projection", self.client.query, self.layout.pca_name,
                          filter=f"dim == {int(dim)}", output_fields=["chunk", "n_chunks", "data"])
        if not rows:
            return None
        rows.sort(key=lambda r: r["chunk"])
        n = int(rows[0]["n_chunks"])
        if len(rows) != n or [r["chunk"] for r in rows] != list(range(n)):
            raise FailedPrecondition(f"the PCA projection of {self.name}.dense_{dim} is incomplete "
                                     f"({len(rows)} of {n} parts); fit it again with replace=True")
        pca = PcaProjection.from_bytes(base64.b64decode("".join(r["data"] for r in rows)))
        if pca.dim != dim or pca.hidden != self.layout.dense_dim:
            raise FailedPrecondition(f"the stored PCA projection of {self.name}.dense_{dim} has shape "
                                     f"[{pca.dim}, {pca.hidden}]")
        self._pca[dim] = pca
        return pca

    def _projection(self, dim: int) -> PcaProjection:
        pca = self.projection(dim)
        if pca is None:
            raise FailedPrecondition(
                f"field dense_{dim} of {self.name} uses a PCA projection that has not been fitted: call "
                f"DocumentStore.fit_projection({dim}, sample) with dense vectors of a corpus sample first")
        return pca

    def set_projection(self, dim: int, pca: PcaProjection, *, replace: bool = False) -> None:
        """Store the PCA rotation of a ``pca`` field. Replacing one invalidates stored dense_<dim> vectors,
        so it needs ``replace=True`` and a backfill of that field afterwards."""
        if self.layout.truncated_field(dim).projection != "pca":
            raise InvalidArgument(f"field dense_{dim} of {self.name} uses the prefix projection, not PCA")
        if pca.dim != dim or pca.hidden != self.layout.dense_dim:
            raise InvalidArgument(f"projection has shape [{pca.dim}, {pca.hidden}], expected [{dim}, "
                                  f"{self.layout.dense_dim}]")
        with self._lock:
            self._pca.pop(dim, None)
            existing = self.projection(dim) if not replace else None
            if existing is not None:
                raise FailedPrecondition(
                    f"field dense_{dim} of {self.name} already has a PCA projection; documents were projected "
                    "with it. Pass replace=True and re-project every document")
            text = pca.to_base64()
            size = (MAX_VARCHAR // 4) * 4
            parts = [text[i:i + size] for i in range(0, len(text), size)]
            self._call("clear the PCA projection", self.client.delete, self.layout.pca_name,
                       filter=f"dim == {int(dim)}")
            rows = [{"key": f"{dim}/{i}", "dim": dim, "chunk": i, "n_chunks": len(parts), "data": p,
                     "placeholder": _PLACEHOLDER} for i, p in enumerate(parts)]
            for batch in _request_batches(rows):
                self._call("store the PCA projection", self.client.upsert, self.layout.pca_name, batch)
            self._pca[dim] = pca

    def drop_projection(self, dim: int) -> None:
        """Delete the stored PCA rotation of ``dim`` (after its field was dropped)."""
        with self._lock:
            self._pca.pop(dim, None)
            if self.store.has_collection(self.layout.pca_name):
                self._call("delete the PCA projection", self.client.delete, self.layout.pca_name,
                           filter=f"dim == {int(dim)}")

    def fit_projection(self, dim: int, dense_sample: np.ndarray, *, replace: bool = False) -> PcaProjection:
        """Fit a PCA of ``dim`` components on corpus dense vectors and store it with the collection."""
        pca = fit_pca(dense_sample, dim)
        self.set_projection(dim, pca, replace=replace)
        return pca

    def sample_dense(self, n: int) -> np.ndarray:
        """Up to ``n`` stored dense vectors (to fit a projection on an existing collection)."""
        if n <= 0:
            raise InvalidArgument("sample size must be positive")
        rows = self._query_vectors("sample dense vectors", filter="", output_fields=[DENSE], limit=min(n, MAX_TOP_K))
        if not rows:
            return np.zeros((0, self.layout.dense_dim), dtype=np.float32)
        return np.asarray([r[DENSE] for r in rows], dtype=np.float32)


def _raw_rows(hits: Any) -> list[Any]:
    """The hits' rows without pymilvus turning every vector into Python lists (it does on plain iteration)."""
    get_raw = getattr(hits, "get_raw_item", None)
    if get_raw is None or getattr(hits, "has_materialized", True):
        return list(hits)
    return [get_raw(i) for i in range(len(hits))]


def _vector_columns(hits: Any, dim: int
                    ) -> tuple[np.ndarray, list[dict[int, float]], dict[str, list[Any]]] | None:
    """Dense and sparse vectors (and JSON fields) of pymilvus search hits read column-wise from the reply, or None
    when the reply is not in the shape this reads (another pymilvus, nullable fields): then rows are
    materialised one by one.

    pymilvus materialises each vector as a list of Python floats per hit (about 10 ms for 100 hits at 1024-d);
    the reply holds them as one float32 column, which numpy takes whole.
    """
    from pymilvus import DataType

    lazy, start = getattr(hits, "lazy_field_data", None), getattr(hits, "start", None)
    if lazy is None or not isinstance(start, int) or getattr(hits, "has_materialized", True):
        return None
    n = len(hits)
    by_name = {fd.field_name: fd for fd in lazy}
    dense_fd, sparse_fd = by_name.pop(DENSE, None), by_name.pop(SPARSE, None)
    if dense_fd is None or sparse_fd is None or any(len(fd.valid_data) for fd in lazy):
        return None
    others: dict[str, list[Any]] = {}
    for name, fd in by_name.items():  # lazy scalars: JSON (metadata)
        if fd.type != DataType.JSON or len(fd.scalars.json_data.data) < start + n:
            return None
        others[name] = [json.loads(b) for b in fd.scalars.json_data.data[start:start + n]]
    if dense_fd.vectors.dim != dim:
        return None
    dense = np.array(dense_fd.vectors.float_vector.data, dtype=np.float32)
    if dense.size < (start + n) * dim:
        return None
    dense = dense.reshape(-1, dim)[start:start + n]
    rows = sparse_fd.vectors.sparse_float_vector.contents
    if len(rows) < start + n:
        return None
    sparse = []
    for raw in rows[start:start + n]:  # little-endian (uint32 index, float32 value) pairs, as pymilvus packs them
        pairs = np.frombuffer(raw, dtype=_SPARSE_PAIR)
        sparse.append(dict(zip(pairs["index"].tolist(), pairs["value"].tolist(), strict=True)))
    return dense, sparse, others


_SPARSE_PAIR = np.dtype([("index", "<u4"), ("value", "<f4")])


def colbert_bytes_per_token(codec: str, dim: int) -> float:
    """Stored payload characters per token in the companion collection (for docs and benchmarks)."""
    return codecs.stored_bytes_per_token(codec, dim)


__all__ = ["Candidate", "ColbertRef", "Document", "DocumentStore", "StoredVectors", "literal", "in_expr",
           "new_version_prefix"]
