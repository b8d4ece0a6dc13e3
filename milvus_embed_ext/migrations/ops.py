"""Operations as data. ``upgrade(op)`` only *records* these; the runner executes them (``executor.py``),
``plan`` prints them, and ``reverse()`` gives the downgrade of a script that has no ``downgrade()``.

Each op also updates a :class:`SchemaModel` (``apply_to_model``): replaying every applied revision's
ops gives the schema the scripts describe, which ``check`` compares with the live one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:  # pragma: no cover
    from ..store.layout import CollectionLayout

LAYOUT_INDEX = "layout"  # IndexSpec.index_type meaning "the index the collection layout gives this field"
SCALAR_TYPES = ("BOOL", "INT8", "INT16", "INT32", "INT64", "FLOAT", "DOUBLE", "VARCHAR", "JSON")


class IrreversibleOperation(FailedPrecondition):
    """An op whose reverse cannot be derived; the script must spell out ``downgrade()``."""


@dataclass(frozen=True)
class FieldSpec:
    """A scalar field added next to the layout's own fields. Existing rows get ``default`` (or null)."""

    name: str
    dtype: str
    nullable: bool = True
    default: Any = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in SCALAR_TYPES:
            raise InvalidArgument(
                f"add_field supports scalar types {', '.join(SCALAR_TYPES)}, got {self.dtype!r}; "
                "vector fields come from the layout (add_truncated_dense, rebuild_collection)"
            )
        if self.dtype == "VARCHAR" and not self.max_length:
            raise InvalidArgument(f"VARCHAR field {self.name!r} needs max_length")
        if not self.nullable and self.default is None:
            raise InvalidArgument(
                f"field {self.name!r} is not nullable and has no default: existing rows would have no value"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FieldSpec:
        return cls(**d)


@dataclass(frozen=True)
class IndexSpec:
    field: str
    index_type: str
    metric_type: str = ""
    params: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    index_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class CollectionModel:
    layout: dict[str, Any]
    extra_fields: dict[str, FieldSpec] = field(default_factory=dict)
    indexes: dict[str, IndexSpec | None] = field(default_factory=dict)  # None: explicitly dropped
    properties: dict[str, str] = field(default_factory=dict)


# collection name -> model
SchemaModel = dict[str, CollectionModel]


def model_to_dict(model: SchemaModel) -> dict[str, Any]:
    """A schema model as JSON-able data (what the history records for an applied revision)."""
    return {name: {"layout": dict(c.layout),
                   "extra_fields": {k: f.to_dict() for k, f in c.extra_fields.items()},
                   "indexes": {k: None if i is None else i.to_dict() for k, i in c.indexes.items()},
                   "properties": dict(c.properties)}
            for name, c in model.items()}


def model_from_dict(data: dict[str, Any]) -> SchemaModel:
    return {name: CollectionModel(layout=dict(c["layout"]),
                                  extra_fields={k: FieldSpec.from_dict(f) for k, f in c.get("extra_fields", {}).items()},
                                  indexes={k: None if i is None else IndexSpec(**i) for k, i in c.get("indexes", {}).items()},
                                  properties={str(k): str(v) for k, v in c.get("properties", {}).items()})
            for name, c in data.items()}


def _require(model: SchemaModel, name: str, op: Op) -> CollectionModel:
    if name not in model:
        raise InvalidArgument(f"{op.describe()}: collection {name!r} does not exist at this point of the history")
    return model[name]


def _layout_dict(layout: Any) -> dict[str, Any]:
    return dict(layout.to_dict()) if hasattr(layout, "to_dict") else dict(layout)


def _layout_obj(d: dict[str, Any]) -> CollectionLayout:
    from ..store.layout import CollectionLayout

    return CollectionLayout.from_dict(d)


def _vector_fields(layout: dict[str, Any]) -> set[str]:
    return {"dense", "sparse", *(f"dense_{t['dim']}" for t in layout.get("truncated", []))}


class Op:
    kind: ClassVar[str] = ""
    #: True when the op rewrites every row (plan shows it; the runner checkpoints it)
    backfills: ClassVar[bool] = False

    def reverse(self) -> Op:
        raise IrreversibleOperation(f"{self.describe()} cannot be reversed automatically; write downgrade(op)")

    def describe(self) -> str:  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def apply_to_model(self, model: SchemaModel) -> None:  # pragma: no cover
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.kind}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if callable(value):
                value = getattr(value, "__qualname__", repr(value))
            elif hasattr(value, "to_dict"):
                value = value.to_dict()
            out[f.name] = value
        return out


@dataclass(frozen=True)
class CreateCollection(Op):
    layout: Any  # CollectionLayout
    kind: ClassVar[str] = "create_collection"

    @property
    def name(self) -> str:
        return str(self.layout.name)

    def reverse(self) -> Op:
        return DropCollection(self.name, self.layout)

    def describe(self) -> str:
        d = _layout_dict(self.layout)
        extra = ", ".join(f"{k}={v}" for k, v in d.items() if k != "name")
        return f"create_collection {self.name} ({extra})"

    def apply_to_model(self, model: SchemaModel) -> None:
        if self.name in model:
            raise InvalidArgument(f"{self.describe()}: collection {self.name!r} already exists at this point")
        model[self.name] = CollectionModel(layout=_layout_dict(self.layout))


@dataclass(frozen=True)
class DropCollection(Op):
    name: str
    layout: Any = None  # the layout it had, so reverse() can recreate it (empty: rows are not restored)
    kind: ClassVar[str] = "drop_collection"

    def reverse(self) -> Op:
        if self.layout is None:
            return super().reverse()
        return CreateCollection(self.layout)

    def describe(self) -> str:
        return f"drop_collection {self.name} (rows are deleted; a downgrade recreates it empty)"

    def apply_to_model(self, model: SchemaModel) -> None:
        _require(model, self.name, self)
        del model[self.name]


@dataclass(frozen=True)
class AddField(Op):
    collection: str
    field: FieldSpec
    kind: ClassVar[str] = "add_field"

    def reverse(self) -> Op:
        return DropField(self.collection, self.field)

    def describe(self) -> str:
        f = self.field
        default = f", default={f.default!r}" if f.default is not None else ""
        return (f"add_field {self.collection}.{f.name} {f.dtype}{'' if not f.nullable else ' nullable'}{default} "
                "(add_collection_field where the server has it, else rebuild)")

    def apply_to_model(self, model: SchemaModel) -> None:
        coll = _require(model, self.collection, self)
        if self.field.name in coll.extra_fields:
            raise InvalidArgument(f"{self.describe()}: field {self.field.name!r} already exists")
        coll.extra_fields[self.field.name] = self.field


@dataclass(frozen=True)
class DropField(Op):
    collection: str
    field: FieldSpec
    kind: ClassVar[str] = "drop_field"
    backfills: ClassVar[bool] = True

    def reverse(self) -> Op:
        return AddField(self.collection, self.field)

    def describe(self) -> str:
        return f"drop_field {self.collection}.{self.field.name} (rebuild: Milvus cannot drop fields in place)"

    def apply_to_model(self, model: SchemaModel) -> None:
        coll = _require(model, self.collection, self)
        if coll.extra_fields.pop(self.field.name, None) is None:
            raise InvalidArgument(f"{self.describe()}: no added field {self.field.name!r}")


@dataclass(frozen=True)
class CreateIndex(Op):
    collection: str
    index: IndexSpec
    replaces: IndexSpec | None = None  # the index it replaces on that field, for reverse()
    kind: ClassVar[str] = "create_index"

    def reverse(self) -> Op:
        if self.replaces is not None:
            return CreateIndex(self.collection, self.replaces, replaces=self.index)
        return DropIndex(self.collection, self.index)

    def describe(self) -> str:
        i = self.index
        if i.index_type == LAYOUT_INDEX:
            return f"create_index {self.collection}.{i.field} (the layout's own index; release, replace, load)"
        params = f" {i.params}" if i.params else ""
        return (f"create_index {self.collection}.{i.field} {i.index_type} {i.metric_type}{params} "
                "(release, replace the field's index, load)")

    def apply_to_model(self, model: SchemaModel) -> None:
        _require(model, self.collection, self).indexes[self.index.field] = self.index


@dataclass(frozen=True)
class DropIndex(Op):
    collection: str
    index: IndexSpec  # what it was, so reverse() can recreate it
    kind: ClassVar[str] = "drop_index"

    def reverse(self) -> Op:
        return CreateIndex(self.collection, self.index)

    def describe(self) -> str:
        return f"drop_index {self.collection}.{self.index.field} (release, drop, load when every vector field is indexed)"

    def apply_to_model(self, model: SchemaModel) -> None:
        _require(model, self.collection, self).indexes[self.index.field] = None


@dataclass(frozen=True)
class AlterProperties(Op):
    collection: str
    properties: dict[str, Any]
    previous: dict[str, Any] | None = None  # values before, for reverse(); keys absent before are dropped
    kind: ClassVar[str] = "alter_properties"

    def reverse(self) -> Op:
        if self.previous is None:
            return super().reverse()
        return AlterProperties(self.collection, dict(self.previous), previous=dict(self.properties))

    def describe(self) -> str:
        return f"alter_properties {self.collection} {self.properties}"

    def apply_to_model(self, model: SchemaModel) -> None:
        coll = _require(model, self.collection, self)
        for key, value in self.properties.items():
            if value is None:
                coll.properties.pop(key, None)
            else:
                coll.properties[key] = str(value)


@dataclass(frozen=True)
class AddTruncatedDense(Op):
    """A ``dense_{dim}`` field, backfilled from the stored full dense vector (no re-encoding)."""

    collection: str
    dim: int
    projection: str = "prefix"  # "prefix" | "pca" (PCA is fitted on a sample of stored vectors)
    pca_sample: int = 5000
    kind: ClassVar[str] = "add_truncated_dense"
    backfills: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise InvalidArgument(f"add_truncated_dense: dim must be > 0, got {self.dim}")
        if self.projection not in ("prefix", "pca"):
            raise InvalidArgument(f"add_truncated_dense: projection must be prefix or pca, got {self.projection!r}")

    def reverse(self) -> Op:
        return DropTruncatedDense(self.collection, self.dim, self.projection)

    def describe(self) -> str:
        how = "prefix of the stored dense vector" if self.projection == "prefix" else \
            f"PCA fitted on up to {self.pca_sample} stored dense vectors"
        return f"add_truncated_dense {self.collection}.dense_{self.dim} ({how}; rebuild with backfill)"

    def apply_to_model(self, model: SchemaModel) -> None:
        coll = _require(model, self.collection, self)
        truncated = [dict(t) for t in coll.layout.get("truncated", [])]
        if any(t["dim"] == self.dim for t in truncated):
            raise InvalidArgument(f"{self.describe()}: dense_{self.dim} already exists")
        if self.dim >= int(coll.layout["dense_dim"]):
            raise InvalidArgument(f"{self.describe()}: dim must be below dense_dim {coll.layout['dense_dim']}")
        truncated.append({"dim": self.dim, "projection": self.projection})
        coll.layout = {**coll.layout, "truncated": sorted(truncated, key=lambda t: t["dim"])}


@dataclass(frozen=True)
class DropTruncatedDense(Op):
    collection: str
    dim: int
    projection: str = "prefix"
    kind: ClassVar[str] = "drop_truncated_dense"
    backfills: ClassVar[bool] = True

    def reverse(self) -> Op:
        return AddTruncatedDense(self.collection, self.dim, self.projection)

    def describe(self) -> str:
        return f"drop_truncated_dense {self.collection}.dense_{self.dim} (rebuild)"

    def apply_to_model(self, model: SchemaModel) -> None:
        coll = _require(model, self.collection, self)
        truncated = [dict(t) for t in coll.layout.get("truncated", [])]
        kept = [t for t in truncated if t["dim"] != self.dim]
        if len(kept) == len(truncated):
            raise InvalidArgument(f"{self.describe()}: there is no dense_{self.dim}")
        coll.layout = {**coll.layout, "truncated": kept}


@dataclass(frozen=True)
class RebuildCollection(Op):
    """Copy every row into a collection with ``layout`` (resumable), verify, then swap it in."""

    layout: Any  # target CollectionLayout (same name)
    previous: Any = None  # the layout before, for reverse()
    batch_size: int | None = None  # None: the run's batch size
    kind: ClassVar[str] = "rebuild_collection"
    backfills: ClassVar[bool] = True

    @property
    def name(self) -> str:
        return str(self.layout.name)

    def reverse(self) -> Op:
        if self.previous is None:
            return super().reverse()
        return RebuildCollection(self.previous, self.layout, self.batch_size)

    def describe(self) -> str:
        return (f"rebuild_collection {self.name} -> {_layout_dict(self.layout)} "
                "(copy in resumable batches, verify counts and a sample, swap)")

    def apply_to_model(self, model: SchemaModel) -> None:
        coll = _require(model, self.name, self)
        coll.layout = _layout_dict(self.layout)


@dataclass(frozen=True)
class Reencode(Op):
    """Re-encode every stored text with the configured model and rewrite every representation.

    The backfill of a model upgrade, a new ColBERT codec or ColBERT for a collection stored without it.
    It is sharded (``shards.py``): ``milvus-embed migrate work`` workers on other machines share it.
    """

    collection: str
    batch_size: int | None = None  # None: the run's batch size
    kind: ClassVar[str] = "reencode"
    backfills: ClassVar[bool] = True

    def reverse(self) -> Op:
        return self  # a downgrade re-encodes with the model it runs with

    def describe(self) -> str:
        return (f"reencode {self.collection} (every stored text through the configured model, every "
                "representation rewritten; sharded: `milvus-embed migrate work` workers can join)")

    def apply_to_model(self, model: SchemaModel) -> None:
        _require(model, self.collection, self)


@dataclass(frozen=True)
class RunPython(Op):
    """Custom code: ``fn(ctx)`` with a :class:`~.executor.OpContext` (client, store, encoder, backfill)."""

    fn: Callable[[Any], None]
    reverse_fn: Callable[[Any], None] | None = None
    description: str = ""
    kind: ClassVar[str] = "run_python"
    backfills: ClassVar[bool] = True

    def reverse(self) -> Op:
        if self.reverse_fn is None:
            return super().reverse()
        return RunPython(self.reverse_fn, self.fn, f"reverse of {self.description or self.fn.__name__}")

    def describe(self) -> str:
        name = getattr(self.fn, "__name__", repr(self.fn))
        return f"run_python {name}" + (f": {self.description}" if self.description else "")

    def apply_to_model(self, model: SchemaModel) -> None:
        return None  # opaque to the model


def replay(ops_by_revision: list[list[Op]], model: SchemaModel | None = None) -> SchemaModel:
    """The schema the given ops describe, in order."""
    model = {} if model is None else model
    for ops in ops_by_revision:
        for op in ops:
            op.apply_to_model(model)
    return model


class Operations:
    """The ``op`` handed to ``upgrade(op)``/``downgrade(op)``: each call records one op, nothing runs.

    ``op.collection`` is the collection being migrated (``Settings.collection``) and ``op.layout(**params)``
    a layout built only from what the script states (over :class:`CollectionLayout`'s own defaults), so the
    same scripts serve any collection name and give every environment the same schema. The one input a
    script may take from its environment is ``op.dense_dim``: the width of the collection the earlier
    revisions created, or, before any, of the model being served; the history records the resolved layout
    each applied revision produced. ``op.settings`` stays available to ``run_python`` code.
    """

    def __init__(self, collection: str, settings: Any = None, dense_dim: int | None = None,
                 model: SchemaModel | None = None):
        self.collection = collection
        self.settings = settings
        self._dense_dim = dense_dim
        self.ops: list[Op] = []
        # what the schema looks like before this script (for reverse info, e.g. a rebuild's previous layout)
        self.model: SchemaModel = model if model is not None else {}

    @property
    def dense_dim(self) -> int:
        """The collection's dense width as the earlier revisions left it; before any, the served model's."""
        if self._dense_dim is None:
            if self.collection in self.model:
                self._dense_dim = int(self.model[self.collection].layout["dense_dim"])
            else:
                from .context import dense_dim_for_model

                self._dense_dim = dense_dim_for_model(self.settings)
        return self._dense_dim

    def layout(self, name: str | None = None, **params: Any) -> CollectionLayout:
        """A layout from the script's own ``params`` (codec, index type, truncated fields...) over
        :class:`CollectionLayout`'s defaults; never from today's settings. ``dense_dim`` defaults to
        :attr:`dense_dim`."""
        from ..store.layout import CollectionLayout

        values: dict[str, Any] = {"name": name or self.collection, **params}
        if "dense_dim" not in values:
            values["dense_dim"] = self.dense_dim
        return CollectionLayout(**values)

    def current_layout(self, name: str | None = None) -> CollectionLayout:
        """The layout the earlier revisions give this collection."""
        name = name or self.collection
        if name not in self.model:
            raise InvalidArgument(f"collection {name!r} does not exist at this point of the history")
        return _layout_obj(self.model[name].layout)

    def _add(self, op: Op) -> Op:
        op.apply_to_model(self.model)
        self.ops.append(op)
        return op

    # ---- the ops
    def create_collection(self, layout: CollectionLayout | None = None) -> Op:
        return self._add(CreateCollection(layout if layout is not None else self.layout()))

    def drop_collection(self, name: str | None = None) -> Op:
        name = name or self.collection
        layout = _layout_obj(self.model[name].layout) if name in self.model else None
        return self._add(DropCollection(name, layout))

    def add_field(self, name: str, dtype: str, *, nullable: bool = True, default: Any = None,
                  max_length: int | None = None, collection: str | None = None) -> Op:
        spec = FieldSpec(name, dtype.upper(), nullable, default, max_length)
        return self._add(AddField(collection or self.collection, spec))

    def drop_field(self, name: str, *, collection: str | None = None) -> Op:
        coll = collection or self.collection
        spec = self.model[coll].extra_fields.get(name) if coll in self.model else None
        if spec is None:
            raise InvalidArgument(f"drop_field: {coll}.{name} was not added by a migration (layout fields stay)")
        return self._add(DropField(coll, spec))

    def create_index(self, field: str, index_type: str, metric_type: str = "", params: dict | None = None,
                     *, collection: str | None = None, index_name: str = "") -> Op:
        coll = collection or self.collection
        previous = self.model[coll].indexes.get(field) if coll in self.model else None
        if previous is None and coll in self.model and field in _vector_fields(self.model[coll].layout):
            previous = IndexSpec(field, LAYOUT_INDEX)  # the reverse restores the layout's own index
        spec = IndexSpec(field, index_type, metric_type, dict(params or {}), index_name)
        return self._add(CreateIndex(coll, spec, replaces=previous))

    def drop_index(self, field: str, *, index_type: str = "", metric_type: str = "", params: dict | None = None,
                   collection: str | None = None) -> Op:
        coll = collection or self.collection
        known = self.model[coll].indexes.get(field) if coll in self.model else None
        spec = known or IndexSpec(field, index_type, metric_type, dict(params or {}))
        return self._add(DropIndex(coll, spec))

    def alter_properties(self, properties: dict[str, Any], *, collection: str | None = None) -> Op:
        coll = collection or self.collection
        before = self.model[coll].properties if coll in self.model else {}
        previous = {k: before.get(k) for k in properties}
        return self._add(AlterProperties(coll, dict(properties), previous))

    def add_truncated_dense(self, dim: int, projection: str = "prefix", *, collection: str | None = None,
                            pca_sample: int = 5000) -> Op:
        return self._add(AddTruncatedDense(collection or self.collection, int(dim), projection, pca_sample))

    def drop_truncated_dense(self, dim: int, *, collection: str | None = None) -> Op:
        coll = collection or self.collection
        projection = "prefix"
        if coll in self.model:
            for t in self.model[coll].layout.get("truncated", []):
                if t["dim"] == dim:
                    projection = t.get("projection", "prefix")
        return self._add(DropTruncatedDense(coll, int(dim), projection))

    def rebuild_collection(self, layout: CollectionLayout, *, batch_size: int | None = None) -> Op:
        previous = _layout_obj(self.model[layout.name].layout) if layout.name in self.model else None
        return self._add(RebuildCollection(layout, previous, batch_size))

    def reencode(self, *, collection: str | None = None, batch_size: int | None = None) -> Op:
        """Re-encode every document's stored text (needs ``store_text``); many workers can share it."""
        return self._add(Reencode(collection or self.collection, batch_size))

    def run_python(self, fn: Callable[[Any], None], reverse_fn: Callable[[Any], None] | None = None,
                   description: str = "") -> Op:
        return self._add(RunPython(fn, reverse_fn, description))
