"""Sharded backfills: many workers (processes, pods) share one revision's backfill under expiring leases.

A backfill op (``reencode``) is cut into shards: contiguous ranges of the primary key whose bounds are
quantiles of a sample of the ids, taken once when the shard plan is opened. There are far more shards
than workers (default 256). Ranges rather than a hash of the id: Milvus filter expressions cannot compute
a hash, so a hash shard could only be found by scanning every id, once per shard; a range is one
``id >= lo and id < hi`` filter, and the ranges cover the whole key space, so no row is left out.

Everything is kept in the migration history collection (``mee_migrations``), grouped per op
(``<scope>/<revision>/<direction>/<op index>``):

- the plan:   the op's checkpoint row ``<revision>:up:<op>:shards``: bounds, state ``open``/``verified``;
- ``shard``:  one row per shard: ``done``, ``last_id`` (checkpoint after every batch), ``rows``;
- ``lease``:  one row per claim: owner, token, ``expires_at``.

Claiming uses the same insert-then-read rule as the migration lock, because Milvus has no transactions
and no compare-and-set: a worker inserts its own lease row, then reads every lease row of the op
(Strong consistency). It holds the shard only if no other *unexpired* lease of that shard exists;
otherwise it deletes its row and moves on. Two claimers that both saw no rival is impossible: each
write precedes its own read, so the later of the two reads sees the earlier claimer's row. Expired
leases of the shard (a dead worker's) are deleted by the winner.

A holder renews its lease before every batch and, while a batch runs, from a heartbeat thread every
TTL/3, each time checking that its row is still there; a worker whose lease was removed or ran out (it
was paused, or Milvus was unreachable for a TTL) abandons the shard without checkpointing the batch.
Limits: a worker paused between a check and its write (or a clock skew between machines larger than
the TTL) can write one batch after another worker took the shard over. Its
writes are idempotent upserts of the same documents, so no row is lost or duplicated; the worst case is
a document whose ColBERT rows the other writer swept, which the finish step's sample check and the
store's reads report. A hung worker whose heartbeat still runs keeps its shard: bound a worker's run time
from outside (a Job's ``activeDeadlineSeconds``).

The op finishes (``migrate upgrade``, holding the migration lock) only when every shard is ``done``
and the rows processed add up to the collection's count; then the plan is marked verified and the
runner marks the revision applied, once.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConsistencyError, FailedPrecondition, InvalidArgument
from ..store.documents import literal

log = logging.getLogger(__name__)

DEFAULT_SHARDS = 256
MAX_SHARDS = 8192  # one query lists every shard row (the history table reads up to 16384 rows at once)
SAMPLE_PER_SHARD = 64
VERIFY_SAMPLE = 32
ID_FIELD = "id"

_open_only: contextvars.ContextVar[bool] = contextvars.ContextVar("mee_shards_open_only", default=False)


class PlanOpened(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside ``upgrade`` run by a worker: the shard plan is open, the worker takes it from here."""

    def __init__(self, revision: str, op_index: int) -> None:
        super().__init__(f"shard plan of {revision} op {op_index} is open")
        self.revision = revision
        self.op_index = op_index


class LeaseLost(Exception):  # noqa: N818 - control flow inside the worker
    """This worker no longer holds the shard (its lease ran out or was taken over)."""


@contextlib.contextmanager
def open_only() -> Iterator[None]:
    """Within this block a sharded op only opens its plan and raises :class:`PlanOpened`."""
    token = _open_only.set(True)
    try:
        yield
    finally:
        _open_only.reset(token)


# ---------------------------------------------------------------------- pure: shard ranges
def shard_bounds(sample_ids: Sequence[str], n_shards: int) -> list[str]:
    """Split points of ``n_shards`` ranges from a sample of ids (fewer when the sample has fewer ids)."""
    if not 1 <= n_shards <= MAX_SHARDS:
        raise InvalidArgument(f"the number of shards must be between 1 and {MAX_SHARDS}, got {n_shards}")
    ids = sorted(set(sample_ids))
    if len(ids) <= 1 or n_shards == 1:
        return []
    picks = {ids[(j * len(ids)) // n_shards] for j in range(1, n_shards)}
    return sorted(p for p in picks if p != ids[0])


def shard_range(bounds: Sequence[str], k: int) -> tuple[str | None, str | None]:
    """``[lo, hi)`` of shard ``k``; None means unbounded on that side."""
    n = len(bounds) + 1
    if not 0 <= k < n:
        raise InvalidArgument(f"shard {k} does not exist (0..{n - 1})")
    return (bounds[k - 1] if k > 0 else None), (bounds[k] if k < n - 1 else None)


def shard_filter(bounds: Sequence[str], k: int, field_name: str = ID_FIELD) -> str:
    """The Milvus filter selecting shard ``k``'s rows (empty: the whole collection)."""
    lo, hi = shard_range(bounds, k)
    parts = ([f"{field_name} >= {literal(lo)}"] if lo is not None else []) + \
            ([f"{field_name} < {literal(hi)}"] if hi is not None else [])
    return " and ".join(parts)


def shard_of(bounds: Sequence[str], doc_id: str) -> int:
    """The shard holding ``doc_id`` (every string falls in exactly one)."""
    return bisect.bisect_right(list(bounds), doc_id)


def claim_order(n_shards: int, worker_index: int | None = None, workers: int | None = None,
                rng: random.Random | None = None) -> list[int]:
    """Shard indexes in the order this worker tries them: from its own start, wrapping around.

    Workers of an Indexed Job start at evenly spaced shards; others at a random one. Either way they
    rarely race for the same shard (a race is harmless: one claim wins).
    """
    if worker_index is not None and workers:
        start = (worker_index % workers) * n_shards // workers
    else:
        start = (rng or random.Random()).randrange(n_shards)
    return [(start + i) % n_shards for i in range(n_shards)]


# ---------------------------------------------------------------------- pure: lease decisions
@dataclass(frozen=True)
class Lease:
    shard: int
    owner: str
    token: str
    expires_at: float

    def expired(self, now: float) -> bool:
        return now > self.expires_at

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Lease:
        return cls(int(row["shard"]), str(row.get("owner", "?")), str(row["token"]), float(row["expires_at"]))


def rivals(leases: Sequence[Lease], shard: int, token: str, now: float) -> list[Lease]:
    """Unexpired leases of ``shard`` other than ours: any one of them means we do not hold it."""
    return [lease for lease in leases if lease.shard == shard and lease.token != token and not lease.expired(now)]


def held_by_others(leases: Sequence[Lease], now: float, mine: str = "") -> set[int]:
    return {lease.shard for lease in leases if not lease.expired(now) and lease.token != mine}


# ---------------------------------------------------------------------- the rows in the history table
class Table(Protocol):
    """What the shard protocol needs of :class:`~.history.SystemTable` (an in-memory fake in tests)."""

    def put(self, row_id: str, kind: str, scope: str, payload: dict[str, Any]) -> None: ...
    def get(self, row_id: str) -> dict[str, Any] | None: ...
    def rows(self, kind: str, scope: str) -> list[dict[str, Any]]: ...
    def delete(self, row_ids: list[str]) -> None: ...


@dataclass(frozen=True)
class ShardPlan:
    group: str  # <scope>/<revision>/<direction>/<op index>
    bounds: tuple[str, ...]
    state: str = "open"  # "open" | "verified"
    opened_at: float = 0.0
    opened_by: str = ""

    @property
    def n_shards(self) -> int:
        return len(self.bounds) + 1

    def to_payload(self) -> dict[str, Any]:
        return {"group": self.group, "bounds": list(self.bounds), "state": self.state, "n_shards": self.n_shards,
                "opened_at": self.opened_at, "opened_by": self.opened_by}

    @classmethod
    def from_payload(cls, d: dict[str, Any]) -> ShardPlan:
        return cls(str(d["group"]), tuple(d.get("bounds") or ()), str(d.get("state", "open")),
                   float(d.get("opened_at", 0.0)), str(d.get("opened_by", "")))


def plan_row_id(scope: str, key: str) -> str:
    """The plan is the op's checkpoint row (``ckpt:<scope>:<key>``): the runner clears it with the step."""
    return f"ckpt:{scope}:{key}"


class ShardBook:
    """Shard states and leases of one plan in the history table."""

    def __init__(self, table: Table, plan: ShardPlan, plan_row: str | None = None) -> None:
        self.table = table
        self.plan = plan
        self.plan_row = plan_row  # the plan's own row, to notice when the finish step closed it

    def closed(self) -> bool:
        """The plan was verified (or cleared with its step): its shard rows are gone, nothing is left."""
        if self.plan_row is None:
            return False
        row = self.table.get(self.plan_row)
        return row is None or row.get("state") == "verified"

    @property
    def group(self) -> str:
        return self.plan.group

    def state_id(self, k: int) -> str:
        return f"shard:{self.group}:{k:05d}"

    def lease_id(self, k: int, token: str) -> str:
        return f"lease:{self.group}:{k:05d}:{token}"

    def states(self) -> dict[int, dict[str, Any]]:
        return {int(r["shard"]): r for r in self.table.rows("shard", self.group)}

    def state(self, k: int) -> dict[str, Any]:
        return self.table.get(self.state_id(k)) or {"shard": k, "done": False}

    def set_state(self, k: int, **payload: Any) -> None:
        self.table.put(self.state_id(k), "shard", self.group, {"shard": k, **payload})

    def leases(self) -> list[Lease]:
        return [Lease.from_row(r) for r in self.table.rows("lease", self.group)]

    def remaining(self) -> list[int]:
        states = self.states()
        return [k for k in range(self.plan.n_shards) if not states.get(k, {}).get("done")]

    def claim(self, k: int, owner: str, ttl_s: float) -> Lease | None:
        """Insert our lease, read all leases, keep it only if no other unexpired lease of ``k`` exists."""
        token = uuid.uuid4().hex
        lease = Lease(k, owner, token, time.time() + ttl_s)
        self.table.put(self.lease_id(k, token), "lease", self.group,
                       {"shard": k, "owner": owner, "token": token, "expires_at": lease.expires_at})
        leases = self.leases()
        now = time.time()
        if rivals(leases, k, token, now):
            self.table.delete([self.lease_id(k, token)])
            return None
        stale = [self.lease_id(k, other.token) for other in leases
                 if other.shard == k and other.token != token and other.expired(now)]
        if stale:  # a dead (or paused) holder's: it notices at its next renewal
            self.table.delete(stale)
        return lease

    def renew(self, lease: Lease, ttl_s: float) -> Lease:
        """Extend our lease; LeaseLost when it ran out or was removed (someone took the shard over)."""
        if lease.expired(time.time()) or self.table.get(self.lease_id(lease.shard, lease.token)) is None:
            raise LeaseLost(f"lease on shard {lease.shard} of {self.group} ran out or was taken over")
        renewed = Lease(lease.shard, lease.owner, lease.token, time.time() + ttl_s)
        self.table.put(self.lease_id(lease.shard, lease.token), "lease", self.group,
                       {"shard": lease.shard, "owner": lease.owner, "token": lease.token,
                        "expires_at": renewed.expires_at})
        return renewed

    def release(self, lease: Lease) -> None:
        try:
            self.table.delete([self.lease_id(lease.shard, lease.token)])
        except Exception as exc:  # noqa: BLE001 - an orphan lease expires on its own
            log.warning("could not release lease on shard %d: %s", lease.shard, exc)

    def clear(self) -> None:
        """Delete every shard and lease row of the plan (after it is verified)."""
        ids = [r["id"] for r in self.table.rows("shard", self.group)] + \
              [r["id"] for r in self.table.rows("lease", self.group)]
        self.table.delete(ids)


# ---------------------------------------------------------------------- what a backfill does per batch
class ShardJob(Protocol):
    """The data side of a sharded backfill (the re-encode op; an in-memory fake in tests)."""

    def list_ids(self, filter: str) -> list[str]: ...
    def process(self, ids: Sequence[str]) -> int: ...
    def count(self) -> int: ...
    def check_sample(self, ids: Sequence[str]) -> None: ...


@dataclass
class WorkStats:
    shards: int = 0  # shards this worker completed
    rows: int = 0  # rows this worker processed
    lost: int = 0  # shards abandoned because the lease was lost
    seconds: float = 0.0
    per_shard: list[tuple[int, int, float]] = field(default_factory=list)  # (shard, rows, seconds)


@dataclass
class Worker:
    """Claims shards of one plan and processes them batch by batch until every shard is done."""

    book: ShardBook
    job: ShardJob
    owner: str
    lease_ttl_s: float = 120.0
    batch_size: int = 512
    worker_index: int | None = None
    workers: int | None = None
    poll_s: float | None = None
    keepalive: Callable[[], None] | None = None  # e.g. the migration lock's refresh, while waiting
    after_batch: Callable[[int, int], None] | None = None  # (shard, rows done in it) after each checkpoint
    stats: WorkStats = field(default_factory=WorkStats)

    def run(self, deadline: float | None = None) -> WorkStats:
        """Work until every shard is done (waiting out other workers' live leases, taking over expired ones)."""
        started = time.monotonic()
        order = claim_order(self.book.plan.n_shards, self.worker_index, self.workers)
        poll = self.poll_s if self.poll_s is not None else min(5.0, max(0.2, self.lease_ttl_s / 4))
        try:
            while True:
                if self.book.closed():  # finished by `upgrade` meanwhile: its shard rows are deleted
                    return self.stats
                remaining = set(self.book.remaining())
                if not remaining:
                    return self.stats
                busy = held_by_others(self.book.leases(), time.time())
                claimed = False
                for k in order:
                    if k not in remaining or k in busy:
                        continue
                    lease = self.book.claim(k, self.owner, self.lease_ttl_s)
                    if lease is None:
                        continue
                    claimed = True
                    self._work_shard(lease)
                    break
                if not claimed:
                    if deadline is not None and time.monotonic() > deadline:
                        raise FailedPrecondition(
                            f"{len(remaining)} shard(s) of {self.book.group} are still held by other workers")
                    if self.keepalive is not None:
                        self.keepalive()
                    time.sleep(poll * random.uniform(0.7, 1.3))
        finally:
            self.stats.seconds += time.monotonic() - started

    def _process(self, lease: Lease, batch: Sequence[str]) -> tuple[Lease, int]:
        """Process one batch while a heartbeat renews the lease every TTL/3 (a batch may outlast the TTL)."""
        held = {"lease": lease}
        lost: list[LeaseLost] = []
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_ttl_s / 3):
                try:
                    held["lease"] = self.book.renew(held["lease"], self.lease_ttl_s)
                except LeaseLost as exc:
                    lost.append(exc)
                    return
                except Exception as exc:  # noqa: BLE001 - a transient Milvus error: try again at the next beat
                    log.warning("could not renew the lease on shard %d: %s", lease.shard, exc)

        heart = threading.Thread(target=beat, name=f"lease-{lease.shard}", daemon=True)
        heart.start()
        try:
            n = self.job.process(batch)
        finally:
            stop.set()
            heart.join()
        if lost:
            raise lost[0]
        return held["lease"], n

    def _work_shard(self, lease: Lease) -> None:
        k = lease.shard
        t0 = time.monotonic()
        book = self.book
        try:
            state = book.state(k)
            if state.get("done"):
                return
            ids = sorted(set(self.job.list_ids(shard_filter(book.plan.bounds, k))))
            last = state.get("last_id")
            start = bisect.bisect_right(ids, last) if last is not None else 0
            done_rows = 0
            for i in range(start, len(ids), self.batch_size):
                lease = book.renew(lease, self.lease_ttl_s)
                batch = ids[i:i + self.batch_size]
                lease, n = self._process(lease, batch)
                if lease.expired(time.time()):  # renewals failed during the batch: someone may own the shard now
                    raise LeaseLost(f"shard {k}: the lease could not be renewed within its TTL "
                                    f"({self.lease_ttl_s}s) while a batch ran; is Milvus reachable?")
                done_rows += n
                self.stats.rows += n
                book.set_state(k, done=False, last_id=batch[-1], rows=len(ids), by=self.owner)
                if self.after_batch is not None:
                    self.after_batch(k, i + len(batch))
                if self.keepalive is not None:
                    self.keepalive()
            book.renew(lease, self.lease_ttl_s)
            book.set_state(k, done=True, last_id=ids[-1] if ids else None, rows=len(ids), by=self.owner,
                           finished_at=time.time())
            self.stats.shards += 1
            self.stats.per_shard.append((k, done_rows, time.monotonic() - t0))
        except LeaseLost as exc:
            self.stats.lost += 1
            log.warning("%s; leaving the shard to its new holder", exc)
            return
        finally:
            book.release(lease)


# ---------------------------------------------------------------------- plan lifecycle
def read_plan(table: Table, scope: str, key: str) -> ShardPlan | None:
    row = table.get(plan_row_id(scope, key))
    return ShardPlan.from_payload(row) if row and row.get("group") else None


def open_plan(table: Table, scope: str, key: str, group: str, n_shards: int, owner: str,
              sample_ids: Callable[[int], list[str]]) -> ShardPlan:
    """The op's plan, opened from a sample of the ids when it is not there yet."""
    existing = read_plan(table, scope, key)
    if existing is not None:
        return existing
    bounds = shard_bounds(sample_ids(max(1, n_shards) * SAMPLE_PER_SHARD), n_shards)
    plan = ShardPlan(group, tuple(bounds), "open", time.time(), owner)
    table.put(plan_row_id(scope, key), "ckpt", scope, plan.to_payload())
    log.info("opened %d shards for %s", plan.n_shards, group)
    return plan


def verify_plan(book: ShardBook, job: ShardJob) -> int:
    """Every shard done, their rows add up to the collection's count, a sample reads back whole."""
    states = book.states()
    missing = [k for k in range(book.plan.n_shards) if not states.get(k, {}).get("done")]
    if missing:
        raise ConsistencyError(f"{len(missing)} shard(s) of {book.group} are not done (first: {missing[:5]})")
    processed = sum(int(states[k].get("rows", 0)) for k in range(book.plan.n_shards))
    now = job.count()
    if processed != now:
        for k in range(book.plan.n_shards):  # the rerun redoes the backfill: a changed shard is not known
            book.set_state(k, done=False, rows=0)
        raise ConsistencyError(
            f"the backfill processed {processed} rows but the collection now holds {now}: rows were written or "
            "deleted while it ran. Stop writers to the collection and rerun `milvus-embed migrate upgrade` "
            "(with workers if you like): every shard is done again")
    ids: list[str] = []
    for k in random.Random(processed).sample(range(book.plan.n_shards), min(4, book.plan.n_shards)):
        ids += job.list_ids(shard_filter(book.plan.bounds, k))[:VERIFY_SAMPLE // 4]
    if ids:
        job.check_sample(ids)
    return processed


# ---------------------------------------------------------------------- the op inside a run
@dataclass(frozen=True)
class ShardSettings:
    n_shards: int = DEFAULT_SHARDS
    lease_ttl_s: float = 120.0
    worker_index: int | None = None
    workers: int | None = None


def run_in_op(ctx: Any, job: ShardJob, sample_ids: Callable[[int], list[str]],
              settings: ShardSettings | None = None, batch_size: int | None = None) -> int:
    """A sharded op inside ``upgrade``: open the plan, work it (with any other workers), verify it.

    With :func:`open_only` active (a ``migrate work`` process preparing the plan), stop once the plan
    is open by raising :class:`PlanOpened`.
    """
    from .history import whoami

    settings = settings or ShardSettings()
    key = ctx.key("shards")
    owner = whoami()
    group = f"{ctx.scope}/{ctx.revision}/{ctx.direction}/{ctx.op_index}"
    plan = open_plan(ctx.table, ctx.scope, key, group, settings.n_shards, owner, sample_ids)
    if plan.state == "verified":  # verified before a crash that kept the step open
        return 0
    if _open_only.get():
        raise PlanOpened(ctx.revision, ctx.op_index)
    book = ShardBook(ctx.table, plan, plan_row_id(ctx.scope, key))
    while True:
        worker = Worker(book, job, owner, settings.lease_ttl_s, batch_size or ctx.batch_size, settings.worker_index,
                        settings.workers, keepalive=ctx.refresh_lock,
                        after_batch=(lambda k, n: ctx.hooks.after_batch(f"{key}:{k}", n))
                        if ctx.hooks.after_batch is not None else None)
        worker.run()
        if not book.remaining():  # a late writer could have reset a state: then work again
            break
    rows = verify_plan(book, job)
    ctx.table.put(plan_row_id(ctx.scope, key), "ckpt", ctx.scope,
                  ShardPlan(plan.group, plan.bounds, "verified", plan.opened_at, plan.opened_by).to_payload())
    book.clear()
    return rows


__all__ = [
    "DEFAULT_SHARDS", "Lease", "LeaseLost", "PlanOpened", "ShardBook", "ShardJob", "ShardPlan", "ShardSettings",
    "WorkStats", "Worker", "claim_order", "held_by_others", "open_only", "open_plan", "read_plan", "rivals",
    "run_in_op", "shard_bounds", "shard_filter", "shard_of", "shard_range", "verify_plan",
]
