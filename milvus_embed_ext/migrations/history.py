"""History, lock and checkpoints, kept in Milvus itself in one small system collection.

Rows are keyed by ``kind`` and ``scope`` (the migrated collection's name), so several collections, each
with their own scripts, share one system collection:

- ``applied``:  one row per applied revision (revision, checksum, applied_at, duration_s, by)
- ``log``:      append-only record of every upgrade / downgrade / stamp step (``migrate history``)
- ``progress``: ops finished inside a revision that has not completed yet (resume after a crash)
- ``ckpt``:     backfill checkpoints (last copied id, phase) of a running rebuild
- ``lock``:     the migration lock (owner, token, expiry)

The lock uses insert-then-read, because Milvus has no compare-and-set: a contender writes its own
row, then reads every lock row of the scope (Strong consistency). It holds the lock only if its row is
the only one; otherwise it deletes its row and backs off. If two contenders A and B both saw only
themselves, A's read came before B's write and B's read before A's write, while each write precedes
its own read: impossible, so at most one holds the lock. Two contenders can both back off; they retry
with random jitter until ``wait_s`` runs out.
"""

from __future__ import annotations

import getpass
import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..errors import ConsistencyError, FailedPrecondition, Unavailable
from ..limits import MILVUS_MAX_TOPK
from ..store.documents import literal

log = logging.getLogger(__name__)

SYSTEM_COLLECTION = "mee_migrations"
_QUERY_LIMIT = MILVUS_MAX_TOPK


def whoami() -> str:
    """Who is applying: user@host pid, for the history and the lock (no secrets)."""
    try:
        user = getpass.getuser()
    except Exception:  # pragma: no cover - no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class LockInfo:
    owner: str
    token: str
    acquired_at: float
    expires_at: float

    @property
    def expired(self) -> bool:
        return time.time() > self.expires_at

    def describe(self) -> str:
        state = f"expired at {utc_iso(self.expires_at)}" if self.expired else f"until {utc_iso(self.expires_at)}"
        return f"held by {self.owner} since {utc_iso(self.acquired_at)}, {state}"


class SystemTable:
    """Typed access to the system collection over a ``MilvusClient``."""

    def __init__(self, client: Any, name: str = SYSTEM_COLLECTION, timeout: float | None = None):
        self.client = client
        self.name = name
        self.timeout = timeout
        self._ready = False

    # ---- plumbing
    def exists(self) -> bool:
        return bool(self.client.has_collection(self.name, timeout=self.timeout))

    def ensure(self) -> None:
        if self._ready:
            return
        from pymilvus import DataType, MilvusClient

        if not self.exists():
            schema = MilvusClient.create_schema(auto_id=False, description="milvus-embed migrations: history, lock, checkpoints")
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
            schema.add_field("kind", DataType.VARCHAR, max_length=32)
            schema.add_field("scope", DataType.VARCHAR, max_length=512)
            schema.add_field("payload", DataType.JSON)
            schema.add_field("vec", DataType.FLOAT_VECTOR, dim=2)  # Milvus needs a vector field; unused
            index = MilvusClient.prepare_index_params()
            index.add_index("vec", index_type="FLAT", metric_type="L2")
            try:
                self.client.create_collection(self.name, schema=schema, index_params=index,
                                              consistency_level="Strong", timeout=self.timeout)
            except Exception as exc:  # another runner created it a moment ago
                if not self.exists():
                    raise Unavailable(f"cannot create the migrations system collection {self.name}: {exc}") from exc
        self.client.load_collection(self.name, timeout=self.timeout)
        self._ready = True

    def put(self, row_id: str, kind: str, scope: str, payload: dict[str, Any]) -> None:
        self.ensure()
        self.client.upsert(self.name, [{"id": row_id, "kind": kind, "scope": scope, "payload": payload,
                                        "vec": [0.0, 0.0]}], timeout=self.timeout)

    def delete(self, row_ids: list[str]) -> None:
        if row_ids:
            self.ensure()
            self.client.delete(self.name, ids=list(row_ids), timeout=self.timeout)

    def rows(self, kind: str, scope: str) -> list[dict[str, Any]]:
        """Every row of a kind in a scope: dicts with ``id`` and the payload's keys."""
        if not self._ready and not self.exists():
            return []
        self.ensure()
        res = self.client.query(
            self.name, filter=f"kind == {literal(kind)} and scope == {literal(scope)}",
            output_fields=["id", "payload"], limit=_QUERY_LIMIT, consistency_level="Strong", timeout=self.timeout,
        )
        return [{**(r.get("payload") or {}), "id": r["id"]} for r in res]

    def get(self, row_id: str) -> dict[str, Any] | None:
        if not self._ready and not self.exists():
            return None
        self.ensure()
        res = self.client.query(self.name, filter=f"id == {literal(row_id)}", output_fields=["payload"],
                                limit=1, consistency_level="Strong", timeout=self.timeout)
        return dict(res[0].get("payload") or {}) if res else None

    # ---- applied revisions and the log
    def applied(self, scope: str) -> dict[str, dict[str, Any]]:
        return {r["revision"]: r for r in self.rows("applied", scope)}

    def mark_applied(self, scope: str, revision: str, checksum: str, duration_s: float, by: str,
                     script: str, applied_at: float | None = None, *, schema: dict[str, Any] | None = None,
                     applied_set: list[str] | None = None) -> None:
        """Record ``revision`` as applied. ``schema`` is the resolved schema the revisions applied so far
        (``applied_set``, this one included) produced: ``migrate check`` compares the live one with it."""
        payload: dict[str, Any] = {
            "revision": revision, "checksum": checksum, "applied_at": applied_at or time.time(),
            "duration_s": round(duration_s, 3), "by": by, "script": script,
        }
        if schema is not None:
            payload["schema"] = schema
            payload["applied_set"] = sorted(applied_set or [])
        self.put(f"applied:{scope}:{revision}", "applied", scope, payload)

    def unmark_applied(self, scope: str, revision: str) -> None:
        self.delete([f"applied:{scope}:{revision}"])

    def append_log(self, scope: str, action: str, revision: str, checksum: str, duration_s: float,
                   by: str) -> None:
        now = time.time()
        self.put(f"log:{scope}:{time.time_ns():020d}:{uuid.uuid4().hex[:6]}", "log", scope, {
            "action": action, "revision": revision, "checksum": checksum, "at": now,
            "duration_s": round(duration_s, 3), "by": by,
        })

    def log(self, scope: str) -> list[dict[str, Any]]:
        return sorted(self.rows("log", scope), key=lambda r: r["id"])

    # ---- progress inside a revision, and backfill checkpoints
    def progress(self, scope: str, revision: str, direction: str) -> dict[str, Any] | None:
        return self.get(f"progress:{scope}:{revision}:{direction}")

    def set_progress(self, scope: str, revision: str, direction: str, checksum: str, done_ops: int) -> None:
        self.put(f"progress:{scope}:{revision}:{direction}", "progress", scope,
                 {"revision": revision, "direction": direction, "checksum": checksum, "done_ops": done_ops})

    def clear_progress(self, scope: str, revision: str, direction: str) -> None:
        prefix = f"ckpt:{scope}:{revision}:{direction}:"
        ids = [r["id"] for r in self.rows("ckpt", scope) if r["id"].startswith(prefix)]
        self.delete([f"progress:{scope}:{revision}:{direction}", *ids])

    def checkpoint(self, scope: str, key: str) -> dict[str, Any] | None:
        return self.get(f"ckpt:{scope}:{key}")

    def set_checkpoint(self, scope: str, key: str, payload: dict[str, Any]) -> None:
        self.put(f"ckpt:{scope}:{key}", "ckpt", scope, payload)

    def clear_checkpoint(self, scope: str, key: str) -> None:
        self.delete([f"ckpt:{scope}:{key}"])

    # ---- lock
    def locks(self, scope: str) -> list[LockInfo]:
        return sorted(
            (LockInfo(r["owner"], r["token"], float(r["acquired_at"]), float(r["expires_at"]))
             for r in self.rows("lock", scope)),
            key=lambda lk: (lk.acquired_at, lk.token),
        )

    def acquire(self, scope: str, owner: str, ttl_s: float = 120.0, wait_s: float = 5.0) -> MigrationLock:
        """Take the scope's lock or raise FailedPrecondition naming the holder (see the module docstring)."""
        self.ensure()
        deadline = time.monotonic() + max(0.0, wait_s)
        attempt = 0
        while True:
            token = uuid.uuid4().hex
            now = time.time()
            row_id = f"lock:{scope}:{token}"
            self.put(row_id, "lock", scope, {"owner": owner, "token": token, "acquired_at": now,
                                             "expires_at": now + ttl_s})
            others = [lk for lk in self.locks(scope) if lk.token != token]
            if not others:
                return MigrationLock(self, scope, owner, token, ttl_s, now)
            self.delete([row_id])
            holder = others[0]
            attempt += 1
            if time.monotonic() >= deadline:
                if holder.expired:
                    raise FailedPrecondition(
                        f"the migration lock of {scope!r} is {holder.describe()}: probably a run that was killed. "
                        "If no migration is running, break it with `milvus-embed migrate unlock`, then rerun; "
                        "the rerun resumes where the killed run stopped"
                    )
                raise FailedPrecondition(
                    f"another migration of {scope!r} is running: lock {holder.describe()}. "
                    "Wait for it to finish (or raise --lock-wait)"
                )
            time.sleep(min(1.0, 0.05 * (2 ** min(attempt, 4))) * random.uniform(0.5, 1.5))

    def break_locks(self, scope: str, force: bool = False) -> list[LockInfo]:
        """Delete the scope's lock rows; live (unexpired) ones only with ``force``."""
        locks = self.locks(scope)
        live = [lk for lk in locks if not lk.expired]
        if live and not force:
            raise FailedPrecondition(
                f"the migration lock of {scope!r} is {live[0].describe()} and has not expired: a migration may "
                "still be running. If you are sure it is dead, run `milvus-embed migrate unlock --force`"
            )
        self.delete([f"lock:{scope}:{lk.token}" for lk in locks])
        return locks


@dataclass
class MigrationLock:
    table: SystemTable
    scope: str
    owner: str
    token: str
    ttl_s: float
    acquired_at: float
    _refreshed: float = field(default=0.0)

    def __post_init__(self) -> None:
        self._refreshed = time.monotonic()

    @property
    def row_id(self) -> str:
        return f"lock:{self.scope}:{self.token}"

    def refresh(self, force: bool = False) -> None:
        """Extend the expiry (between batches); stop if someone broke the lock meanwhile."""
        if not force and time.monotonic() - self._refreshed < self.ttl_s / 4:
            return
        if self.table.get(self.row_id) is None:
            raise ConsistencyError(
                f"the migration lock of {self.scope!r} was removed while this run held it (`migrate unlock`?); "
                "stopped before the next step. Rerun `milvus-embed migrate upgrade` to resume"
            )
        now = time.time()
        self.table.put(self.row_id, "lock", self.scope, {"owner": self.owner, "token": self.token,
                                                         "acquired_at": self.acquired_at, "expires_at": now + self.ttl_s})
        self._refreshed = time.monotonic()

    def release(self) -> None:
        try:
            self.table.delete([self.row_id])
        except Exception as exc:  # the run's result stands; an orphan lock expires and can be unlocked
            log.warning("could not release the migration lock %s: %s", self.row_id, exc)

    def __enter__(self) -> MigrationLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
