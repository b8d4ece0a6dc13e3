"""``migrate work``: one backfill worker of a revision, for as many machines as you like.

A worker never holds the migration lock while it works. It finds the revision's sharded op and its
shard plan; when the plan is not open yet it takes the lock briefly and runs the revision up to that
op (earlier revisions and ops included), opens the plan and lets go. Then it claims shards under
expiring leases until every shard is done and exits. Finishing the revision (verifying every shard,
running the ops after the backfill, marking it applied once) is ``migrate upgrade``'s job, which is
itself a worker that also finishes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import Settings
from ..errors import FailedPrecondition, InvalidArgument
from . import runner
from .executor import OpContext, RunHooks, cached_encoder
from .history import whoami
from .ops import Reencode
from .shards import PlanOpened, ShardBook, Worker, WorkStats, open_only, plan_row_id, read_plan

log = logging.getLogger(__name__)


@dataclass
class WorkReport:
    revision: str
    status: str  # "applied": nothing to do | "done": no shard left, the revision awaits its finish step
    message: str
    stats: WorkStats = field(default_factory=WorkStats)


def _sharded_ops(cfg: runner.MigrationConfig, env: runner.Environment, rev: str) -> list[tuple[int, Reencode]]:
    before = runner.model_at(cfg, env, env.graph.ancestors(rev, inclusive=False))
    ops, _ = runner.upgrade_ops(cfg, env, rev, before)
    return [(i, op) for i, op in enumerate(ops) if isinstance(op, Reencode)]


def work(config: runner.MigrationConfig | Settings, revision: str, *, store: Any | None = None,
         worker_index: int | None = None, workers: int | None = None, wait_s: float = 600.0,
         hooks: RunHooks | None = None) -> WorkReport:
    """Work the shards of ``revision``'s sharded backfill until none is left (see the module docstring).

    ``wait_s`` bounds how long the worker waits for the plan to be opened while another process holds
    the migration lock. ``worker_index``/``workers`` (an Indexed Job's) spread the first claims.
    """
    cfg = runner._cfg(config)
    env = runner.load_environment(cfg)
    rev = env.graph.resolve(revision)
    if workers is not None and workers <= 0:
        raise InvalidArgument(f"--workers must be > 0, got {workers}")
    owner = whoami()
    hooks = hooks or RunHooks()
    encoders: dict[str, Any] = {}  # OpContext.encoder_cache, shared: the model is loaded once

    def load_model() -> None:  # before opening or claiming anything: a bad checkpoint must not hold a shard
        cached_encoder(cfg.settings, encoders)
    with runner._connected(cfg, store) as st:
        table = runner._table(cfg, st)
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            if rev in table.applied(cfg.scope):
                return WorkReport(rev, "applied", f"revision {rev} of {cfg.scope!r} is already applied; nothing to do")
            sharded = _sharded_ops(cfg, env, rev)
            if not sharded:
                raise InvalidArgument(
                    f"revision {rev} has no sharded backfill (a `reencode` op), so there is nothing for workers "
                    f"to share; apply it with `milvus-embed migrate upgrade {rev}`")
            target = None
            for i, op in sharded:
                plan = read_plan(table, cfg.scope, f"{rev}:up:{i}:shards")
                if plan is None:
                    break
                if plan.state != "verified":
                    target = (i, op, plan)
                    break
            if target is not None:
                i, op, plan = target
                book = ShardBook(table, plan, plan_row_id(cfg.scope, f"{rev}:up:{i}:shards"))
                batch = op.batch_size or cfg.batch_size
                ctx = OpContext(st, cfg.settings, table, cfg.scope, rev, "up", i, None, hooks, batch,
                                encoder_cache=encoders)
                from .reencode import ReencodeJob

                job = ReencodeJob(ctx, op.collection)
                load_model()
                worker = Worker(book, job, owner, cfg.lease_ttl_s, batch,
                                worker_index, workers,
                                after_batch=functools.partial(_prefixed, hooks.after_batch, plan.group)
                                if hooks.after_batch is not None else None)
                stats = worker.run()
                return WorkReport(
                    rev, "done",
                    f"no shard of revision {rev} is left ({plan.n_shards} shards; this worker did {stats.shards} "
                    f"shards, {stats.rows} rows in {stats.seconds:.1f}s). Finish the revision with "
                    f"`milvus-embed migrate upgrade {rev}`", stats)
            load_model()
            try:  # open the plan ourselves: run the revision up to its sharded op under the lock
                with open_only():
                    runner.upgrade(dataclasses.replace(cfg, lock_wait_s=min(cfg.lock_wait_s, 5.0)), rev, store=st)
            except PlanOpened:
                continue
            except FailedPrecondition as exc:
                if not table.locks(cfg.scope):
                    raise
                if time.monotonic() > deadline:
                    raise FailedPrecondition(
                        f"waited {wait_s:.0f}s for the shard plan of revision {rev} to open: {exc}") from None
                log.info("waiting for the shard plan of %s: %s", rev, exc)
                time.sleep(random.uniform(1.0, 3.0))
                continue
            # upgrade returned: the revision had nothing left to shard and is applied now

def _prefixed(after_batch: Any, group: str, key: str, rows: int) -> None:
    """A run's ``after_batch`` hook with the shard plan's group in front of the checkpoint key."""
    after_batch(f"{group}:{key}", rows)
