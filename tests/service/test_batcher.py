"""The micro-batcher with a fake encoder: merging, limits, cancellation, deadlines, errors."""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Sequence

import numpy as np
import pytest

from milvus_embed_ext.encoder import M3Output
from milvus_embed_ext.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from milvus_embed_ext.service.batcher import Batcher


class FakeEncoder:
    """Deterministic per-text vectors; records every call; can be held to keep the encoder busy."""

    hidden_size = 8

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    @staticmethod
    def vector(text: str) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        v = rng.standard_normal(FakeEncoder.hidden_size).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode(self, texts: Sequence[str], *, dense=True, sparse=True, colbert=True, truncate_dims=(), max_length=None):
        self.gate.wait(10)
        self.calls.append((list(texts), dict(dense=dense, sparse=sparse, colbert=colbert,
                                             truncate_dims=tuple(truncate_dims), max_length=max_length)))
        if self.fail is not None:
            raise self.fail
        dense_m = np.stack([self.vector(t) for t in texts])
        return M3Output(
            dense=dense_m if dense else None,
            sparse=[{len(t): 1.0} for t in texts] if sparse else None,
            colbert=[dense_m[i : i + 1] for i in range(len(texts))] if colbert else None,
            truncated={d: dense_m[:, :d] for d in truncate_dims},
            token_counts=np.array([len(t.split()) + 2 for t in texts], dtype=np.int64),
        )


def make(encoder: FakeEncoder, **kw) -> Batcher:
    opts = dict(token_budget=10_000, max_batch=64, max_wait_ms=20, max_queue=100, max_length=512)
    opts.update(kw)
    return Batcher(encoder, **opts)


async def busy(enc: FakeEncoder) -> tuple[Batcher, asyncio.Task]:
    """A started batcher whose encoder is held inside a first call (``enc.gate`` cleared), so new work queues."""
    enc.gate.clear()
    b = make(enc, max_wait_ms=0)
    await b.start()
    first = asyncio.create_task(b.encode(["busy"]))
    await asyncio.sleep(0.05)
    return b, first


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_one_call_and_get_their_own_rows():
    enc = FakeEncoder()

    async def main():
        b = make(enc)
        await b.start()
        texts = [[f"t{i}a", f"t{i}b"] for i in range(5)]
        results = await asyncio.gather(*[b.encode(t, dense=True, sparse=i % 2 == 0, truncate_dims=(4,) if i == 3 else ())
                                         for i, t in enumerate(texts)])
        await b.stop()
        return texts, results

    texts, results = run(main())
    assert len(enc.calls) == 1, "five concurrent requests within max_wait should be one encoder call"
    merged, opts = enc.calls[0]
    assert merged == [t for pair in texts for t in pair]
    assert opts["sparse"] and opts["truncate_dims"] == (4,) and not opts["colbert"]
    for pair, res in zip(texts, results, strict=True):
        assert res.batch_requests == 5 and res.batch_texts == 10
        np.testing.assert_array_equal(res.output.dense, np.stack([FakeEncoder.vector(t) for t in pair]))
        assert res.output.token_counts.tolist() == [3, 3]


def test_max_batch_splits_calls_and_max_length_is_not_mixed():
    enc = FakeEncoder()

    async def main():
        b = make(enc, max_batch=3)
        await b.start()
        await asyncio.gather(*[b.encode([f"x{i}", f"y{i}"]) for i in range(3)], b.encode(["z"], max_length=16))
        await b.stop()

    run(main())
    sizes = [len(texts) for texts, _ in enc.calls]
    assert all(s <= 3 for s in sizes[:-1]) and sum(sizes) == 7
    assert any(opts["max_length"] == 16 and texts == ["z"] for texts, opts in enc.calls)
    assert all(texts == ["z"] for texts, opts in enc.calls if opts["max_length"] == 16)


def test_full_queue_is_resource_exhausted_and_nothing_is_queued():
    enc = FakeEncoder()
    enc.gate.clear()

    async def main():
        b = make(enc, max_queue=4, max_wait_ms=0)
        await b.start()
        first = asyncio.create_task(b.encode(["busy"]))  # occupies the encoder thread
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(b.encode(["a", "b", "c"]))
        await asyncio.sleep(0.01)
        assert b.queued_texts == 3
        with pytest.raises(ResourceExhausted, match="max_queue=4"):
            await b.encode(["d", "e"])
        assert b.queued_texts == 3
        enc.gate.set()
        await asyncio.gather(first, waiting)
        await b.stop()

    run(main())


def test_cancelled_request_leaves_the_queue_and_is_never_encoded():
    enc = FakeEncoder()

    async def main():
        b, first = await busy(enc)
        doomed = asyncio.create_task(b.encode(["cancel me"]))
        await asyncio.sleep(0.01)
        assert b.queued_texts == 1
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert b.queued_texts == 0
        enc.gate.set()
        await first
        await b.encode(["after"])
        await b.stop()

    run(main())
    assert all("cancel me" not in texts for texts, _ in enc.calls)


def test_deadline_while_queued_is_deadline_exceeded_and_skipped():
    enc = FakeEncoder()

    async def main():
        b, first = await busy(enc)
        with pytest.raises(DeadlineExceeded):
            await b.encode(["too late"], timeout=0.05)
        assert b.queued_texts == 0
        enc.gate.set()
        await first
        await b.stop()

    run(main())
    assert all("too late" not in texts for texts, _ in enc.calls)


def test_encoder_error_reaches_every_request_of_the_batch_and_stop_refuses_new_work():
    enc = FakeEncoder()
    enc.fail = RuntimeError("boom")

    async def main():
        b = make(enc)
        await b.start()
        results = await asyncio.gather(b.encode(["a"]), b.encode(["b"]), return_exceptions=True)
        await b.stop()
        with pytest.raises(Unavailable):
            await b.encode(["c"])
        return results

    results = run(main())
    assert [type(r) for r in results] == [RuntimeError, RuntimeError]
    assert len(enc.calls) == 1
