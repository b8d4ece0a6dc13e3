"""Executes ops against Milvus. Every op is written to be rerun after a crash:

- simple ops check the live state first (an index that is already there is not created twice);
- rows are copied by primary key in sorted batches with a checkpoint after each batch, and written with
  ``upsert``, so a batch repeated after a crash overwrites itself: no duplicated and no lost rows;
- a rebuild's swap inspects which collections exist, so a swap cut in half is finished, not redone.

Swap strategies: where ``name`` is an alias (servers), the alias is moved to the new collection; on a
server without an alias, two renames; on Milvus Lite (no aliases, no rename) the verified copy is
copied back under the original name ("copy-back"), the copy being dropped only after a second check.
Writers should be stopped during a rebuild: rows written to the old collection after their batch was
copied would be missed (the count check then fails and says so).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import Settings
from ..contracts import MilvusBackend
from ..errors import ConsistencyError, FailedPrecondition, InvalidArgument, NotFound
from ..store.admin import CollectionAdmin
from ..store.documents import DocumentStore
from ..store.layout import (
    DENSE,
    CollectionLayout,
    TruncatedField,
    main_index_params,
    main_schema,
    truncated_field_name,
)
from ..store.projection import fit_pca, prefix_project
from .history import MigrationLock, SystemTable
from .ops import (
    LAYOUT_INDEX,
    SCALAR_TYPES,
    AddField,
    AddTruncatedDense,
    AlterProperties,
    CreateCollection,
    CreateIndex,
    DropCollection,
    DropField,
    DropIndex,
    DropTruncatedDense,
    FieldSpec,
    IndexSpec,
    Op,
    RebuildCollection,
    Reencode,
    RunPython,
)

log = logging.getLogger(__name__)

VERIFY_SAMPLE = 32


@dataclass
class RunHooks:
    """Test and progress hooks. ``after_batch(key, copied_rows)`` runs after each checkpointed batch;
    ``progress(op, rows_done, total)`` when a backfill starts (from its checkpoint) and after each batch."""

    after_batch: Callable[[str, int], None] | None = None
    progress: Callable[[str, int, int | None], None] | None = None
    on_op: Callable[[str, str, Op], None] | None = None  # (revision, direction, op) before it runs


def cached_encoder(settings: Any, cache: dict[str, Any]) -> Any:
    """The settings' M3Encoder, loaded once into ``cache`` (shared by the ops of a run and by shard workers)."""
    if "m3" not in cache:
        from ..encoder.factory import encoder_from_settings

        cache["m3"] = encoder_from_settings(settings)
    return cache["m3"]


@dataclass
class OpContext:
    """What an op (and a ``run_python`` function) gets: the connection, the history table, checkpoints."""

    store: MilvusBackend
    settings: Settings
    table: SystemTable
    scope: str
    revision: str
    direction: str
    op_index: int
    lock: MigrationLock | None = None
    hooks: RunHooks = field(default_factory=RunHooks)
    batch_size: int = 512  # rows per backfill batch (and per checkpoint)
    encoder_cache: dict[str, Any] = field(default_factory=dict)
    shard_settings: Any = None  # shards.ShardSettings for sharded backfills (None: the defaults)

    @property
    def client(self) -> Any:
        return self.store.client

    @property
    def caps(self) -> Any:
        return self.store.capabilities

    @property
    def admin(self) -> CollectionAdmin:
        """The store's collection administration (has, describe, count, ids, rows, indexes, drop)."""
        return CollectionAdmin(self.store)

    @property
    def collection(self) -> str:
        return self.scope

    def key(self, suffix: str = "") -> str:
        """Checkpoint key of this op (unique per revision, direction and op position)."""
        return f"{self.revision}:{self.direction}:{self.op_index}{':' + suffix if suffix else ''}"

    def refresh_lock(self) -> None:
        if self.lock is not None:
            self.lock.refresh()

    def encoder(self) -> Any:
        """An M3Encoder from the settings, loaded once per run (for backfills that must re-encode text)."""
        return cached_encoder(self.settings, self.encoder_cache)

    def backfill(self, collection: str, fn: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], *,
                 batch_size: int | None = None, output_fields: Sequence[str] = ("*",), name: str = "backfill") -> int:
        """Resumable ``fn(rows) -> rows to upsert`` over every row of ``collection`` in id order."""
        return copy_rows(self, collection, collection, fn, key=self.key(name),
                         batch_size=batch_size or self.batch_size, output_fields=output_fields)


# ---------------------------------------------------------------------- schema helpers
def _layout_fields(layout: CollectionLayout) -> set[str]:
    return {f.name for f in main_schema(layout).fields}


def extra_fields_of(described: dict[str, Any], layout: CollectionLayout) -> list[FieldSpec]:
    """Fields a migration added next to the layout's own (add_field), read back from the live schema."""
    own = _layout_fields(layout)
    out: list[FieldSpec] = []
    for f in described.get("fields", []):
        if f["name"] in own:
            continue
        dtype = getattr(f.get("type"), "name", str(f.get("type")))
        if dtype not in SCALAR_TYPES:  # a vector field the layout does not know: schema_problems names it
            continue
        params = f.get("params", {})
        out.append(FieldSpec(f["name"], dtype, nullable=bool(f.get("nullable", True)),
                             default=f.get("default_value"), max_length=params.get("max_length")))
    return out


def _add_field_schema(schema: Any, spec: FieldSpec) -> None:
    from pymilvus import DataType

    kwargs: dict[str, Any] = {"nullable": spec.nullable}
    if spec.default is not None:
        kwargs["default_value"] = spec.default
    if spec.max_length:
        kwargs["max_length"] = spec.max_length
    schema.add_field(spec.name, getattr(DataType, spec.dtype), **kwargs)


def create_main(ctx: OpContext, layout: CollectionLayout, physical: str, extra: Iterable[FieldSpec] = (),
                indexes: Iterable[IndexSpec] = ()) -> None:
    """The main collection of a resolved layout under a physical name (the layout keeps its logical name).

    ``indexes`` replace the layout's own index on their fields (a rebuild keeps indexes set by revisions).
    """
    schema = main_schema(layout)
    for spec in extra:
        _add_field_schema(schema, spec)
    overrides = {i.field: i for i in indexes}
    params = ctx.client.prepare_index_params()
    for idx in main_index_params(layout, ctx.client):
        override = overrides.get(idx.field_name)
        if override is None:
            params.add_index(field_name=idx.field_name, index_name=idx.index_name, index_type=idx.index_type,
                             **dict(getattr(idx, "_configs", {}) or {}))
        else:
            params.add_index(field_name=override.field, index_name=override.index_name or override.field,
                             index_type=override.index_type, metric_type=override.metric_type or None,
                             params=dict(override.params))
    ctx.store.call(f"create collection {physical}", ctx.client.create_collection, physical, schema=schema,
                   index_params=params, consistency_level="Strong")
    ctx.admin.load(physical)


def live_indexes(ctx: OpContext, name: str, fields: Iterable[str]) -> list[IndexSpec]:
    """The indexes now on ``fields`` of collection ``name``, as specs a rebuild can recreate."""
    out: list[IndexSpec] = []
    for f in fields:
        info = ctx.admin.index_on(name, f)
        if info is None:
            continue
        skip = {"index_type", "metric_type", "field_name", "index_name", "total_rows", "indexed_rows",
                "pending_index_rows", "state", "dim"}
        params = {k: v for k, v in info.items() if k not in skip}
        out.append(IndexSpec(f, str(info["index_type"]), str(info.get("metric_type") or ""), params,
                             str(info.get("index_name") or f)))
    return out


# ---------------------------------------------------------------------- copying and verifying
def copy_rows(ctx: OpContext, src: str, dst: str, transform: Callable[[list[dict]], list[dict]], *, key: str,
              batch_size: int = 512, output_fields: Sequence[str] = ("*",)) -> int:
    """Copy (transformed) rows in sorted-id batches, checkpointing the last id after every batch."""
    ck = ctx.table.checkpoint(ctx.scope, key) or {}
    last = ck.get("last_id")
    copied = int(ck.get("copied", 0))
    ids = ctx.admin.ids(src)
    start = bisect.bisect_right(ids, last) if last is not None else 0
    ctx.admin.load(dst)
    if ctx.hooks.progress is not None:
        ctx.hooks.progress(key, start, len(ids))
    for i in range(start, len(ids), batch_size):
        batch = ids[i:i + batch_size]
        rows = transform(ctx.admin.rows(src, batch, output_fields))
        if rows:
            ctx.store.call(f"write rows to {dst}", ctx.client.upsert, dst, rows)
        copied += len(rows)
        ctx.table.set_checkpoint(ctx.scope, key, {**ck, "last_id": batch[-1], "copied": copied})
        if ctx.hooks.after_batch is not None:
            ctx.hooks.after_batch(key, copied)
        if ctx.hooks.progress is not None:
            ctx.hooks.progress(key, i + len(batch), len(ids))
        ctx.refresh_lock()
    return copied


def _norm_keys(d: dict) -> dict:
    """Sparse vectors come back with int or str keys depending on the path; compare them as ints."""
    try:
        return {int(k): v for k, v in d.items()}
    except (TypeError, ValueError):
        return dict(d)


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        da, db = _norm_keys(a), _norm_keys(b)
        return da.keys() == db.keys() and all(_values_equal(da[k], db[k]) for k in da)
    if isinstance(a, (list, tuple, np.ndarray)) and isinstance(b, (list, tuple, np.ndarray)):
        try:
            x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        except (TypeError, ValueError):
            return list(a) == list(b)
        return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-5, atol=1e-6))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and bool(np.isclose(float(a), float(b), rtol=1e-5, atol=1e-6))
    return a == b


def verify_copy(ctx: OpContext, src: str, dst: str, derive: dict[str, Callable[[np.ndarray], np.ndarray]],
                sample: int = VERIFY_SAMPLE) -> None:
    """Counts equal, and a sample of rows equal field by field (derived fields recomputed from dense)."""
    n_src, n_dst = ctx.admin.count(src), ctx.admin.count(dst)
    if n_src != n_dst:
        raise ConsistencyError(
            f"copy of {src} into {dst} has {n_dst} rows, the source {n_src}: were rows written during the "
            "migration? Stop writers and rerun `milvus-embed migrate upgrade` (it resumes)")
    if n_src == 0:
        return
    ids = ctx.admin.ids(src)
    picked = sorted(random.Random(len(ids)).sample(ids, min(sample, len(ids))))
    a = {r["id"]: r for r in ctx.admin.rows(src, picked)}
    b = {r["id"]: r for r in ctx.admin.rows(dst, picked)}
    for rid in picked:
        ra, rb = a.get(rid), b.get(rid)
        if ra is None or rb is None:
            raise ConsistencyError(f"row {rid!r} is missing from {dst if rb is None else src} after the copy")
        for name, value in rb.items():
            if name in derive:
                expect = derive[name](np.asarray([ra[DENSE]], dtype=np.float32))[0]
                if not _values_equal(expect, value):
                    raise ConsistencyError(f"row {rid!r}: {dst}.{name} does not match its backfill from {DENSE}")
            elif name in ra and not _values_equal(ra[name], value):
                raise ConsistencyError(f"row {rid!r}: field {name} differs between {src} and {dst}")


def rebuild(ctx: OpContext, name: str, target: CollectionLayout, *,
            derive: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
            add: Sequence[FieldSpec] = (), remove: Sequence[str] = (), batch_size: int | None = None) -> None:
    """Rebuild ``name`` with layout ``target``: copy (resumable), verify, swap, drop the old data."""
    derive = dict(derive or {})
    batch_size = batch_size or ctx.batch_size
    key = ctx.key("rebuild")
    ck = ctx.table.checkpoint(ctx.scope, key) or {}
    if ck.get("phase") == "done":
        return
    tmp = ck.get("tmp") or f"{name}__m{ctx.revision[:12]}_{ctx.op_index}{ctx.direction[0]}"
    if not ck:
        if not ctx.admin.has(name):
            raise NotFound(f"cannot rebuild collection {name}: it does not exist")
        described = ctx.admin.describe(name)
        extra = [f for f in extra_fields_of(described, ctx.admin.layout(name)) if f.name not in set(remove)]
        extra_names = {f.name for f in extra}
        extra += [f for f in add if f.name not in extra_names]
        kept = _layout_fields(target) & {f["name"] for f in described.get("fields", [])}
        ck = {"phase": "copy", "tmp": tmp, "extra": [f.to_dict() for f in extra],
              "indexes": [i.to_dict() for i in live_indexes(ctx, name, sorted(kept))],
              "properties": {str(k): str(v) for k, v in (described.get("properties") or {}).items()}}
        ctx.table.set_checkpoint(ctx.scope, key, ck)
    extra = [FieldSpec.from_dict(d) for d in ck["extra"]]
    indexes = [IndexSpec(**d) for d in ck.get("indexes", [])]
    target_fields = _layout_fields(target) | {f.name for f in extra}
    defaults = {f.name: f.default for f in extra}

    def transform(rows: list[dict]) -> list[dict]:
        out = [{k: v for k, v in r.items() if k in target_fields} for r in rows]
        if rows and derive:
            dense = np.asarray([r[DENSE] for r in rows], dtype=np.float32)
            for fname, fn in derive.items():
                for row, vec in zip(out, fn(dense), strict=True):
                    row[fname] = vec.astype(np.float32).tolist()
        for row in out:
            for fname, default in defaults.items():
                if fname not in row and default is not None:
                    row[fname] = default
        return out

    if ck["phase"] == "copy":
        if not ctx.admin.has(tmp):
            create_main(ctx, target, tmp, extra, indexes)
            if ck.get("properties"):  # a rebuild keeps the collection's properties (set by revisions)
                ctx.store.call(f"copy properties to {tmp}", ctx.client.alter_collection_properties, tmp,
                               ck["properties"])
        copy_rows(ctx, name, tmp, transform, key=key + ":copy", batch_size=batch_size)
        verify_copy(ctx, name, tmp, derive)
        ck = {**ck, "phase": "swap"}
        ctx.table.set_checkpoint(ctx.scope, key, ck)
    _swap(ctx, name, tmp, target, extra, indexes, key, batch_size)
    ctx.table.set_checkpoint(ctx.scope, key, {**ck, "phase": "done"})


def _swap(ctx: OpContext, name: str, tmp: str, target: CollectionLayout, extra: list[FieldSpec],
          indexes: list[IndexSpec], key: str, batch_size: int) -> None:
    physical = ctx.admin.alias_target(name)
    if physical is not None:
        if physical != tmp:
            ctx.store.call(f"point alias {name} at {tmp}", ctx.client.alter_alias, tmp, name)
            ctx.admin.drop(physical)
        return
    if not ctx.caps.lite:  # servers: two renames, each step re-derived from which collections exist
        old = f"{tmp}_old"
        if ctx.admin.has(name) and ctx.admin.has(tmp):
            ctx.store.call(f"rename {name}", ctx.client.rename_collection, name, old)
        if not ctx.admin.has(name) and ctx.admin.has(tmp):
            ctx.store.call(f"rename {tmp} to {name}", ctx.client.rename_collection, tmp, name)
        ctx.admin.drop(old)
        ctx.admin.load(name)  # a renamed collection can come back released (Milvus Lite 3.2.2 server)
        return
    # Milvus Lite: copy back under the original name; the verified copy in tmp is the source of truth.
    ck = ctx.table.checkpoint(ctx.scope, key) or {}
    if ck.get("phase") != "copyback":
        ctx.table.set_checkpoint(ctx.scope, key, {**ck, "phase": "copyback"})
    if ctx.admin.has(name):
        described = ctx.admin.describe(name)
        current = ctx.admin.stored_layout(name, described)
        same = current is not None and current == target and \
            {f.name for f in extra_fields_of(described, target)} == {f.name for f in extra}
        if not same:  # still the old collection (its rows are all verified in tmp)
            ctx.admin.drop(name)
    if not ctx.admin.has(tmp):  # the copy-back finished and tmp was dropped already
        return
    if not ctx.admin.has(name):
        create_main(ctx, target, name, extra, indexes)
    copy_rows(ctx, tmp, name, lambda rows: rows, key=key + ":copyback", batch_size=batch_size)
    verify_copy(ctx, tmp, name, {})
    ctx.admin.drop(tmp)


# ---------------------------------------------------------------------- PCA projections
def _projections(ctx: OpContext, layout: CollectionLayout) -> DocumentStore:
    """The store's projection storage for ``layout`` (its ``<name>__pca`` collection created and loaded)."""
    ds = DocumentStore(ctx.store, layout)
    ds.ensure_side_collections()
    ctx.admin.load(layout.pca_name)
    return ds


def _sample_dense(ctx: OpContext, name: str, n: int) -> np.ndarray:
    ids = ctx.admin.ids(name)
    picked = sorted(random.Random(0).sample(ids, min(n, len(ids))))
    rows = ctx.admin.rows(name, picked, [DENSE])
    return np.asarray([r[DENSE] for r in rows], dtype=np.float32).reshape(len(rows), -1)


# ---------------------------------------------------------------------- the ops
def execute(op: Op, ctx: OpContext) -> None:
    handler = _HANDLERS.get(type(op))
    if handler is None:  # pragma: no cover - every op class is registered below
        raise InvalidArgument(f"no executor for op {op.kind}")
    handler(op, ctx)


def _create_collection(op: CreateCollection, ctx: OpContext) -> None:
    """Through the store, which creates companion/projection collections first and the main one last."""
    DocumentStore.create(ctx.store, op.layout, exist_ok=True)
    ctx.admin.load(op.layout.name)


def _drop_collection(op: DropCollection, ctx: OpContext) -> None:
    layout = ctx.admin.stored_layout(op.name) if ctx.admin.has(op.name) else None
    physical = ctx.admin.alias_target(op.name)
    if physical is not None:
        ctx.store.call(f"drop alias {op.name}", ctx.client.drop_alias, op.name)
        ctx.admin.drop(physical)
    ctx.admin.drop(op.name)
    if layout is not None:
        ctx.admin.drop(layout.companion_name)
        ctx.admin.drop(layout.pca_name)


def _add_field(op: AddField, ctx: OpContext) -> None:
    described = ctx.admin.describe(op.collection)
    if any(f["name"] == op.field.name for f in described.get("fields", [])):
        return  # already there (rerun after a crash)
    if ctx.caps.lite:
        raise FailedPrecondition(
            f"{op.describe()}: Milvus Lite ({ctx.caps.server_version}) has neither add_collection_field nor "
            "nullable fields or defaults, so rows written later could not leave the field empty; "
            "run this revision against a Milvus server (2.5+: rebuild, 2.6+: in place)")
    if ctx.caps.add_field:
        from pymilvus import DataType

        kwargs: dict[str, Any] = {"nullable": op.field.nullable}
        if op.field.default is not None:
            kwargs["default_value"] = op.field.default
        if op.field.max_length:
            kwargs["max_length"] = op.field.max_length
        ctx.store.call(f"add field {op.collection}.{op.field.name}", ctx.client.add_collection_field,
                       op.collection, op.field.name, getattr(DataType, op.field.dtype), **kwargs)
        return
    rebuild(ctx, op.collection, ctx.admin.layout(op.collection), add=[op.field])


def _drop_field(op: DropField, ctx: OpContext) -> None:
    described = ctx.admin.describe(op.collection)
    if not any(f["name"] == op.field.name for f in described.get("fields", [])) and \
            not ctx.table.checkpoint(ctx.scope, ctx.key("rebuild")):
        return
    rebuild(ctx, op.collection, ctx.admin.layout(op.collection), remove=[op.field.name])


def _layout_index(ctx: OpContext, coll: str, field_name: str) -> IndexSpec:
    """The index the collection's layout gives ``field_name`` (what ``index_type='layout'`` stands for)."""
    params = main_index_params(ctx.admin.layout(coll), ctx.client)
    for idx in params:
        if idx.field_name == field_name:
            configs = dict(getattr(idx, "_configs", None) or idx.params or {})
            metric = str(configs.pop("metric_type", "") or "")
            configs.pop("params", None)
            return IndexSpec(field_name, idx.index_type, metric, configs, idx.index_name)
    raise InvalidArgument(f"the layout of {coll} defines no index for field {field_name!r}")


def _index_params(ctx: OpContext, spec: IndexSpec) -> Any:
    params = ctx.client.prepare_index_params()
    params.add_index(field_name=spec.field, index_name=spec.index_name or spec.field, index_type=spec.index_type,
                     metric_type=spec.metric_type or None, params=dict(spec.params))
    return params


def _reload_if_indexed(ctx: OpContext, coll: str) -> None:
    """Load again when every vector field has an index (Milvus refuses to load otherwise)."""
    fields = ctx.admin.describe(coll).get("fields", [])
    vectors = [f["name"] for f in fields if "VECTOR" in getattr(f.get("type"), "name", str(f.get("type")))]
    missing = [v for v in vectors if ctx.admin.index_on(coll, v) is None]
    if missing:
        log.warning("collection %s stays released: vector field(s) %s have no index", coll, ", ".join(missing))
        return
    ctx.admin.load(coll)


def _create_index(op: CreateIndex, ctx: OpContext) -> None:
    spec = _layout_index(ctx, op.collection, op.index.field) if op.index.index_type == LAYOUT_INDEX else op.index
    current = ctx.admin.index_on(op.collection, spec.field)
    if current is not None and current.get("index_type") == spec.index_type and \
            (not spec.metric_type or current.get("metric_type") == spec.metric_type) and \
            all(str(current.get(k)) == str(v) for k, v in spec.params.items()):
        return
    ctx.store.call(f"release {op.collection}", ctx.client.release_collection, op.collection)
    if current is not None:
        ctx.store.call(f"drop index on {op.collection}.{op.index.field}", ctx.client.drop_index, op.collection,
                       current.get("index_name") or op.index.field)
    ctx.store.call(f"create index on {op.collection}.{spec.field}", ctx.client.create_index, op.collection,
                   _index_params(ctx, spec))
    _reload_if_indexed(ctx, op.collection)


def _drop_index(op: DropIndex, ctx: OpContext) -> None:
    current = ctx.admin.index_on(op.collection, op.index.field)
    if current is None:
        return
    ctx.store.call(f"release {op.collection}", ctx.client.release_collection, op.collection)
    ctx.store.call(f"drop index on {op.collection}.{op.index.field}", ctx.client.drop_index, op.collection,
                   current.get("index_name") or op.index.field)
    _reload_if_indexed(ctx, op.collection)


def _alter_properties(op: AlterProperties, ctx: OpContext) -> None:
    if ctx.caps.lite:
        raise FailedPrecondition(
            f"{op.describe()}: Milvus Lite ({ctx.caps.server_version}) cannot store collection properties; "
            "run this revision against a Milvus server")
    setting = {k: v for k, v in op.properties.items() if v is not None}
    removing = [k for k, v in op.properties.items() if v is None]
    if setting:
        ctx.store.call(f"alter properties of {op.collection}", ctx.client.alter_collection_properties,
                       op.collection, setting)
    if removing:
        ctx.store.call(f"drop properties of {op.collection}", ctx.client.drop_collection_properties,
                       op.collection, removing)


def _add_truncated(op: AddTruncatedDense, ctx: OpContext) -> None:
    ck = ctx.table.checkpoint(ctx.scope, ctx.key("rebuild"))
    live = ctx.admin.layout(op.collection)
    fname = truncated_field_name(op.dim)
    if ck is None and any(t.dim == op.dim for t in live.truncated):
        return  # applied before the crash that kept the revision open
    if ck is not None and ck.get("phase") == "done":
        return
    target = live if any(t.dim == op.dim for t in live.truncated) else dataclasses.replace(
        live, truncated=tuple(sorted((*live.truncated, TruncatedField(op.dim, op.projection)), key=lambda t: t.dim)))
    if op.projection == "prefix":
        def derive(dense: np.ndarray) -> np.ndarray:
            return prefix_project(dense, op.dim)
    else:
        projections = _projections(ctx, target)
        try:
            proj = projections.projection(op.dim)
        except FailedPrecondition:  # a save cut short by a crash (incomplete parts): fit it again
            proj = None
        if proj is None:
            sample = _sample_dense(ctx, op.collection, op.pca_sample)
            if len(sample) < op.dim:
                raise FailedPrecondition(
                    f"{op.describe()}: fitting a {op.dim}-d PCA needs at least {op.dim} stored rows, "
                    f"{op.collection} has {len(sample)}; load documents first or use projection='prefix'")
            proj = fit_pca(sample, op.dim)
            projections.set_projection(op.dim, proj, replace=True)
        derive = proj.project
    rebuild(ctx, op.collection, target, derive={fname: derive})


def _drop_truncated(op: DropTruncatedDense, ctx: OpContext) -> None:
    ck = ctx.table.checkpoint(ctx.scope, ctx.key("rebuild"))
    live = ctx.admin.layout(op.collection)
    if ck is None and not any(t.dim == op.dim for t in live.truncated):
        return
    if ck is not None and ck.get("phase") == "done":
        return
    target = dataclasses.replace(live, truncated=tuple(t for t in live.truncated if t.dim != op.dim))
    rebuild(ctx, op.collection, target)
    if op.projection == "pca":
        DocumentStore(ctx.store, target).drop_projection(op.dim)


def _rebuild_collection(op: RebuildCollection, ctx: OpContext) -> None:
    target = op.layout.resolved(ctx.caps)
    live = ctx.admin.layout(target.name)
    ck = ctx.table.checkpoint(ctx.scope, ctx.key("rebuild"))
    if ck is None and live == target:
        return
    if live.dense_dim != target.dense_dim:
        raise FailedPrecondition(
            f"{op.describe()}: dense_dim changes from {live.dense_dim} to {target.dense_dim}, which needs every "
            "text re-encoded; write a run_python migration with ctx.encoder() and ctx.backfill()")
    have = {t.dim for t in live.truncated}
    derive: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for t in target.truncated:
        if t.dim not in have:
            if t.projection != "prefix":
                raise FailedPrecondition(f"{op.describe()}: use add_truncated_dense for a new PCA field dense_{t.dim}")
            derive[t.name] = functools.partial(_prefix, dim=t.dim)
    rebuild(ctx, target.name, target, derive=derive, batch_size=op.batch_size)


def _prefix(dense: np.ndarray, dim: int) -> np.ndarray:
    return prefix_project(dense, dim)


def _run_python(op: RunPython, ctx: OpContext) -> None:
    op.fn(ctx)


def _reencode(op: Reencode, ctx: OpContext) -> None:
    """Sharded: this run works the shards with any ``migrate work`` workers, then verifies them."""
    from .reencode import ReencodeJob
    from .shards import run_in_op

    job = ReencodeJob(ctx, op.collection)
    run_in_op(ctx, job, job.sample_ids, ctx.shard_settings, op.batch_size)


_HANDLERS: dict[type, Callable[[Any, OpContext], None]] = {
    CreateCollection: _create_collection,
    DropCollection: _drop_collection,
    AddField: _add_field,
    DropField: _drop_field,
    CreateIndex: _create_index,
    DropIndex: _drop_index,
    AlterProperties: _alter_properties,
    AddTruncatedDense: _add_truncated,
    DropTruncatedDense: _drop_truncated,
    RebuildCollection: _rebuild_collection,
    RunPython: _run_python,
    Reencode: _reencode,
}
