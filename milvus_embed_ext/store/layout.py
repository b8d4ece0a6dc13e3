"""Collection layout: a plain description of every field, index and companion collection.

Migrations create and check collections from a :class:`CollectionLayout`; the store reads the layout
back from the collection description, so code never re-derives the schema from scattered calls.

Main collection ``<name>``::

    id               VARCHAR(max_id_length)  primary key, user supplied
    text             VARCHAR(65535)          only when store_text
    metadata         JSON                    {} when absent
    dense            FLOAT_VECTOR(dense_dim) IP
    dense_<d>        FLOAT_VECTOR(d)         IP, one per truncated field (prefix or PCA projection)
    sparse           SPARSE_FLOAT_VECTOR     IP, inverted index
    colbert_version  VARCHAR(64)             companion: version of the ColBERT rows this row commits to
    colbert_rows     INT32                   companion: number of ColBERT rows of that version
    colbert          ARRAY<STRUCT{vector FLOAT_VECTOR(dense_dim)}>   native: MAX_SIM_IP

Companion ``<name>__colbert`` (portable ColBERT store; Milvus needs a vector field, hence ``placeholder``)::

    key VARCHAR pk "<version>/<chunk>", doc_id, version, chunk INT32, codec, n_tokens INT32,
    data VARCHAR(65535) base64 records (see codecs.py), placeholder FLOAT_VECTOR(2)

Projections ``<name>__pca`` (only with a PCA field): key "<dim>/<chunk>", dim, chunk, n_chunks,
data VARCHAR(65535) (a packed PcaProjection), placeholder FLOAT_VECTOR(2).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import FailedPrecondition, InvalidArgument
from ..limits import DEFAULT_COLBERT_CODEC
from .capabilities import Capabilities
from .codecs import CODECS

LAYOUT_FORMAT = 1
DESCRIPTION_PREFIX = "milvus-embed layout "

ID = "id"
TEXT = "text"
METADATA = "metadata"
DENSE = "dense"
SPARSE = "sparse"
COLBERT_VERSION = "colbert_version"
COLBERT_ROWS = "colbert_rows"
COLBERT = "colbert"  # native array-of-structs field
COLBERT_SUBFIELD = "vector"

COMPANION_SUFFIX = "__colbert"
PCA_SUFFIX = "__pca"
RESERVED_SUFFIXES = (COMPANION_SUFFIX, PCA_SUFFIX)

MAX_VARCHAR = 65535
MAX_JSON_BYTES = 65536
VERSION_MAX_LENGTH = 64
PLACEHOLDER_DIM = 2
NATIVE_MAX_TOKENS = 4096  # Milvus caps array capacity at 4096 elements

COLBERT_MODES = ("auto", "native", "companion", "none")
INDEX_TYPES = ("auto", "FLAT", "IVF_FLAT", "HNSW")
PROJECTIONS = ("prefix", "pca")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_NAME_LENGTH = 255 - max(len(s) for s in RESERVED_SUFFIXES)

# Build and search parameters per index type (dense fields).
INDEX_BUILD_PARAMS: dict[str, dict[str, Any]] = {
    "FLAT": {},
    "IVF_FLAT": {"nlist": 128},
    "HNSW": {"M": 16, "efConstruction": 200},
}


def check_collection_name(name: Any) -> None:
    """InvalidArgument unless ``name`` is a collection name Milvus accepts (checked before any call: some
    malformed names make pymilvus retry until the caller's deadline instead of failing)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidArgument(
            f"collection name {name!r} is invalid: use letters, digits and underscores, "
            "starting with a letter or underscore")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(f"collection name is {len(name)} characters; the limit is {MAX_NAME_LENGTH}")


def search_params(index_type: str, limit: int) -> dict[str, Any]:
    """Search-time parameters for a dense field indexed with ``index_type``."""
    if index_type == "IVF_FLAT":
        return {"nprobe": 32}
    if index_type == "HNSW":
        return {"ef": max(64, limit)}
    return {}


def truncated_field_name(dim: int) -> str:
    return f"{DENSE}_{dim}"


@dataclass(frozen=True)
class TruncatedField:
    dim: int
    projection: str = "prefix"  # "prefix" | "pca"

    @property
    def name(self) -> str:
        return truncated_field_name(self.dim)


@dataclass(frozen=True)
class CollectionLayout:
    """Everything that defines a collection; JSON-able and stored in the collection description."""

    name: str
    dense_dim: int
    truncated: tuple[TruncatedField, ...] = ()
    store_text: bool = True
    colbert: str = "auto"  # "auto" | "native" | "companion" | "none"
    colbert_codec: str = DEFAULT_COLBERT_CODEC
    """int6 by default: 0.38x of fp16's bytes to store and, above all, to read at search time, and its decoded
    vectors are never longer than unit, so the planner's MaxSim bounds stay tight (bench/RESULTS.md: codecs,
    search). Migration scripts state their codec (the built-in 0001: int8); this default reaches code that builds
    layouts itself."""
    index_type: str = "auto"
    max_id_length: int = 512
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """Free-form annotations (e.g. the model fingerprint, the migration revision); stored, not interpreted."""

    def __post_init__(self) -> None:
        # Accept lists/ints from JSON or callers; keep the dataclass frozen and hashable.
        trunc = tuple(t if isinstance(t, TruncatedField) else
                      TruncatedField(int(t)) if isinstance(t, int) else TruncatedField(**t)
                      for t in self.truncated)
        object.__setattr__(self, "truncated", trunc)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise InvalidArgument naming the first problem with this layout."""
        check_collection_name(self.name)
        if self.name.endswith(RESERVED_SUFFIXES):
            raise InvalidArgument(
                f"collection name {self.name!r} ends with a reserved suffix ({', '.join(RESERVED_SUFFIXES)})")
        if not isinstance(self.dense_dim, int) or self.dense_dim < 2:
            raise InvalidArgument(f"dense_dim must be an integer >= 2, got {self.dense_dim!r}")
        dims = [t.dim for t in self.truncated]
        if len(set(dims)) != len(dims):
            raise InvalidArgument(f"truncated dims must be distinct, got {dims}")
        for t in self.truncated:
            if not isinstance(t.dim, int) or not 2 <= t.dim < self.dense_dim:
                raise InvalidArgument(
                    f"truncated dim {t.dim!r} must be between 2 and {self.dense_dim - 1} (dense_dim is {self.dense_dim})")
            if t.projection not in PROJECTIONS:
                raise InvalidArgument(f"truncated projection must be prefix or pca, got {t.projection!r}")
        if self.colbert not in COLBERT_MODES:
            raise InvalidArgument(f"colbert must be one of {', '.join(COLBERT_MODES)}, got {self.colbert!r}")
        if self.colbert_codec not in CODECS:
            raise InvalidArgument(f"colbert_codec must be one of {', '.join(CODECS)}, got {self.colbert_codec!r}")
        if self.index_type not in INDEX_TYPES:
            raise InvalidArgument(f"index_type must be one of {', '.join(INDEX_TYPES)}, got {self.index_type!r}")
        if not isinstance(self.max_id_length, int) or not 1 <= self.max_id_length <= MAX_VARCHAR:
            raise InvalidArgument(f"max_id_length must be between 1 and {MAX_VARCHAR}, got {self.max_id_length!r}")

    def resolved(self, caps: Capabilities) -> CollectionLayout:
        """Replace "auto" choices with what this backend supports; refuse what it cannot do."""
        colbert = self.colbert
        if colbert == "auto":
            colbert = "native" if caps.native_multivector else "companion"
        elif colbert == "native" and not caps.native_multivector:
            raise FailedPrecondition(
                f"native multi-vector ColBERT fields need Milvus 2.6.4 or later; connected to {caps.server_version}. "
                "Use colbert='companion' (portable) or 'auto'")
        index_type = caps.default_index_type if self.index_type == "auto" else self.index_type
        if index_type not in caps.index_types:
            raise FailedPrecondition(
                f"index type {index_type} is not available on {caps.server_version}; "
                f"choose one of {', '.join(caps.index_types)} (setting index_type)")
        return replace(self, colbert=colbert, index_type=index_type)

    # ------------------------------------------------------------------ names
    @property
    def companion_name(self) -> str:
        return self.name + COMPANION_SUFFIX

    @property
    def pca_name(self) -> str:
        return self.name + PCA_SUFFIX

    @property
    def dense_fields(self) -> tuple[str, ...]:
        return (DENSE, *(t.name for t in self.truncated))

    @property
    def has_pca(self) -> bool:
        return any(t.projection == "pca" for t in self.truncated)

    def truncated_field(self, dim: int) -> TruncatedField:
        for t in self.truncated:
            if t.dim == dim:
                return t
        raise InvalidArgument(
            f"collection {self.name} has no truncated field of {dim} dims; it has "
            f"{[t.dim for t in self.truncated] or 'none'}")

    def field_dim(self, field_name: str) -> int:
        if field_name == DENSE:
            return self.dense_dim
        for t in self.truncated:
            if t.name == field_name:
                return t.dim
        raise InvalidArgument(
            f"collection {self.name} has no dense field {field_name!r}; it has {', '.join(self.dense_fields)}")

    @property
    def scalar_fields(self) -> tuple[str, ...]:
        return (ID, TEXT, METADATA) if self.store_text else (ID, METADATA)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": LAYOUT_FORMAT,
            "name": self.name,
            "dense_dim": self.dense_dim,
            "truncated": [{"dim": t.dim, "projection": t.projection} for t in self.truncated],
            "store_text": self.store_text,
            "colbert": self.colbert,
            "colbert_codec": self.colbert_codec,
            "index_type": self.index_type,
            "max_id_length": self.max_id_length,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CollectionLayout:
        fmt = d.get("format", LAYOUT_FORMAT)
        if fmt != LAYOUT_FORMAT:
            raise FailedPrecondition(f"collection layout format {fmt} is not supported by this version (expects {LAYOUT_FORMAT})")
        known = {"name", "dense_dim", "truncated", "store_text", "colbert", "colbert_codec", "index_type",
                 "max_id_length", "extra"}
        unknown = set(d) - known - {"format"}
        if unknown:
            raise InvalidArgument(f"unknown collection layout keys: {', '.join(sorted(unknown))}")
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["truncated"] = tuple(TruncatedField(int(t["dim"]), t.get("projection", "prefix"))
                                    for t in d.get("truncated", ()))
        return cls(**kwargs)

    def to_description(self) -> str:
        return DESCRIPTION_PREFIX + json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_description(cls, description: str) -> CollectionLayout | None:
        """The layout stored in a collection description, or None if it was not created by milvus-embed."""
        if not description or not description.startswith(DESCRIPTION_PREFIX):
            return None
        try:
            data = json.loads(description[len(DESCRIPTION_PREFIX):])
        except json.JSONDecodeError as exc:
            raise FailedPrecondition(f"collection layout in the description is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_settings(cls, settings: Any, name: str | None = None, *, dense_dim: int,
                      pca_dims: tuple[int, ...] = (), **overrides: Any) -> CollectionLayout:
        """The default layout for a model of ``dense_dim`` from Settings (truncate_dims, codec, index type)."""
        truncated = tuple(TruncatedField(d, "pca" if d in pca_dims else "prefix") for d in settings.truncate_dims)
        kwargs: dict[str, Any] = {
            "name": name or settings.collection,
            "dense_dim": dense_dim,
            "truncated": truncated,
            "colbert_codec": settings.colbert_codec,
            "index_type": settings.index_type,
        }
        kwargs.update(overrides)
        return cls(**kwargs)


# ---------------------------------------------------------------------- pymilvus schema builders
def _require_resolved(layout: CollectionLayout) -> None:
    if layout.colbert == "auto" or layout.index_type == "auto":
        raise ValueError("resolve the layout against the backend's capabilities first (layout.resolved(caps))")


def main_schema(layout: CollectionLayout) -> Any:
    """pymilvus CollectionSchema of the main collection (layout must be resolved)."""
    from pymilvus import CollectionSchema, DataType, StructFieldSchema

    _require_resolved(layout)
    schema = CollectionSchema([], auto_id=False, enable_dynamic_field=False, description=layout.to_description(),
                              check_fields=False)
    schema.add_field(ID, DataType.VARCHAR, is_primary=True, max_length=layout.max_id_length)
    if layout.store_text:
        schema.add_field(TEXT, DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field(METADATA, DataType.JSON)
    schema.add_field(DENSE, DataType.FLOAT_VECTOR, dim=layout.dense_dim)
    for t in layout.truncated:
        schema.add_field(t.name, DataType.FLOAT_VECTOR, dim=t.dim)
    schema.add_field(SPARSE, DataType.SPARSE_FLOAT_VECTOR)
    if layout.colbert == "companion":
        schema.add_field(COLBERT_VERSION, DataType.VARCHAR, max_length=VERSION_MAX_LENGTH)
        schema.add_field(COLBERT_ROWS, DataType.INT32)
    elif layout.colbert == "native":
        struct = StructFieldSchema()
        struct.add_field(COLBERT_SUBFIELD, DataType.FLOAT_VECTOR, dim=layout.dense_dim)
        schema.add_field(COLBERT, DataType.ARRAY, element_type=DataType.STRUCT, struct_schema=struct,
                         max_capacity=NATIVE_MAX_TOKENS)
    return schema


def main_index_params(layout: CollectionLayout, client: Any) -> Any:
    _require_resolved(layout)
    params = client.prepare_index_params()
    for name in layout.dense_fields:
        params.add_index(field_name=name, index_name=name, index_type=layout.index_type, metric_type="IP",
                         params=dict(INDEX_BUILD_PARAMS[layout.index_type]))
    params.add_index(field_name=SPARSE, index_name=SPARSE, index_type="SPARSE_INVERTED_INDEX", metric_type="IP",
                     params={"inverted_index_algo": "DAAT_MAXSCORE"})
    if layout.colbert == "native":
        params.add_index(field_name=f"{COLBERT}[{COLBERT_SUBFIELD}]", index_name=COLBERT, index_type="HNSW",
                         metric_type="MAX_SIM_IP", params=dict(INDEX_BUILD_PARAMS["HNSW"]))
    return params


def companion_schema(layout: CollectionLayout) -> Any:
    from pymilvus import CollectionSchema, DataType

    schema = CollectionSchema([], auto_id=False, enable_dynamic_field=False, check_fields=False,
                              description=f"milvus-embed ColBERT token vectors of {layout.name}")
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=VERSION_MAX_LENGTH + 16)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=layout.max_id_length)
    schema.add_field("version", DataType.VARCHAR, max_length=VERSION_MAX_LENGTH)
    schema.add_field("chunk", DataType.INT32)
    schema.add_field("codec", DataType.VARCHAR, max_length=16)
    schema.add_field("n_tokens", DataType.INT32)
    schema.add_field("data", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=PLACEHOLDER_DIM)
    return schema


def pca_schema(layout: CollectionLayout) -> Any:
    from pymilvus import CollectionSchema, DataType

    schema = CollectionSchema([], auto_id=False, enable_dynamic_field=False, check_fields=False,
                              description=f"milvus-embed PCA projections of {layout.name}")
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    schema.add_field("dim", DataType.INT32)
    schema.add_field("chunk", DataType.INT32)
    schema.add_field("n_chunks", DataType.INT32)
    schema.add_field("data", DataType.VARCHAR, max_length=MAX_VARCHAR)
    schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=PLACEHOLDER_DIM)
    return schema


def placeholder_index_params(client: Any) -> Any:
    params = client.prepare_index_params()
    params.add_index(field_name="placeholder", index_name="placeholder", index_type="FLAT", metric_type="L2")
    return params


def schema_problems(layout: CollectionLayout, described: dict[str, Any]) -> list[str]:
    """Differences between a resolved layout and ``client.describe_collection`` output (empty = matches).

    Used by migrations' ``check`` and by :meth:`DocumentStore.open` to refuse drifted collections.
    """
    _require_resolved(layout)
    fields = {f["name"]: f for f in described.get("fields", [])}
    problems: list[str] = []

    def expect(name: str, dtype: str, **params: Any) -> None:
        f = fields.get(name)
        if f is None:
            problems.append(f"field {name} is missing")
            return
        got = getattr(f.get("type"), "name", str(f.get("type")))
        if got != dtype:
            problems.append(f"field {name} is {got}, expected {dtype}")
        for k, v in params.items():
            have = f.get("params", {}).get(k)
            if have is not None and int(have) != v:
                problems.append(f"field {name} has {k}={have}, expected {v}")

    expect(ID, "VARCHAR", max_length=layout.max_id_length)
    if layout.store_text:
        expect(TEXT, "VARCHAR")
    expect(METADATA, "JSON")
    expect(DENSE, "FLOAT_VECTOR", dim=layout.dense_dim)
    for t in layout.truncated:
        expect(t.name, "FLOAT_VECTOR", dim=t.dim)
    expect(SPARSE, "SPARSE_FLOAT_VECTOR")
    if layout.colbert == "companion":
        expect(COLBERT_VERSION, "VARCHAR")
        expect(COLBERT_ROWS, "INT32")
    elif layout.colbert == "native":
        structs = {s.get("name") for s in described.get("struct_array_fields", described.get("struct_fields", []))}
        if COLBERT not in structs and COLBERT not in fields:
            problems.append(f"native ColBERT field {COLBERT} is missing")
    expected = {ID, METADATA, DENSE, SPARSE, *(t.name for t in layout.truncated)}
    if layout.store_text:
        expected.add(TEXT)
    if layout.colbert == "companion":
        expected |= {COLBERT_VERSION, COLBERT_ROWS}
    if layout.colbert == "native":
        expected.add(COLBERT)
    for name in sorted(set(fields) - expected):
        problems.append(f"unexpected field {name}")
    return problems
