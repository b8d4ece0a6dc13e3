"""The shard protocol without Milvus: ranges, claims under expiring leases, workers that die, the finish check.

The history table is an in-memory stand-in with the same four calls (put/get/rows/delete); it is
consistent like Milvus with Strong reads, which is all the claim rule assumes.
"""

from __future__ import annotations

import contextlib
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from milvus_embed_ext.errors import ConsistencyError, InvalidArgument
from milvus_embed_ext.migrations import shards as sh


class MemTable:
    def __init__(self) -> None:
        self._rows: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def put(self, row_id: str, kind: str, scope: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self._rows[row_id] = (kind, scope, dict(payload))

    def get(self, row_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._rows.get(row_id)
            return dict(row[2]) if row else None

    def rows(self, kind: str, scope: str) -> list[dict[str, Any]]:
        with self._lock:
            return [{**p, "id": i} for i, (k, s, p) in self._rows.items() if k == kind and s == scope]

    def delete(self, row_ids: list[str]) -> None:
        with self._lock:
            for i in row_ids:
                self._rows.pop(i, None)


class Died(BaseException):
    """A worker that stops dead (like SIGKILL): no release, no checkpoint of the batch in hand."""


class MemJob:
    def __init__(self, ids: Sequence[str], delay_s: float = 0.0) -> None:
        self.ids = sorted(ids)
        self.written: Counter[str] = Counter()
        self.delay_s = delay_s
        self.die_after: dict[str, int] = {}  # thread name -> batches before it dies
        self.sample_checked: list[str] = []
        self._lock = threading.Lock()

    def list_ids(self, filter: str) -> list[str]:
        lo = re.search(r'id >= "([^"]*)"', filter)
        hi = re.search(r'id < "([^"]*)"', filter)
        return [i for i in self.ids if (lo is None or i >= lo.group(1)) and (hi is None or i < hi.group(1))]

    def process(self, ids: Sequence[str]) -> int:
        name = threading.current_thread().name
        with self._lock:
            left = self.die_after.get(name)
            if left is not None:
                if left == 0:
                    raise Died(name)
                self.die_after[name] = left - 1
        time.sleep(self.delay_s)
        with self._lock:
            self.written.update(ids)
        return len(ids)

    def count(self) -> int:
        return len(self.ids)

    def check_sample(self, ids: Sequence[str]) -> None:
        self.sample_checked += list(ids)

    def sample_ids(self, n: int) -> list[str]:
        return random.Random(0).sample(self.ids, min(n, len(self.ids)))


def _ids(n: int) -> list[str]:
    rng = random.Random(7)
    return [f"{rng.choice('abcxyz')}-{i:05d}-é" for i in range(n)]


# ---------------------------------------------------------------------------------------- ranges
@pytest.mark.parametrize("n_ids,n_shards", [(1000, 37), (5, 16), (1, 8), (0, 4), (300, 1)])
def test_every_id_falls_in_exactly_one_shard_and_filters_agree(n_ids: int, n_shards: int) -> None:
    ids = _ids(n_ids)
    bounds = sh.shard_bounds(ids, n_shards)
    assert bounds == sorted(set(bounds)) and len(bounds) + 1 <= max(1, n_shards)
    job = MemJob(ids)
    seen: Counter[str] = Counter()
    for k in range(len(bounds) + 1):
        got = job.list_ids(sh.shard_filter(bounds, k))
        assert all(sh.shard_of(bounds, i) == k for i in got)
        seen.update(got)
    assert seen == Counter(ids)
    # ids that were not in the sample (written later) still land in a shard
    for late in ("", "zzzz", "a", "m-1"):
        assert 0 <= sh.shard_of(bounds, late) <= len(bounds)
    if n_ids >= 1000:  # quantiles of the sample: shards are roughly even
        sizes = [len(job.list_ids(sh.shard_filter(bounds, k))) for k in range(len(bounds) + 1)]
        assert max(sizes) <= 3 * n_ids / n_shards


def test_shard_filter_quotes_and_bad_input() -> None:
    assert sh.shard_filter([], 0) == ""
    assert sh.shard_filter(['a"b'], 1) == 'id >= "a\\"b"'
    assert sh.shard_filter(["m"], 0) == 'id < "m"'
    with pytest.raises(InvalidArgument):
        sh.shard_filter(["m"], 2)
    with pytest.raises(InvalidArgument):
        sh.shard_bounds(["a"], 0)


def test_claim_orders_visit_every_shard_and_indexed_workers_start_apart() -> None:
    orders = [sh.claim_order(64, i, 4) for i in range(4)]
    assert all(sorted(o) == list(range(64)) for o in orders)
    assert [o[0] for o in orders] == [0, 16, 32, 48]
    assert sorted(sh.claim_order(10, rng=random.Random(1))) == list(range(10))


# ---------------------------------------------------------------------------------------- leases
def _book(n_shards: int = 4) -> sh.ShardBook:
    plan = sh.ShardPlan("c/r/up/0", tuple(f"k{i}" for i in range(1, n_shards)))
    return sh.ShardBook(MemTable(), plan)


def test_a_live_lease_keeps_others_out_and_an_expired_one_is_taken_over() -> None:
    book = _book()
    a = book.claim(2, "a", ttl_s=0.3)
    assert a is not None
    assert book.claim(2, "b", ttl_s=5) is None  # a holds it
    assert [lease.owner for lease in book.leases()] == ["a"]  # b removed its own row
    assert book.claim(3, "b", ttl_s=5) is not None  # other shards are free
    a = book.renew(a, 0.3)
    time.sleep(0.35)
    b = book.claim(2, "b", ttl_s=5)
    assert b is not None
    assert {lease.owner for lease in book.leases() if lease.shard == 2} == {"b"}  # a's stale row deleted
    with pytest.raises(sh.LeaseLost):
        book.renew(a, 5)
    book.release(b)
    assert {lease.shard for lease in book.leases()} == {3}


def test_rivals_ignore_our_own_and_expired_leases() -> None:
    leases = [sh.Lease(1, "a", "t1", 10.0), sh.Lease(1, "b", "t2", 30.0), sh.Lease(2, "c", "t3", 30.0)]
    assert sh.rivals(leases, 1, "t2", now=20.0) == []
    assert [x.token for x in sh.rivals(leases, 1, "t1", now=20.0)] == ["t2"]
    assert sh.held_by_others(leases, now=20.0, mine="t3") == {1}


def test_racing_claims_never_both_win() -> None:
    book = _book(n_shards=1)
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def claim(name: str) -> None:
        barrier.wait()
        if book.claim(0, name, ttl_s=30) is not None:
            wins.append(name)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) <= 1


# ---------------------------------------------------------------------------------------- workers
def _plan(table: MemTable, job: MemJob, n_shards: int) -> sh.ShardPlan:
    return sh.open_plan(table, "c", "r:up:0:shards", "c/r/up/0", n_shards, "test", job.sample_ids)


def test_workers_that_die_leave_shards_that_the_others_finish_exactly() -> None:
    table, job = MemTable(), MemJob(_ids(600), delay_s=0.002)
    plan = _plan(table, job, 24)
    assert sh.open_plan(table, "c", "r:up:0:shards", "c/r/up/0", 99, "again", job.sample_ids) == plan
    book = sh.ShardBook(table, plan)
    job.die_after = {"w0": 3, "w1": 7}
    errors: list[BaseException] = []

    def run(name: str, index: int) -> None:
        try:
            sh.Worker(book, job, name, lease_ttl_s=0.5, batch_size=10, worker_index=index, workers=3,
                      poll_s=0.05).run(deadline=time.monotonic() + 60)
        except Died:
            pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"w{i}", i), name=f"w{i}") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join()
    # both died holding a lease: their shards are unfinished until the leases expire
    replacement = threading.Thread(target=run, args=("w3", 0), name="w3")
    replacement.start()
    for t in (threads[2], replacement):
        t.join()
    assert not errors
    assert book.remaining() == []
    assert set(job.written) == set(job.ids)  # nothing skipped; repeats are the batches in hand when a worker died
    assert sum(job.written.values()) - len(job.ids) <= 2 * 10
    assert sh.verify_plan(book, job) == len(job.ids)
    assert job.sample_checked


def test_a_worker_resumes_a_shard_after_the_last_checkpointed_batch() -> None:
    table, job = MemTable(), MemJob(_ids(100))
    plan = _plan(table, job, 1)
    book = sh.ShardBook(table, plan)
    job.die_after = {"first": 2}
    t = threading.Thread(target=lambda: _run_quietly(book, job, "first"), name="first")
    t.start()
    t.join()
    assert book.state(0)["last_id"] == job.ids[19]  # two batches of 10 checkpointed
    time.sleep(0.25)
    sh.Worker(book, job, "second", lease_ttl_s=0.2, batch_size=10, poll_s=0.05).run()
    # batches 1-2 were checkpointed and not redone; batch 3 died before its write and was done by "second"
    assert set(job.written.values()) == {1} and len(job.written) == 100
    assert book.state(0)["done"] and book.state(0)["rows"] == 100


def _run_quietly(book: sh.ShardBook, job: MemJob, name: str) -> None:
    with contextlib.suppress(Died):
        sh.Worker(book, job, name, lease_ttl_s=0.2, batch_size=10, poll_s=0.05).run()


def test_finish_refuses_unfinished_shards_and_a_changed_count() -> None:
    table, job = MemTable(), MemJob(_ids(50))
    book = sh.ShardBook(table, _plan(table, job, 5))
    with pytest.raises(ConsistencyError, match="not done"):
        sh.verify_plan(book, job)
    sh.Worker(book, job, "w", batch_size=8).run()
    job.ids.append("zz-new")  # a writer added a row while the backfill ran
    with pytest.raises(ConsistencyError, match="rows were written or deleted"):
        sh.verify_plan(book, job)
    assert len(book.remaining()) == book.plan.n_shards  # the rerun redoes every shard
    sh.Worker(book, job, "w", batch_size=8).run()
    assert sh.verify_plan(book, job) == 51
    book.clear()
    assert table.rows("shard", book.group) == [] and table.rows("lease", book.group) == []


def test_a_batch_longer_than_the_ttl_keeps_its_lease_by_heartbeat() -> None:
    table, job = MemTable(), MemJob(_ids(6), delay_s=0.5)
    book = sh.ShardBook(table, _plan(table, job, 1))
    stats = sh.Worker(book, job, "slow", lease_ttl_s=0.2, batch_size=6).run()
    assert (stats.shards, stats.lost) == (1, 0) and book.remaining() == []


def test_a_lease_removed_during_a_batch_drops_the_shard_without_its_checkpoint() -> None:
    table, job = MemTable(), MemJob(_ids(20), delay_s=0.3)
    book = sh.ShardBook(table, _plan(table, job, 1))
    original = job.process

    def process(ids: Sequence[str]) -> int:
        for lease in book.leases():  # another worker took the shard over (a `claim` after expiry deletes it)
            table.delete([book.lease_id(lease.shard, lease.token)])
        return original(ids)

    job.process = process  # type: ignore[method-assign]
    worker = sh.Worker(book, job, "w", lease_ttl_s=0.15, batch_size=10, poll_s=0.01)
    worker._work_shard(book.claim(0, "w", 0.15))
    assert worker.stats.lost == 1 and "last_id" not in book.state(0) and not book.state(0)["done"]


def test_a_waiting_worker_stops_when_the_finish_step_closes_the_plan() -> None:
    table, job = MemTable(), MemJob(_ids(10))
    plan = _plan(table, job, 1)
    book = sh.ShardBook(table, plan, sh.plan_row_id("c", "r:up:0:shards"))
    held = book.claim(0, "finisher", ttl_s=30)  # the last shard, held by the finish step
    assert held is not None
    waiting = threading.Thread(target=lambda: sh.Worker(book, job, "w", poll_s=0.02).run(
        deadline=time.monotonic() + 30))
    waiting.start()
    time.sleep(0.1)
    book.set_state(0, done=True, rows=10)  # the finisher completes it, verifies, closes the plan, clears the rows
    table.put(sh.plan_row_id("c", "r:up:0:shards"), "ckpt", "c",
              sh.ShardPlan(plan.group, plan.bounds, "verified").to_payload())
    book.clear()
    waiting.join(timeout=10)
    assert not waiting.is_alive() and not job.written, "nothing is redone after the plan is closed"
