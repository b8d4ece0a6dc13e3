"""The library API: plain functions over one explicit :class:`MigrationConfig` (Alembic style).

The CLI and the service call these; nothing here reads the environment or prints. Every function
accepts an already open ``store`` (a :class:`~milvus_embed_ext.store.MilvusStore`) so a caller that
holds a connection (the service, tests) does not open a second one (a Lite file allows one process).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import FailedPrecondition, InvalidArgument
from ..store.admin import CollectionAdmin
from .executor import OpContext, RunHooks, execute, extra_fields_of
from .graph import RevisionGraph
from .history import LockInfo, SystemTable, whoami
from .ops import CollectionModel, Op, Operations, SchemaModel, model_from_dict, model_to_dict
from .script import Script, builtin_migrations_dir, load_scripts, resolve_migrations_dir, write_revision
from .shards import MAX_SHARDS, ShardSettings

UP, DOWN = "up", "down"


@dataclass(frozen=True)
class MigrationConfig:
    settings: Settings
    directory: Path
    scope: str  # the migrated collection (Settings.collection): history and lock are kept per scope
    lock_ttl_s: float = 120.0
    lock_wait_s: float = 5.0
    batch_size: int = 512  # rows per backfill batch and checkpoint
    shards: int = 256  # shards of a sharded backfill (fixed when its plan is opened)
    lease_ttl_s: float = 120.0  # a shard claim expires this long after its last renewal (one per batch)


def config_from_settings(settings: Settings, *, migrations_dir: str | Path | None = None,
                         lock_ttl_s: float = 120.0, lock_wait_s: float = 5.0, batch_size: int = 512,
                         shards: int = 256, lease_ttl_s: float = 120.0) -> MigrationConfig:
    if batch_size <= 0:
        raise InvalidArgument(f"batch size must be > 0, got {batch_size}")
    if not 1 <= shards <= MAX_SHARDS:
        raise InvalidArgument(f"--shards must be between 1 and {MAX_SHARDS}, got {shards}")
    if lease_ttl_s <= 0:
        raise InvalidArgument(f"--lease-ttl must be > 0 seconds, got {lease_ttl_s}")
    directory = resolve_migrations_dir(migrations_dir if migrations_dir is not None else settings.migrations_dir)
    return MigrationConfig(settings, directory, settings.collection, lock_ttl_s, lock_wait_s, batch_size,
                           shards, lease_ttl_s)


def _cfg(config: MigrationConfig | Settings) -> MigrationConfig:
    return config if isinstance(config, MigrationConfig) else config_from_settings(config)


@dataclass(frozen=True)
class Environment:
    scripts: dict[str, Script]
    graph: RevisionGraph


def load_environment(config: MigrationConfig | Settings) -> Environment:
    cfg = _cfg(config)
    scripts = load_scripts(cfg.directory)
    return Environment({s.revision: s for s in scripts}, RevisionGraph(scripts))


@contextlib.contextmanager
def _connected(cfg: MigrationConfig, store: Any | None) -> Iterator[Any]:
    if store is not None:
        yield store
        return
    from ..store import MilvusStore

    opened = MilvusStore.connect(cfg.settings)
    try:
        yield opened
    finally:
        opened.close()


def _table(cfg: MigrationConfig, store: Any) -> SystemTable:
    return SystemTable(store.client, timeout=cfg.settings.milvus_timeout_s)


# ---------------------------------------------------------------------- ops of a step, and the model
def _operations(cfg: MigrationConfig, model: SchemaModel) -> Operations:
    return Operations(cfg.scope, cfg.settings, model=copy.deepcopy(model))


def upgrade_ops(cfg: MigrationConfig, env: Environment, revision: str, model: SchemaModel) -> tuple[list[Op], SchemaModel]:
    """The ops of ``revision``'s upgrade given the schema before it, and the schema after."""
    ops = _operations(cfg, model)
    try:
        env.scripts[revision].upgrade(ops)
    except Exception as exc:
        if isinstance(exc, (InvalidArgument, FailedPrecondition)):
            raise type(exc)(f"revision {revision}: {exc}") from exc
        raise InvalidArgument(f"revision {revision}: upgrade(op) failed: {type(exc).__name__}: {exc}") from exc
    return ops.ops, ops.model


def downgrade_ops(cfg: MigrationConfig, env: Environment, revision: str, model_before: SchemaModel,
                  model_after: SchemaModel) -> list[Op]:
    """``downgrade(op)``'s ops, or the reverse of ``upgrade(op)``'s when the script has no downgrade."""
    script = env.scripts[revision]
    if script.downgrade is None:
        ups, _ = upgrade_ops(cfg, env, revision, model_before)
        return [op.reverse() for op in reversed(ups)]
    ops = _operations(cfg, model_after)
    try:
        script.downgrade(ops)
    except Exception as exc:
        if isinstance(exc, (InvalidArgument, FailedPrecondition)):
            raise type(exc)(f"revision {revision}: {exc}") from exc
        raise InvalidArgument(f"revision {revision}: downgrade(op) failed: {type(exc).__name__}: {exc}") from exc
    return ops.ops


def model_at(cfg: MigrationConfig, env: Environment, applied: set[str]) -> SchemaModel:
    """The schema the scripts describe once ``applied`` revisions have run."""
    model: SchemaModel = {}
    for rev in env.graph.topo(applied):
        _, model = upgrade_ops(cfg, env, rev, model)
    return model


# ---------------------------------------------------------------------- plan
@dataclass
class PlanStep:
    revision: str
    direction: str
    message: str
    ops: list[Op]
    model: SchemaModel | None = None  # the schema after an upgrade step (None for a downgrade step)

    def lines(self) -> list[str]:
        arrow = "upgrade" if self.direction == UP else "downgrade"
        out = [f"{arrow} {self.revision}: {self.message}".rstrip(": ")]
        out += [f"    {op.describe()}" for op in self.ops] or ["    (no operations)"]
        return out


def _is_down_target(env: Environment, applied: set[str], target: str) -> bool:
    if target.startswith("-") or target == "base":
        return True
    if target in ("head", "heads") or target.startswith("+"):
        return False
    rev = env.graph.resolve(target)
    return rev in applied and bool(env.graph.descendants(rev, inclusive=False) & applied)


def _steps(cfg: MigrationConfig, env: Environment, applied: set[str], target: str, direction: str) -> list[PlanStep]:
    steps: list[PlanStep] = []
    if direction == UP:
        model = model_at(cfg, env, applied)
        for rev in env.graph.upgrade_path(applied, target):
            ops, model = upgrade_ops(cfg, env, rev, model)
            steps.append(PlanStep(rev, UP, env.scripts[rev].message, ops, copy.deepcopy(model)))
        return steps
    current = set(applied)
    for rev in env.graph.downgrade_path(applied, target):
        before = current - {rev}
        ops = downgrade_ops(cfg, env, rev, model_at(cfg, env, before), model_at(cfg, env, current))
        steps.append(PlanStep(rev, DOWN, env.scripts[rev].message, ops))
        current = before
    return steps


def plan(config: MigrationConfig | Settings, target: str = "head", *, store: Any | None = None,
         applied: set[str] | None = None) -> list[PlanStep]:
    """Dry run: what ``upgrade``/``downgrade`` to ``target`` would do (downgrade when the target is below).

    With ``applied`` given, Milvus is not contacted at all (offline planning from an assumed state).
    """
    cfg = _cfg(config)
    env = load_environment(cfg)
    if applied is None:
        with _connected(cfg, store) as st:
            applied = set(_table(cfg, st).applied(cfg.scope))
    direction = DOWN if _is_down_target(env, applied, target) else UP
    return _steps(cfg, env, applied, target, direction)


# ---------------------------------------------------------------------- upgrade / downgrade / stamp
def resolved_schema(model: SchemaModel, caps: Any) -> dict[str, Any]:
    """The schema a model describes with every layout resolved against the backend (what the history records)."""
    from ..store.layout import CollectionLayout

    out = model_to_dict(model)
    for coll in out.values():
        coll["layout"] = CollectionLayout.from_dict(coll["layout"]).resolved(caps).to_dict()
    return out


def recorded_schema(applied: dict[str, dict[str, Any]]) -> SchemaModel | None:
    """The schema the history recorded for exactly the applied revisions, or None when no record covers them
    (revisions stamped, applied by an older version, or a branch downgraded since)."""
    for rec in sorted(applied.values(), key=lambda r: float(r.get("applied_at") or 0), reverse=True):
        if "schema" in rec and sorted(rec.get("applied_set") or []) == sorted(applied):
            return model_from_dict(rec["schema"])
    return None


def _run_step(cfg: MigrationConfig, st: Any, table: SystemTable, lock: Any, step: PlanStep, script: Script,
              hooks: RunHooks, by: str, applied: set[str]) -> None:
    scope, rev, direction = cfg.scope, step.revision, step.direction
    other = DOWN if direction == UP else UP
    table.clear_progress(scope, rev, other)  # stale leftovers of an earlier, finished run
    progress = table.progress(scope, rev, direction)
    done = 0
    if progress:
        if not script.matches(progress.get("checksum")):
            raise FailedPrecondition(
                f"revision {rev} was interrupted part-way ({progress.get('done_ops')} of {len(step.ops)} ops done) "
                f"and {script.path.name} has been edited since; restore the script as it was to resume "
                "(or, when the new text does exactly what the old one did, list the old checksum in its "
                "REPLACES_CHECKSUMS), or repair by hand and `milvus-embed migrate stamp`")
        done = int(progress.get("done_ops", 0))
    started = time.monotonic()
    for i, op in enumerate(step.ops):
        if i < done:
            continue
        if hooks.on_op is not None:
            hooks.on_op(rev, direction, op)
        ctx = OpContext(st, cfg.settings, table, scope, rev, direction, i, lock, hooks, cfg.batch_size,
                        shard_settings=ShardSettings(cfg.shards, cfg.lease_ttl_s))
        execute(op, ctx)
        table.set_progress(scope, rev, direction, script.checksum, i + 1)
        lock.refresh()
    duration = time.monotonic() - started
    if direction == UP:
        applied.add(rev)
        schema = resolved_schema(step.model, st.capabilities) if step.model is not None else None
        table.mark_applied(scope, rev, script.checksum, duration, by, script.path.name, schema=schema,
                           applied_set=sorted(applied))
    else:
        applied.discard(rev)
        table.unmark_applied(scope, rev)
    table.append_log(scope, "upgrade" if direction == UP else "downgrade", rev, script.checksum, duration, by)
    table.clear_progress(scope, rev, direction)


def _migrate(cfg: MigrationConfig, target: str, direction: str, store: Any | None, hooks: RunHooks | None) -> list[str]:
    env = load_environment(cfg)
    hooks = hooks or RunHooks()
    by = whoami()
    with _connected(cfg, store) as st:
        table = _table(cfg, st)
        table.ensure()
        with table.acquire(cfg.scope, by, cfg.lock_ttl_s, cfg.lock_wait_s) as lock:
            applied = set(table.applied(cfg.scope))  # read under the lock: another run may have just finished
            steps = _steps(cfg, env, applied, target, direction)
            for step in steps:
                _run_step(cfg, st, table, lock, step, env.scripts[step.revision], hooks, by, applied)
    return [s.revision for s in steps]


def upgrade(config: MigrationConfig | Settings, target: str = "head", *, store: Any | None = None,
            hooks: RunHooks | None = None) -> list[str]:
    """Apply revisions up to ``target`` (id, prefix, head, heads, +N); returns those applied, in order.

    Holds the scope's lock throughout. A run killed part-way resumes where it stopped when run again.
    """
    return _migrate(_cfg(config), target, UP, store, hooks)


def downgrade(config: MigrationConfig | Settings, target: str, *, store: Any | None = None,
              hooks: RunHooks | None = None) -> list[str]:
    """Unapply revisions down to ``target`` (id, prefix, base, -N); returns those unapplied, in order."""
    return _migrate(_cfg(config), target, DOWN, store, hooks)


def stamp(config: MigrationConfig | Settings, revision: str, *, store: Any | None = None) -> list[str]:
    """Record the database as being at ``revision`` (or ``base``) without running anything."""
    cfg = _cfg(config)
    env = load_environment(cfg)
    wanted: set[str] = set()
    if revision == "heads":
        wanted = env.graph.all_revisions()
    elif revision != "base":
        rev = env.graph.single_head() if revision == "head" else env.graph.resolve(revision)
        wanted = env.graph.ancestors(rev)
    by = whoami()
    with _connected(cfg, store) as st:
        table = _table(cfg, st)
        table.ensure()
        with table.acquire(cfg.scope, by, cfg.lock_ttl_s, cfg.lock_wait_s):
            applied = table.applied(cfg.scope)
            for rev in set(applied) - wanted:
                table.unmark_applied(cfg.scope, rev)
            for rev in env.graph.topo(wanted - set(applied)):
                script = env.scripts[rev]
                table.mark_applied(cfg.scope, rev, script.checksum, 0.0, by, script.path.name)
            table.append_log(cfg.scope, "stamp", revision, "", 0.0, by)
    return list(env.graph.heads_of(wanted))


# ---------------------------------------------------------------------- read-only commands
@dataclass
class CurrentState:
    scope: str
    heads: tuple[str, ...]  # current revision(s) among the known ones
    applied: dict[str, dict[str, Any]]
    unknown: list[str]  # applied revisions the scripts do not define
    pending: list[str]  # revisions to apply to reach the scripts' head(s)
    locks: list[LockInfo] = field(default_factory=list)


def current(config: MigrationConfig | Settings, *, store: Any | None = None) -> CurrentState:
    cfg = _cfg(config)
    env = load_environment(cfg)
    with _connected(cfg, store) as st:
        table = _table(cfg, st)
        applied = table.applied(cfg.scope)
        locks = table.locks(cfg.scope) if table.exists() else []
    unknown = sorted(set(applied) - set(env.scripts))
    known = set(applied) - set(unknown)
    pending = [] if unknown else env.graph.pending(known)
    return CurrentState(cfg.scope, env.graph.heads_of(known), applied, unknown, pending, locks)


def heads(config: MigrationConfig | Settings) -> tuple[str, ...]:
    return load_environment(_cfg(config)).graph.heads


@dataclass
class HistoryEntry:
    revision: str
    down_revisions: tuple[str, ...]
    message: str
    path: Path
    applied: dict[str, Any] | None  # applied_at, duration_s, by, checksum; None when not applied


def history(config: MigrationConfig | Settings, *, store: Any | None = None,
            with_state: bool = True) -> tuple[list[HistoryEntry], list[dict[str, Any]]]:
    """Scripts newest first (with their applied record), and the log of upgrade/downgrade/stamp events."""
    cfg = _cfg(config)
    env = load_environment(cfg)
    applied: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    if with_state:
        with _connected(cfg, store) as st:
            table = _table(cfg, st)
            applied = table.applied(cfg.scope)
            events = table.log(cfg.scope)
    entries = [HistoryEntry(r, env.scripts[r].down_revisions, env.scripts[r].message, env.scripts[r].path,
                            applied.get(r)) for r in reversed(env.graph.topo(env.scripts))]
    return entries, events


@dataclass
class CheckReport:
    scope: str
    problems: list[str]  # drift: edited scripts, unknown revisions, live schema differences
    notes: list[str]  # not drift: pending revisions, locks

    @property
    def ok(self) -> bool:
        return not self.problems


def _schema_drift(cfg: MigrationConfig, st: Any, model: SchemaModel) -> list[str]:
    from ..store.layout import CollectionLayout, schema_problems

    admin = CollectionAdmin(st)
    problems: list[str] = []
    for name, coll in sorted(model.items()):
        expected = CollectionLayout.from_dict(coll.layout).resolved(st.capabilities)
        if not admin.has(name):
            problems.append(f"collection {name} is missing (the revisions create it)")
            continue
        described = admin.describe(name)
        live = admin.stored_layout(name, described)
        if live is None:
            problems.append(f"collection {name} has no milvus-embed layout in its description")
        elif live != expected:
            a, b = live.to_dict(), expected.to_dict()
            diffs = [f"{k}: live {a.get(k)!r}, revisions {b.get(k)!r}" for k in sorted(set(a) | set(b))
                     if k != "extra" and a.get(k) != b.get(k)]
            problems.append(f"collection {name} layout differs: " + "; ".join(diffs))
        extra_expected = set(coll.extra_fields)
        for p in schema_problems(expected, described):
            if p.startswith("unexpected field ") and p.split()[-1] in extra_expected:
                continue
            problems.append(f"collection {name}: {p}")
        live_extra = {f.name for f in extra_fields_of(described, expected)}
        for missing in sorted(extra_expected - live_extra):
            problems.append(f"collection {name}: added field {missing} is missing")
        for fname in (*expected.dense_fields, "sparse"):
            if fname in coll.indexes:
                continue  # a revision set this field's index: compared below
            idx = admin.index_on(name, fname)
            if idx is None:
                problems.append(f"collection {name}: field {fname} has no index (the layout gives it one)")
            elif fname != "sparse" and idx.get("index_type") != expected.index_type:
                problems.append(f"collection {name}: index on {fname} is {idx.get('index_type')}, "
                                f"the layout says {expected.index_type}")
        for fname, spec in sorted(coll.indexes.items()):
            idx = admin.index_on(name, fname)
            if spec is None and idx is not None:
                problems.append(f"collection {name}: field {fname} has an index the revisions dropped")
            elif spec is not None and (idx is None or idx.get("index_type") != spec.index_type):
                got = "none" if idx is None else idx.get("index_type")
                problems.append(f"collection {name}: index on {fname} is {got}, the revisions say {spec.index_type}")
        if coll.properties and not st.capabilities.lite:
            live_props = {str(k): str(v) for k, v in (described.get("properties") or {}).items()}
            for k, v in sorted(coll.properties.items()):
                if live_props.get(k) != v:
                    problems.append(f"collection {name}: property {k} is {live_props.get(k)!r}, the revisions say {v!r}")
    return problems


def check(config: MigrationConfig | Settings, *, store: Any | None = None) -> CheckReport:
    """Drift: applied scripts edited since (checksum), unknown revisions, and a live schema that differs."""
    cfg = _cfg(config)
    env = load_environment(cfg)
    problems: list[str] = []
    notes: list[str] = []
    with _connected(cfg, store) as st:
        table = _table(cfg, st)
        applied = table.applied(cfg.scope)
        unknown = sorted(set(applied) - set(env.scripts))
        if unknown:
            problems.append(f"applied revision(s) {', '.join(unknown)} are not in {cfg.directory}")
        for rev, rec in sorted(applied.items()):
            script = env.scripts.get(rev)
            if script is not None and not script.matches(rec.get("checksum")):
                problems.append(
                    f"revision {rev} ({script.path.name}) was edited after it was applied on "
                    f"{_iso(rec.get('applied_at'))} (checksum {str(rec.get('checksum'))[:12]} -> {script.checksum[:12]}); "
                    "restore it and put the change in a new revision (`milvus-embed migrate revision -m ...`), "
                    "or, when the new text does exactly what the old one did, list the old checksum in the "
                    "script's REPLACES_CHECKSUMS")
        known = set(applied) - set(unknown)
        try:
            env.graph.check_applied(known)
        except FailedPrecondition as exc:
            problems.append(str(exc))
        else:
            # the schema the applied revisions recorded when they ran; replayed from the scripts only for a
            # history without that record (revisions stamped, or applied by an older version)
            recorded = recorded_schema(applied) if not unknown else None
            problems += _schema_drift(cfg, st, recorded if recorded is not None else model_at(cfg, env, known))
        pending = env.graph.pending(known)
        if not applied:
            notes.append(f"{cfg.scope} is not migrated yet: run `milvus-embed migrate upgrade`")
        elif pending:
            notes.append(f"{len(pending)} revision(s) pending: {', '.join(pending)} (`milvus-embed migrate upgrade`)")
        for lk in table.locks(cfg.scope) if table.exists() else []:
            notes.append(f"migration lock {lk.describe()}")
    return CheckReport(cfg.scope, problems, notes)


def _iso(ts: Any) -> str:
    from .history import utc_iso

    try:
        return utc_iso(float(ts))
    except (TypeError, ValueError):
        return "?"


def check_revision_known(config: MigrationConfig | Settings, *, store: Any | None = None,
                         require_head: bool = True) -> tuple[str, ...]:
    """For the service at startup: the collection's current revision(s), or FailedPrecondition saying what to run.

    Raises when the collection is not migrated yet, when it is at a revision these scripts do not know
    (a newer sidecar migrated it, or other scripts), and, with ``require_head``, when revisions are pending.
    """
    cfg = _cfg(config)
    env = load_environment(cfg)
    with _connected(cfg, store) as st:
        applied = _table(cfg, st).applied(cfg.scope)
    if not applied:
        raise FailedPrecondition(
            f"collection {cfg.scope!r} is not migrated yet: run `milvus-embed migrate upgrade` "
            "(with the same --milvus-uri and --collection) before starting the service")
    unknown = sorted(set(applied) - set(env.scripts))
    if unknown:
        raise FailedPrecondition(
            f"collection {cfg.scope!r} is at revision(s) {', '.join(unknown)}, which this sidecar's migration "
            f"scripts ({cfg.directory}) do not know: it was migrated by a newer version or other scripts. "
            "Run this version's `milvus-embed migrate upgrade` only after checking with `milvus-embed migrate check`, "
            "or deploy the sidecar version that matches the database")
    current_heads = env.graph.heads_of(applied)
    if require_head:
        pending = env.graph.pending(applied)
        if pending:
            raise FailedPrecondition(
                f"collection {cfg.scope!r} is at revision {', '.join(current_heads)}; {len(pending)} revision(s) "
                f"are pending ({', '.join(pending)}): run `milvus-embed migrate upgrade`")
    return current_heads


def new_revision(config: MigrationConfig | Settings, message: str, *, merge: bool = False,
                 revision_id: str | None = None) -> Path:
    """Write a new script revising the current head (or, with ``merge``, joining all heads)."""
    cfg = _cfg(config)
    if cfg.directory.resolve() == builtin_migrations_dir().resolve():
        raise InvalidArgument(
            "new revisions go into your own scripts directory: pass --migrations-dir DIR (or MEE_MIGRATIONS_DIR); "
            "the built-in revisions ship with the package")
    env = load_environment(cfg)
    current_heads = env.graph.heads
    if len(current_heads) > 1 and not merge:
        raise FailedPrecondition(
            f"the scripts have {len(current_heads)} heads ({', '.join(current_heads)}); "
            "create a merge revision with `milvus-embed migrate revision --merge -m MSG`")
    if merge and len(current_heads) < 2:
        raise InvalidArgument("--merge needs at least two heads; there is nothing to merge")
    params = {"colbert_codec": cfg.settings.colbert_codec, "index_type": cfg.settings.index_type}
    return write_revision(cfg.directory, message, tuple(current_heads), revision=revision_id, layout=params)


def unlock(config: MigrationConfig | Settings, *, force: bool = False, store: Any | None = None) -> list[LockInfo]:
    """Break the scope's migration lock left by a killed run (a live one only with ``force``)."""
    cfg = _cfg(config)
    with _connected(cfg, store) as st:
        table = _table(cfg, st)
        if not table.exists():
            return []
        return table.break_locks(cfg.scope, force=force)


__all__ = [
    "CheckReport", "CollectionModel", "CurrentState", "Environment", "HistoryEntry", "MigrationConfig", "PlanStep",
    "check", "check_revision_known", "config_from_settings", "current", "downgrade", "heads", "history",
    "load_environment", "model_at", "new_revision", "plan", "stamp", "unlock", "upgrade",
]
